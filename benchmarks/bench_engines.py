"""Both training engines at fp32 / bf16 / fp16 on the official ViT-S/16 DINO setting (2 x 224 + 8 x 96
crops, 65536 prototypes) over generated images: throughput, peak memory and the numerics of each run.

    python benchmarks/bench_engines.py --engine trainer --precision bf16
    accelerate launch --config_file accelerate_configs/fsdp_full_shard.yaml --num_processes 1 \
        benchmarks/bench_engines.py --engine accelerate --precision bf16

Prints one JSON line: images/s (mean over the logs after the warm-up), peak GPU memory, first and last
loss, NaN/inf-skipped steps, how far the teacher moved (0 means a broken EMA), and, with --knn, the
k-NN accuracy measured during and after training (under FSDP this gathers the sharded teacher).
"""

import argparse
import json
import math
import tempfile

import numpy as np
import torch
from datasets import ClassLabel, Dataset, Features
from datasets import Image as ImageFeature
from PIL import Image

from hf_ssl import DinoConfig, DinoForPreTraining
from hf_ssl.data import MultiCropConfig, ViewCropTransform, with_view_crops
from hf_ssl.evaluation import KnnEvaluator
from hf_ssl.models import build_image_processor
from hf_ssl.training import DinoTrainingArguments, build_trainer

VIT_SMALL_16 = dict(
    model_type="vit",
    hidden_size=384,
    num_hidden_layers=12,
    num_attention_heads=6,
    intermediate_size=1536,
    patch_size=16,
    image_size=224,
    layer_norm_eps=1e-6,
    qkv_bias=True,
)


def generated_images(count: int, size: int = 256, seed: int = 0) -> Dataset:
    """Two classes of textured images (stripes in two orientations plus noise), labelled."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for index in range(count):
        grid = np.zeros((size, size), np.float32)
        period = int(rng.integers(6, 24))
        if index % 2:
            grid[::period] = 1.0
        else:
            grid[:, ::period] = 1.0
        pixels = grid[..., None] * rng.uniform(80, 220, 3) + rng.normal(0, 25, (size, size, 3))
        images.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))
        labels.append(index % 2)
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["vertical", "horizontal"])})
    return Dataset.from_dict({"image": images, "label": labels}, features=features)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["trainer", "accelerate"], default="trainer")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="bf16")
    parser.add_argument("--batch-size", type=int, default=64, help="Per device.")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--knn", action="store_true", help="Also run k-NN during and after training.")
    args = parser.parse_args()

    dataset = generated_images(args.images)
    multicrop = MultiCropConfig()
    torch.manual_seed(0)
    model = DinoForPreTraining(DinoConfig(backbone_config=VIT_SMALL_16))
    teacher_before = {
        name: tensor.detach().float().cpu().clone() for name, tensor in model.teacher.state_dict().items()
    }
    with tempfile.TemporaryDirectory() as output_dir:
        training = DinoTrainingArguments(
            output_dir=output_dir,
            engine=args.engine,
            per_device_train_batch_size=args.batch_size,
            max_steps=args.warmup + args.steps,
            logging_steps=args.warmup,
            warmup_epochs=0.0,
            freeze_last_layer_epochs=0.0,
            bf16=args.precision == "bf16",
            fp16=args.precision == "fp16",
            dataloader_num_workers=args.workers,
            report_to="none",
            seed=0,
            disable_tqdm=True,
        )
        evaluator = None
        if args.knn:
            processor = build_image_processor("vit", 224, list(multicrop.mean), list(multicrop.std))
            evaluator = KnnEvaluator(
                dataset.select(range(512)),
                dataset.select(range(512, 640)),
                processor,
                k=5,
                batch_size=128,
                show_progress=False,
            )
        trainer = build_trainer(
            model=model,
            args=training,
            view_config=multicrop,
            train_dataset=with_view_crops(dataset, ViewCropTransform(multicrop)),
            knn_evaluator=evaluator,
            knn_eval_steps=args.warmup if args.knn else 0,
            knn_at_end=args.knn,
        )
        trainer.train()
        accelerator = trainer.accelerator
        wrapped = trainer.model_wrapped if hasattr(trainer, "model_wrapped") else trainer.wrapped_model
        full_state = accelerator.get_state_dict(wrapped)  # gathers the shards under FSDP (every process)
        if not accelerator.is_main_process:
            return
        logs = [entry for entry in trainer.state.log_history if "loss" in entry]
        knn = [entry["knn_top1"] for entry in trainer.state.log_history if "knn_top1" in entry]
        teacher_after = {
            name[len("teacher.") :].replace("_fsdp_wrapped_module.", ""): tensor.float().cpu()
            for name, tensor in full_state.items()
            if name.startswith("teacher.")
        }
        moved = max(
            (teacher_after[name] - before).abs().max().item()
            for name, before in teacher_before.items()
            if name in teacher_after
        )
        result = {
            "engine": args.engine,
            "precision": args.precision,
            "distributed_type": str(accelerator.distributed_type),
            "processes": accelerator.num_processes,
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
            "teacher_max_change": moved,
            "teacher_tensors_compared": len(teacher_after),
            "knn_top1": knn,
        }
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
