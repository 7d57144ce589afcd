"""Image processors that prepare images for evaluation and for exported backbones."""

from __future__ import annotations

from transformers.image_utils import PILImageResampling
from transformers.models.auto.image_processing_auto import (
    IMAGE_PROCESSOR_MAPPING_NAMES,
    get_image_processor_class_from_name,
)


def build_image_processor(model_type: str, image_size: int, image_mean: list[float], image_std: list[float]):
    """The evaluation image processor for a backbone family (ViT's for unknown families): convert to RGB,
    bicubic resize to `image_size`, rescale to [0, 1], normalise with `image_mean`/`image_std`.

    It is the PIL backend, so it needs no torchvision; `preprocessor_config.json` records the family name, so
    an environment with torchvision gets the fast one. k-NN evaluation and the exported backbone both use it,
    so a plain transformers user prepares images exactly as evaluation did.

    With other than 3 values in `image_mean` (multispectral, hyperspectral bands) the processor only normalises,
    band by band, float arrays in the data's own units: PIL cannot resize images of more than 4 channels, so its
    `do_resize`, `do_rescale` and `do_convert_rgb` are off and the arrays must come at `image_size` (recorded in
    `size`), channels first: `processor(arrays, input_data_format="channels_first")`. k-NN evaluation resizes them
    with `resize_bands_for_evaluation` first."""
    class_names = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type) or {"pil": "ViTImageProcessorPil"}
    processor_class = get_image_processor_class_from_name(class_names.get("pil") or "ViTImageProcessorPil")
    defaults = processor_class()
    if len(image_mean) != 3:
        band_kwargs = {
            "do_resize": False,
            "do_rescale": False,
            "do_normalize": True,
            "do_convert_rgb": False,
            "image_mean": list(image_mean),
            "image_std": list(image_std),
            "size": {"height": image_size, "width": image_size},
        }
        if getattr(defaults, "crop_size", None) is not None:
            band_kwargs["do_center_crop"] = False
            band_kwargs["crop_size"] = {"height": image_size, "width": image_size}
        return processor_class(**band_kwargs)
    processor_kwargs = {
        "do_resize": True,
        "resample": PILImageResampling.BICUBIC,
        "do_rescale": True,
        "do_normalize": True,
        "image_mean": image_mean,
        "image_std": image_std,
        "do_convert_rgb": True,  # grayscale and RGBA images become 3-channel
    }
    if defaults.size.shortest_edge is not None:  # resize the short side, then center-crop (BiT, ConvNext)
        processor_kwargs["size"] = {"shortest_edge": image_size}
    else:
        processor_kwargs["size"] = {"height": image_size, "width": image_size}
    if getattr(defaults, "crop_size", None) is not None:
        processor_kwargs["crop_size"] = {"height": image_size, "width": image_size}
    return processor_class(**processor_kwargs)


def processor_num_channels(image_processor) -> int:
    """Channels the images of ``image_processor`` have: its normalisation's length (3 without one)."""
    mean = getattr(image_processor, "image_mean", None)
    return len(mean) if isinstance(mean, (list, tuple)) else 3


def processor_image_size(image_processor) -> int:
    """The side ``image_processor`` resizes to (height, shortest edge or crop)."""
    for name in ("crop_size", "size"):
        size = getattr(image_processor, name, None)
        size = size if isinstance(size, dict) or size is None else dict(size)
        if size:
            side = size.get("height") or size.get("shortest_edge")
            if side:
                return int(side)
    raise ValueError(f"{type(image_processor).__name__} records no image size")
