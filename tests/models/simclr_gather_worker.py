"""Worker for the multi-process NT-Xent and `all_gather_with_grad` tests, kept free of transformers so each
process starts in about a second.

`loss_simclr.py` and `distributed.py` depend on torch only, so they are loaded from their files under stand-in
packages rather than through `import hf_ssl` (which imports transformers: several seconds per process).
"""

import importlib
import sys
import types
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

MODELS_DIR = Path(__file__).resolve().parents[2] / "hf_ssl" / "models"
STANDALONE_PACKAGE = "hf_ssl_models_standalone"

# the contrastive problem both the 1-process reference and the 2-process run solve
INPUT_DIM, PROJECTION_DIM, TEMPERATURE = 6, 4, 0.5
# rows of the uneven gather check: rank r holds UNEVEN_ROWS[r] rows
UNEVEN_ROWS = (1, 3)
UNEVEN_FEATURES = 2
# images of each rank in the NT-Xent runs over unequal shares: SHARES[name][r] images on rank r
# (an offset that assumed equal shares would index past the gathered rows with the first and third, and pick the
# wrong rows with the second)
SHARES = {"more on rank 1": (3, 5), "more on rank 0": (5, 3), "none on rank 0": (0, 4)}


def load_standalone_modules():
    """(loss_simclr, distributed) modules, imported without running the hf_ssl package __init__ files."""
    if STANDALONE_PACKAGE not in sys.modules:
        for name, path in ((STANDALONE_PACKAGE, MODELS_DIR), (f"{STANDALONE_PACKAGE}.simclr", MODELS_DIR / "simclr")):
            package = types.ModuleType(name)
            package.__path__ = [str(path)]
            sys.modules[name] = package
    loss_module = importlib.import_module(f"{STANDALONE_PACKAGE}.simclr.loss_simclr")
    distributed_module = importlib.import_module(f"{STANDALONE_PACKAGE}.distributed")
    return loss_module, distributed_module


def make_problem(num_images: int):
    """A seeded linear projection and two views of `num_images` inputs: (linear, inputs_a, inputs_b)."""
    generator = torch.Generator().manual_seed(0)
    linear = nn.Linear(INPUT_DIM, PROJECTION_DIM)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator))
        linear.bias.copy_(torch.randn(linear.bias.shape, generator=generator))
    inputs_a = torch.randn(num_images, INPUT_DIM, generator=generator)
    inputs_b = inputs_a + 0.5 * torch.randn(num_images, INPUT_DIM, generator=generator)
    return linear, inputs_a, inputs_b


def loss_and_gradients(loss_fn, linear, inputs_a, inputs_b):
    """(loss, {parameter name: gradient}) of one forward and backward."""
    linear.zero_grad()
    loss = loss_fn(linear(inputs_a), linear(inputs_b))
    loss.backward()
    return loss.detach(), {name: parameter.grad.clone() for name, parameter in linear.named_parameters()}


def uneven_inputs(rank: int) -> torch.Tensor:
    """Rank r's rows for the uneven gather check: distinct values, so the gathered order can be checked."""
    start = sum(UNEVEN_ROWS[:rank])
    return torch.arange(
        start * UNEVEN_FEATURES, (start + UNEVEN_ROWS[rank]) * UNEVEN_FEATURES, dtype=torch.float32
    ).view(UNEVEN_ROWS[rank], UNEVEN_FEATURES)


def uneven_weights(rank: int) -> torch.Tensor:
    """Rank r's weights over the whole gathered tensor: rank r's loss is (gathered * weights).sum()."""
    generator = torch.Generator().manual_seed(100 + rank)
    return torch.randn(sum(UNEVEN_ROWS), UNEVEN_FEATURES, generator=generator)


def run_rank(rank: int, world_size: int, port: int, result_file: str) -> None:
    """Rank r takes images [r * B, (r + 1) * B) of the problem; saves its loss and the process-averaged gradients
    (what DistributedDataParallel applies), once with the real gather and once with a gather without gradient."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        loss_module, distributed_module = load_standalone_modules()
        total_images = 4 * world_size
        linear, inputs_a, inputs_b = make_problem(total_images)
        local = slice(rank * 4, (rank + 1) * 4)
        loss_fn = loss_module.NTXentLoss(TEMPERATURE)

        def gather_without_grad(tensor):
            # what a plain all_gather gives: the gathered rows as constants
            return distributed_module.all_gather_with_grad_and_offset(tensor.detach())

        results = {}
        for variant in ("with_grad", "without_grad"):
            if variant == "without_grad":
                loss_module.all_gather_with_grad_and_offset = gather_without_grad
            loss, gradients = loss_and_gradients(loss_fn, linear, inputs_a[local], inputs_b[local])
            mean_loss = loss.clone()
            dist.all_reduce(mean_loss)
            for gradient in gradients.values():
                dist.all_reduce(gradient)
                gradient /= world_size
            results[variant] = {"local_loss": loss, "mean_loss": mean_loss / world_size, "gradients": gradients}

        rows = uneven_inputs(rank).requires_grad_(True)
        gathered, offset = distributed_module.all_gather_with_grad_and_offset(rows)
        (gathered * uneven_weights(rank)).sum().backward()
        results["uneven"] = {"gathered": gathered.detach(), "offset": offset, "grad": rows.grad}
        torch.save(results, f"{result_file}.{rank}")
    finally:
        dist.destroy_process_group()


def share_projections(shares: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The (N, PROJECTION_DIM) projections of both views of the N = sum(shares) images, rank 0's images first."""
    generator = torch.Generator().manual_seed(sum(shares))
    projections_a = torch.randn(sum(shares), PROJECTION_DIM, generator=generator)
    return projections_a, projections_a + 0.5 * torch.randn(projections_a.shape, generator=generator)


def run_shares_rank(rank: int, world_size: int, port: int, result_file: str, shares: tuple[int, ...]) -> None:
    """Rank r takes its shares[r] images (maybe none) of `share_projections(shares)`, computes the real NT-Xent loss
    on them and backpropagates it weighted by its share of the images (so that the losses summed over processes are
    the one-process loss over all images); saves its loss and the gradients of its own projections."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        loss_module, _ = load_standalone_modules()
        projections_a, projections_b = share_projections(shares)
        own = slice(sum(shares[:rank]), sum(shares[: rank + 1]))
        local_a = projections_a[own].clone().requires_grad_(True)
        local_b = projections_b[own].clone().requires_grad_(True)
        loss = loss_module.NTXentLoss(TEMPERATURE)(local_a, local_b)
        (loss * shares[rank] / sum(shares)).backward()
        torch.save({"loss": loss.detach(), "grad_a": local_a.grad, "grad_b": local_b.grad}, f"{result_file}.{rank}")
    finally:
        dist.destroy_process_group()
