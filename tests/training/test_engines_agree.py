"""The two engines run the same DINO: from the same model, data and seed, ``SslTrainer`` and
``AccelerateTrainer`` end with the same weights (bit for bit), and the optimizer really used each
step's scheduled learning rate and weight decay."""

import pytest
import torch
from datasets import Dataset

from hf_ssl import DinoForPreTraining
from tests.helpers import make_dino_trainer, random_images, tiny_dino_config


def run(tmp_path, engine, **overrides):
    torch.manual_seed(0)
    model = DinoForPreTraining(tiny_dino_config())
    trainer = make_dino_trainer(
        tmp_path / engine,
        Dataset.from_dict({"image": random_images(16)}),
        engine=engine,
        model=model,
        max_steps=6,
        gradient_accumulation_steps=2,
        warmup_epochs=1.0,
        learning_rate=2e-3,
        min_lr=1e-4,
        weight_decay=0.04,
        weight_decay_end=0.4,
        freeze_last_layer_epochs=1.0,
        adam_epsilon=1e-4,
        **overrides,
    )
    seen = []  # (lr, weight decay) of the first group at each optimizer step, read from the optimizer
    trainer_optimizer_step = None

    def record(*args, **kwargs):
        group = trainer.optimizer.param_groups[0]
        seen.append((group["lr"], group["weight_decay"]))
        return trainer_optimizer_step(*args, **kwargs)

    if engine == "trainer":
        original_create = trainer.create_optimizer

        def create_optimizer(model=None):
            nonlocal trainer_optimizer_step
            optimizer = original_create(model)
            if trainer_optimizer_step is None:
                trainer_optimizer_step = optimizer.step
                optimizer.step = record
            return optimizer

        trainer.create_optimizer = create_optimizer
    else:
        original_prepare = trainer.accelerator.prepare

        def prepare(*objects):
            nonlocal trainer_optimizer_step
            prepared = original_prepare(*objects)
            optimizer = prepared[1].optimizer  # the torch optimizer: stepped once per optimizer step
            trainer_optimizer_step = optimizer.step
            optimizer.step = record
            return prepared

        trainer.accelerator.prepare = prepare
    trainer.train()
    return model.state_dict(), seen, trainer.schedules


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_both_engines_end_with_the_same_weights(precision, tmp_path):
    # bf16: autocast on the CPU (use_cpu), the weights and the EMA stay float32
    options = {"bf16": True, "use_cpu": True} if precision == "bf16" else {}
    trainer_state, trainer_seen, schedules = run(tmp_path, "trainer", **options)
    accelerate_state, accelerate_seen, _ = run(tmp_path, "accelerate", **options)
    # 16 images / batch 4 / accumulation 2 = 2 updates per epoch: 1 warmup epoch, last layer frozen for 2 steps
    expected = [
        (pytest.approx(schedules.learning_rate(step)), pytest.approx(schedules.weight_decay(step)))
        for step in range(6)
    ]
    assert trainer_seen == expected
    assert accelerate_seen == expected
    assert len({lr for lr, _ in accelerate_seen}) == 6, "the learning rate must change every step"
    torch.manual_seed(0)
    initial = DinoForPreTraining(tiny_dino_config()).state_dict()
    assert not torch.equal(
        trainer_state["teacher.backbone.embeddings.cls_token"], initial["teacher.backbone.embeddings.cls_token"]
    )
    for name in trainer_state:
        assert trainer_state[name].dtype == initial[name].dtype
        # bit for bit: the engines differ only in the loop, so they run the same operations in the same order
        torch.testing.assert_close(accelerate_state[name], trainer_state[name], rtol=0, atol=0, msg=name)
