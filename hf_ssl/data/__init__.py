"""Data pipeline: dataset loading, multi-crop CPU transform and collator, device-side augmentation.

    dataset = load_image_dataset("fashion_mnist", split="train")
    config = MultiCropConfig()
    loader = DataLoader(with_multicrop(dataset, MultiCropTransform(config)), batch_size=64,
                        collate_fn=MultiCropCollator(), num_workers=8)
    augment = DeviceAugmentation(config).to(device)
    for batch in loader:
        global_crops, local_crops = augment(batch["global_crops"].to(device), batch["local_crops"].to(device))
"""

from .config import IMAGENET_MEAN, IMAGENET_STD, MultiCropConfig
from .device_augmentation import DeviceAugmentation
from .loading import load_fashion_mnist, load_image_dataset
from .multicrop import EpochShuffleSampler, MultiCropCollator, MultiCropDataset, MultiCropTransform, with_multicrop

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DeviceAugmentation",
    "EpochShuffleSampler",
    "MultiCropCollator",
    "MultiCropConfig",
    "MultiCropDataset",
    "MultiCropTransform",
    "load_fashion_mnist",
    "load_image_dataset",
    "with_multicrop",
]
