"""Run by test_fsdp.py under torchrun (2 CPU processes, gloo): shard a DinoForPreTraining with FSDP2,
bind DinoMethod after sharding, run one EMA update on the local shards, and check on process 0 that the
gathered teacher equals the EMA computed on an unsharded copy."""

import copy
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict  # noqa: E402
from torch.distributed.fsdp import fully_shard  # noqa: E402
from transformers.models.vit.modeling_vit import ViTLayer  # noqa: E402

from hf_ssl import DinoForPreTraining  # noqa: E402
from hf_ssl.training import DinoMethod, ema_update_  # noqa: E402
from hf_ssl.training.engines.base import end_process_group  # noqa: E402
from tests.helpers import tiny_dino_config, tiny_multicrop_config  # noqa: E402

MOMENTUM = 0.9


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = DinoForPreTraining(tiny_dino_config())
    with torch.no_grad():  # a teacher that differs from the student, so the EMA moves it
        generator = torch.Generator().manual_seed(1)
        for parameter in model.teacher.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    reference = copy.deepcopy(model)
    unsharded_teacher_ids = {id(parameter) for parameter in model.teacher.parameters()}

    for network in (model.student, model.teacher):
        for module in network.modules():
            if isinstance(module, ViTLayer):
                fully_shard(module)
        fully_shard(network)
    fully_shard(model)
    assert not {id(parameter) for parameter in model.teacher.parameters()} & unsharded_teacher_ids, (
        "FSDP2 kept the parameters"
    )

    step = DinoMethod(
        model, tiny_multicrop_config(), seed=0, process_index=rank, max_consecutive_nonfinite_steps=5, reduce=None
    )
    teacher_shards, student_shards = step.ema_parameter_pairs
    ema_update_(teacher_shards, student_shards, MOMENTUM)

    gathered = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        expected = reference.state_dict()
        worst = 0.0
        for name, value in gathered.items():
            if name.startswith("teacher."):
                student_name = "student." + name[len("teacher.") :]
                target = expected[name].lerp(expected[student_name], 1.0 - MOMENTUM)
                worst = max(worst, (value - target).abs().max().item())
        print(f"max |teacher - EMA reference| = {worst:.3g} over {len(teacher_shards)} local shards", flush=True)
        assert worst < 1e-6, worst
        print("FSDP2 EMA OK", flush=True)
    end_process_group()  # a barrier first: rank 1 leaving while rank 0 checks aborted once at exit


if __name__ == "__main__":
    main()
