"""What N-band arrays may hold: a band axis their shape does not tell (data.channels_last) is a setting that stops the
run, NaN / infinite values make a bad image that is skipped and counted like an unreadable one."""

import logging

import numpy as np
import PIL.Image
import pytest
from datasets import Array3D, Dataset, Features

from hf_ssl.data import (
    ViewCropCollator,
    ViewGroup,
    ViewsConfig,
    band_statistics,
    decode_bands,
    load_image_dataset,
    with_view_crops,
)
from hf_ssl.data.crops import ViewCropTransform
from hf_ssl.data.images import skip_or_raise
from hf_ssl.errors import BandLayoutError

AMBIGUOUS = (
    r"shape \(16, 16, 16\) with num_channels=16 .*set data\.channels_last to true if its bands are the last axis"
)


def cube(seed=0, bands=16, side=16):
    """A ``(bands, side, side)`` array whose bands have clearly different levels (band b around 100 * b)."""
    rng = np.random.default_rng(seed)
    return (np.arange(bands, dtype=np.float32)[:, None, None] * 100 + rng.uniform(0, 10, (bands, side, side))).astype(
        np.float32
    )


def band_views(channels, size=8, mean=None, std=None):
    group = ViewGroup(
        number=2,
        size=size,
        color_jitter_probability=0.0,
        saturation=0.0,
        hue=0.0,
        grayscale_probability=0.0,
        blur_probabilities=(0.0,),
        flip_probability=0.0,
        interpolation="bilinear",
    )
    return ViewsConfig(groups={"views": group}, num_channels=channels, mean=mean, std=std)


def write_folder(root, arrays):
    folder = root / "train" / "only"
    folder.mkdir(parents=True)
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array)
    return root


# ----- the band axis -------------------------------------------------------------------------------------------------


def test_arrays_whose_first_and_last_axes_both_have_n_entries_need_the_layout(tmp_path):
    bands_first = cube()
    bands_last = bands_first.transpose(1, 2, 0)
    np.save(tmp_path / "last.npy", bands_last)
    for item in (
        bands_last,
        bands_last.tolist(),
        str(tmp_path / "last.npy"),
        {"bytes": None, "path": str(tmp_path / "last.npy")},
    ):
        with pytest.raises(BandLayoutError, match=AMBIGUOUS):
            decode_bands(item, 16)
    with pytest.raises(ValueError, match=r"shape \(16, 32, 16\) .*data\.channels_last"):  # height 32: still both ways
        decode_bands(np.zeros((16, 32, 16), np.float32), 16)
    np.testing.assert_array_equal(decode_bands(bands_last, 16, channels_last=True), bands_first)
    np.testing.assert_array_equal(decode_bands(str(tmp_path / "last.npy"), 16, channels_last=True), bands_first)
    np.testing.assert_array_equal(decode_bands(bands_first, 16, channels_last=False), bands_first)


def test_shapes_that_tell_their_band_axis_read_as_before_and_the_setting_is_obeyed(tmp_path):
    array = cube(bands=5, side=6)[:, :, :4]  # (5, 6, 4)
    np.testing.assert_array_equal(decode_bands(array, 5), array)
    np.testing.assert_array_equal(decode_bands(array.transpose(1, 2, 0), 5), array)
    np.testing.assert_array_equal(decode_bands(array.transpose(1, 2, 0), 5, channels_last=True), array)
    np.testing.assert_array_equal(decode_bands(array[0], 1, channels_last=True), array[:1])  # (H, W): one band
    with pytest.raises(
        ValueError, match=r"has 6 bands \(shape \(6, 4, 5\), read as \(C, H, W\) by data\.channels_last\)"
    ):
        decode_bands(array.transpose(1, 2, 0), 5, channels_last=False)
    # images and TIFF pages know their layout: the setting is about arrays only
    pages = [PIL.Image.fromarray(band.astype(np.uint16)) for band in cube(bands=4, side=4).astype(np.uint16)]
    pages[0].save(tmp_path / "a.tif", save_all=True, append_images=pages[1:])
    np.testing.assert_array_equal(
        decode_bands(str(tmp_path / "a.tif"), 4, channels_last=True),
        np.stack([np.asarray(page) for page in pages]).astype(np.float32),
    )


def test_band_statistics_stop_on_an_ambiguous_layout_and_read_the_one_given(tmp_path):
    arrays = {f"{index}": cube(seed=index).transpose(1, 2, 0) for index in range(3)}
    dataset = load_image_dataset("arrayfolder", data_dir=str(write_folder(tmp_path, arrays)), split="train")
    with pytest.raises(BandLayoutError, match=AMBIGUOUS):
        band_statistics(dataset, 16)  # not skipped as an unreadable image
    mean, _ = band_statistics(dataset, 16, channels_last=True)
    expected = (
        np.stack([array.transpose(2, 0, 1) for array in arrays.values()]).astype(np.float64).mean(axis=(0, 2, 3))
    )
    np.testing.assert_allclose(mean, expected, rtol=1e-6)  # band b around 100 * b
    features = Features({"image": Array3D(shape=(16, 16, 16), dtype="float32")})
    columns = Dataset.from_dict({"image": list(arrays.values())}, features=features)
    with pytest.raises(BandLayoutError, match=AMBIGUOUS):
        band_statistics(columns, 16)
    np.testing.assert_allclose(band_statistics(columns, 16, channels_last=True)[0], expected, rtol=1e-6)


def test_the_pipelines_that_skip_bad_images_stop_on_an_ambiguous_layout(tmp_path):
    bands_last = cube().transpose(1, 2, 0)
    dataset = Dataset.from_dict({"image": [bands_last] * 2})
    views = band_views(16, mean=(0.0,) * 16, std=(1.0,) * 16)
    with pytest.raises(BandLayoutError, match=AMBIGUOUS):
        ViewCropTransform(views, skip_bad_images=True)({"image": [bands_last]})
    with pytest.raises(BandLayoutError, match=AMBIGUOUS):  # what the run checks before training
        with_view_crops(dataset, ViewCropTransform(views)).probe_readable_images()
    with pytest.raises(BandLayoutError):  # the skip path every collator shares
        try:
            decode_bands(bands_last, 16)
        except Exception as error:
            skip_or_raise(bands_last, 0, error, True, 1, "set data.skip_bad_images=true", logging.getLogger("test"))
    given = with_view_crops(dataset, ViewCropTransform(views, channels_last=True))
    assert given.probe_readable_images() == (2, 2, None)
    assert given[0]["valid"] and given[0]["views"].shape == (2, 16, 8, 8)


# ----- non-finite values ---------------------------------------------------------------------------------------------


def test_arrays_holding_nan_or_infinity_are_refused_with_the_count():
    array = cube(bands=4, side=6)
    array[1, 2, 3], array[2, 0, :2] = np.nan, (np.inf, -np.inf)
    with pytest.raises(ValueError, match=r"holds 3 non-finite values \(NaN or infinity\) among its 144"):
        decode_bands(array, 4)
    beyond_float32 = np.ones((4, 6, 6), np.float64)
    beyond_float32[0, 0, 0] = 1e39  # infinite once read as float32
    with pytest.raises(ValueError, match=r"holds 1 non-finite value \(NaN or infinity\) among its 144"):
        decode_bands(beyond_float32, 4)


def test_band_statistics_skip_a_nan_array_and_name_its_file(tmp_path, caplog):
    good = {f"good{index}": cube(seed=index, bands=4, side=8) for index in range(3)}
    bad = cube(seed=9, bands=4, side=8)
    bad[0, 0, 0] = np.nan
    dataset = load_image_dataset(
        "arrayfolder", data_dir=str(write_folder(tmp_path, {**good, "nan": bad})), split="train"
    )
    with caplog.at_level(logging.WARNING, logger="hf_ssl.data.statistics"):
        mean, std = band_statistics(dataset, 4)
    stacked = np.stack(list(good.values())).astype(np.float64)
    np.testing.assert_allclose(mean, stacked.mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(std, stacked.std(axis=(0, 2, 3)), rtol=1e-9)
    assert "nan.npy" in caplog.text and "1 non-finite value" in caplog.text and "(1 skipped)" in caplog.text
    with pytest.raises(
        ValueError, match=r"cannot read image '.*nan\.npy': ValueError: the image holds 1 non-finite value.*skip_bad"
    ):
        band_statistics(dataset, 4, skip_bad_images=False)


def test_the_multicrop_pipeline_skips_and_counts_a_nan_array(tmp_path, caplog):
    bad = cube(seed=9, bands=4, side=8)
    bad[3, 1, 1] = np.inf
    root = write_folder(tmp_path, {"good": cube(bands=4, side=8), "inf": bad})
    dataset = load_image_dataset("arrayfolder", data_dir=str(root), split="train")
    views = band_views(4, mean=(0.0,) * 4, std=(1.0,) * 4)
    with caplog.at_level(logging.WARNING, logger="hf_ssl.data.crops"):
        examples = [with_view_crops(dataset, ViewCropTransform(views), seed=0)[index] for index in range(2)]
    batch = ViewCropCollator()(examples)
    assert int(batch["num_skipped"]) == 1 and batch["views"].shape == (2, 1, 4, 8, 8)
    assert "inf.npy" in caplog.text and "1 non-finite value" in caplog.text
    strict = with_view_crops(dataset, ViewCropTransform(views, skip_bad_images=False), seed=0)
    with pytest.raises(
        ValueError, match=r"cannot read image '.*inf\.npy': ValueError: the image holds 1 non-finite value"
    ):
        [strict[index] for index in range(2)]
