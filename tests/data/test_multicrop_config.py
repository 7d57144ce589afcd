import re

import pytest

from hf_ssl.data import IMAGENET_MEAN, IMAGENET_STD, MultiCropConfig


def test_defaults_are_the_official_dino_augmentation():
    config = MultiCropConfig()
    assert (config.global_crops_number, config.global_crop_size, config.global_crops_scale) == (2, 224, (0.4, 1.0))
    assert (config.local_crops_number, config.local_crop_size, config.local_crops_scale) == (8, 96, (0.05, 0.4))
    assert config.crop_ratio == (3 / 4, 4 / 3) and config.interpolation == "bicubic"
    assert (config.flip_probability, config.color_jitter_probability, config.grayscale_probability) == (0.5, 0.8, 0.2)
    assert (config.brightness, config.contrast, config.saturation, config.hue) == (0.4, 0.4, 0.2, 0.1)
    assert config.blur_sigma == (0.1, 2.0)
    assert config.global_blur_probabilities == (1.0, 0.1) and config.local_blur_probability == 0.5
    assert config.global_solarize_probabilities == (0.0, 0.2) and config.local_solarize_probability == 0.0
    # null normalisation: ImageNet's for RGB, resolved when the pipeline's views are built
    assert config.mean is None and config.std is None and config.num_channels is None
    assert config.to_views_config().mean == IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert config.to_views_config().std == IMAGENET_STD == (0.229, 0.224, 0.225)


def test_lists_from_yaml_become_tuples():
    config = MultiCropConfig(
        global_crops_scale=[0.3, 1], global_blur_probabilities=[1, 0.5], mean=[0.5, 0.5, 0.5], std=[1, 1, 1]
    )
    assert config.global_crops_scale == (0.3, 1.0)
    assert config.global_blur_probabilities == (1.0, 0.5)
    assert config.mean == (0.5, 0.5, 0.5)


def test_single_probability_broadcasts_to_every_global_crop_when_not_two():
    config = MultiCropConfig(
        global_crops_number=3, global_blur_probabilities=(0.5,), global_solarize_probabilities=(0.1,)
    )
    assert config.global_blur_probabilities == (0.5, 0.5, 0.5)
    assert config.global_solarize_probabilities == (0.1, 0.1, 0.1)


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"flip_probability": 1.5}, "flip_probability"),
        ({"color_jitter_probability": -0.1}, "color_jitter_probability"),
        ({"local_blur_probability": 2}, "local_blur_probability"),
        ({"global_crops_scale": (0.8, 0.4)}, "global_crops_scale"),
        ({"local_crops_scale": (0.0, 0.4)}, "local_crops_scale"),
        ({"local_crops_scale": (0.05, 1.5)}, "local_crops_scale"),
        ({"crop_ratio": (4 / 3, 3 / 4)}, "crop_ratio"),
        ({"blur_sigma": (2.0, 0.1)}, "blur_sigma"),
        ({"global_crop_size": 0}, "global_crop_size"),
        ({"local_crop_size": -96}, "local_crop_size"),
        ({"global_crops_number": 0}, "global_crops_number"),
        ({"local_crops_number": -1}, "local_crops_number"),
        ({"interpolation": "cubic"}, "interpolation"),
        ({"global_blur_probabilities": (1.0,)}, "global_blur_probabilities"),
        ({"global_blur_probabilities": (1.0, 0.1, 0.1)}, "global_blur_probabilities"),
        (
            {
                "global_crops_number": 3,
                "global_blur_probabilities": (1.0,),
                "global_solarize_probabilities": (0.0, 0.2),
            },
            "global_solarize_probabilities",
        ),
        ({"global_solarize_probabilities": (0.0, 1.2)}, "global_solarize_probabilities[1]"),
        ({"hue": 0.7}, "hue"),
        ({"brightness": -0.4}, "brightness"),
        ({"mean": (0.5, 0.5)}, "mean"),
        ({"std": (0.2, 0.0, 0.2)}, "std"),
    ],
)
def test_invalid_values_name_the_field(overrides, field):
    with pytest.raises(ValueError, match="^" + re.escape(field) + " "):
        MultiCropConfig(**overrides)


def test_interpolation_error_lists_the_allowed_values():
    with pytest.raises(ValueError, match="bicubic") as error:
        MultiCropConfig(interpolation="cubic")
    assert "bilinear" in str(error.value) and "'cubic'" in str(error.value)


def test_global_probabilities_error_says_a_single_value_is_allowed_only_when_not_two_crops():
    with pytest.raises(ValueError, match="or a single value"):
        MultiCropConfig(global_crops_number=3, global_blur_probabilities=(1.0, 0.1))
    with pytest.raises(ValueError) as error:
        MultiCropConfig(global_blur_probabilities=(1.0,))
    assert "single value" not in str(error.value)
