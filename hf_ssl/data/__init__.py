"""Data pipeline: dataset loading, named view groups, the CPU crops of every view group and their collator,
device-side augmentation.

dataset = load_image_dataset("fashion_mnist", split="train")
config = MultiCropConfig()  # DINO's terms; or ViewsConfig(groups={"views": ViewGroup(number=2, size=224)})
loader = DataLoader(with_view_crops(dataset, ViewCropTransform(config)), batch_size=64,
                    collate_fn=ViewCropCollator(), num_workers=8)
augment = DeviceAugmentation(config).to(device)
for batch in loader:
    views = augment({name: batch[name].to(device) for name in augment.views.names})
    views["global_crops"], views["local_crops"]  # (2, 64, 3, 224, 224), (8, 64, 3, 96, 96) float32
"""

from .config import MultiCropConfig
from .crops import (
    EpochShuffleSampler,
    MultiCropCollator,
    MultiCropDataset,
    MultiCropTransform,
    ViewCropCollator,
    ViewCropDataset,
    ViewCropTransform,
    with_multicrop,
    with_view_crops,
)
from .device_augmentation import DeviceAugmentation
from .images import decode_bands
from .loading import load_fashion_mnist, load_image_dataset, undecoded_images
from .masks import MultiBlockMaskCollator
from .statistics import band_statistics
from .views import IMAGENET_MEAN, IMAGENET_STD, ViewGroup, ViewsConfig, as_views_config, view_size_keys

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DeviceAugmentation",
    "EpochShuffleSampler",
    "MultiBlockMaskCollator",
    "ViewCropCollator",
    "MultiCropConfig",
    "ViewCropDataset",
    "ViewCropTransform",
    "ViewGroup",
    "ViewsConfig",
    "as_views_config",
    "band_statistics",
    "decode_bands",
    "load_fashion_mnist",
    "load_image_dataset",
    "view_size_keys",
    "undecoded_images",
    "with_view_crops",
    # the names from when the pipeline was DINO's multi-crop only: the same objects
    "MultiCropCollator",
    "MultiCropDataset",
    "MultiCropTransform",
    "with_multicrop",
]
