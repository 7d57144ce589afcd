"""Device stage of the view pipeline: photometric augmentation of whole batches of crops.

The CPU stage (`ViewCropTransform`) only cuts and resizes the views of each group; everything that touches
pixel values runs here, batched, on whatever device the crops are on (the GPU during training), with
random parameters drawn per sample. The order is DINO's: flip, colour jitter, grayscale, Gaussian
blur, solarize, normalise.

The ops are plain batched tensor arithmetic, not kornia: in three runs of
`benchmarks/bench_data.py` on 2 shared CPU cores this module was 3.0-4.0x faster than the
equivalent kornia.augmentation chain at the DINO config (2x224 + 8x96 crops, batch 32: 220-264 vs
58-73 images/s) and 4.0-4.4x at 2x32 + 4x16. kornia's augmentations also draw from the global
RNG, while these take a ``torch.Generator``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .views import ViewGroup, as_views_config

# ITU-R BT.601 luma weights, the ones PIL's convert("L") uses (DINO augmented PIL images).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
SOLARIZE_THRESHOLD = 128 / 255

# On CPU the batch is processed a few images at a time so that the ~50 passes over the pixels hit
# the cache instead of memory: 2.1x faster than the whole batch at once at the DINO config on
# 2 cores (124 vs 265 ms for batch 32; 100k and 400k pixels per chunk were slower). Accelerators
# take the whole batch at once (fewer kernel launches).
CPU_CHUNK_PIXELS = 200_000


class DeviceAugmentation(nn.Module):
    """Per-sample random flip, colour jitter, grayscale, blur and solarize, then mean/std normalisation, of every
    view group of a config (a ``ViewsConfig`` or an augmentation section with ``to_views_config()``, such as
    ``MultiCropConfig``), each with its group's settings.

    Every image of the batch draws its own parameters: flip with ``flip_probability``; colour jitter
    with ``color_jitter_probability`` (brightness, contrast, saturation and hue factors drawn like
    torchvision's ``ColorJitter``, the four ops applied in one random order per call and group,
    not per image); grayscale with ``grayscale_probability``; Gaussian blur with sigma uniform in
    ``blur_sigma``, applied to view ``i`` of a group with its ``blur_probabilities[i]``; solarize (pixels
    >= 128/255 become ``1 - x``) likewise with ``solarize_probabilities[i]``.

    The blur kernel has ``2 * ceil(3 * blur_sigma[1]) + 1`` taps (13 for sigma up to 2): the whole
    Gaussian of the largest sigma, one size for every view of a group, reflect padding; ``blur_kernel_size``
    taps instead when the group sets it (the truncated kernel is renormalised). Sigma is in pixels of
    the output view, as in DINO, which blurs after resizing.

    On bands other than RGB (``num_channels`` != 3: float views in the data's own units) the same steps run band
    by band: flip, brightness and contrast jitter with one factor per band (``x * f_b``, and ``f_b * x + (1 - f_b)
    * mean_b`` around each band's mean over the view), blur, then the per-band normalisation; nothing is clamped
    (the data has no fixed range), and saturation, hue, grayscale and solarize, defined on RGB only, never run
    (the config refuses them).

    No parameters; ``mean``/``std`` are non-persistent buffers, so ``.to(device)`` moves them and
    checkpoints do not hold them. All random numbers come from ``generator`` when one is given, group by group
    in the config's order.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.views = as_views_config(config)
        if self.views.needs_statistics:
            raise ValueError(
                f"the {self.views.num_channels}-band views have no mean / std yet: compute them from the training "
                "data (hf_ssl.data.band_statistics; a recipe does it before training) or give them in the "
                "augmentation config"
            )
        channels = self.views.num_channels
        self.register_buffer(
            "mean", torch.tensor(self.views.mean, dtype=torch.float32).view(1, channels, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(self.views.std, dtype=torch.float32).view(1, channels, 1, 1), persistent=False
        )

    def forward(
        self, views: Mapping[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Augment and normalise a batch of view groups.

        Args:
            views: group name -> ``(V, B, C, H, W)`` uint8 (or float in [0, 255]) RGB, or float bands in the data's
                units, view index first, as
                `ViewCropCollator` returns them; one entry per group of the config.
            generator: makes the random parameters reproducible. It may live on another device than
                the views: the draws are made on its device, then moved.

        Returns:
            group name -> float32 tensor of the input shape, normalised with ``mean``/``std``.
        """
        if set(views) != set(self.views.names):
            raise ValueError(
                f"the batch holds the view groups {sorted(views)} but the augmentation config has "
                f"{list(self.views.names)}: build the transform and the augmentation from one config"
            )
        return {name: self._augment(views[name], group, generator, name) for name, group in self.views.groups.items()}

    def _augment(self, crops, group: ViewGroup, generator, name):
        channels = self.views.num_channels
        if crops.dim() != 5 or crops.shape[2] != channels:
            raise ValueError(
                f"{name} must have shape (num_views, batch, {channels}, height, width), got {tuple(crops.shape)}"
            )
        num_crops, batch_size, _, height, width = crops.shape
        if num_crops != group.number:
            raise ValueError(
                f"{name} holds {num_crops} views per image but its view group has number={group.number}: "
                "build the transform and the augmentation from one config"
            )
        images = crops.reshape(num_crops * batch_size, channels, height, width)
        output = torch.empty(images.shape, dtype=torch.float32, device=images.device)
        if images.shape[0] == 0:
            return output.view(crops.shape)

        parameters, jitter_order = self._draw_parameters(images.shape[0], group, batch_size, generator, images.device)
        if not self.views.is_rgb:
            parameters.update(self._draw_band_factors(parameters["jitter"], channels, group, generator, images.device))
        if images.device.type == "cpu":
            chunk_size = max(1, CPU_CHUNK_PIXELS // (height * width))
        else:
            chunk_size = images.shape[0]
        for start in range(0, images.shape[0], chunk_size):
            chunk = slice(start, start + chunk_size)
            chunk_parameters = {key: value[chunk] for key, value in parameters.items()}
            output[chunk] = self._augment_images(images[chunk], chunk_parameters, jitter_order, group)
        return output.view(crops.shape)

    @staticmethod
    def _draw_parameters(num_images, group: ViewGroup, batch_size, generator, device):
        """Per-image parameters (a dict of ``(N,)`` tensors) and the colour-jitter order of this call.

        Everything is drawn in one fixed order, whatever the probabilities, so a generator reproduces it.
        """
        draw_device = generator.device if generator is not None else device
        uniform = torch.rand((num_images, 10), generator=generator, device=draw_device).to(device)
        jitter_order = torch.randperm(4, generator=generator, device=draw_device).tolist()

        def between(column, low, high):
            return low + (high - low) * uniform[:, column]

        def per_view(probabilities):
            # View i's probability repeats for the B images of that view (views are the leading dim).
            return torch.tensor(probabilities, dtype=torch.float32, device=device).repeat_interleave(batch_size)

        jitter = uniform[:, 1] < group.color_jitter_probability
        ones = torch.ones(num_images, device=device)
        parameters = {
            "flip": uniform[:, 0] < group.flip_probability,
            "jitter": jitter,
            # Images that skip the jitter get identity factors: 1 * x + 0 * y == x exactly.
            "brightness": torch.where(jitter, between(2, max(0.0, 1 - group.brightness), 1 + group.brightness), ones),
            "contrast": torch.where(jitter, between(3, max(0.0, 1 - group.contrast), 1 + group.contrast), ones),
            "saturation": torch.where(jitter, between(4, max(0.0, 1 - group.saturation), 1 + group.saturation), ones),
            "hue": between(5, -group.hue, group.hue),
            "grayscale": uniform[:, 6] < group.grayscale_probability,
            "blur": uniform[:, 7] < per_view(group.blur_probabilities),
            "sigma": between(8, *group.blur_sigma),
            "solarize": uniform[:, 9] < per_view(group.solarize_probabilities),
        }
        return parameters, jitter_order

    @staticmethod
    def _draw_band_factors(jitter, channels: int, group: ViewGroup, generator, device) -> dict[str, torch.Tensor]:
        """Per-image, per-band brightness and contrast factors ``(N, C)`` (identity without jitter), drawn after the
        RGB parameters so that RGB runs draw exactly what they always did."""
        draw_device = generator.device if generator is not None else device
        uniform = torch.rand((jitter.shape[0], 2, channels), generator=generator, device=draw_device).to(device)
        ones = torch.ones(jitter.shape[0], channels, device=device)
        selected = jitter.view(-1, 1)

        def between(row, spread):
            low, high = max(0.0, 1 - spread), 1 + spread
            return torch.where(selected, low + (high - low) * uniform[:, row], ones)

        return {"band_brightness": between(0, group.brightness), "band_contrast": between(1, group.contrast)}

    def _augment_images(
        self, images: torch.Tensor, parameters: dict[str, torch.Tensor], jitter_order: list[int], group: ViewGroup
    ) -> torch.Tensor:
        """``(n, C, H, W)`` raw pixels -> ``(n, C, H, W)`` augmented, normalised float32."""
        # Flip the input before the float conversion: a quarter of the bytes when it is uint8.
        flip = parameters["flip"]
        if bool(flip.any()):
            images = torch.where(_per_image(flip), images.flip(-1), images)
        if not self.views.is_rgb:
            return self._augment_bands(images.to(torch.float32, copy=True), parameters, jitter_order, group)
        images = images.to(torch.float32, copy=True).div_(255)  # a copy: a float input is the caller's tensor

        jitter = parameters["jitter"]
        # Without a jittered image every factor is 1 and the four ops return their input exactly: skip them.
        for operation in jitter_order if bool(jitter.any()) else ():
            if operation == 0 and group.brightness > 0:
                images = adjust_brightness(images, parameters["brightness"])
            elif operation == 1 and group.contrast > 0:
                images = adjust_contrast(images, parameters["contrast"])
            elif operation == 2 and group.saturation > 0:
                images = adjust_saturation(images, parameters["saturation"])
            elif operation == 3 and group.hue > 0:
                # The HSV round trip is not exact, so images without jitter take the original.
                images = torch.where(_per_image(jitter), adjust_hue(images, parameters["hue"]), images)

        grayscale = parameters["grayscale"]
        if bool(grayscale.any()):
            images = torch.where(_per_image(grayscale), luma(images).expand_as(images), images)

        images = self._blur_selected(images, parameters["blur"], parameters["sigma"], group.blur_radius)

        solarize = parameters["solarize"]
        if bool(solarize.any()):
            images = torch.where(_per_image(solarize) & (images >= SOLARIZE_THRESHOLD), 1 - images, images)

        return images.sub_(self.mean.to(images.device)).div_(self.std.to(images.device))

    def _augment_bands(
        self, images: torch.Tensor, parameters: dict[str, torch.Tensor], jitter_order: list[int], group: ViewGroup
    ) -> torch.Tensor:
        """The band-wise ops of ``_augment_images`` on float bands: brightness and contrast in the call's jitter
        order, blur, normalisation."""
        if bool(parameters["jitter"].any()):
            for operation in jitter_order:
                if operation == 0 and group.brightness > 0:
                    images = images.mul_(_per_band(parameters["band_brightness"]))
                elif operation == 1 and group.contrast > 0:
                    factor = _per_band(parameters["band_contrast"])
                    band_mean = images.mean(dim=(2, 3), keepdim=True)
                    images = images.mul_(factor).add_((1 - factor) * band_mean)
        images = self._blur_selected(images, parameters["blur"], parameters["sigma"], group.blur_radius)
        return images.sub_(self.mean.to(images.device)).div_(self.std.to(images.device))

    @staticmethod
    def _blur_selected(images, blur, sigma, radius):
        """Blur only the selected images: at p=0.1 (second global crop) that skips 90% of the work."""
        if not bool(blur.any()):
            return images
        if bool(blur.all()):
            return gaussian_blur(images, sigma, radius)
        selected = blur.nonzero().squeeze(1)
        images = images.clone()
        images[selected] = gaussian_blur(images[selected], sigma[selected], radius)
        return images


def _per_image(values: torch.Tensor) -> torch.Tensor:
    """``(N,)`` -> ``(N, 1, 1, 1)``, to broadcast one value per image over its pixels."""
    return values.view(-1, 1, 1, 1)


def _per_band(values: torch.Tensor) -> torch.Tensor:
    """``(N, C)`` -> ``(N, C, 1, 1)``, one value per image and band."""
    return values.view(*values.shape, 1, 1)


def luma(images: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` RGB in [0, 1] -> ``(N, 1, H, W)`` ITU-R 601 luma."""
    red, green, blue = images.unbind(1)
    gray = red * LUMA_WEIGHTS[0]
    gray.add_(green, alpha=LUMA_WEIGHTS[1]).add_(blue, alpha=LUMA_WEIGHTS[2])
    return gray.unsqueeze(1)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``clamp(f * x, 0, 1)`` with one factor ``f`` per image (torchvision's ``adjust_brightness``)."""
    return images.mul(_per_image(factor)).clamp_(0, 1)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``clamp(f * x + (1 - f) * m, 0, 1)``, ``m`` the mean luma of the image (``adjust_contrast``)."""
    mean = luma(images).mean(dim=(1, 2, 3), keepdim=True)
    factor = _per_image(factor)
    return images.mul(factor).add_((1 - factor) * mean).clamp_(0, 1)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``clamp(f * x + (1 - f) * luma(x), 0, 1)`` per pixel (torchvision's ``adjust_saturation``)."""
    factor = _per_image(factor)
    return images.mul(factor).add_((1 - factor) * luma(images)).clamp_(0, 1)


def adjust_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of each image by ``shift`` (a fraction of a turn, in [-0.5, 0.5], one per image).

    RGB -> HSV -> RGB as torchvision's ``adjust_hue``, rearranged for fewer passes over the pixels:
    with ``V = max``, ``C = max - min`` (so ``V * S == C``), hue in sixths of a turn is
    ``(g - b) / C``, ``2 + (b - r) / C`` or ``4 + (r - g) / C`` as red, green or blue is largest,
    and each output channel is ``V - C * clamp(2 - |k - 2|, 0, 1)`` with ``k = (6h + n) mod 6``,
    n = 5, 3, 1 for R, G, B (the six-sector table in closed form).
    """
    red, green, blue = images.unbind(1)
    value = torch.maximum(torch.maximum(red, green), blue)
    chroma = value - torch.minimum(torch.minimum(red, green), blue)
    red_largest = red == value
    green_largest = (green == value) & ~red_largest
    blue_largest = ~(red_largest | green_largest)
    # Masks multiplied in, not torch.where: 2x faster on CPU. At ties both sectors give the same hue.
    hue_sixths = (
        (green - blue) * red_largest
        + (blue - red + 2 * chroma) * green_largest
        + (red - green + 4 * chroma) * blue_largest
    )
    # Grey pixels (C == 0) have hue 0 / 1 = 0, and C = 0 makes their output V whatever the hue.
    hue_sixths.div_(torch.where(chroma == 0, 1.0, chroma)).add_(6 * shift.view(-1, 1, 1))
    output = torch.empty_like(images)
    for channel, offset in enumerate((5.0, 3.0, 1.0)):
        ramp = torch.remainder(hue_sixths + offset, 6)
        ramp.sub_(2).abs_().neg_().add_(2).clamp_(0, 1)
        torch.sub(value, ramp.mul_(chroma), out=output[:, channel])
    return output


def gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """``(N,)`` sigmas -> ``(N, 2 * radius + 1)`` normalised 1-D Gaussian kernels."""
    offsets = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    kernels = torch.exp(-offsets.square() / (2 * sigma.view(-1, 1).square()))
    return kernels / kernels.sum(dim=1, keepdim=True)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)`` with one sigma per image, reflect padding.

    Written as a sum of shifted slices (one multiply-add per tap): faster on CPU than a grouped
    depthwise ``conv2d`` with one group per (image, channel). The radius shrinks on crops of
    ``radius`` pixels or fewer, where reflect padding would run out of pixels.
    """
    height, width = images.shape[-2:]
    radius = min(radius, height - 1, width - 1)
    if radius <= 0:
        return images
    taps = gaussian_kernels(sigma, radius).view(sigma.shape[0], -1, 1, 1, 1).unbind(1)
    padded = nn.functional.pad(images, (radius, radius, 0, 0), mode="reflect")
    rows = padded[..., 0:width] * taps[0]
    for offset in range(1, 2 * radius + 1):
        rows.addcmul_(padded[..., offset : offset + width], taps[offset])
    padded = nn.functional.pad(rows, (0, 0, radius, radius), mode="reflect")
    blurred = padded[..., 0:height, :] * taps[0]
    for offset in range(1, 2 * radius + 1):
        blurred.addcmul_(padded[..., offset : offset + height, :], taps[offset])
    return blurred
