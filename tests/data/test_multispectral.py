"""N-band (multispectral, hyperspectral) images through the data pipeline: reading, crops, per-band augmentation,
normalisation statistics, and the checks that refuse RGB-only settings."""

import io

import numpy as np
import PIL.Image
import pytest
import torch
from datasets import Array3D, Dataset, Features

from hf_ssl.data import (
    DeviceAugmentation,
    MultiCropConfig,
    ViewCropCollator,
    ViewCropTransform,
    ViewGroup,
    ViewsConfig,
    band_statistics,
    decode_bands,
    load_image_dataset,
    with_view_crops,
)
from hf_ssl.training.methods.ijepa import IJepaViewConfig
from hf_ssl.training.methods.simclr import SimClrViewConfig


def bands_array(channels=5, height=6, width=7, seed=0, dtype=np.uint16):
    return np.random.default_rng(seed).integers(0, 4000, size=(channels, height, width)).astype(dtype)


# ----- reading -------------------------------------------------------------------------------------------------------


def test_arrays_are_read_channels_first_whatever_their_layout():
    array = bands_array()
    expected = array.astype(np.float32)
    assert decode_bands(array, 5).dtype == np.float32
    np.testing.assert_array_equal(decode_bands(array, 5), expected)
    np.testing.assert_array_equal(decode_bands(array.transpose(1, 2, 0), 5), expected)  # (H, W, C)
    np.testing.assert_array_equal(decode_bands(array.tolist(), 5), expected)  # an Array3D / Sequence column
    np.testing.assert_array_equal(decode_bands(torch.from_numpy(array.astype(np.int32)), 5), expected)
    np.testing.assert_array_equal(decode_bands(array[0], 1), expected[:1])  # (H, W): one band


def test_files_are_read_in_the_data_units(tmp_path):
    array = bands_array()
    np.save(tmp_path / "a.npy", array)
    np.savez(tmp_path / "one.npz", array)
    np.savez(tmp_path / "named.npz", image=array, mask=array[:1])
    pages = [PIL.Image.fromarray(band) for band in array]  # 16-bit pages: one band each
    pages[0].save(tmp_path / "a.tif", save_all=True, append_images=pages[1:])
    expected = array.astype(np.float32)
    for name in ("a.npy", "one.npz", "named.npz", "a.tif"):
        np.testing.assert_array_equal(decode_bands(str(tmp_path / name), 5), expected, err_msg=name)
    # undecoded datasets.Image entries: bytes or path
    np.testing.assert_array_equal(
        decode_bands({"bytes": (tmp_path / "a.npy").read_bytes(), "path": None}, 5), expected
    )
    np.testing.assert_array_equal(decode_bands({"bytes": None, "path": str(tmp_path / "a.tif")}, 5), expected)


def test_a_stack_of_single_band_files_is_concatenated(tmp_path):
    array = bands_array(channels=4, dtype=np.uint8)
    paths = []
    for index, band in enumerate(array):
        PIL.Image.fromarray(band).save(tmp_path / f"band{index}.png")
        paths.append(str(tmp_path / f"band{index}.png"))
    np.testing.assert_array_equal(decode_bands(paths, 4), array.astype(np.float32))


def test_wrong_band_counts_and_ambiguous_files_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"has 5 bands .* num_channels is 4"):
        decode_bands(bands_array(), 4)
    np.savez(tmp_path / "two.npz", a=bands_array(), b=bands_array())
    with pytest.raises(ValueError, match=r"holds arrays \['a', 'b'\].*name it 'image'"):
        decode_bands(str(tmp_path / "two.npz"), 5)
    with pytest.raises(ValueError, match="shape"):
        decode_bands(np.zeros((2, 3, 4, 5)), 2)


def test_an_array_folder_becomes_labelled_splits(tmp_path):
    for split, count in (("train", 3), ("val", 2)):
        for label in ("healthy", "stressed"):
            (tmp_path / split / label).mkdir(parents=True)
            for index in range(count):
                np.save(tmp_path / split / label / f"{index}.npy", bands_array(seed=index))
    (tmp_path / "val" / "stressed" / "notes.txt").write_text("not an array")
    dataset = load_image_dataset("arrayfolder", data_dir=str(tmp_path))
    assert sorted(dataset) == ["train", "validation"]
    assert len(dataset["train"]) == 6 and len(dataset["validation"]) == 4
    assert dataset["train"].features["label"].names == ["healthy", "stressed"]
    assert dataset["train"]["label"] == [0, 0, 0, 1, 1, 1]
    assert isinstance(dataset["train"][0]["image"], str)  # a path, read when the views are cut
    with pytest.raises(ValueError, match="data_dir"):
        load_image_dataset("arrayfolder")


# ----- configuration -------------------------------------------------------------------------------------------------


def test_rgb_only_settings_on_bands_are_refused_by_their_keys():
    with pytest.raises(
        ValueError, match=r"cj_sat=0\.8, cj_hue=0\.2, random_gray_scale=0\.2: .*RGB-only.* 8 bands; set them to 0"
    ):
        SimClrViewConfig(num_channels=8)
    with pytest.raises(
        ValueError,
        match=r"^saturation=0\.2, hue=0\.1, grayscale_probability=0\.2, global_solarize_probabilities=0\.2: ",
    ):
        MultiCropConfig(num_channels=8)
    with pytest.raises(ValueError, match=r"groups\.views\.grayscale_probability=0\.5"):
        ViewsConfig(
            groups={"views": ViewGroup(color_jitter_probability=0.0, grayscale_probability=0.5)}, num_channels=8
        )
    # what is left is fine: brightness / contrast jitter, blur, flips and crops
    SimClrViewConfig(num_channels=8, cj_sat=0, cj_hue=0, random_gray_scale=0)
    MultiCropConfig(num_channels=8, saturation=0, hue=0, grayscale_probability=0, global_solarize_probabilities=(0, 0))
    IJepaViewConfig(num_channels=8, color_jitter_probability=0.8)  # its jitter drops saturation and hue on bands
    # RGB keeps every op
    SimClrViewConfig(num_channels=3)


def test_normalisation_must_match_the_bands():
    views = ViewsConfig(
        groups={"views": ViewGroup(color_jitter_probability=0.0, grayscale_probability=0.0)}, num_channels=4
    )
    assert views.needs_statistics and views.mean is None
    assert ViewsConfig().mean == (0.485, 0.456, 0.406) and not ViewsConfig().needs_statistics  # RGB: ImageNet's
    with pytest.raises(ValueError, match=r"mean must have 4 values .*null to compute it"):
        SimClrViewConfig(num_channels=4, cj_sat=0, cj_hue=0, random_gray_scale=0, mean=(0.5, 0.5, 0.5), std=(1, 1, 1))
    with pytest.raises(ValueError, match="std is null and mean is not"):
        SimClrViewConfig(mean=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="interpolation='lanczos'.*8-bit RGB"):
        SimClrViewConfig(num_channels=4, cj_sat=0, cj_hue=0, random_gray_scale=0, interpolation="lanczos")
    with pytest.raises(ValueError, match="no mean / std yet"):
        DeviceAugmentation(views)


# ----- crops and device augmentation ---------------------------------------------------------------------------------


def band_views(channels, **group):
    values = dict(
        number=2,
        size=8,
        color_jitter_probability=0.0,
        saturation=0.0,
        hue=0.0,
        grayscale_probability=0.0,
        blur_probabilities=(0.0,),
        flip_probability=0.0,
        interpolation="bilinear",
    )
    values.update(group)
    return ViewsConfig(
        groups={"views": ViewGroup(**values)},
        num_channels=channels,
        mean=tuple(float(i) for i in range(channels)),
        std=tuple(float(i + 1) for i in range(channels)),
    )


def test_band_crops_are_float_views_of_every_band():
    array = bands_array(channels=5, height=8, width=8)
    views = band_views(5, scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))  # the whole image at its own size
    transform = ViewCropTransform(views)
    output = transform({"image": [array, bands_array(channels=3)]}, rng=np.random.default_rng(0))
    crops = output["views"][0]
    assert crops.dtype == torch.float32 and crops.shape == (2, 5, 8, 8)
    torch.testing.assert_close(crops[0], torch.from_numpy(array.astype(np.float32)))  # values in the data's units
    assert output["valid"] == [True, False]  # a 3-band image in a 5-band dataset is a bad image, counted
    batch = ViewCropCollator()(
        [{"views": output["views"][index], "valid": output["valid"][index]} for index in range(2)]
    )
    assert (
        batch["views"].shape == (2, 1, 5, 8, 8)
        and batch["views"].dtype == torch.float32
        and int(batch["num_skipped"]) == 1
    )


def test_band_crops_are_resized_with_antialiasing():
    array = bands_array(channels=3, height=16, width=16).astype(np.float32)
    views = band_views(4, size=8, scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    stacked = np.concatenate([array, array[:1]])
    crops = ViewCropTransform(views).make_crops(stacked, np.random.default_rng(0))["views"]
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(stacked)[None], size=(8, 8), mode="bilinear", antialias=True
    )[0]
    torch.testing.assert_close(crops[0], expected)
    # a 2x antialiased bilinear shrink of a smooth ramp is the mean of each 2 x 2 block away from the border
    ramp = np.tile(np.arange(16, dtype=np.float32), (4, 16, 1))
    crops = ViewCropTransform(views).make_crops(ramp, np.random.default_rng(0))["views"]
    np.testing.assert_allclose(crops[0, 0, 3, 2:6].numpy(), [4.5, 6.5, 8.5, 10.5], atol=1e-4)


def test_device_augmentation_normalises_each_band_with_its_own_statistics():
    views = band_views(4)
    raw = torch.rand(2, 3, 4, 8, 8) * 1000
    output = DeviceAugmentation(views)({"views": raw}, generator=torch.Generator().manual_seed(0))["views"]
    mean = torch.tensor(views.mean).view(1, 1, 4, 1, 1)
    std = torch.tensor(views.std).view(1, 1, 4, 1, 1)
    torch.testing.assert_close(output, (raw - mean) / std)


def test_brightness_jitter_draws_one_factor_per_band():
    views = band_views(6, color_jitter_probability=1.0, brightness=0.5, contrast=0.0)
    raw = torch.rand(2, 3, 6, 8, 8) * 100 + 1
    output = DeviceAugmentation(views)({"views": raw}, generator=torch.Generator().manual_seed(0))["views"]
    mean = torch.tensor(views.mean).view(1, 1, 6, 1, 1)
    std = torch.tensor(views.std).view(1, 1, 6, 1, 1)
    factors = (output * std + mean) / raw  # (V, B, C, H, W): one factor per view, image and band
    per_band = factors.flatten(3)
    torch.testing.assert_close(per_band.max(-1).values, per_band.min(-1).values, rtol=1e-4, atol=1e-4)
    values = per_band[..., 0]
    assert float(values.min()) >= 0.5 - 1e-5 and float(values.max()) <= 1.5 + 1e-5
    assert float(values.std(dim=-1).min()) > 0.01  # the bands of one view got different factors


def test_contrast_jitter_keeps_each_band_mean():
    views = band_views(5, color_jitter_probability=1.0, brightness=0.0, contrast=0.6)
    raw = torch.rand(2, 2, 5, 8, 8) * 100
    output = DeviceAugmentation(views)({"views": raw}, generator=torch.Generator().manual_seed(1))["views"]
    mean = torch.tensor(views.mean).view(1, 1, 5, 1, 1)
    std = torch.tensor(views.std).view(1, 1, 5, 1, 1)
    jittered = output * std + mean
    torch.testing.assert_close(jittered.mean(dim=(3, 4)), raw.mean(dim=(3, 4)), rtol=1e-4, atol=1e-3)
    spread_ratio = jittered.std(dim=(3, 4)) / raw.std(dim=(3, 4))
    assert float(spread_ratio.min()) >= 0.4 - 1e-4 and float(spread_ratio.max()) <= 1.6 + 1e-4
    assert float(spread_ratio.std(dim=-1).min()) > 0.01  # one factor per band


def test_rgb_views_draw_what_they_always_drew():
    """The band draws come after the RGB ones, so RGB runs are unchanged (8-bit crops, [0, 1] then ImageNet)."""
    config = SimClrViewConfig(input_size=8)
    crops = torch.randint(0, 256, (2, 3, 3, 8, 8), dtype=torch.uint8)
    first = DeviceAugmentation(config)({"views": crops}, generator=torch.Generator().manual_seed(3))["views"]
    second = DeviceAugmentation(config)({"views": crops}, generator=torch.Generator().manual_seed(3))["views"]
    torch.testing.assert_close(first, second)
    assert first.shape == (2, 3, 3, 8, 8)


# ----- statistics ----------------------------------------------------------------------------------------------------


def test_band_statistics_by_hand():
    first = np.array([[[1, 3]], [[10, 10]]], dtype=np.uint16)  # (2 bands, 1, 2)
    second = np.array([[[5, 7]], [[10, 10]]], dtype=np.uint16)
    mean, std = band_statistics([first, second], num_channels=2, channels_last=False)  # (2, 1, 2) could be (H, W, C)
    # band 0: pixels 1, 3, 5, 7 -> mean 4, population std sqrt(5); band 1 is constant: std 1 (centred only)
    assert mean == pytest.approx((4.0, 10.0)) and std == pytest.approx((5**0.5, 1.0))


def test_band_statistics_skip_unreadable_rows_and_sample_evenly():
    rows = [bands_array(channels=5, seed=index) for index in range(10)] + [b"not an array"]
    mean, std = band_statistics(rows, num_channels=5, max_images=None)
    stacked = np.stack(rows[:10]).astype(np.float64)
    np.testing.assert_allclose(mean, stacked.mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(std, stacked.std(axis=(0, 2, 3)), rtol=1e-9)
    with pytest.raises(ValueError, match="could be read"):
        band_statistics([b"junk"], num_channels=5)
    # 3 channels are RGB, read as training reads them: 8-bit, scaled to [0, 1]
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 255
    mean, std = band_statistics([rgb], num_channels=3)
    assert mean == pytest.approx((1.0, 0.0, 0.0)) and std == pytest.approx((1.0, 1.0, 1.0))


def test_a_datasets_array_column_trains_through_the_pipeline():
    arrays = [bands_array(channels=4, height=10, width=10, seed=index).astype(np.float32) for index in range(6)]
    dataset = Dataset.from_dict(
        {"image": arrays}, features=Features({"image": Array3D(shape=(4, 10, 10), dtype="float32")})
    )
    mean, std = band_statistics(dataset, num_channels=4)
    views = band_views(
        4,
        size=8,
        color_jitter_probability=0.8,
        brightness=0.4,
        contrast=0.4,
        blur_probabilities=(0.5,),
        flip_probability=0.5,
    )
    views.mean, views.std = mean, std
    examples = [with_view_crops(dataset, ViewCropTransform(views), seed=0)[index] for index in range(4)]
    batch = ViewCropCollator()(examples)
    output = DeviceAugmentation(views)({"views": batch["views"]})["views"]
    assert output.shape == (2, 4, 4, 8, 8) and torch.isfinite(output).all()
    # normalised with the data's statistics: about zero mean and unit spread per band
    assert float(output.mean(dim=(0, 1, 3, 4)).abs().max()) < 0.5
    assert 0.3 < float(output.std(dim=(0, 1, 3, 4)).min()) and float(output.std(dim=(0, 1, 3, 4)).max()) < 2.0


def test_png_with_fewer_bands_than_asked_is_an_error(tmp_path):
    buffer = io.BytesIO()
    PIL.Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buffer, format="PNG")
    with pytest.raises(ValueError, match="has 3 bands"):
        decode_bands({"bytes": buffer.getvalue(), "path": "x.png"}, 8)
