"""Fine-tuning a pretrained backbone against the same architecture from random init: full fine-tune (layer-wise lr
decay) and linear probe, on the same data, schedule and seed. The README's Fashion-MNIST table comes from

    python benchmarks/bench_finetune.py --model outputs/dino-fashion-mnist-demo      # after `make demo`

It runs recipes/finetune_fashion_mnist.yaml and recipes/finetune_fashion_mnist_linear_probe.yaml four times (pretrained
and model.from_scratch=true; --override adds recipe overrides to every run) and prints one JSON line per run and a
Markdown table of test top-1 / top-5 / macro F1 and wall time.
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RECIPES = {
    "full fine-tune": "recipes/finetune_fashion_mnist.yaml",
    "linear probe": "recipes/finetune_fashion_mnist_linear_probe.yaml",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/dino-fashion-mnist-demo", help="The pretrained run or backbone.")
    parser.add_argument("--output_root", default="outputs/bench-finetune")
    parser.add_argument(
        "--override", action="append", default=[], help="A recipe override for every run (section.key=value)."
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (1 keeps a busy 2-core machine from thrashing)."
    )
    arguments = parser.parse_args()
    if arguments.threads:
        import torch

        torch.set_num_threads(arguments.threads)

    from hf_ssl.finetuning.run import FinetuneRecipe, run_finetuning

    rows = []
    for mode, recipe_path in RECIPES.items():
        for start, scratch in (("pretrained", False), ("random init", True)):
            output = Path(arguments.output_root) / f"{mode.replace(' ', '-')}-{start.replace(' ', '-')}"
            recipe = FinetuneRecipe.from_yaml(
                recipe_path,
                [
                    f"model.model_name_or_path={arguments.model}",
                    f"model.from_scratch={str(scratch).lower()}",
                    f"training.output_dir={output}",
                    "training.overwrite_output_dir=true",
                    *arguments.override,
                ],
            )
            began = time.perf_counter()
            metrics = run_finetuning(recipe)
            seconds = time.perf_counter() - began
            row = {
                "benchmark": "finetune",
                "model": arguments.model,
                "mode": mode,
                "start": start,
                "seconds": round(seconds, 1),
                **{
                    key: round(100 * metrics[key], 2)
                    for key in ("test_accuracy", "test_top5_accuracy", "test_macro_f1", "eval_accuracy")
                    if key in metrics
                },
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    print("\n| mode | start | test top-1 | test top-5 | test macro F1 | time |\n|---|---|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['mode']} | {row['start']} | {row['test_accuracy']:.2f}% | {row['test_top5_accuracy']:.2f}% | "
            f"{row['test_macro_f1']:.2f}% | {row['seconds']:.0f} s |"
        )


if __name__ == "__main__":
    main()
