import gzip
import io
import os
import struct
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest

from hf_ssl.data import load_fashion_mnist, load_image_dataset, loading
from hf_ssl.data.loading import FASHION_MNIST_CLASSES, read_idx

REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def png_bytes(image: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_imagefolder(root: Path) -> None:
    for label, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        for split in ("train", "test"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for index in range(2):
                PIL.Image.new("RGB", (8, 6), colour).save(folder / f"{index}.png")


def test_imagefolder_with_labels_from_subfolders(tmp_path):
    make_imagefolder(tmp_path)
    dataset = load_image_dataset("imagefolder", data_dir=str(tmp_path))
    assert set(dataset) == {"train", "test"}
    train = dataset["train"]
    assert train.column_names == ["image", "label"] and len(train) == 4
    assert train.features["label"].names == ["cat", "dog"]
    for row in train:
        expected = (255, 0, 0) if train.features["label"].int2str(row["label"]) == "cat" else (0, 0, 255)
        assert row["image"].getpixel((0, 0)) == expected


def test_local_directory_path_and_split(tmp_path):
    make_imagefolder(tmp_path)
    test = load_image_dataset(str(tmp_path), split="test")
    assert isinstance(test, datasets.Dataset) and len(test) == 4 and "label" in test.column_names


def write_parquet(path: Path, columns: dict) -> str:
    datasets.Dataset.from_dict(columns).to_parquet(str(path))
    return str(path)


def test_parquet_img_column_is_renamed_and_decodes(tmp_path):
    images = [{"bytes": png_bytes(PIL.Image.new("L", (5, 4), value)), "path": None} for value in (10, 20, 30)]
    features = datasets.Features({"img": datasets.Image(), "fine_label": datasets.Value("int64")})
    path = tmp_path / "data.parquet"
    datasets.Dataset.from_dict({"img": images, "fine_label": [7, 8, 9]}, features=features).to_parquet(str(path))

    dataset = load_image_dataset("parquet", data_files=str(path), split="train", label_column="fine_label")
    assert dataset.column_names == ["image", "label"]
    assert [row["image"].getpixel((0, 0)) for row in dataset] == [10, 20, 30]
    assert dataset["label"] == [7, 8, 9]


def test_parquet_without_labels_and_raw_image_structs(tmp_path):
    # Plain {"bytes", "path"} structs without datasets' metadata still become an Image column.
    path = write_parquet(
        tmp_path / "raw.parquet", {"picture": [{"bytes": png_bytes(PIL.Image.new("RGB", (3, 3))), "path": None}]}
    )
    dataset = load_image_dataset("parquet", data_files=path, split="train", image_column="picture")
    assert dataset.column_names == ["image"]
    assert isinstance(dataset.features["image"], datasets.Image)
    assert dataset[0]["image"].size == (3, 3)


def test_string_labels_become_a_class_label(tmp_path):
    image = {"bytes": png_bytes(PIL.Image.new("RGB", (3, 3))), "path": None}
    path = write_parquet(tmp_path / "strings.parquet", {"image": [image] * 3, "label": ["dog", "cat", "dog"]})
    dataset = load_image_dataset("parquet", data_files=path, split="train")
    assert isinstance(dataset.features["label"], datasets.ClassLabel)
    assert [dataset.features["label"].int2str(label) for label in dataset["label"]] == ["dog", "cat", "dog"]


def test_missing_image_column_lists_the_columns(tmp_path):
    path = write_parquet(tmp_path / "bad.parquet", {"picture": [b"x"], "target": [1]})
    with pytest.raises(ValueError, match=r"\['picture', 'target'\]"):
        load_image_dataset("parquet", data_files=path, split="train")
    with pytest.raises(ValueError, match="image_column 'photo'.*'picture'"):
        load_image_dataset("parquet", data_files=path, split="train", image_column="photo")
    with pytest.raises(ValueError, match="label_column 'label'.*'target'"):
        load_image_dataset("parquet", data_files=path, split="train", image_column="picture", label_column="label")


def write_idx(path: Path, array: np.ndarray, magic_dtype: int = 0x08) -> None:
    header = struct.pack(">BBBB", 0, 0, magic_dtype, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def make_fashion_mnist(root: Path, train: int = 5, test: int = 3) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(root.name) + train)
    arrays = {}
    for split, prefix, count in (("train", "train", train), ("test", "t10k", test)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, count, dtype=np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
        arrays[split] = (images, labels)
    return arrays


def test_fashion_mnist_from_idx_files(tmp_path):
    arrays = make_fashion_mnist(tmp_path / "raw")
    dataset = load_fashion_mnist(tmp_path / "raw", cache_dir=tmp_path / "cache")
    assert {split: len(part) for split, part in dataset.items()} == {"train": 5, "test": 3}
    features = dataset["train"].features
    assert isinstance(features["image"], datasets.Image)
    assert features["label"].names == list(FASHION_MNIST_CLASSES) and len(FASHION_MNIST_CLASSES) == 10
    for split, (images, labels) in arrays.items():
        for row, image, label in zip(dataset[split], images, labels):
            assert row["image"].mode == "L" and row["image"].size == (28, 28)
            assert np.array_equal(np.asarray(row["image"]), image)
            assert row["label"] == label


def test_fashion_mnist_is_cached_and_memory_mapped(tmp_path, monkeypatch):
    make_fashion_mnist(tmp_path / "raw")
    first = load_fashion_mnist(tmp_path / "raw", cache_dir=tmp_path / "cache")
    cached = [path for path in (tmp_path / "cache").iterdir() if not path.name.startswith(".")]
    assert len(cached) == 1 and (cached[0] / "dataset_dict.json").is_file()
    assert first["train"].cache_files  # read from the files on disk, not held in memory

    def no_rebuild(*paths):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(loading, "_fashion_mnist_split", no_rebuild)
    again = load_fashion_mnist(tmp_path / "raw", cache_dir=tmp_path / "cache")
    assert again["test"]["label"] == first["test"]["label"]


def test_fashion_mnist_rebuilds_when_the_files_change(tmp_path):
    make_fashion_mnist(tmp_path / "raw", train=5)
    assert len(load_fashion_mnist(tmp_path / "raw", cache_dir=tmp_path / "cache")["train"]) == 5
    make_fashion_mnist(tmp_path / "other", train=7)
    for path in (tmp_path / "other").iterdir():
        os.replace(path, tmp_path / "raw" / path.name)
    assert len(load_fashion_mnist(tmp_path / "raw", cache_dir=tmp_path / "cache")["train"]) == 7


def test_idx_header_is_checked(tmp_path):
    path = tmp_path / "bad.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(b"\x12\x34\x08\x01" + struct.pack(">I", 2) + b"\x00\x01")
    with pytest.raises(ValueError, match="bad.gz.*magic"):
        read_idx(path)
    write_idx(path, np.zeros((3, 2, 2)))
    with pytest.raises(ValueError, match="3 dimensions, expected 1"):
        read_idx(path, expected_ndim=1)
    with gzip.open(path, "wb") as handle:
        handle.write(struct.pack(">BBBBI", 0, 0, 8, 1, 5) + b"\x00\x01")
    with pytest.raises(ValueError, match="holds 10 bytes.*implies 13"):
        read_idx(path)


def test_fashion_mnist_label_count_must_match(tmp_path):
    make_fashion_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(2))
    with pytest.raises(ValueError, match="3 images but .* 2 labels"):
        load_fashion_mnist(tmp_path, cache_dir=tmp_path / "cache")


@pytest.mark.skipif(not REAL_FASHION_MNIST.is_dir(), reason="needs the Fashion-MNIST IDX files")
def test_real_fashion_mnist_through_load_image_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_SSL_CACHE", str(tmp_path))
    dataset = load_image_dataset("fashion_mnist")
    assert {split: len(part) for split, part in dataset.items()} == {"train": 60000, "test": 10000}
    first = dataset["train"][0]
    assert first["image"].size == (28, 28) and first["image"].mode == "L"
    assert dataset["train"].features["label"].int2str(first["label"]) == "Ankle boot"
    assert len(load_image_dataset("fashion_mnist", split="test")) == 10000
    with pytest.raises(ValueError, match="splits"):
        load_image_dataset("fashion_mnist", split="validation")


def test_fashion_mnist_without_files_offline_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match=r"not in .*dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path, cache_dir=tmp_path / "cache")
