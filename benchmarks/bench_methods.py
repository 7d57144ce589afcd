"""SimCLR, BYOL or VICReg at the paper's setting (ResNet-50, 224 px, the method's own heads, augmentation, LARS
and schedules: each method's defaults) on either engine at fp32 / bf16 / fp16, over generated RGB images or, with
``--bands N``, generated N-band arrays (12-bit counts, per-band normalisation computed from them, RGB-only ops off).

    python benchmarks/bench_methods.py --method byol --engine trainer --precision bf16
    python benchmarks/bench_methods.py --method simclr --bands 32 --size 96

Prints one JSON line: images/s (mean over the logs after the warm-up), peak GPU memory, first and last loss, whether
every logged loss was finite, NaN/inf-skipped steps, how far the evaluated backbone's weights moved (0 means no
training), and the largest difference between the exported plain transformers backbone and the evaluated backbone on
the same pixels (0 means the export is that backbone).
"""

import argparse
import io
import json
import math
import tempfile

import numpy as np
import torch
from bench_engines import generated_images
from datasets import ClassLabel, Dataset, Features, Value
from transformers import AutoModel

from hf_ssl.data import ViewCropTransform, band_statistics, with_view_crops
from hf_ssl.training import build_trainer, get_method

RGB_ONLY_OFF = {"cj_sat": 0.0, "cj_hue": 0.0, "random_gray_scale": 0.0, "solarize_prob": 0.0}


def generated_bands(count: int, bands: int, size: int, seed: int = 0) -> Dataset:
    """Two classes of striped N-band images, each with its own random spectrum, as ``.npy`` bytes (uint16)."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for index in range(count):
        grid = np.zeros((size, size), np.float32)
        period = int(rng.integers(6, 24))
        if index % 2:
            grid[::period] = 1.0
        else:
            grid[:, ::period] = 1.0
        pixels = grid[None] * rng.uniform(500, 3000, (bands, 1, 1)) + rng.normal(400, 60, (bands, size, size))
        buffer = io.BytesIO()
        np.save(buffer, np.clip(pixels, 0, 4095).astype(np.uint16))
        images.append(buffer.getvalue())
        labels.append(index % 2)
    features = Features({"image": Value("binary"), "label": ClassLabel(names=["vertical", "horizontal"])})
    return Dataset.from_dict({"image": images, "label": labels}, features=features)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=["simclr", "byol", "vicreg"], default="byol")
    parser.add_argument("--engine", choices=["trainer", "accelerate"], default="trainer")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="bf16")
    parser.add_argument("--bands", type=int, default=3, help="3: RGB images; otherwise generated N-band arrays.")
    parser.add_argument("--size", type=int, default=224, help="Side of the views.")
    parser.add_argument("--batch-size", type=int, default=128, help="Per device.")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()

    spec = get_method(args.method)
    config = spec.config_class(backbone_config={"model_type": "resnet", "num_channels": args.bands})  # ResNet-50
    if args.bands == 3:
        dataset = generated_images(args.images, size=max(args.size, 256))
        views = spec.view_config_class(input_size=args.size)
    else:
        dataset = generated_bands(args.images, args.bands, size=args.size + args.size // 3)
        mean, std = band_statistics(dataset, args.bands, max_images=256)
        per_view = getattr(spec.view_config_class, "per_view_keys", ())  # BYOL / VICReg: (view 1, view 2) pairs
        off = {key: (value, value) if key in per_view else value for key, value in RGB_ONLY_OFF.items()}
        views = spec.view_config_class(input_size=args.size, num_channels=args.bands, mean=mean, std=std, **off)
    torch.manual_seed(0)
    model = spec.pretraining_model_class(config)
    backbone_before = {
        name: tensor.detach().float().clone() for name, tensor in model.evaluation_backbone().named_parameters()
    }
    with tempfile.TemporaryDirectory() as output_dir:
        training = spec.training_arguments_class(
            output_dir=output_dir,
            engine=args.engine,
            per_device_train_batch_size=args.batch_size,
            max_steps=args.warmup + args.steps,
            logging_steps=args.warmup,
            warmup_epochs=0.0,
            bf16=args.precision == "bf16",
            fp16=args.precision == "fp16",
            dataloader_num_workers=args.workers,
            report_to="none",
            seed=0,
            disable_tqdm=True,
            save_strategy="no",
        )
        trainer = build_trainer(
            model=model,
            args=training,
            view_config=views,
            train_dataset=with_view_crops(dataset, ViewCropTransform(views)),
            method=args.method,
        )
        trainer.train()
        logs = [entry for entry in trainer.state.log_history if "loss" in entry]
        backbone = trainer.model.evaluation_backbone()
        moved = max(
            (tensor.detach().float().cpu() - backbone_before[name]).abs().max().item()
            for name, tensor in backbone.named_parameters()
        )
        trainer.model.export_backbone(f"{output_dir}/backbone")
        plain = AutoModel.from_pretrained(f"{output_dir}/backbone").to(trainer.model.device).eval()
        pixels = torch.randn(4, args.bands, args.size, args.size, device=trainer.model.device)
        with torch.no_grad():
            export_difference = (
                (plain(pixel_values=pixels).last_hidden_state - backbone.eval()(pixel_values=pixels).last_hidden_state)
                .abs()
                .max()
                .item()
            )
        result = {
            "method": args.method,
            "engine": args.engine,
            "precision": args.precision,
            "bands": args.bands,
            "size": args.size,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "batch_per_device": args.batch_size,
            "images_per_second": round(float(np.mean([entry["images_per_second"] for entry in logs[1:]])), 1)
            if len(logs) > 1
            else None,
            "max_memory_allocated_gb": logs[-1].get("max_memory_allocated_gb"),
            "first_loss": logs[0]["loss"],
            "last_loss": logs[-1]["loss"],
            "all_losses_finite": all(math.isfinite(entry["loss"]) for entry in logs),
            "skipped_steps": logs[-1]["skipped_steps"],
            "backbone_max_change": moved,
            "export_max_difference": export_difference,
        }
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
