import io
import logging

import datasets
import numpy as np
import PIL.Image
import pytest
import torch

from hf_ssl.data import MultiCropConfig, ViewCropCollator, ViewCropTransform, load_image_dataset, with_view_crops
from hf_ssl.data.images import random_resized_crop_box


def png_bytes(image: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def solid(color, size=(40, 30), mode="RGB") -> PIL.Image.Image:
    return PIL.Image.new(mode, size, color)


def small_config(**overrides) -> MultiCropConfig:
    values = dict(global_crop_size=32, local_crops_number=3, local_crop_size=16)
    values.update(overrides)
    return MultiCropConfig(**values)


def whole_image_config(size: int) -> MultiCropConfig:
    """One global crop covering the whole (square) image at its own size: the crop is the image."""
    return MultiCropConfig(
        global_crops_number=1,
        global_crop_size=size,
        global_crops_scale=(1.0, 1.0),
        crop_ratio=(1.0, 1.0),
        interpolation="nearest",
        local_crops_number=0,
        global_blur_probabilities=(0.0,),
        global_solarize_probabilities=(0.0,),
    )


def test_default_config_gives_dino_crop_shapes_and_counts():
    output = ViewCropTransform(MultiCropConfig())({"image": [solid((10, 20, 30)), solid((1, 2, 3), size=(300, 200))]})
    assert len(output["global_crops"]) == len(output["local_crops"]) == 2
    for global_crops, local_crops in zip(output["global_crops"], output["local_crops"]):
        assert global_crops.shape == (2, 3, 224, 224) and global_crops.dtype == torch.uint8
        assert local_crops.shape == (8, 3, 96, 96) and local_crops.dtype == torch.uint8
    assert output["valid"] == [True, True]
    assert "label" not in output


def test_custom_config_without_local_crops_omits_them():
    config = MultiCropConfig(
        global_crops_number=3,
        global_crop_size=20,
        local_crops_number=0,
        global_blur_probabilities=(1.0,),
        global_solarize_probabilities=(0.0,),
    )
    output = ViewCropTransform(config)({"image": [solid((5, 5, 5))]})
    assert output["global_crops"][0].shape == (3, 3, 20, 20)
    assert "local_crops" not in output


def test_crops_carry_the_image_colours_in_rgb_order():
    output = ViewCropTransform(small_config())({"image": [solid((200, 10, 30))]})
    crops = output["global_crops"][0]
    assert torch.equal(crops[:, 0].unique(), torch.tensor([200], dtype=torch.uint8))
    assert torch.equal(crops[:, 1].unique(), torch.tensor([10], dtype=torch.uint8))
    assert torch.equal(crops[:, 2].unique(), torch.tensor([30], dtype=torch.uint8))


def test_collator_stacks_crops_crop_major_and_passes_labels():
    images = [solid((index * 40, 0, 0)) for index in range(4)]
    config = small_config()
    examples = ViewCropTransform(config)({"image": images, "label": [3, 1, 4, 1], "other": ["a", "b", "c", "d"]})
    assert examples["label"] == [3, 1, 4, 1] and "other" not in examples
    rows = [{key: values[index] for key, values in examples.items()} for index in range(4)]
    batch = ViewCropCollator()(rows)
    assert batch["global_crops"].shape == (2, 4, 3, 32, 32)
    assert batch["local_crops"].shape == (3, 4, 3, 16, 16)
    assert batch["labels"].dtype == torch.int64 and batch["labels"].tolist() == [3, 1, 4, 1]
    assert batch["num_skipped"].item() == 0 and batch["num_skipped"].dtype == torch.int64
    # Image b of the batch sits at [:, b]: its red value is 40 * b in every crop.
    for index in range(4):
        assert batch["global_crops"][:, index, 0].unique().tolist() == [index * 40]
        assert batch["local_crops"][:, index, 0].unique().tolist() == [index * 40]


def test_random_resized_crop_box_stays_within_scale_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, right, bottom = random_resized_crop_box(300, 200, (0.05, 0.4), (3 / 4, 4 / 3), rng)
        width, height = right - left, bottom - top
        assert 0 <= left < right <= 300 and 0 <= top < bottom <= 200
        # Rounding to whole pixels moves the area and ratio a little past the bounds.
        assert 0.05 * 0.9 <= width * height / 60000 <= 0.4 * 1.1
        assert 3 / 4 * 0.9 <= width / height <= 4 / 3 * 1.1


def test_random_resized_crop_box_falls_back_to_a_centre_crop_clamped_to_the_ratio():
    # A 100x10 strip cannot hold 90% of its area at a ratio <= 4/3: after 10 tries, centre crop 13x10.
    assert random_resized_crop_box(100, 10, (0.9, 1.0), (3 / 4, 4 / 3), np.random.default_rng(0)) == (43, 0, 56, 10)
    assert random_resized_crop_box(10, 100, (0.9, 1.0), (3 / 4, 4 / 3), np.random.default_rng(0)) == (0, 43, 10, 56)


def test_tiny_images_are_upscaled_to_the_crop_size():
    tiny = PIL.Image.fromarray(np.arange(5 * 7 * 3, dtype=np.uint8).reshape(7, 5, 3) * 2)
    output = ViewCropTransform(MultiCropConfig())({"image": [tiny]})
    assert output["valid"] == [True]
    assert output["global_crops"][0].shape == (2, 3, 224, 224)
    assert output["local_crops"][0].shape == (8, 3, 96, 96)
    assert output["global_crops"][0].float().std() > 5  # the image content, not a blank fill


def _mode_image(mode: str) -> PIL.Image.Image:
    rgb = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8))
    if mode in ("I;16", "I", "F"):
        return PIL.Image.fromarray(
            np.linspace(0, 60000, 12 * 16)
            .reshape(12, 16)
            .astype({"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode])
        )
    return rgb.convert(mode)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "RGB", "RGBA", "P", "CMYK", "YCbCr", "I;16", "I", "F"])
@pytest.mark.parametrize("encoded", [False, True])
def test_every_pil_mode_becomes_three_channel_uint8(mode, encoded):
    image = _mode_image(mode)
    assert image.mode == mode
    if encoded:  # through the file format, as an undecoded datasets.Image column holds it
        buffer = io.BytesIO()
        image.save(buffer, format="TIFF")
        try:
            PIL.Image.open(io.BytesIO(buffer.getvalue())).load()
        except OSError as error:  # Pillow 12 writes YCbCr TIFFs it cannot read back
            pytest.skip(f"this Pillow ({PIL.__version__}) cannot read its own {mode} TIFF: {error}")
        image = {"bytes": buffer.getvalue(), "path": None}
    output = ViewCropTransform(small_config())({"image": [image]})
    assert output["valid"] == [True]
    crops = output["global_crops"][0]
    assert crops.shape == (2, 3, 32, 32) and crops.dtype == torch.uint8
    identical_channels = torch.equal(crops[:, 0], crops[:, 1]) and torch.equal(crops[:, 1], crops[:, 2])
    # single-channel modes give one plane three times; the colour modes of random colours keep their colours
    assert identical_channels == (mode in ("1", "L", "LA", "I;16", "I", "F"))


@pytest.mark.parametrize("mode, dtype", [("I;16", np.uint16), ("I", np.int32)])
def test_16_bit_gradient_is_scaled_not_saturated(mode, dtype):
    gradient = np.tile(np.linspace(0, 65535, 64).round().astype(dtype), (64, 1))
    image = PIL.Image.fromarray(gradient)
    assert image.mode == mode
    crop = ViewCropTransform(whole_image_config(64))({"image": [image]})["global_crops"][0][0]
    expected = torch.from_numpy(np.rint(gradient / 257).astype(np.uint8))
    assert torch.equal(crop[0], expected)
    assert len(crop[0, 0].unique()) == 64  # every step of the gradient survives
    assert (crop == 255).float().mean() < 0.05


def test_16_bit_png_file_keeps_its_gradient():
    gradient = np.tile(np.linspace(0, 65535, 32).round().astype(np.uint16), (32, 1))
    data = png_bytes(PIL.Image.fromarray(gradient))
    crop = ViewCropTransform(whole_image_config(32))({"image": [{"bytes": data, "path": None}]})["global_crops"][0][0]
    assert torch.equal(crop[1], torch.from_numpy(np.rint(gradient / 257).astype(np.uint8)))


def test_float_image_in_unit_range_is_scaled_to_255():
    values = np.tile(np.linspace(0, 1, 16, dtype=np.float32), (16, 1))
    crop = ViewCropTransform(whole_image_config(16))({"image": [PIL.Image.fromarray(values)]})["global_crops"][0][0]
    assert torch.equal(crop[2], torch.from_numpy(np.rint(values * 255).astype(np.uint8)))


def test_alpha_is_dropped_not_composited():
    transparent_red = PIL.Image.new("RGBA", (16, 16), (200, 10, 30, 0))
    crop = ViewCropTransform(whole_image_config(16))({"image": [transparent_red]})["global_crops"][0][0]
    assert crop[:, 0, 0].tolist() == [200, 10, 30]


GREY_PIXELS = np.random.default_rng(1).integers(0, 256, (16, 16), dtype=np.uint8)
COLOUR_PIXELS = np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)  # HWC
ALPHA_PIXELS = np.random.default_rng(3).integers(0, 256, (16, 16, 1), dtype=np.uint8)
GREY_AS_RGB = np.stack([GREY_PIXELS] * 3)  # CHW: the grey plane in every channel
COLOUR_AS_CHW = np.ascontiguousarray(COLOUR_PIXELS.transpose(2, 0, 1))


@pytest.mark.parametrize(
    "source, expected",
    [
        (PIL.Image.fromarray(GREY_PIXELS), GREY_AS_RGB),
        (GREY_PIXELS, GREY_AS_RGB),
        (GREY_PIXELS[..., None], GREY_AS_RGB),
        (COLOUR_PIXELS, COLOUR_AS_CHW),
        (COLOUR_AS_CHW, COLOUR_AS_CHW),
        (torch.from_numpy(COLOUR_PIXELS), COLOUR_AS_CHW),
        (torch.from_numpy(np.concatenate([COLOUR_PIXELS, ALPHA_PIXELS], -1)), COLOUR_AS_CHW),  # alpha dropped
    ],
    ids=["grey-image", "grey-hw", "grey-hw1", "colour-hwc", "colour-chw", "colour-tensor", "colour-tensor-alpha"],
)
def test_a_whole_image_crop_is_the_source_pixels(source, expected):
    if isinstance(source, PIL.Image.Image):
        assert source.mode == "L"
    crop = ViewCropTransform(whole_image_config(16))({"image": [source]})["global_crops"][0][0]
    assert crop.shape == (3, 16, 16) and crop.dtype == torch.uint8
    assert torch.equal(crop, torch.from_numpy(expected))
    grey = expected is GREY_AS_RGB
    assert torch.equal(crop[0], crop[1]) == grey and torch.equal(crop[1], crop[2]) == grey


def test_image_path_and_path_dict(tmp_path):
    path = tmp_path / "red.png"
    solid((250, 0, 0)).save(path)
    output = ViewCropTransform(small_config())({"image": [str(path), {"bytes": None, "path": str(path)}]})
    assert output["valid"] == [True, True]
    assert output["global_crops"][1][:, 0].unique().tolist() == [250]


def test_same_torch_seed_same_crops_other_seed_other_crops():
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 48, 3), dtype=np.uint8))
    transform = ViewCropTransform(small_config())
    torch.manual_seed(0)
    first = transform({"image": [image]})["global_crops"][0]
    torch.manual_seed(0)
    again = transform({"image": [image]})["global_crops"][0]
    torch.manual_seed(1)
    other = transform({"image": [image]})["global_crops"][0]
    assert torch.equal(first, again) and not torch.equal(first, other)


def _corrupt_dataset() -> datasets.Dataset:
    good = png_bytes(PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)))
    rows = [good, good[: len(good) // 2], b"this is not an image", good]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    return datasets.Dataset.from_dict({"image": rows, "label": [0, 1, 2, 3]}, features=features)


def test_corrupt_images_are_skipped_and_counted_through_the_dataloader(caplog):
    dataset = with_view_crops(_corrupt_dataset(), ViewCropTransform(small_config()))
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=ViewCropCollator())
    with caplog.at_level(logging.WARNING, logger="hf_ssl.data.crops"):
        batch = next(iter(loader))
    assert batch["num_skipped"].item() == 2
    assert batch["labels"].tolist() == [0, 3]
    assert batch["global_crops"].shape == (2, 2, 3, 32, 32)
    assert batch["local_crops"].shape == (3, 2, 3, 16, 16)
    assert sum("Skipping" in record.getMessage() for record in caplog.records) == 2


def test_corrupt_image_raises_when_not_skipping():
    dataset = with_view_crops(_corrupt_dataset(), ViewCropTransform(small_config(), skip_bad_images=False))
    assert dataset[0]["valid"]
    with pytest.raises(ValueError, match="position 0 of the batch"):
        dataset[1]


def test_corrupt_file_in_an_imagefolder(tmp_path):
    for label in ("cat", "dog"):
        (tmp_path / "train" / label).mkdir(parents=True)
    solid((0, 120, 0)).save(tmp_path / "train" / "cat" / "good.png")
    (tmp_path / "train" / "dog" / "broken.png").write_bytes(png_bytes(solid((5, 5, 5)))[:40])
    dataset = load_image_dataset("imagefolder", data_dir=str(tmp_path), split="train")

    loader = torch.utils.data.DataLoader(
        with_view_crops(dataset, ViewCropTransform(small_config())), batch_size=2, collate_fn=ViewCropCollator()
    )
    batch = next(iter(loader))
    assert batch["num_skipped"].item() == 1
    assert batch["labels"].tolist() == [dataset.features["label"].str2int("cat")]
    assert batch["global_crops"][:, 0, 1].unique().tolist() == [120]

    strict = with_view_crops(dataset, ViewCropTransform(small_config(), skip_bad_images=False))
    with pytest.raises(ValueError, match="broken.png"):
        [strict[index] for index in range(len(strict))]


def test_all_bad_batch_has_zero_examples_and_the_right_shapes():
    config = small_config()
    examples = ViewCropTransform(config)({"image": [b"garbage", None], "label": [0, 1]})
    assert examples["valid"] == [False, False]
    assert torch.count_nonzero(examples["global_crops"][0]) == 0
    batch = ViewCropCollator()([{key: values[index] for key, values in examples.items()} for index in range(2)])
    assert batch["global_crops"].shape == (2, 0, 3, 32, 32)
    assert batch["local_crops"].shape == (3, 0, 3, 16, 16)
    assert batch["labels"].shape == (0,)
    assert batch["num_skipped"].item() == 2


def test_dataloader_workers_draw_different_crops_and_the_seed_reproduces_them():
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8))
    features = datasets.Features({"image": datasets.Image()})
    dataset = with_view_crops(
        datasets.Dataset.from_dict({"image": [image] * 4}, features=features), ViewCropTransform(small_config())
    )

    def crops_per_batch():
        torch.manual_seed(0)
        loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=2, collate_fn=ViewCropCollator())
        return [batch["global_crops"] for batch in loader]

    first = crops_per_batch()
    # Batches 0 and 1 come from workers 0 and 1: same image, different crops.
    assert not torch.equal(first[0], first[1])
    assert all(torch.equal(a, b) for a, b in zip(first, crops_per_batch()))


def test_with_multicrop_leaves_the_image_column_undecoded():
    dataset = with_view_crops(_corrupt_dataset(), ViewCropTransform(small_config()))
    assert dataset.dataset.features["image"] == datasets.Image(decode=False)


def test_with_multicrop_on_a_dataset_dict():
    dataset = datasets.DatasetDict({"train": _corrupt_dataset(), "test": _corrupt_dataset()})
    transformed = with_view_crops(dataset, ViewCropTransform(small_config()))
    assert set(transformed) == {"train", "test"}
    assert transformed["test"][3]["global_crops"].shape == (2, 3, 32, 32)


def test_with_multicrop_on_a_streaming_dataset():
    dataset = with_view_crops(_corrupt_dataset().to_iterable_dataset(), ViewCropTransform(small_config()))
    batch = ViewCropCollator()(list(dataset))
    assert batch["global_crops"].shape == (2, 2, 3, 32, 32)
    assert batch["num_skipped"].item() == 2 and batch["labels"].tolist() == [0, 3]


def test_epoch_shuffle_sampler_orders_by_seed_and_epoch_and_keeps_the_epoch_in_the_dataset():
    from hf_ssl.data import EpochShuffleSampler

    plain = EpochShuffleSampler(6, seed=3)
    first = list(plain)
    assert sorted(first) == list(range(6)) and first == list(EpochShuffleSampler(6, seed=3))
    plain.set_epoch(2)
    second = list(plain)
    assert sorted(second) == list(range(12, 18))  # keys carry the epoch: epoch * 6 + index
    assert [key - 12 for key in second] != first  # a new order each epoch

    image = PIL.Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8))
    dataset = with_view_crops(datasets.Dataset.from_dict({"image": [image] * 6}), ViewCropTransform(small_config()))
    held = EpochShuffleSampler(len(dataset), seed=3, epoch_holder=dataset)
    dataset.set_epoch(2)  # what accelerate does where it cannot reach the sampler
    assert list(held) == second
    held.set_epoch(1)  # and through the sampler, the dataset follows
    assert dataset.epoch == 1 and held.epoch == 1 and min(held) == 6
