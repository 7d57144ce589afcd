"""Compare the saved models of two runs tensor by tensor: are they bit-identical?

    python benchmarks/compare_weights.py outputs/run-a outputs/run-b

Prints the number of tensors, how many differ and the largest absolute difference; exits 1 when any differs.
Used to check that a change to the engines leaves a recipe's result unchanged (README: DINO before and after
the method interface)."""

import sys

import torch
from safetensors.torch import load_file


def main(first: str, second: str) -> int:
    a, b = load_file(f"{first}/model.safetensors"), load_file(f"{second}/model.safetensors")
    if a.keys() != b.keys():
        print(
            f"different tensors: only in {first}: {sorted(a.keys() - b.keys())[:5]}; "
            f"only in {second}: {sorted(b.keys() - a.keys())[:5]}"
        )
        return 1
    differing = [name for name in a if not torch.equal(a[name], b[name])]
    largest = max((float((a[name].double() - b[name].double()).abs().max()) for name in differing), default=0.0)
    parameters = sum(tensor.numel() for tensor in a.values())
    print(f"{len(a)} tensors ({parameters} values): {len(differing)} differ, largest absolute difference {largest:g}")
    if differing:
        print("first differing:", differing[:5])
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
