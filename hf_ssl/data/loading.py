"""Load image datasets with one column convention: ``image`` (and ``label`` when there is one).

`load_image_dataset` accepts anything ``datasets.load_dataset`` reads plus the built-in name
``"fashion_mnist"``, which `load_fashion_mnist` builds from local IDX files when they exist.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa

logger = logging.getLogger(__name__)

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_HUB_ID = "zalando-datasets/fashion_mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
BUILTIN_DATASETS = ("fashion_mnist",)

IMAGE_COLUMN_CANDIDATES = ("image", "img")
# Bump when the cached Fashion-MNIST layout changes, so old caches are rebuilt.
_FASHION_MNIST_CACHE_VERSION = 1


def load_image_dataset(
    path: str,
    *,
    name: str | None = None,
    split: str | None = None,
    data_dir: str | None = None,
    data_files=None,
    image_column: str | None = None,
    label_column: str | None = None,
    **load_kwargs,
):
    """Load an image dataset with its image column named ``image`` and its labels (if any) ``label``.

    Args:
        path: anything ``datasets.load_dataset`` reads (a Hub id, ``"imagefolder"`` with
            ``data_dir``, ``"parquet"``/``"arrow"`` with ``data_files``, a local directory), or
            ``"fashion_mnist"`` (`load_fashion_mnist`: local IDX files, else the Hub copy).
        name, split, data_dir, data_files, **load_kwargs: passed to ``datasets.load_dataset``.
        image_column: the column holding images; default ``"image"``, else ``"img"``.
        label_column: the column holding labels; default ``"label"`` if present, else no labels.
            String labels become a ``ClassLabel``.

    Returns:
        a ``Dataset`` when ``split`` is given, else a ``DatasetDict`` (or their iterable versions
        with ``streaming=True``).

    Raises:
        ValueError: a requested or default column is missing; the message lists the columns.
    """
    if path in BUILTIN_DATASETS:
        if name or data_dir or data_files or load_kwargs:
            raise ValueError(f"{path!r} is a built-in dataset: it takes no name, data_dir, data_files or loading options")
        dataset = load_fashion_mnist()
        if split is not None:
            if split not in dataset:
                raise ValueError(f"{path!r} has splits {list(dataset)}, not {split!r}")
            dataset = dataset[split]
    else:
        dataset = datasets.load_dataset(path, name=name, split=split, data_dir=data_dir, data_files=data_files, **load_kwargs)
    return normalize_columns(dataset, image_column=image_column, label_column=label_column)


def normalize_columns(dataset, image_column: str | None = None, label_column: str | None = None):
    """Rename the image column to ``image`` and the label column to ``label`` in every split.

    A column of image paths or ``{"bytes", "path"}`` structs becomes a ``datasets.Image`` column;
    a column of string labels becomes a ``ClassLabel``.
    """
    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        return type(dataset)({split: normalize_columns(part, image_column, label_column) for split, part in dataset.items()})
    columns = dataset.column_names
    if columns is None:  # a streaming dataset whose features are unknown until read: look at one row
        columns = list(next(iter(dataset), {}))

    if image_column is None:
        image_column = next((column for column in IMAGE_COLUMN_CANDIDATES if column in columns), None)
        if image_column is None:
            raise ValueError(f"no image column: looked for {list(IMAGE_COLUMN_CANDIDATES)}, the dataset has {columns}. Pass image_column=...")
    elif image_column not in columns:
        raise ValueError(f"image_column {image_column!r} is not in the dataset; its columns are {columns}")
    if label_column is None:
        label_column = "label" if "label" in columns else None
    elif label_column not in columns:
        raise ValueError(f"label_column {label_column!r} is not in the dataset; its columns are {columns}")

    dataset = _rename(dataset, image_column, "image")
    feature = dataset.features["image"] if dataset.features is not None else None
    if _holds_image_references(feature):
        dataset = dataset.cast_column("image", datasets.Image())
    if label_column is not None:
        dataset = _rename(dataset, label_column, "label")
        label_feature = dataset.features["label"] if dataset.features is not None else None
        if isinstance(label_feature, datasets.Value) and label_feature.dtype in ("string", "large_string"):
            if not isinstance(dataset, datasets.Dataset):
                raise ValueError("string labels of a streaming dataset cannot be encoded; cast the label column to a ClassLabel")
            dataset = dataset.class_encode_column("label")
    return dataset


def _rename(dataset, column: str, new_name: str):
    if column == new_name:
        return dataset
    if new_name in dataset.column_names:
        logger.warning("Dropping column %r to rename column %r to %r", new_name, column, new_name)
        dataset = dataset.remove_columns(new_name)
    return dataset.rename_column(column, new_name)


def _holds_image_references(feature) -> bool:
    """Paths (strings) or ``{"bytes", "path"}`` structs that ``datasets.Image`` can decode."""
    if isinstance(feature, datasets.Value):
        return feature.dtype in ("string", "large_string")
    if isinstance(feature, dict):
        return set(feature) == {"bytes", "path"}
    return False


def load_fashion_mnist(root: str | os.PathLike = FASHION_MNIST_ROOT, *, cache_dir: str | os.PathLike | None = None):
    """Fashion-MNIST as a ``DatasetDict`` with splits ``train`` (60000) and ``test`` (10000).

    Columns: ``image`` (``datasets.Image``, 28x28 mode ``"L"``) and ``label`` (``ClassLabel`` with the
    10 class names). Built from the gzipped IDX files in ``root`` when they are all there, cached
    with ``save_to_disk`` under ``cache_dir`` (default ``~/.cache/hf_ssl/fashion_mnist``, or
    ``$HF_SSL_CACHE/fashion_mnist``) and memory-mapped from there, so DataLoader workers share the
    pages instead of each receiving a pickled copy. Without the files, downloads the Hub copy
    ``zalando-datasets/fashion_mnist``.
    """
    root = Path(root)
    files = {split: tuple(root / name for name in names) for split, names in FASHION_MNIST_FILES.items()}
    if not all(path.is_file() for paths in files.values() for path in paths):
        logger.info("Fashion-MNIST IDX files not found in %s; loading %s from the Hub", root, FASHION_MNIST_HUB_ID)
        try:
            dataset = normalize_columns(datasets.load_dataset(FASHION_MNIST_HUB_ID))
        except (ConnectionError, OSError) as error:
            raise FileNotFoundError(
                f"Fashion-MNIST: the IDX files are not in {root} and the Hub copy {FASHION_MNIST_HUB_ID!r} cannot be "
                f"loaded ({type(error).__name__}: {error}). Install them (Debian/Ubuntu: apt-get install "
                "dataset-fashion-mnist, or `make fashion-mnist`), or go online"
            ) from error
        # Same class order as the IDX files; this gives both sources the same label names.
        return dataset.cast_column("label", datasets.ClassLabel(names=list(FASHION_MNIST_CLASSES)))

    cache_root = Path(cache_dir) if cache_dir is not None else _default_cache_root() / "fashion_mnist"
    cache_path = cache_root / _fingerprint(path for paths in files.values() for path in paths)
    if (cache_path / "dataset_dict.json").is_file():
        return datasets.load_from_disk(str(cache_path))

    dataset = datasets.DatasetDict({split: _fashion_mnist_split(*paths) for split, paths in files.items()})
    cache_root.mkdir(parents=True, exist_ok=True)
    # Write next to the final place, then rename: concurrent processes (DDP ranks) never read a half-written cache.
    staging = Path(tempfile.mkdtemp(dir=cache_root, prefix=".building-"))
    try:
        dataset.save_to_disk(str(staging))
        try:
            staging.rename(cache_path)
        except OSError:  # another process finished first; its copy is identical
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return datasets.load_from_disk(str(cache_path))


def _default_cache_root() -> Path:
    return Path(os.environ.get("HF_SSL_CACHE", Path.home() / ".cache" / "hf_ssl"))


def _fingerprint(paths) -> str:
    """Name a cache after the source files (path, size, mtime) and the cache layout version."""
    digest = hashlib.sha256(str(_FASHION_MNIST_CACHE_VERSION).encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _fashion_mnist_split(images_path: Path, labels_path: Path) -> datasets.Dataset:
    images = read_idx(images_path, expected_ndim=3)
    labels = read_idx(labels_path, expected_ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images_path} holds {images.shape[0]} images but {labels_path} holds {labels.shape[0]} labels")
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise ValueError(f"{labels_path} has label {labels.max()}; Fashion-MNIST labels are 0..9")
    image_bytes = pa.array(encode_grayscale_pngs(images), type=pa.binary())
    image_column = pa.StructArray.from_arrays([image_bytes, pa.nulls(len(image_bytes), pa.string())], ["bytes", "path"])
    table = pa.table({"image": image_column, "label": pa.array(labels.astype(np.int64))})
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(FASHION_MNIST_CLASSES))}
    )
    # Arrow table and features built directly: going through Dataset.from_dict would re-encode 70k images.
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=features))


IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | os.PathLike, expected_ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not, into a numpy array.

    Header: two zero bytes, a dtype code, the number of dimensions, then one big-endian uint32 per
    dimension. Raises ``ValueError`` naming the file when the header or the size is wrong.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file: bad magic number {data[:4].hex()} (expected 0000 <dtype code> <ndim>)")
    ndim = data[3]
    if expected_ndim is not None and ndim != expected_ndim:
        raise ValueError(f"{path} has {ndim} dimensions, expected {expected_ndim}")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise ValueError(f"{path} is truncated: its header needs {header_size} bytes, the file has {len(data)}")
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    dtype = np.dtype(IDX_DTYPES[data[2]])
    expected_bytes = header_size + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected_bytes:
        raise ValueError(f"{path} holds {len(data)} bytes, its header {shape} of {dtype} implies {expected_bytes}")
    return np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)


def encode_grayscale_pngs(images: np.ndarray) -> list[bytes]:
    """``(N, H, W)`` uint8 -> N PNG files (8-bit grayscale, deflate "stored" blocks, no compression).

    Written by hand rather than with ``PIL.Image.save``: 70k Fashion-MNIST images take 0.2 s this
    way against 7 s through PIL, and uncompressed PNGs decode faster.
    """
    count, height, width = images.shape
    header = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    end = _png_chunk(b"IEND", b"")
    # Each PNG row starts with its filter type byte (0: none).
    rows = np.zeros((count, height, width + 1), dtype=np.uint8)
    rows[:, :, 1:] = images
    return [header + _png_chunk(b"IDAT", zlib.compress(image.tobytes(), 0)) + end for image in rows]


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
