"""I-JEPA or H-JEPA on either engine at fp32 / bf16 / fp16: the ViT-B/16 setting of recipes/ijepa_vitb16.yaml and
recipes/hjepa.yaml (224 px, 4 target blocks of 15-20% of the 14 x 14 patches, a context block of 85-100% without
them, a 12-block predictor of width 384) over generated images.

    python benchmarks/bench_jepa.py --method ijepa --engine trainer --precision bf16

Prints one JSON line: images/s (mean over the logs after the warm-up), peak GPU memory, first and last loss,
NaN/inf-skipped steps, how far the target encoder moved (0 means a broken EMA), the val_loss measured on held-out
images at the end, and the largest difference between the exported plain transformers IJepaModel and the
target encoder on the same pixels (0 means the export is the encoder).
"""

import argparse
import json
import math
import tempfile

import numpy as np
import torch
from bench_engines import generated_images
from transformers import AutoModel

from hf_ssl.data import ViewCropTransform, with_view_crops
from hf_ssl.training import ValidationLoss, build_trainer, get_method
from hf_ssl.training.methods.ijepa import IJepaViewConfig

VIT_BASE_16 = dict(
    model_type="ijepa",
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    patch_size=16,
    image_size=224,
    layer_norm_eps=1e-6,
    qkv_bias=True,
)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=["ijepa", "hjepa"], default="ijepa")
    parser.add_argument("--engine", choices=["trainer", "accelerate"], default="trainer")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="bf16")
    parser.add_argument("--batch-size", type=int, default=128, help="Per device.")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()

    spec = get_method(args.method)
    extra = {"num_hierarchies": 3} if args.method == "hjepa" else {}
    config = spec.config_class(
        backbone_config=dict(VIT_BASE_16), predictor_hidden_size=384, predictor_num_hidden_layers=12, **extra
    )
    views = IJepaViewConfig(input_size=224)
    dataset = generated_images(args.images + 256)
    train, held_out = dataset.select(range(args.images)), dataset.select(range(args.images, args.images + 256))
    torch.manual_seed(0)
    model = spec.pretraining_model_class(config)
    target_before = {
        name: tensor.detach().float().cpu().clone() for name, tensor in model.target_encoder.state_dict().items()
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
        transform = ViewCropTransform(views)
        validation = ValidationLoss(
            with_view_crops(held_out, transform),
            spec.method_class.build_collator(config, views, 0),
            batch_size=args.batch_size,
            num_workers=args.workers,
        )
        trainer = build_trainer(
            model=model,
            args=training,
            view_config=views,
            train_dataset=with_view_crops(train, transform),
            method=args.method,
            validation=validation,
        )
        trainer.train()
        logs = [entry for entry in trainer.state.log_history if "loss" in entry]
        target_after = {
            name: tensor.float().cpu() for name, tensor in trainer.model.target_encoder.state_dict().items()
        }
        moved = max((target_after[name] - before).abs().max().item() for name, before in target_before.items())
        trainer.model.export_backbone(f"{output_dir}/backbone")
        plain = AutoModel.from_pretrained(f"{output_dir}/backbone").to(trainer.model.device).eval()
        pixels = torch.rand(4, 3, 224, 224, device=trainer.model.device)
        with torch.no_grad():
            export_difference = (
                (
                    plain(pixel_values=pixels).last_hidden_state
                    - trainer.model.target_encoder.eval()(pixel_values=pixels).last_hidden_state
                )
                .abs()
                .max()
                .item()
            )
        result = {
            "method": args.method,
            "engine": args.engine,
            "precision": args.precision,
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
            "target_encoder_max_change": moved,
            "val_loss": trainer.last_validation_metrics.get("val_loss"),
            "export_max_difference": export_difference,
        }
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
