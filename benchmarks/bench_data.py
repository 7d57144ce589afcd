"""Throughput of the multi-crop data pipeline against a per-image PIL implementation.

    python benchmarks/bench_data.py                       # both datasets, both configs
    python benchmarks/bench_data.py --num-images 512 --config dino --dataset natural --threads 1
    python benchmarks/bench_data.py --device-stage-only   # DeviceAugmentation against kornia only

ours:     decode + random resized crops (ViewCropTransform, through a DataLoader with
          num_workers=0) + ViewCropCollator + DeviceAugmentation, all on the CPU.
baseline: one image at a time, the DINO recipe as torchvision runs it on PIL images: PIL random
          resized crop, flip, ImageEnhance colour jitter (random order) + HSV hue shift, grayscale,
          ImageFilter.GaussianBlur, ImageOps.solarize, then to a tensor and normalise.

Both read the same encoded images (Fashion-MNIST PNGs; JPEG photos: scikit-image's sample photos
when scikit-image is installed, else synthetic 256x256 RGB images) in one process. Images/s is the
number of source images turned into a full set of augmented crops per second, after one warm-up batch.
The two pipelines run alternately ``--repeats`` times and the best run of each is reported, which
keeps the comparison fair on a machine shared with other work.

A second table times the device stage alone: `DeviceAugmentation` against the same chain of
kornia.augmentation modules (one chain per crop index, for the per-crop blur/solarize
probabilities), on random uint8 crops of the chosen configs, on the CPU.
"""

from __future__ import annotations

import argparse
import io
import math
import random
import time

import datasets
import numpy as np
import PIL.Image
import PIL.ImageEnhance
import PIL.ImageFilter
import PIL.ImageOps
import torch

from hf_ssl.data import (
    DeviceAugmentation,
    MultiCropConfig,
    ViewCropCollator,
    ViewCropTransform,
    load_fashion_mnist,
    with_view_crops,
)
from hf_ssl.data.images import RESAMPLING, decode_image, random_resized_crop_box, to_8bit

CONFIGS = {
    "dino": MultiCropConfig(),
    "small": MultiCropConfig(global_crop_size=32, local_crops_number=4, local_crop_size=16),
}


def describe(config: MultiCropConfig) -> str:
    return (
        f"{config.global_crops_number}x{config.global_crop_size}"
        f" + {config.local_crops_number}x{config.local_crop_size}"
    )


def fashion_mnist_images(num_images: int) -> tuple[datasets.Dataset, str]:
    dataset = load_fashion_mnist()["train"].select(range(num_images))
    return dataset, "Fashion-MNIST 28x28 L (PNG)"


def natural_images(num_images: int, seed: int = 0) -> tuple[datasets.Dataset, str]:
    """JPEG-encoded photos: scikit-image's samples if it is installed, else synthetic 256x256 RGB."""
    try:
        import skimage.data

        names = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")
        photos = [PIL.Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in names]
        description = "scikit-image photos (JPEG)"
    except ImportError:
        photos = [_synthetic_photo(np.random.default_rng(seed + index)) for index in range(16)]
        description = "synthetic 256x256 RGB (JPEG)"
    encoded = []
    for photo in photos:
        buffer = io.BytesIO()
        photo.save(buffer, format="JPEG", quality=90)
        encoded.append(buffer.getvalue())
    rows = {"image": [{"bytes": encoded[index % len(encoded)], "path": None} for index in range(num_images)]}
    dataset = datasets.Dataset.from_dict(rows, features=datasets.Features({"image": datasets.Image()}))
    return dataset, description


def _synthetic_photo(rng: np.random.Generator) -> PIL.Image.Image:
    """Smooth colour fields plus fine noise: compresses and decodes like a photo, unlike white noise."""
    coarse = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    smooth = np.asarray(PIL.Image.fromarray(coarse).resize((256, 256), PIL.Image.Resampling.BICUBIC), dtype=np.int16)
    noise = rng.integers(-12, 13, size=smooth.shape, dtype=np.int16)
    return PIL.Image.fromarray(np.clip(smooth + noise, 0, 255).astype(np.uint8))


def run_ours(dataset: datasets.Dataset, config: MultiCropConfig, batch_size: int) -> float:
    loader = torch.utils.data.DataLoader(
        with_view_crops(dataset, ViewCropTransform(config)),
        batch_size=batch_size,
        collate_fn=ViewCropCollator(),
    )
    augment = DeviceAugmentation(config)
    generator = torch.Generator().manual_seed(0)
    num_images, start = 0, None
    for index, batch in enumerate(loader):
        views = augment({name: batch[name] for name in augment.views.names}, generator=generator)
        if index == 0:  # warm-up batch
            start = time.perf_counter()
        else:
            num_images += views["global_crops"].shape[1]
    return num_images / (time.perf_counter() - start)


class PILMultiCrop:
    """The DINO augmentation applied to one PIL image at a time, as torchvision runs it."""

    def __init__(self, config: MultiCropConfig, seed: int = 0):
        self.config = config
        self.random = random.Random(seed)
        self.numpy_rng = np.random.default_rng(seed)
        self.resample = RESAMPLING[config.interpolation]
        self.mean = torch.tensor(config.mean).view(3, 1, 1)
        self.std = torch.tensor(config.std).view(3, 1, 1)

    def __call__(self, image: PIL.Image.Image) -> tuple[torch.Tensor, list[torch.Tensor]]:
        config = self.config
        image = image.convert("RGB")
        global_crops = [
            self._crop(image, config.global_crop_size, config.global_crops_scale, blur, solarize)
            for blur, solarize in zip(config.global_blur_probabilities, config.global_solarize_probabilities)
        ]
        local_crops = [
            self._crop(
                image,
                config.local_crop_size,
                config.local_crops_scale,
                config.local_blur_probability,
                config.local_solarize_probability,
            )
            for _ in range(config.local_crops_number)
        ]
        return torch.stack(global_crops), local_crops

    def _crop(self, image, size, scale, blur_probability, solarize_probability) -> torch.Tensor:
        config, rand = self.config, self.random
        box = random_resized_crop_box(*image.size, scale, config.crop_ratio, self.numpy_rng)
        crop = image.resize((size, size), self.resample, box=box)
        if rand.random() < config.flip_probability:
            crop = PIL.ImageOps.mirror(crop)
        if rand.random() < config.color_jitter_probability:
            crop = self._color_jitter(crop)
        if rand.random() < config.grayscale_probability:
            crop = crop.convert("L").convert("RGB")
        if rand.random() < blur_probability:
            crop = crop.filter(PIL.ImageFilter.GaussianBlur(radius=rand.uniform(*config.blur_sigma)))
        if rand.random() < solarize_probability:
            crop = PIL.ImageOps.solarize(crop, threshold=128)
        pixels = torch.from_numpy(np.asarray(crop).copy()).permute(2, 0, 1).float().div_(255)
        return pixels.sub_(self.mean).div_(self.std)

    def _color_jitter(self, crop: PIL.Image.Image) -> PIL.Image.Image:
        config, rand = self.config, self.random
        operations = [0, 1, 2, 3]
        rand.shuffle(operations)
        for operation in operations:
            if operation == 0:
                crop = PIL.ImageEnhance.Brightness(crop).enhance(
                    rand.uniform(max(0, 1 - config.brightness), 1 + config.brightness)
                )
            elif operation == 1:
                crop = PIL.ImageEnhance.Contrast(crop).enhance(
                    rand.uniform(max(0, 1 - config.contrast), 1 + config.contrast)
                )
            elif operation == 2:
                crop = PIL.ImageEnhance.Color(crop).enhance(
                    rand.uniform(max(0, 1 - config.saturation), 1 + config.saturation)
                )
            else:
                crop = _shift_hue(crop, rand.uniform(-config.hue, config.hue))
        return crop


def _shift_hue(crop: PIL.Image.Image, shift: float) -> PIL.Image.Image:
    hue, saturation, value = crop.convert("HSV").split()
    hue_values = np.asarray(hue, dtype=np.uint8) + np.uint8(int(shift * 255) % 256)  # wraps around like a hue
    return PIL.Image.merge("HSV", (PIL.Image.fromarray(hue_values, "L"), saturation, value)).convert("RGB")


def run_baseline(dataset: datasets.Dataset, config: MultiCropConfig, batch_size: int) -> float:
    raw = dataset.cast_column("image", datasets.Image(decode=False))
    augment = PILMultiCrop(config)
    num_images, start = 0, None
    for index, first in enumerate(range(0, len(raw), batch_size)):
        examples = [augment(to_8bit(decode_image(item))) for item in raw[first : first + batch_size]["image"]]
        global_crops = torch.stack([crops for crops, _ in examples], dim=1)
        if config.local_crops_number:
            torch.stack([torch.stack(local) for _, local in examples], dim=1)
        if index == 0:  # warm-up batch
            start = time.perf_counter()
        else:
            num_images += global_crops.shape[1]
    return num_images / (time.perf_counter() - start)


def kornia_chains(config: MultiCropConfig):
    """The DINO photometric augmentation as kornia.augmentation modules: global crop chains, local chain."""
    import kornia.augmentation as K

    radius = math.ceil(3 * config.blur_sigma[1])

    def chain(blur_probability, solarize_probability):
        return K.AugmentationSequential(
            K.RandomHorizontalFlip(p=config.flip_probability),
            K.ColorJitter(
                config.brightness, config.contrast, config.saturation, config.hue, p=config.color_jitter_probability
            ),
            K.RandomGrayscale(p=config.grayscale_probability),
            K.RandomGaussianBlur((2 * radius + 1, 2 * radius + 1), config.blur_sigma, p=blur_probability),
            K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize_probability),
            K.Normalize(mean=torch.tensor(config.mean), std=torch.tensor(config.std)),
        )

    global_chains = [
        chain(blur, solarize)
        for blur, solarize in zip(config.global_blur_probabilities, config.global_solarize_probabilities)
    ]
    return global_chains, chain(config.local_blur_probability, config.local_solarize_probability)


def time_device_stage(config: MultiCropConfig, batch_size: int, repeats: int) -> tuple[float, float]:
    """Best images/s of DeviceAugmentation and of the kornia chains on one random multi-crop batch."""
    global_crops = torch.randint(
        0,
        256,
        (config.global_crops_number, batch_size, 3, config.global_crop_size, config.global_crop_size),
        dtype=torch.uint8,
    )
    local_crops = torch.randint(
        0,
        256,
        (config.local_crops_number, batch_size, 3, config.local_crop_size, config.local_crop_size),
        dtype=torch.uint8,
    )
    augment = DeviceAugmentation(config)
    global_chains, local_chain = kornia_chains(config)

    crops = (
        {"global_crops": global_crops, "local_crops": local_crops}
        if config.local_crops_number
        else {"global_crops": global_crops}
    )

    def ours():
        augment(crops)

    def kornia():
        for chain, crops in zip(global_chains, global_crops):
            chain(crops.float() / 255)
        if config.local_crops_number:
            local_chain(local_crops.flatten(0, 1).float() / 255)

    best = {ours: math.inf, kornia: math.inf}
    for function in (ours, kornia):  # warm-up
        function()
    for _ in range(repeats):
        for function in best:
            start = time.perf_counter()
            function()
            best[function] = min(best[function], time.perf_counter() - start)
    return batch_size / best[ours], batch_size / best[kornia]


def compare_pipelines(dataset_names, config_names, num_images: int, batch_size: int, repeats: int) -> None:
    sources = {"fashion_mnist": fashion_mnist_images, "natural": natural_images}
    print(
        f"Whole pipeline: {num_images} images per run, batch {batch_size}, torch threads {torch.get_num_threads()}, "
        f"best of {repeats} alternating runs"
    )
    header = f"{'images':<32} {'crops':<16} {'ours img/s':>11} {'PIL img/s':>10} {'ours/PIL':>9}"
    print(header)
    print("-" * len(header))
    for dataset_name in dataset_names:
        dataset, description = sources[dataset_name](num_images)
        for config_name in config_names:
            config = CONFIGS[config_name]
            ours = baseline = 0.0
            for _ in range(repeats):
                ours = max(ours, run_ours(dataset, config, batch_size))
                baseline = max(baseline, run_baseline(dataset, config, batch_size))
            print(
                f"{description:<32} {describe(config):<16} {ours:>11.1f} {baseline:>10.1f} {ours / baseline:>8.2f}x",
                flush=True,
            )


def compare_device_stage(config_names, batch_size: int, repeats: int) -> None:
    print(f"Device stage on CPU: DeviceAugmentation vs kornia.augmentation, batch {batch_size}, best of {repeats}")
    header = f"{'crops':<16} {'ours img/s':>11} {'kornia img/s':>13} {'ours/kornia':>12}"
    print(header)
    print("-" * len(header))
    for config_name in config_names:
        config = CONFIGS[config_name]
        ours, kornia = time_device_stage(config, batch_size, repeats)
        print(f"{describe(config):<16} {ours:>11.1f} {kornia:>13.1f} {ours / kornia:>11.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--num-images", type=int, default=256, help="images per measurement (the first batch is warm-up)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--config", choices=[*CONFIGS, "all"], default="all")
    parser.add_argument("--dataset", choices=["fashion_mnist", "natural", "all"], default="all")
    parser.add_argument("--repeats", type=int, default=3, help="alternate runs of each pipeline; the best is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--device-stage-only", action="store_true", help="only time DeviceAugmentation against kornia")
    arguments = parser.parse_args()
    if arguments.num_images <= arguments.batch_size:
        parser.error("--num-images must exceed --batch-size: the first batch is a warm-up and not timed")
    if arguments.threads is not None:
        torch.set_num_threads(arguments.threads)
    datasets.disable_progress_bars()

    dataset_names = ["fashion_mnist", "natural"] if arguments.dataset == "all" else [arguments.dataset]
    config_names = list(CONFIGS) if arguments.config == "all" else [arguments.config]
    if not arguments.device_stage_only:
        compare_pipelines(dataset_names, config_names, arguments.num_images, arguments.batch_size, arguments.repeats)
        print()
    compare_device_stage(config_names, arguments.batch_size, arguments.repeats + 2)


if __name__ == "__main__":
    main()
