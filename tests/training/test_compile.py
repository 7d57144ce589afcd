"""training.torch_compile on both engines: the compiled run gives the eager run's weights (float tolerance;
inductor fuses and reorders float operations). Slow on CPU: the first compile takes about a minute."""

import pytest
import torch
from accelerate.utils import is_compiled_module
from datasets import Dataset

from hf_ssl import DinoForPreTraining
from tests.helpers import make_dino_trainer, random_images, tiny_dino_config

RTOL, ATOL = 1e-4, 1e-4


def initial_weights():
    torch.manual_seed(0)
    return DinoForPreTraining(tiny_dino_config()).state_dict()


def final_weights(tmp_path, engine, compiled):
    torch.manual_seed(0)
    model = DinoForPreTraining(tiny_dino_config())
    trainer = make_dino_trainer(
        tmp_path / f"{engine}-{compiled}",
        Dataset.from_dict({"image": random_images(16)}),
        engine=engine,
        model=model,
        max_steps=3,
        torch_compile=compiled,
        # A constant lr of 1e-2 and a teacher momentum of 0.5: student and teacher move by 1e-2 or so, a hundred
        # times the tolerance of the comparison (the defaults, lr 1e-3 decaying to 1e-6 and a momentum going
        # from 0.996 to 1.0, leave the teacher within it). A larger Adam eps keeps the key biases, whose
        # gradient is float noise (softmax ignores a shift shared by all keys), from moving by +-lr.
        learning_rate=1e-2,
        min_lr=1e-2,
        teacher_momentum=0.5,
        teacher_momentum_end=0.5,
        adam_epsilon=1e-4,
    )
    trainer.train()
    wrapped = trainer.model_wrapped if engine == "trainer" else trainer.wrapped_model
    assert is_compiled_module(wrapped) == compiled
    return model.state_dict()


def moved_far(after, before, prefix):
    """Names under ``prefix`` whose tensors moved by more than 10 times the comparison's tolerance."""
    return [
        name
        for name in after
        if name.startswith(prefix)
        and after[name].is_floating_point()
        and ((after[name] - before[name]).abs() > 10 * (ATOL + RTOL * before[name].abs())).any()
    ]


@pytest.mark.slow
def test_compiled_engines_match_the_eager_run(tmp_path):
    eager = final_weights(tmp_path, "accelerate", False)
    initial = initial_weights()
    for prefix in ("student.", "teacher."):  # the comparison below can then tell a wrong update from float noise
        tensors = [name for name in eager if name.startswith(prefix) and eager[name].is_floating_point()]
        moved = moved_far(eager, initial, prefix)
        assert len(moved) > 0.8 * len(tensors), f"{prefix}: only {len(moved)} of {len(tensors)} tensors moved"
    for engine in ("accelerate", "trainer"):  # the second compile reuses the first one's kernels
        compiled = final_weights(tmp_path, engine, True)
        for name in eager:
            torch.testing.assert_close(compiled[name], eager[name], rtol=RTOL, atol=ATOL, msg=f"{engine}: {name}")
