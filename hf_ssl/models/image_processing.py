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
    so a plain transformers user prepares images exactly as evaluation did."""
    class_names = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type) or {"pil": "ViTImageProcessorPil"}
    processor_class = get_image_processor_class_from_name(class_names.get("pil") or "ViTImageProcessorPil")
    defaults = processor_class()
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
