import colorsys
import math

import pytest
import torch

from hf_ssl.data import DeviceAugmentation, MultiCropConfig, ViewGroup, ViewsConfig, device_augmentation
from hf_ssl.data.device_augmentation import adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation

MEAN = torch.tensor(MultiCropConfig().to_views_config().mean).view(3, 1, 1)
STD = torch.tensor(MultiCropConfig().to_views_config().std).view(3, 1, 1)


def config_with(**overrides) -> MultiCropConfig:
    """Every random op off unless switched on by ``overrides``."""
    values = dict(
        global_crop_size=16,
        local_crop_size=8,
        local_crops_number=0,
        flip_probability=0.0,
        color_jitter_probability=0.0,
        grayscale_probability=0.0,
        global_blur_probabilities=(0.0, 0.0),
        local_blur_probability=0.0,
        global_solarize_probabilities=(0.0, 0.0),
        local_solarize_probability=0.0,
    )
    values.update(overrides)
    return MultiCropConfig(**values)


def augment_crops(augment: DeviceAugmentation, global_crops, local_crops=None, generator=None):
    """``(global, local)`` through the dict interface: DINO's two groups, ``local`` None without local crops."""
    views = (
        {"global_crops": global_crops}
        if local_crops is None
        else {"global_crops": global_crops, "local_crops": local_crops}
    )
    output = augment(views, generator=generator)
    return output["global_crops"], output.get("local_crops")


def random_crops(shape, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels.float() / 255 - MEAN) / STD


def unnormalise(output: torch.Tensor) -> torch.Tensor:
    return output * STD + MEAN


def test_shapes_dtype_and_no_parameters():
    augment = DeviceAugmentation(MultiCropConfig(global_crop_size=32, local_crops_number=4, local_crop_size=16))
    global_out, local_out = augment_crops(augment, random_crops((2, 5, 3, 32, 32)), random_crops((4, 5, 3, 16, 16)))
    assert global_out.shape == (2, 5, 3, 32, 32) and global_out.dtype == torch.float32
    assert local_out.shape == (4, 5, 3, 16, 16) and local_out.dtype == torch.float32
    assert list(augment.parameters()) == [] and augment.state_dict() == {}


def test_empty_batch_keeps_its_shape():
    global_out, local_out = augment_crops(
        DeviceAugmentation(MultiCropConfig()),
        torch.zeros((2, 0, 3, 32, 32), dtype=torch.uint8),
        torch.zeros((8, 0, 3, 16, 16), dtype=torch.uint8),
    )
    assert global_out.shape == (2, 0, 3, 32, 32) and local_out.shape == (8, 0, 3, 16, 16)


def test_wrong_crop_count_names_the_config():
    with pytest.raises(ValueError, match="global_crops holds 3 views per image but its view group has number=2"):
        augment_crops(DeviceAugmentation(MultiCropConfig(local_crops_number=0)), random_crops((3, 2, 3, 16, 16)))


def test_the_batch_must_hold_every_group_of_the_config():
    with pytest.raises(
        ValueError,
        match=r"the batch holds the view groups \['global_crops'\] "
        r"but the augmentation config has \['global_crops', 'local_crops'\]",
    ):
        augment_crops(DeviceAugmentation(MultiCropConfig()), random_crops((2, 2, 3, 16, 16)))


def test_all_probabilities_zero_is_exact_normalisation():
    global_crops, local_crops = random_crops((2, 4, 3, 16, 16)), random_crops((3, 4, 3, 8, 8), seed=1)
    global_out, local_out = augment_crops(
        DeviceAugmentation(config_with(local_crops_number=3)), global_crops, local_crops
    )
    assert torch.equal(global_out, normalise(global_crops))
    assert torch.equal(local_out, normalise(local_crops))


def test_flip_probability_one_flips_every_image_exactly():
    global_crops = random_crops((2, 4, 3, 16, 16))
    global_out, _ = augment_crops(DeviceAugmentation(config_with(flip_probability=1.0)), global_crops)
    assert torch.equal(global_out, normalise(global_crops.flip(-1)))


def test_flip_is_drawn_per_sample():
    crops = random_crops((1, 1, 3, 16, 16)).expand(2, 64, 3, 16, 16)
    output, _ = augment_crops(
        DeviceAugmentation(config_with(flip_probability=0.5)), crops, generator=torch.Generator().manual_seed(0)
    )
    images = output.flatten(0, 1)
    flipped = (images == normalise(crops[0, 0].flip(-1))).flatten(1).all(1)
    unflipped = (images == normalise(crops[0, 0])).flatten(1).all(1)
    assert bool((flipped ^ unflipped).all())
    assert 30 < int(flipped.sum()) < 98


def test_colour_jitter_is_drawn_per_sample():
    crops = random_crops((1, 1, 3, 16, 16)).expand(2, 8, 3, 16, 16)
    output, _ = augment_crops(DeviceAugmentation(config_with(color_jitter_probability=1.0)), crops)
    images = output.flatten(0, 1)
    for first in range(len(images)):
        for second in range(first + 1, len(images)):
            assert not torch.allclose(images[first], images[second])


def test_brightness_jitter_scales_each_image_by_its_own_factor_in_range():
    crops = torch.full((1, 1, 3, 4, 4), 100, dtype=torch.uint8).expand(2, 32, 3, 4, 4)
    config = config_with(color_jitter_probability=1.0, brightness=0.5, contrast=0.0, saturation=0.0, hue=0.0)
    output, _ = augment_crops(DeviceAugmentation(config), crops)
    factors = unnormalise(output.flatten(0, 1)) / (100 / 255)
    per_image = factors.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1], atol=1e-5)  # one factor per image
    assert bool((per_image >= 0.5 - 1e-5).all() and (per_image <= 1.5 + 1e-5).all())
    assert len(per_image[:, 0].unique()) == 64


def test_jitter_probability_selects_images_and_leaves_the_others_exact():
    crops = random_crops((1, 1, 3, 4, 4)).expand(2, 64, 3, 4, 4)
    config = config_with(color_jitter_probability=0.5, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.1)
    output, _ = augment_crops(DeviceAugmentation(config), crops, generator=torch.Generator().manual_seed(0))
    untouched = (output.flatten(0, 1) == normalise(crops[0, 0])).flatten(1).all(1)
    assert 30 < int(untouched.sum()) < 98


def test_grayscale_probability_one_gives_equal_channels_of_luma():
    crops = random_crops((2, 4, 3, 8, 8))
    output, _ = augment_crops(DeviceAugmentation(config_with(grayscale_probability=1.0)), crops)
    pixels = unnormalise(output)
    expected = (0.299 * crops[:, :, 0] + 0.587 * crops[:, :, 1] + 0.114 * crops[:, :, 2]).float() / 255
    for channel in range(3):
        assert torch.allclose(pixels[:, :, channel], expected, atol=1e-5)


def test_solarize_inverts_pixels_at_or_above_128():
    values = torch.tensor([0, 1, 100, 127, 128, 129, 200, 255], dtype=torch.uint8)
    crops = values.view(1, 1, 1, 1, 8).expand(2, 3, 3, 2, 8).contiguous()
    config = config_with(global_solarize_probabilities=(1.0, 1.0))
    output, _ = augment_crops(DeviceAugmentation(config), crops)
    expected = torch.where(crops >= 128, 255 - crops, crops)
    assert torch.allclose(output, normalise(expected), atol=1e-6)


def test_solarize_probability_is_per_global_crop_index():
    crops = torch.full((2, 16, 3, 4, 4), 200, dtype=torch.uint8)
    output, _ = augment_crops(DeviceAugmentation(config_with(global_solarize_probabilities=(0.0, 1.0))), crops)
    assert torch.equal(output[0], normalise(crops[0]))
    assert torch.allclose(output[1], normalise(255 - crops[1]), atol=1e-6)


def test_blur_with_fixed_sigma_matches_the_gaussian_kernel():
    crops = torch.zeros((2, 1, 3, 15, 15), dtype=torch.uint8)
    crops[:, :, :, 7, 7] = 255
    config = config_with(blur_sigma=(1.0, 1.0), global_blur_probabilities=(1.0, 0.0))
    output, _ = augment_crops(DeviceAugmentation(config), crops)
    taps = torch.tensor([math.exp(-(offset**2) / 2) for offset in range(-3, 4)])
    taps = taps / taps.sum()
    expected = torch.zeros(15, 15)
    expected[4:11, 4:11] = taps[:, None] * taps[None, :]
    blurred = unnormalise(output[0, 0])
    for channel in range(3):
        assert torch.allclose(blurred[channel], expected, atol=1e-6)
    assert torch.allclose(output[1], normalise(crops[1]))  # global crop 2 has blur probability 0


def test_blur_reduces_the_variance_of_noise_more_for_larger_sigma():
    noise = random_crops((2, 8, 3, 32, 32))

    def blurred_variance(sigma):
        config = config_with(blur_sigma=(sigma, sigma), global_blur_probabilities=(1.0, 1.0))
        return unnormalise(augment_crops(DeviceAugmentation(config), noise)[0]).var().item()

    original = unnormalise(normalise(noise)).var().item()
    assert blurred_variance(2.0) < blurred_variance(0.5) < 0.7 * original


def test_blur_on_crops_smaller_than_the_kernel():
    crops = random_crops((3, 4, 3, 4, 4))
    config = config_with(local_crops_number=3, local_crop_size=4, local_blur_probability=1.0)
    _, local_out = augment_crops(DeviceAugmentation(config), random_crops((2, 4, 3, 16, 16)), crops)
    assert local_out.shape == crops.shape and torch.isfinite(local_out).all()


def test_generator_makes_it_reproducible():
    augment = DeviceAugmentation(MultiCropConfig(global_crop_size=16, local_crops_number=2, local_crop_size=8))
    global_crops, local_crops = random_crops((2, 6, 3, 16, 16)), random_crops((2, 6, 3, 8, 8))
    first = augment_crops(augment, global_crops, local_crops, generator=torch.Generator().manual_seed(7))
    again = augment_crops(augment, global_crops, local_crops, generator=torch.Generator().manual_seed(7))
    other = augment_crops(augment, global_crops, local_crops, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_cpu_chunking_does_not_change_the_result(monkeypatch):
    augment = DeviceAugmentation(MultiCropConfig(global_crop_size=16, local_crops_number=0))
    crops = random_crops((2, 10, 3, 16, 16))
    whole = augment_crops(augment, crops, generator=torch.Generator().manual_seed(3))[0]
    monkeypatch.setattr(device_augmentation, "CPU_CHUNK_PIXELS", 3 * 16 * 16)  # 3 images per chunk
    chunked = augment_crops(augment, crops, generator=torch.Generator().manual_seed(3))[0]
    assert torch.allclose(whole, chunked, atol=1e-6)


def test_every_group_takes_its_own_settings():
    # two groups of any names: one flipped and solarised always, one never, each view of a group its own blur
    views = ViewsConfig(
        groups={
            "first": ViewGroup(
                number=2,
                size=8,
                flip_probability=1.0,
                color_jitter_probability=0.0,
                grayscale_probability=0.0,
                blur_probabilities=(0.0,),
                solarize_probabilities=(1.0, 0.0),
            ),
            "second": {
                "number": 1,
                "size": 4,
                "flip_probability": 0.0,
                "color_jitter_probability": 0.0,
                "grayscale_probability": 1.0,
                "blur_probabilities": 0.0,
            },
        }
    )
    first, second = random_crops((2, 3, 3, 8, 8)), random_crops((1, 3, 3, 4, 4), seed=1)
    output = DeviceAugmentation(views)({"second": second, "first": first})
    assert list(output) == ["first", "second"]
    flipped = first.flip(-1)
    assert torch.allclose(
        output["first"][0], normalise(torch.where(flipped[0] >= 128, 255 - flipped[0], flipped[0])), atol=1e-6
    )
    assert torch.equal(output["first"][1], normalise(flipped[1]))
    gray = unnormalise(output["second"])
    assert torch.allclose(gray[:, :, 0], gray[:, :, 2], atol=1e-6) and not torch.allclose(
        gray[:, :, 0], second[:, :, 0].float() / 255
    )


def test_the_groups_draw_in_config_order_from_one_generator():
    # DINO's two groups drawn through MultiCropConfig and through the ViewsConfig it stands for agree exactly
    config = MultiCropConfig(global_crop_size=16, local_crops_number=3, local_crop_size=8)
    crops = {"global_crops": random_crops((2, 4, 3, 16, 16)), "local_crops": random_crops((3, 4, 3, 8, 8), seed=1)}
    through_config = DeviceAugmentation(config)(crops, generator=torch.Generator().manual_seed(5))
    through_views = DeviceAugmentation(config.to_views_config())(crops, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(through_config[name], through_views[name]) for name in crops)
    alone = DeviceAugmentation(MultiCropConfig(global_crop_size=16, local_crops_number=0))(
        {"global_crops": crops["global_crops"]}, generator=torch.Generator().manual_seed(5)
    )
    assert torch.equal(alone["global_crops"], through_config["global_crops"])  # the first group draws first


def test_a_float_input_is_not_changed_in_place():
    crops = random_crops((2, 2, 3, 8, 8)).float()
    before = crops.clone()
    augment_crops(DeviceAugmentation(config_with()), crops)
    assert torch.equal(crops, before)


def test_hue_shift_matches_colorsys():
    pixels = torch.rand((4, 3, 5, 5), generator=torch.Generator().manual_seed(0))
    pixels[0, :, 0, 0] = torch.tensor([0.5, 0.5, 0.5])  # grey: no hue
    pixels[0, :, 0, 1] = torch.tensor([0.9, 0.9, 0.1])  # a tie between red and green
    shifts = torch.tensor([0.1, -0.1, 0.05, -0.03])
    shifted = adjust_hue(pixels, shifts)
    for image in range(4):
        for row in range(5):
            for column in range(5):
                hue, saturation, value = colorsys.rgb_to_hsv(*pixels[image, :, row, column].tolist())
                expected = colorsys.hsv_to_rgb((hue + shifts[image].item()) % 1.0, saturation, value)
                assert torch.allclose(shifted[image, :, row, column], torch.tensor(expected), atol=1e-5)


def test_hue_shift_hand_computed():
    pixels = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.2, 0.4, 0.6]]).view(3, 3, 1, 1)
    # red + 1/3 turn = green; red + 1/6 = yellow; (0.2, 0.4, 0.6) is at 210 degrees, + 90 = magenta-ish
    shifted = adjust_hue(pixels, torch.tensor([1 / 3, 1 / 6, 0.25])).view(3, 3)
    assert torch.allclose(shifted, torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.6, 0.2, 0.6]]), atol=1e-6)


def test_saturation_brightness_contrast_hand_computed():
    pixel = torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1)
    luma = 0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6  # 0.363
    assert torch.allclose(
        adjust_saturation(pixel, torch.tensor([0.5])).flatten(), torch.tensor([0.2815, 0.3815, 0.4815]), atol=1e-6
    )
    assert torch.allclose(adjust_saturation(pixel, torch.tensor([0.0])).flatten(), torch.full((3,), luma), atol=1e-6)
    assert torch.allclose(
        adjust_saturation(pixel, torch.tensor([2.0])).flatten(), torch.tensor([0.037, 0.437, 0.837]), atol=1e-6
    )
    brighter = adjust_brightness(torch.tensor([0.2, 0.4, 0.8]).view(1, 3, 1, 1), torch.tensor([1.5]))
    assert torch.allclose(brighter.flatten(), torch.tensor([0.3, 0.6, 1.0]), atol=1e-6)  # 1.2 clamped
    # Two pixels, black and white: mean luma 0.5; contrast 0.5 pulls both halfway to it.
    image = torch.tensor([[0.0, 1.0]] * 3).view(1, 3, 1, 2)
    assert torch.allclose(
        adjust_contrast(image, torch.tensor([0.5])).flatten(), torch.tensor([0.25, 0.75] * 3), atol=1e-6
    )
    # Per-sample factors: each image gets its own.
    two = pixel.expand(2, 3, 1, 1)
    assert torch.allclose(
        adjust_brightness(two, torch.tensor([0.5, 2.0])).flatten(),
        torch.tensor([0.1, 0.2, 0.3, 0.4, 0.8, 1.0]),
        atol=1e-6,
    )
