"""Worker for the multi-process VICReg test, kept free of transformers so each process starts in about a second.

`loss_vicreg.py` and `distributed.py` depend on torch only: they are imported from their files under stand-in
packages, without running the hf_ssl package __init__ files (which import transformers).

Every rank solves its share of one problem: a seeded linear map of two views of `TOTAL_IMAGES` inputs. The test
compares what the ranks saved with one process holding every image.
"""

import importlib
import sys
import types
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

MODELS_DIR = Path(__file__).resolve().parents[2] / "hf_ssl" / "models"
STANDALONE_PACKAGE = "hf_ssl_vicreg_standalone"

INPUT_DIM, EMBEDDING_DIM, TOTAL_IMAGES = 5, 4, 8
# images of rank 0 and rank 1 in each split of the TOTAL_IMAGES (rank 0 takes the first ones)
SPLITS = {"even": (4, 4), "uneven": (3, 5), "one_empty": (0, 8)}


def load_standalone_modules():
    """(loss_vicreg, distributed) modules, imported without the hf_ssl package __init__ files."""
    if STANDALONE_PACKAGE not in sys.modules:
        for name, path in ((STANDALONE_PACKAGE, MODELS_DIR), (f"{STANDALONE_PACKAGE}.vicreg", MODELS_DIR / "vicreg")):
            package = types.ModuleType(name)
            package.__path__ = [str(path)]
            sys.modules[name] = package
    loss_module = importlib.import_module(f"{STANDALONE_PACKAGE}.vicreg.loss_vicreg")
    return loss_module, importlib.import_module(f"{STANDALONE_PACKAGE}.distributed")


def make_problem():
    """(linear, inputs_a, inputs_b): a seeded linear map and the two views of TOTAL_IMAGES inputs."""
    generator = torch.Generator().manual_seed(0)
    linear = nn.Linear(INPUT_DIM, EMBEDDING_DIM)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator))
        linear.bias.copy_(torch.randn(linear.bias.shape, generator=generator))
    inputs_a = torch.randn(TOTAL_IMAGES, INPUT_DIM, generator=generator)
    inputs_b = inputs_a + 0.5 * torch.randn(TOTAL_IMAGES, INPUT_DIM, generator=generator)
    return linear, inputs_a, inputs_b


def loss_and_gradients(loss_fn, linear, inputs_a, inputs_b):
    """(loss, {parameter name: gradient}) of one forward and backward."""
    linear.zero_grad()
    loss = loss_fn(linear(inputs_a), linear(inputs_b))
    loss.backward()
    return loss.detach(), {name: parameter.grad.clone() for name, parameter in linear.named_parameters()}


def run_rank(rank: int, world_size: int, port: int, result_file: str) -> None:
    """For each split: this rank's loss and the gradients averaged over the ranks (what DistributedDataParallel
    applies); then the even split again with a gather that sends no gradient to the other ranks."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        loss_module, distributed_module = load_standalone_modules()
        loss_fn = loss_module.VicRegLoss()
        linear, inputs_a, inputs_b = make_problem()
        results = {}
        for split, counts in SPLITS.items():
            start = sum(counts[:rank])
            local = slice(start, start + counts[rank])
            loss, gradients = loss_and_gradients(loss_fn, linear, inputs_a[local], inputs_b[local])
            for gradient in gradients.values():
                dist.all_reduce(gradient)
                gradient /= world_size
            results[split] = {"loss": loss, "gradients": gradients}

        def gather_without_peer_gradients(tensor):
            # what a plain all_gather gives: the other ranks' rows as constants, this rank's own rows in place
            gathered, offset = distributed_module.all_gather_with_grad_and_offset(tensor.detach())
            return torch.cat([gathered[:offset], tensor, gathered[offset + tensor.shape[0] :]])

        loss_module.all_gather_with_grad = gather_without_peer_gradients
        local = slice(rank * 4, rank * 4 + 4)
        loss, gradients = loss_and_gradients(loss_fn, linear, inputs_a[local], inputs_b[local])
        for gradient in gradients.values():
            dist.all_reduce(gradient)
            gradient /= world_size
        results["without_peer_gradients"] = {"loss": loss, "gradients": gradients}
        torch.save(results, f"{result_file}.{rank}")
        dist.barrier()
    finally:
        dist.destroy_process_group()
