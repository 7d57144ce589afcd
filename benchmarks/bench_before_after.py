"""Training throughput of the same recipe on two checkouts of hf_ssl, alternated in one run: a ratio that a
change of the engines can be judged by (machine noise hits both sides alike).

    git worktree add /tmp/before <commit>
    HF_HUB_OFFLINE=1 python benchmarks/bench_before_after.py /tmp/before --steps 300 --repeats 3

Each side runs ``recipes/train_dino.py`` (or ``--script``) of its own checkout with its own recipe file, with
``training.max_steps=STEPS``, no k-NN and no checkpoints, in a fresh process, and reports the Trainer's
``train_steps_per_second``; the sides alternate ``--repeats`` times. Prints every run, the median of each side
and after / before.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def steps_per_second(checkout: Path, script: str, config: str, steps: int, output_dir: str) -> float:
    command = [
        sys.executable,
        str(checkout / script),
        "--config",
        str(checkout / config),
        f"training.max_steps={steps}",
        f"training.output_dir={output_dir}",
        "data.eval_split=null",
        "training.save_strategy=no",
        "training.engine=trainer",
    ]
    environment = {**os.environ, "PYTHONPATH": str(checkout), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, cwd=checkout, env=environment, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{checkout}: {result.stderr[-2000:]}")
    match = re.search(r"'train_steps_per_second': '?([0-9.]+)", result.stdout + result.stderr)
    if match is None:
        raise SystemExit(f"{checkout}: no train_steps_per_second in the output")
    return float(match.group(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path, help="The other checkout (e.g. a git worktree of the old commit).")
    parser.add_argument("--script", default="recipes/train_dino.py")
    parser.add_argument("--config", default="recipes/dino_fashion_mnist_demo.yaml")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for side, checkout in (("before", args.before.resolve()), ("after", HERE)):
                value = steps_per_second(checkout, args.script, args.config, args.steps, f"{scratch}/{side}-{repeat}")
                runs[side].append(value)
                print(f"run {repeat + 1} {side}: {value:.3f} steps/s", flush=True)
    before, after = statistics.median(runs["before"]), statistics.median(runs["after"])
    print(f"median: before {before:.3f} steps/s, after {after:.3f} steps/s, after / before = {after / before:.3f}")


if __name__ == "__main__":
    main()
