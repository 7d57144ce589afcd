import numpy as np
import PIL.Image
import pytest
import torch
from datasets import Dataset
from datasets import Image as ImageFeature

from hf_ssl.data import (
    IMAGENET_MEAN,
    MultiCropConfig,
    ViewCropCollator,
    ViewCropTransform,
    ViewGroup,
    ViewsConfig,
    with_view_crops,
)
from hf_ssl.data.views import as_views_config, view_size_keys


def gradient_image(width=48, height=40) -> PIL.Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    pixels = np.concatenate(
        [
            np.broadcast_to(x, (height, width, 1)),
            np.broadcast_to(y, (height, width, 1)),
            np.full((height, width, 1), 90.0),
        ],
        axis=2,
    )
    return PIL.Image.fromarray(pixels.astype(np.uint8))


def test_a_group_broadcasts_a_single_probability_and_checks_one_per_view():
    group = ViewGroup(number=3, blur_probabilities=0.5, solarize_probabilities=(0.2,))
    assert group.blur_probabilities == (0.5, 0.5, 0.5) and group.solarize_probabilities == (0.2, 0.2, 0.2)
    assert ViewGroup(number=2, blur_probabilities=[1.0, 0.1]).blur_probabilities == (1.0, 0.1)
    with pytest.raises(ValueError, match=r"blur_probabilities must have one value per view \(2\)"):
        ViewGroup(number=2, blur_probabilities=(1.0, 0.1, 0.5))
    with pytest.raises(ValueError, match=r"solarize_probabilities\[1\] must be a probability"):
        ViewGroup(number=2, solarize_probabilities=(0.0, 1.5))
    with pytest.raises(ValueError, match="scale must be"):
        ViewGroup(scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="size must be a positive integer"):
        ViewGroup(size=0)
    assert ViewGroup(blur_sigma=(0.1, 2.0)).blur_radius == 6 and ViewGroup(blur_kernel_size=23).blur_radius == 11


def test_groups_from_mappings_name_unknown_keys_and_reserved_names():
    views = ViewsConfig(
        groups={"image": {"number": 1, "size": 32, "scale": [0.3, 1.0]}}, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]
    )
    assert isinstance(views.groups["image"], ViewGroup) and views.groups["image"].scale == (0.3, 1.0)
    assert views.names == ("image",) and views.first is views.groups["image"] and views.mean == (0.5, 0.5, 0.5)
    assert views.size_keys() == {"image": "augmentation.groups.image.size"}
    with pytest.raises(
        ValueError, match=r"unknown key 'sizes' in view group 'image'; the keys of a view group are \['number', 'size'"
    ):
        ViewsConfig(groups={"image": {"sizes": 32}})
    with pytest.raises(ValueError, match="view group 'image': scale must be"):
        ViewsConfig(groups={"image": {"scale": [0.0, 1.0]}})
    with pytest.raises(ValueError, match="'labels' is a batch key of its own"):
        ViewsConfig(groups={"labels": ViewGroup()})
    with pytest.raises(ValueError, match="must map at least one batch key"):
        ViewsConfig(groups={})
    with pytest.raises(ValueError, match="std must be positive"):
        ViewsConfig(std=(0.2, 0.0, 0.2))


def test_dino_multicrop_config_is_two_named_groups():
    config = MultiCropConfig(
        global_crop_size=32,
        local_crops_number=4,
        local_crop_size=16,
        global_blur_probabilities=(1.0, 0.1),
        local_blur_probability=0.5,
        global_solarize_probabilities=(0.0, 0.2),
    )
    views = as_views_config(config)
    assert views.names == ("global_crops", "local_crops")
    global_group, local_group = views.groups["global_crops"], views.groups["local_crops"]
    assert (global_group.number, global_group.size, global_group.scale) == (2, 32, (0.4, 1.0))
    assert (local_group.number, local_group.size, local_group.scale) == (4, 16, (0.05, 0.4))
    assert global_group.blur_probabilities == (1.0, 0.1) and global_group.solarize_probabilities == (0.0, 0.2)
    assert local_group.blur_probabilities == (0.5,) * 4 and local_group.solarize_probabilities == (0.0,) * 4
    assert global_group.interpolation == local_group.interpolation == "bicubic" and views.mean == IMAGENET_MEAN
    assert as_views_config(MultiCropConfig(local_crops_number=0)).names == ("global_crops",)
    assert view_size_keys(config)["local_crops"] == "augmentation.local_crop_size"
    assert views.describe() == "2 x 32px (scale (0.4, 1.0)), 4 x 16px (scale (0.05, 0.4))"
    with pytest.raises(TypeError, match="is not an augmentation config"):
        as_views_config({"groups": {}})


def test_the_transform_cuts_every_group_at_its_own_size_scale_and_interpolation():
    views = ViewsConfig(
        groups={
            "whole": ViewGroup(number=1, size=24, scale=(1.0, 1.0), crop_ratio=(1.2, 1.2), interpolation="nearest"),
            "parts": ViewGroup(number=3, size=8, scale=(0.05, 0.1)),
        }
    )
    transform = ViewCropTransform(views)
    output = transform({"image": [gradient_image(), gradient_image()], "label": [3, 4]}, rng=np.random.default_rng(0))
    assert set(output) == {"whole", "parts", "valid", "label"}
    assert output["whole"][0].shape == (1, 3, 24, 24) and output["parts"][1].shape == (3, 3, 8, 8)
    # the whole-image view spans the gradient from end to end; a small part spans a fraction of it
    whole_range = output["whole"][0][0, 0].float().max() - output["whole"][0][0, 0].float().min()
    part_range = output["parts"][0][0, 0].float().max() - output["parts"][0][0, 0].float().min()
    assert whole_range > 200 and part_range < 120
    batch = ViewCropCollator()([{name: values[i] for name, values in output.items()} for i in range(2)])
    assert list(batch) == ["whole", "parts", "labels", "num_skipped"]
    assert batch["whole"].shape == (1, 2, 3, 24, 24) and batch["parts"].shape == (3, 2, 3, 8, 8)
    assert batch["labels"].tolist() == [3, 4]


def test_groups_are_cut_in_order_so_the_first_group_does_not_depend_on_later_ones():
    image = gradient_image()
    one = ViewsConfig(groups={"first": ViewGroup(number=2, size=16)})
    two = ViewsConfig(groups={"first": ViewGroup(number=2, size=16), "more": ViewGroup(number=2, size=8)})
    alone = ViewCropTransform(one).make_crops(image, np.random.default_rng(7))
    with_more = ViewCropTransform(two).make_crops(image, np.random.default_rng(7))
    assert torch.equal(alone["first"], with_more["first"]) and set(with_more) == {"first", "more"}


def test_a_views_config_through_the_seeded_dataset_reproduces_its_views():
    dataset = Dataset.from_dict({"image": [gradient_image(30 + i, 28) for i in range(4)]}).cast_column(
        "image", ImageFeature()
    )
    views = ViewsConfig(groups={"image": ViewGroup(number=1, size=16, scale=(0.3, 1.0))})
    first = with_view_crops(dataset, ViewCropTransform(views), seed=3)
    again = with_view_crops(dataset, ViewCropTransform(views), seed=3)
    assert torch.equal(first[2]["image"], again[2]["image"]) and not torch.equal(
        first[2]["image"], first[6]["image"]
    )  # epoch 1


def test_an_explicit_list_of_groups_is_what_the_collator_stacks():
    example = {
        "a": torch.zeros(1, 3, 4, 4, dtype=torch.uint8),
        "b": torch.zeros(2, 3, 2, 2, dtype=torch.uint8),
        "valid": True,
    }
    assert list(ViewCropCollator(view_names=["b"])([example, example])) == ["b", "num_skipped"]
    with pytest.raises(KeyError, match="no view group 'c'"):
        ViewCropCollator(view_names=["c"])([example])
