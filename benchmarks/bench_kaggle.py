"""Peak GPU memory and throughput of the Kaggle / Colab recipes (recipes/kaggle/*.yaml), as they are, on synthetic
256-px JPEGs: do they fit a 16 GB T4 / P100 in fp16? Memory allocated by PyTorch depends on the model, batch and
precision, not on the GPU, so a bigger GPU measures it too (the T4's usable memory is about 15 GiB).

    python benchmarks/bench_kaggle.py --part pretrain --steps 30
    python benchmarks/bench_kaggle.py --part finetune --steps 60
    python benchmarks/bench_kaggle.py --part finetune_step_cpu  # no GPU: an fp32 upper bound of the fine-tuning step

Prints one JSON line: the recipe, steps, images per second, peak allocated and reserved memory in GiB.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def synthetic_image_folder(root: Path, count: int, size: int = 256) -> Path:
    rng = np.random.default_rng(0)
    for index in range(count):
        folder = root / "train" / f"class{index % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        gradient = np.linspace(0, 255, size, dtype=np.float32)
        pixels = (
            (gradient[None, :, None] * (index % 4 + 1) / 4 + rng.normal(0, 40, (size, size, 3)))
            .clip(0, 255)
            .astype(np.uint8)
        )
        Image.fromarray(pixels).save(folder / f"{index}.jpg", quality=90)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--part", choices=("pretrain", "finetune", "finetune_step_cpu"), required=True)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="A recipe override (section.key=value), e.g. another batch size.",
    )
    arguments = parser.parse_args()
    if arguments.part == "finetune_step_cpu":
        return finetune_step_on_cpu()
    work = Path(tempfile.mkdtemp(prefix="bench_kaggle_"))
    data = synthetic_image_folder(work / "images", arguments.images)
    gpu = torch.cuda.is_available()
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    common = [
        "training.push_to_hub=false",
        "training.max_time_seconds=null",
        f"training.dataloader_num_workers={arguments.workers}",
        f"training.max_steps={arguments.steps}",
        "training.report_to=none",
        *arguments.override,
    ]
    start = time.perf_counter()
    if arguments.part == "pretrain":
        from hf_ssl.training.pretrain import run_pretraining
        from hf_ssl.training.setup.recipe import Recipe

        recipe_path = "recipes/kaggle/dino_vits16_t4.yaml"
        recipe = Recipe.from_yaml(
            recipe_path,
            [
                f"data.data_dir={data}",
                "data.eval_split=null",
                f"training.output_dir={work / 'dino'}",
                "training.save_strategy=no",
                *common,
            ],
        )
        run_pretraining(recipe)
        batch = recipe.training.per_device_train_batch_size * recipe.training.gradient_accumulation_steps
        precision = "fp16" if recipe.training.fp16 else "fp32"
    else:
        from transformers import ViTConfig, ViTModel

        from hf_ssl.finetuning.run import FinetuneRecipe, run_finetuning
        from hf_ssl.models import build_image_processor

        backbone = work / "vits16"
        ViTModel(
            ViTConfig(
                hidden_size=384,
                num_hidden_layers=12,
                num_attention_heads=6,
                intermediate_size=1536,
                patch_size=16,
                image_size=224,
                layer_norm_eps=1e-6,
            ),
            add_pooling_layer=False,
        ).save_pretrained(backbone)
        build_image_processor("vit", 224, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]).save_pretrained(backbone)
        recipe_path = "recipes/kaggle/finetune_vits16_t4.yaml"
        recipe = FinetuneRecipe.from_yaml(
            recipe_path,
            [
                f"model.model_name_or_path={backbone}",
                "data.dataset=imagefolder",
                f"data.data_dir={data}",
                "data.max_eval_samples=256",
                f"training.output_dir={work / 'finetune'}",
                "training.eval_strategy=no",
                "training.save_strategy=no",
                "training.load_best_model_at_end=false",
                "training.early_stopping_patience=null",
                *common,
            ],
        )
        run_finetuning(recipe)
        batch = recipe.training.per_device_train_batch_size * recipe.training.gradient_accumulation_steps
        precision = "fp16" if recipe.training.fp16 else "fp32"
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "benchmark": "kaggle_recipe",
                "recipe": recipe_path,
                "overrides": arguments.override,
                "precision": precision,
                "steps": arguments.steps,
                "batch_per_update": batch,
                "images_per_second_incl_setup": round(arguments.steps * batch / seconds, 1),
                "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if gpu else None,
                "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if gpu else None,
                "gpu": torch.cuda.get_device_name() if gpu else "none (cpu)",
            }
        )
    )


def finetune_step_on_cpu() -> None:
    """Peak resident memory of one fp32 AdamW step of the fine-tuning recipe's model and batch (ViT-S/16, 224 px,
    batch 128) on the CPU: fp32 activations are about twice fp16 autocast's, so it bounds what the GPU needs."""
    import resource

    from transformers import ViTConfig, ViTForImageClassification

    def peak_gib() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux

    model = ViTForImageClassification(
        ViTConfig(
            hidden_size=384,
            num_hidden_layers=12,
            num_attention_heads=6,
            intermediate_size=1536,
            patch_size=16,
            image_size=224,
            layer_norm_eps=1e-6,
            num_labels=1000,
        )
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = peak_gib()
    start = time.perf_counter()
    model(pixel_values=torch.randn(128, 3, 224, 224), labels=torch.randint(0, 1000, (128,))).loss.backward()
    optimizer.step()
    print(
        json.dumps(
            {
                "benchmark": "kaggle_finetune_step_cpu",
                "model": "ViT-S/16 224 px, 1000 classes",
                "batch": 128,
                "precision": "fp32",
                "peak_rss_gib_before": round(before, 2),
                "peak_rss_gib_after_step": round(peak_gib(), 2),
                "step_seconds": round(time.perf_counter() - start, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
