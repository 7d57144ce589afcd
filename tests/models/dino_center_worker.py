"""Worker for the multi-process center test, kept free of transformers so each process starts in about a second.

`loss_dino.py` depends on torch only, so it is loaded from its file rather than through `import hf_ssl` (which
imports transformers: several seconds per process).
"""

import importlib.util
from pathlib import Path

import torch
import torch.distributed as dist

LOSS_FILE = Path(__file__).resolve().parents[2] / "hf_ssl" / "models" / "dino" / "loss_dino.py"


def load_dino_loss_class():
    spec = importlib.util.spec_from_file_location("hf_ssl_loss_dino_standalone", LOSS_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.DinoLoss


def update_center_on_rank(rank, world_size, init_file, rows_per_rank, result_file):
    """Rank r holds `rows_per_rank[r]` rows filled with r + 1; saves its center after one update (m = 0.5)."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        loss_fn = load_dino_loss_class()(out_dim=2, center_momentum=0.5)
        loss_fn.update_center(torch.full((rows_per_rank[rank], 2), float(rank + 1)))
        torch.save(loss_fn.center, f"{result_file}.{rank}")
    finally:
        dist.barrier()  # every rank done before the group closes: one leaving early can abort at exit
        dist.destroy_process_group()
