import math

import pytest
import torch
from transformers import TrainerCallback

from hf_ssl import DinoForPreTraining
from hf_ssl.data import ViewCropTransform, with_view_crops
from hf_ssl.training import SslTrainer
from hf_ssl.training.methods import base as method_base
from tests.helpers import make_dino_trainer, tiny_dino_config, tiny_multicrop_config, tiny_training_arguments


def make_trainer(tmp_path, dataset, model=None, knn_evaluator=None, knn_eval_steps=0, **argument_overrides):
    multicrop = tiny_multicrop_config()
    model = model or DinoForPreTraining(tiny_dino_config())
    train_dataset = with_view_crops(dataset, ViewCropTransform(multicrop))
    arguments = tiny_training_arguments(tmp_path / "out", **argument_overrides)
    return SslTrainer(
        model=model,
        args=arguments,
        view_config=multicrop,
        train_dataset=train_dataset,
        knn_evaluator=knn_evaluator,
        knn_eval_steps=knn_eval_steps,
    )


def snapshot(module):
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def test_tiny_end_to_end_run_logs_and_updates(tmp_path, tiny_image_dataset):
    trainer = make_trainer(tmp_path, tiny_image_dataset)
    model = trainer.model
    student_before, teacher_before = snapshot(model.student), snapshot(model.teacher)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 4
    for entry in logs:
        assert math.isfinite(entry["loss"])
        for key in (
            "learning_rate",
            "weight_decay",
            "teacher_momentum",
            "teacher_temperature",
            "teacher_entropy",
            "embedding_std",
            "effective_rank",
            "mean_l2_norm",
            "grad_norm",
        ):
            assert key in entry, key
        assert entry["images_per_second"] > 0
    changed_student = [n for n, t in snapshot(model.student).items() if not torch.equal(t, student_before[n])]
    changed_teacher = [n for n, t in snapshot(model.teacher).items() if not torch.equal(t, teacher_before[n])]
    assert changed_student and changed_teacher
    for parameter in model.teacher.parameters():
        assert not parameter.requires_grad
    # the history of the run is saved as JSON and plotted
    from hf_ssl.training.state.history import History

    history = History.load(tmp_path / "out" / "history.json")
    assert [entry["loss"] for entry in history.steps if "loss" in entry] == [entry["loss"] for entry in logs]
    assert (tmp_path / "out" / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def record_param_groups(trainer, engine):
    """``[(step, [(lr, weight_decay) of each param group])]``, read as the optimizer is about to step."""
    seen = []

    def record(step):
        seen.append((step, [(group["lr"], group["weight_decay"]) for group in trainer.optimizer.param_groups]))

    if engine == "trainer":

        class Recorder(TrainerCallback):  # added after MethodStepCallback, so it runs after it
            def on_pre_optimizer_step(self, args, state, control, **kwargs):
                record(state.global_step)

        trainer.add_callback(Recorder())
    else:
        before_optimizer_step = trainer.method.before_optimizer_step

        def recording(optimizer, step):
            skipped = before_optimizer_step(optimizer, step)
            record(step)
            return skipped

        trainer.method.before_optimizer_step = recording
    return seen


@pytest.mark.parametrize("engine", ["trainer", "accelerate"])
def test_optimizer_gets_the_scheduled_lr_and_weight_decay_at_every_step(tmp_path, tiny_image_dataset, engine):
    # 16 images in batches of 4: 4 optimizer steps per epoch, 7 steps in all. Warmup 1 epoch = steps 0-3,
    # last layer frozen 0.5 epoch = steps 0-1, peak lr = 0.0512 * total batch 4 / 256 = 8e-4.
    trainer = make_dino_trainer(
        tmp_path,
        tiny_image_dataset,
        engine=engine,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        max_steps=7,
        learning_rate=0.0512,
        scale_learning_rate=True,
        warmup_epochs=1.0,
        warmup_start_lr=1e-4,
        min_lr=2e-5,
        weight_decay=0.04,
        weight_decay_end=0.4,
        freeze_last_layer_epochs=0.5,
    )
    seen = record_param_groups(trainer, engine)
    trainer.train()

    # warmup: 1e-4 + (8e-4 - 1e-4) * step / 4; then a half cosine from 8e-4 (step 4) to 2e-5 (step 6, the last)
    expected_lr = [1e-4, 2.75e-4, 4.5e-4, 6.25e-4, 8e-4, (8e-4 + 2e-5) / 2, 2e-5]
    # a half cosine from 0.04 (step 0) to 0.4 (step 6): 0.4 - 0.18 * (1 + cos(pi * step / 6))
    expected_weight_decay = [
        0.04,
        0.4 - 0.18 * (1 + math.sqrt(3) / 2),
        0.13,
        0.22,
        0.31,
        0.4 - 0.18 * (1 - math.sqrt(3) / 2),
        0.4,
    ]
    assert [step for step, _ in seen] == list(range(7))
    groups = trainer.optimizer.param_groups
    # weights, biases/norms, then the head's last layer (a weight-norm direction: decayed) in a group of its own
    assert [(g["apply_weight_decay"], g.get("last_layer", False)) for g in groups] == [
        (True, False),
        (False, False),
        (True, True),
    ]
    assert all(p.ndim > 1 for p in groups[0]["params"]) and all(p.ndim <= 1 for p in groups[1]["params"])
    assert groups[2]["params"] == [p for p in trainer.model.last_layer_parameters() if p.requires_grad]
    for step, values in seen:
        lr, weight_decay = expected_lr[step], expected_weight_decay[step]
        last_layer_lr = 0.0 if step < 2 else lr
        assert values == [
            (pytest.approx(lr), pytest.approx(weight_decay)),
            (pytest.approx(lr), 0.0),
            (pytest.approx(last_layer_lr), pytest.approx(weight_decay)),
        ], f"step {step}"
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["learning_rate"] for entry in logs] == pytest.approx(expected_lr)
    assert [entry["weight_decay"] for entry in logs] == pytest.approx(expected_weight_decay)


def test_ema_runs_once_per_optimizer_step_under_accumulation(tmp_path, tiny_image_dataset, monkeypatch):
    calls = []
    original = method_base.ema_update_

    def counting(teacher, student, momentum):
        calls.append(momentum)
        original(teacher, student, momentum)

    monkeypatch.setattr(method_base, "ema_update_", counting)
    trainer = make_trainer(
        tmp_path,
        tiny_image_dataset,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=3,
        teacher_momentum=0.9,
    )
    trainer.train()
    assert len(calls) == 3  # 6 micro-batches, 3 optimizer steps
    assert calls == pytest.approx([trainer.schedules.teacher_momentum(step) for step in range(3)])
    assert calls[0] == pytest.approx(0.9)


def floating_parameters(module):
    return {
        name: parameter.detach().clone()
        for name, parameter in module.named_parameters()
        if parameter.is_floating_point()
    }


@pytest.mark.parametrize("engine", ["trainer", "accelerate"])
def test_ema_update_equals_formula_after_one_step(tmp_path, tiny_image_dataset, engine):
    # A constant momentum and a constant lr: the schedules of a one-step run sit at their end values, and the
    # defaults (momentum 1.0, min_lr 1e-6) would leave the teacher where it was, within any tolerance.
    # 0.9, not 0.5, so that an update with momentum and 1 - momentum swapped shows too.
    momentum, atol, rtol = 0.9, 1e-6, 1e-5
    trainer = make_dino_trainer(
        tmp_path,
        tiny_image_dataset,
        engine=engine,
        max_steps=1,
        teacher_momentum=momentum,
        teacher_momentum_end=momentum,
        learning_rate=1e-2,
        min_lr=1e-2,
    )
    teacher_before = floating_parameters(trainer.model.teacher)
    trainer.train()
    student_after, teacher_after = (
        floating_parameters(trainer.model.student),
        floating_parameters(trainer.model.teacher),
    )
    assert teacher_after.keys() == student_after.keys() == teacher_before.keys()
    for name, value in teacher_after.items():
        expected = momentum * teacher_before[name] + (1 - momentum) * student_after[name]
        torch.testing.assert_close(value, expected, rtol=rtol, atol=atol, msg=name)
    # Adam's first step moves every trained weight by about lr, the teacher follows by (1 - momentum) of it
    movement = {name: (teacher_after[name] - teacher_before[name]).abs().max().item() for name in teacher_after}
    assert max(movement.values()) > 1e-3 > 100 * atol
    moved = [name for name, value in movement.items() if value > 100 * atol]
    assert len(moved) > 0.9 * len(movement), sorted(set(movement) - set(moved))


def test_last_layer_is_frozen_for_the_first_epochs(tmp_path, tiny_image_dataset):
    trainer = make_trainer(tmp_path, tiny_image_dataset, max_steps=3, freeze_last_layer_epochs=100.0)
    last_layer = [p.detach().clone() for p in trainer.model.last_layer_parameters()]
    trainer.train()
    assert trainer.schedules.freeze_last_layer_steps > 3
    for before, parameter in zip(last_layer, trainer.model.last_layer_parameters()):
        assert torch.equal(before, parameter.detach())

    unfrozen = make_trainer(tmp_path, tiny_image_dataset, max_steps=3, freeze_last_layer_epochs=0.0)
    last_layer = [p.detach().clone() for p in unfrozen.model.last_layer_parameters()]
    unfrozen.train()
    assert any(not torch.equal(b, p.detach()) for b, p in zip(last_layer, unfrozen.model.last_layer_parameters()))


def poison_forward(model, nan_calls):
    original = model.forward
    counter = {"calls": 0}

    def forward(*args, **kwargs):
        outputs = original(*args, **kwargs)
        if counter["calls"] in nan_calls:
            outputs.loss = outputs.loss * float("nan")
        counter["calls"] += 1
        return outputs

    model.forward = forward  # the calls listed in nan_calls return a NaN loss


def test_nonfinite_step_is_skipped_and_counted(tmp_path, tiny_image_dataset):
    trainer = make_trainer(tmp_path, tiny_image_dataset, max_steps=3)
    poison_forward(trainer.model, nan_calls={1})
    trainer.train()
    assert trainer.skipped_steps == 1
    for parameter in trainer.model.student.parameters():
        assert torch.isfinite(parameter).all()
    logs = [entry for entry in trainer.state.log_history if "skipped_steps" in entry]
    assert logs[-1]["skipped_steps"] == 1


def test_too_many_nonfinite_steps_stop_with_advice(tmp_path, tiny_image_dataset):
    trainer = make_trainer(tmp_path, tiny_image_dataset, max_steps=10, max_consecutive_nonfinite_steps=2)
    poison_forward(trainer.model, nan_calls=set(range(100)))
    with pytest.raises(RuntimeError, match="NaN or inf for 2 optimizer steps in a row.*learning_rate"):
        trainer.train()


def test_bad_images_are_skipped_and_training_goes_on(tmp_path):
    import io

    import numpy as np
    from datasets import Dataset, Features
    from datasets import Image as ImageFeature
    from PIL import Image

    from tests.helpers import png_bytes, random_images

    good = [{"bytes": png_bytes(image), "path": None} for image in random_images(6)]
    cmyk = random_images(1)[0].convert("CMYK")
    cmyk_buffer = io.BytesIO()
    cmyk.save(cmyk_buffer, format="JPEG")
    sixteen_bit = Image.fromarray(np.arange(400, dtype=np.uint16).reshape(20, 20) * 150)
    assert sixteen_bit.mode == "I;16"
    rows = good + [
        {"bytes": cmyk_buffer.getvalue(), "path": None},
        {"bytes": png_bytes(sixteen_bit), "path": None},
        {"bytes": png_bytes(random_images(1)[0])[:40], "path": None},  # truncated PNG
    ]
    dataset = Dataset.from_dict({"image": rows}, features=Features({"image": ImageFeature(decode=False)}))
    trainer = make_trainer(tmp_path, dataset, per_device_train_batch_size=9, max_steps=2, dataloader_drop_last=False)
    trainer.train()
    assert trainer.skipped_images == 2  # the truncated file, once per epoch over 2 steps
    assert all(math.isfinite(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry)


def test_periodic_knn_is_logged_every_n_steps_and_at_the_end(tmp_path, tiny_image_dataset):
    from hf_ssl.evaluation import KnnEvaluator
    from hf_ssl.models import build_image_processor

    processor = build_image_processor("vit", 16, [0.5] * 3, [0.5] * 3)
    evaluator = KnnEvaluator(tiny_image_dataset, tiny_image_dataset, processor, k=3, show_progress=False)
    trainer = make_trainer(tmp_path, tiny_image_dataset, max_steps=4, knn_evaluator=evaluator, knn_eval_steps=2)
    trainer.train()
    knn_logs = [entry for entry in trainer.state.log_history if "knn_top1" in entry]
    assert [entry["step"] for entry in knn_logs] == [2, 4]
    assert trainer.last_knn_metrics["knn_top1"] == knn_logs[-1]["knn_top1"]
    # the evaluator measures the teacher: the same numbers as evaluating the teacher backbone directly
    assert evaluator(trainer.model.teacher.backbone)["knn_top1"] == pytest.approx(knn_logs[-1]["knn_top1"])


def test_dino_collapse_warnings_carry_dinos_advice(tmp_path, tiny_image_dataset):
    from hf_ssl.training.methods.dino import DINO_COLLAPSE_ADVICE

    detector = make_trainer(tmp_path, tiny_image_dataset).method.collapse_detector()
    collapsed = {"loss": math.log(detector.out_dim), "teacher_entropy_ratio": 0.999}
    warnings = [detector.update(collapsed, step=step) for step in range(0, 300, 10)]
    (message,) = [warning for warning in warnings if warning is not None]
    assert DINO_COLLAPSE_ADVICE["uniform"] in message and "In general: check that the augmentations" in message
