import math

import pytest
import torch

from hf_ssl import DinoForPretraining
from hf_ssl.data import MultiCropTransform, with_multicrop
from hf_ssl.training import DinoTrainer, dino_step
from tests.helpers import tiny_dino_config, tiny_multicrop_config, tiny_training_arguments


def make_trainer(tmp_path, dataset, model=None, **argument_overrides):
    multicrop = tiny_multicrop_config()
    model = model or DinoForPretraining(tiny_dino_config())
    train_dataset = with_multicrop(dataset, MultiCropTransform(multicrop))
    arguments = tiny_training_arguments(tmp_path / "out", **argument_overrides)
    return DinoTrainer(model=model, args=arguments, multicrop_config=multicrop, train_dataset=train_dataset)


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
        for key in ("learning_rate", "weight_decay", "teacher_momentum", "teacher_temperature", "teacher_entropy", "embedding_std", "effective_rank", "mean_l2_norm", "grad_norm"):
            assert key in entry, key
        assert entry["images_per_second"] > 0
    changed_student = [n for n, t in snapshot(model.student).items() if not torch.equal(t, student_before[n])]
    changed_teacher = [n for n, t in snapshot(model.teacher).items() if not torch.equal(t, teacher_before[n])]
    assert changed_student and changed_teacher
    for parameter in model.teacher.parameters():
        assert not parameter.requires_grad
    # the history of the run is saved as JSON and plotted
    from hf_ssl.training.history import History

    history = History.load(tmp_path / "out" / "history.json")
    assert [entry["loss"] for entry in history.steps if "loss" in entry] == [entry["loss"] for entry in logs]
    assert (tmp_path / "out" / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_logged_schedules_follow_the_step(tmp_path, tiny_image_dataset):
    trainer = make_trainer(tmp_path, tiny_image_dataset, max_steps=4, weight_decay=0.04, weight_decay_end=0.4, learning_rate=1e-3, min_lr=1e-4)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    schedules = trainer.schedules
    for step, entry in enumerate(logs):
        assert entry["learning_rate"] == pytest.approx(schedules.learning_rate(step))
        assert entry["weight_decay"] == pytest.approx(schedules.weight_decay(step))
    assert logs[0]["weight_decay"] == pytest.approx(0.04) and logs[-1]["weight_decay"] == pytest.approx(0.4)
    assert logs[-1]["learning_rate"] == pytest.approx(1e-4)
    groups = trainer.optimizer.param_groups
    # weights, biases/norms, then the head's last layer (a weight-norm direction: decayed) in a group of its own
    assert [(g["apply_weight_decay"], g.get("last_layer", False)) for g in groups] == [(True, False), (False, False), (True, True)]
    assert groups[1]["weight_decay"] == 0.0 and groups[0]["weight_decay"] == pytest.approx(schedules.weight_decay(3))
    assert groups[2]["weight_decay"] == pytest.approx(schedules.weight_decay(3))
    assert all(p.ndim > 1 for p in groups[0]["params"]) and all(p.ndim <= 1 for p in groups[1]["params"])
    assert groups[2]["params"] == [p for p in trainer.model.last_layer_parameters() if p.requires_grad]


def test_ema_runs_once_per_optimizer_step_under_accumulation(tmp_path, tiny_image_dataset, monkeypatch):
    calls = []
    original = dino_step.ema_update_

    def counting(teacher, student, momentum):
        calls.append(momentum)
        original(teacher, student, momentum)

    monkeypatch.setattr(dino_step, "ema_update_", counting)
    trainer = make_trainer(tmp_path, tiny_image_dataset, per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=3, teacher_momentum=0.9)
    trainer.train()
    assert len(calls) == 3  # 6 micro-batches, 3 optimizer steps
    assert calls == pytest.approx([trainer.schedules.teacher_momentum(step) for step in range(3)])
    assert calls[0] == pytest.approx(0.9)


def test_ema_update_equals_formula_after_one_step(tmp_path, tiny_image_dataset):
    trainer = make_trainer(tmp_path, tiny_image_dataset, max_steps=1, teacher_momentum=0.5)
    teacher_before = snapshot(trainer.model.teacher)
    trainer.train()
    student_after = snapshot(trainer.model.student)
    for name, value in snapshot(trainer.model.teacher).items():
        if value.is_floating_point() and name in student_after:
            torch.testing.assert_close(value, 0.5 * teacher_before[name] + 0.5 * student_after[name])


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
    from datasets import Dataset, Features, Image as ImageFeature
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
    from hf_ssl.training import KnnCallback

    trainer = make_trainer(tmp_path, tiny_image_dataset, max_steps=4)
    processor = build_image_processor("vit", 16, [0.5] * 3, [0.5] * 3)
    evaluator = KnnEvaluator(tiny_image_dataset, tiny_image_dataset, processor, k=3, show_progress=False)
    callback = KnnCallback(trainer, evaluator, eval_steps=2)
    trainer.add_callback(callback)
    trainer.train()
    knn_logs = [entry for entry in trainer.state.log_history if "knn_top1" in entry]
    assert [entry["step"] for entry in knn_logs] == [2, 4]
    assert callback.last_metrics["knn_top1"] == knn_logs[-1]["knn_top1"]
    # the evaluator measures the teacher: the same numbers as evaluating the teacher backbone directly
    assert evaluator(trainer.model.teacher.backbone)["knn_top1"] == pytest.approx(knn_logs[-1]["knn_top1"])
