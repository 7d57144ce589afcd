"""Load image datasets with one column convention: ``image`` (and ``label`` when there is one).

`load_image_dataset` accepts anything ``datasets.load_dataset`` reads plus the built-in name
``"fashion_mnist"``, which `load_fashion_mnist` builds from local IDX files when they exist.
"""

from __future__ import annotations

import gzip
import hashlib
import io
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
BUILTIN_DATASETS = ("fashion_mnist", "fashion_mnist_multispectral", "arrayfolder")
# Files of N-band arrays that `arrayfolder` collects (read by `hf_ssl.data.images.decode_bands`).
ARRAY_FILE_SUFFIXES = (".npy", ".npz", ".tif", ".tiff")
SPLIT_FOLDERS = {
    "train": "train",
    "test": "test",
    "validation": "validation",
    "val": "validation",
    "valid": "validation",
}

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
            ``data_dir``, ``"parquet"``/``"arrow"`` with ``data_files``, a local directory),
            ``"fashion_mnist"`` (`load_fashion_mnist`: local IDX files, else the Hub copy),
            ``"fashion_mnist_multispectral"`` (`load_multispectral_fashion_mnist`: 8-band images generated
            from it), or
            ``"arrayfolder"`` with ``data_dir`` (`load_array_folder`: multispectral / hyperspectral arrays
            stored as ``.npy`` / ``.npz`` / TIFF files, laid out like an image folder).
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
    if path == "arrayfolder":
        if data_dir is None or name or data_files or load_kwargs:
            raise ValueError(
                "'arrayfolder' reads the array files under data_dir: give data_dir, and no name, data_files or "
                "loading options"
            )
        dataset = load_array_folder(data_dir)
        if split is not None:
            if split not in dataset:
                raise ValueError(f"the array folder {data_dir!r} has splits {list(dataset)}, not {split!r}")
            dataset = dataset[split]
    elif path in BUILTIN_DATASETS:
        if name or data_dir or data_files or load_kwargs:
            raise ValueError(
                f"{path!r} is a built-in dataset: it takes no name, data_dir, data_files or loading options"
            )
        dataset = load_fashion_mnist() if path == "fashion_mnist" else load_multispectral_fashion_mnist()
        if split is not None:
            if split not in dataset:
                raise ValueError(f"{path!r} has splits {list(dataset)}, not {split!r}")
            dataset = dataset[split]
    else:
        dataset = datasets.load_dataset(
            path, name=name, split=split, data_dir=data_dir, data_files=data_files, **load_kwargs
        )
    return normalize_columns(dataset, image_column=image_column, label_column=label_column)


def undecoded_images(dataset, image_column: str = "image"):
    """``dataset`` with its ``image_column`` switched to ``Image(decode=False)`` if it is a decoding ``Image``: the
    pipeline then decodes the bytes itself, so a corrupt file is a counted skip, not an exception inside ``datasets``.

    A dataset with a custom transform is left alone: the transform, not ``datasets``, sees the raw rows."""
    features = getattr(dataset, "features", None)
    image_feature = features.get(image_column) if features is not None else None
    custom_transform = getattr(dataset, "format", {}).get("type") == "custom"
    if isinstance(image_feature, datasets.Image) and image_feature.decode and not custom_transform:
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    return dataset


def normalize_columns(dataset, image_column: str | None = None, label_column: str | None = None):
    """Rename the image column to ``image`` and the label column to ``label`` in every split.

    A column of image paths or ``{"bytes", "path"}`` structs becomes a ``datasets.Image`` column;
    a column of string labels becomes a ``ClassLabel``.
    """
    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        return type(dataset)(
            {split: normalize_columns(part, image_column, label_column) for split, part in dataset.items()}
        )
    columns = dataset.column_names
    if columns is None:  # a streaming dataset whose features are unknown until read: look at one row
        columns = list(next(iter(dataset), {}))

    if image_column is None:
        image_column = next((column for column in IMAGE_COLUMN_CANDIDATES if column in columns), None)
        if image_column is None:
            raise ValueError(
                f"no image column: looked for {list(IMAGE_COLUMN_CANDIDATES)}, the dataset has {columns}. Pass "
                "image_column=..."
            )
    elif image_column not in columns:
        raise ValueError(f"image_column {image_column!r} is not in the dataset; its columns are {columns}")
    if label_column is None:
        label_column = "label" if "label" in columns else None
    elif label_column not in columns:
        raise ValueError(f"label_column {label_column!r} is not in the dataset; its columns are {columns}")

    dataset = _rename(dataset, image_column, "image")
    feature = dataset.features["image"] if dataset.features is not None else None
    if _holds_image_references(feature) and not _holds_array_files(dataset):
        dataset = dataset.cast_column("image", datasets.Image())
    if label_column is not None:
        dataset = _rename(dataset, label_column, "label")
        label_feature = dataset.features["label"] if dataset.features is not None else None
        if isinstance(label_feature, datasets.Value) and label_feature.dtype in ("string", "large_string"):
            if not isinstance(dataset, datasets.Dataset):
                raise ValueError(
                    "string labels of a streaming dataset cannot be encoded; cast the label column to a ClassLabel"
                )
            dataset = dataset.class_encode_column("label")
    return dataset


def _rename(dataset, column: str, new_name: str):
    if column == new_name:
        return dataset
    if new_name in dataset.column_names:
        logger.warning("Dropping column %r to rename column %r to %r", new_name, column, new_name)
        dataset = dataset.remove_columns(new_name)
    return dataset.rename_column(column, new_name)


def load_array_folder(data_dir: str | os.PathLike) -> datasets.DatasetDict:
    """Multispectral / hyperspectral arrays stored as files (``.npy``, ``.npz``, TIFF), laid out like an image folder.

    ``data_dir/train/...``, ``data_dir/test/...``, ``data_dir/validation/...`` (or ``val``) become splits; without
    such folders every file is in ``train``. Inside a split, files in class folders (``train/healthy/a.npy``) get
    a ``label`` (a ``ClassLabel`` of the folder names, sorted); files directly in the split have none. Columns:
    ``image`` (the file's path, read by `hf_ssl.data.images.decode_bands` when the views are cut) and ``label``.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise ValueError(f"the array folder {str(root)!r} does not exist or is not a folder")
    split_roots = {
        SPLIT_FOLDERS[child.name]: child
        for child in sorted(root.iterdir())
        if child.is_dir() and child.name in SPLIT_FOLDERS
    }
    if not split_roots:
        split_roots = {"train": root}
    splits = {}
    for split, split_root in split_roots.items():
        files = sorted(
            path for path in split_root.rglob("*") if path.is_file() and path.suffix.lower() in ARRAY_FILE_SUFFIXES
        )
        if not files:
            raise ValueError(f"no array files ({', '.join(ARRAY_FILE_SUFFIXES)}) under {str(split_root)!r}")
        columns = {"image": [str(path) for path in files]}
        features = {"image": datasets.Value("string")}
        class_names = [path.relative_to(split_root).parts[0] for path in files]
        if all(len(path.relative_to(split_root).parts) > 1 for path in files):
            names = sorted(set(class_names))
            columns["label"] = [names.index(name) for name in class_names]
            features["label"] = datasets.ClassLabel(names=names)
        splits[split] = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
    # one set of classes for every split: a class missing from one split keeps its index
    names = sorted(
        {name for part in splits.values() if "label" in part.column_names for name in part.features["label"].names}
    )
    return datasets.DatasetDict({split: _relabel(part, names) for split, part in splits.items()})


def _relabel(part: datasets.Dataset, names: list[str]) -> datasets.Dataset:
    """``part``'s labels re-indexed against ``names`` (the classes of every split)."""
    if "label" not in part.column_names:
        return part
    own = part.features["label"].names
    labels = [names.index(own[label]) for label in part["label"]]
    part = part.remove_columns("label").add_column("label", labels)
    return part.cast_column("label", datasets.ClassLabel(names=names))


def _holds_array_files(dataset) -> bool:
    """A column of paths to array files (``.npy``, ``.npz``, TIFF): kept as paths for `decode_bands`, not cast to
    ``datasets.Image``, which would read a multi-page TIFF's first page only."""
    if not isinstance(dataset, datasets.Dataset) or len(dataset) == 0:
        return False
    first = dataset[0]["image"]
    return isinstance(first, str) and first.lower().endswith(ARRAY_FILE_SUFFIXES)


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
    return _cached(dataset, cache_path)


def _cached(dataset: datasets.DatasetDict, cache_path: Path) -> datasets.DatasetDict:
    """Save ``dataset`` at ``cache_path`` and return it memory-mapped from there. It is written next to the final
    place, then renamed: concurrent processes (DDP ranks) never read a half-written cache."""
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache_path.parent, prefix=".building-"))
    try:
        dataset.save_to_disk(str(staging))
        try:
            staging.rename(cache_path)
        except OSError:  # another process finished first; its copy is identical
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return datasets.load_from_disk(str(cache_path))


MULTISPECTRAL_BANDS = 8
MULTISPECTRAL_SIZES = {"train": 20000, "test": 2000}
_MULTISPECTRAL_CACHE_VERSION = 1


def load_multispectral_fashion_mnist(
    num_bands: int = MULTISPECTRAL_BANDS,
    sizes: dict[str, int] | None = None,
    seed: int = 0,
    *,
    cache_dir: str | os.PathLike | None = None,
) -> datasets.DatasetDict:
    """Fashion-MNIST rendered as ``num_bands``-band images, for trying multispectral training offline.

    Each image gets two spectra of its own, one for the garment and one for the background, each a smooth bump
    over the bands (a random baseline, height, centre and width); a pixel of Fashion-MNIST intensity ``x`` in [0, 1]
    becomes ``x * garment + (1 - x) * background`` plus Gaussian noise, stored as 12-bit counts (0..4095, uint16).
    The class is in the shape only: the spectra are drawn independently of it, so a representation has to see past
    them (a raw-pixel k-NN is misled by them). Splits: the first ``sizes["train"]`` (default 20000) training
    images and the first ``sizes["test"]`` (default 2000) test images, drawn from ``seed``.

    Columns: ``image`` (the ``(num_bands, 28, 28)`` array as ``.npy`` bytes, read by `hf_ssl.data.decode_bands`)
    and ``label``. Built once and cached like `load_fashion_mnist` (under ``.../fashion_mnist_multispectral``).
    """
    sizes = dict(MULTISPECTRAL_SIZES if sizes is None else sizes)
    source = load_fashion_mnist()
    key = hashlib.sha256(
        repr(
            (
                _MULTISPECTRAL_CACHE_VERSION,
                num_bands,
                sorted(sizes.items()),
                seed,
                {split: len(source[split]) for split in source},
            )
        ).encode()
    ).hexdigest()[:16]
    cache_root = Path(cache_dir) if cache_dir is not None else _default_cache_root() / "fashion_mnist_multispectral"
    cache_path = cache_root / key
    if (cache_path / "dataset_dict.json").is_file():
        return datasets.load_from_disk(str(cache_path))
    rng = np.random.default_rng(seed)
    splits = {}
    for split, size in sizes.items():
        part = source[split].select(range(min(size, len(source[split]))))
        pixels = np.stack(
            [np.asarray(_to_gray(item)) for item in part.cast_column("image", datasets.Image(decode=False))["image"]]
        )
        splits[split] = _render_multispectral(
            pixels.astype(np.float32) / 255.0, np.asarray(part["label"]), num_bands, rng
        )
    return _cached(datasets.DatasetDict(splits), cache_path)


def _to_gray(item):
    from .images import decode_image

    return decode_image(item).convert("L")


def _render_multispectral(
    intensity: np.ndarray, labels: np.ndarray, num_bands: int, rng: np.random.Generator
) -> datasets.Dataset:
    """``(N, H, W)`` intensities in [0, 1] -> a dataset of ``(num_bands, H, W)`` uint16 images (see
    `load_multispectral_fashion_mnist`)."""
    count = intensity.shape[0]
    positions = np.linspace(0.0, 1.0, num_bands)

    def spectra(baseline, height):
        centre = rng.uniform(0.0, 1.0, (count, 1))
        width = rng.uniform(0.15, 0.4, (count, 1))
        return rng.uniform(*baseline, (count, 1)) + rng.uniform(*height, (count, 1)) * np.exp(
            -0.5 * ((positions - centre) / width) ** 2
        )

    garment = spectra((0.1, 0.3), (0.3, 0.6))  # (N, B), reflectance-like in [0, 0.9]
    background = spectra((0.0, 0.15), (0.0, 0.3))
    images = intensity[:, None] * garment[:, :, None, None] + (1 - intensity[:, None]) * background[:, :, None, None]
    images = images * 4095 + rng.normal(0.0, 30.0, images.shape)
    images = np.clip(np.rint(images), 0, 4095).astype(np.uint16)
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        np.save(buffer, image)
        encoded.append(buffer.getvalue())
    features = datasets.Features(
        {"image": datasets.Value("binary"), "label": datasets.ClassLabel(names=list(FASHION_MNIST_CLASSES))}
    )
    return datasets.Dataset.from_dict({"image": encoded, "label": labels.astype(np.int64)}, features=features)


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
        raise ValueError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds {labels.shape[0]} labels"
        )
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise ValueError(f"{labels_path} has label {labels.max()}; Fashion-MNIST labels are 0..9")
    image_bytes = pa.array(encode_grayscale_pngs(images), type=pa.binary())
    image_column = pa.StructArray.from_arrays(
        [image_bytes, pa.nulls(len(image_bytes), pa.string())], ["bytes", "path"]
    )
    table = pa.table({"image": image_column, "label": pa.array(labels.astype(np.int64))})
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(FASHION_MNIST_CLASSES))}
    )
    # Arrow table and features built directly: going through Dataset.from_dict would re-encode 70k images.
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=features))


IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


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
        raise ValueError(
            f"{path} is not an IDX file: bad magic number {data[:4].hex()} (expected 0000 <dtype code> <ndim>)"
        )
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
