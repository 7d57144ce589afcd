"""What users hit when runs end, data is bad or a run is resumed with other settings, on both engines:
a finished run is not trained further, a resume refuses changed hyper-parameters but follows a new length,
no checkpoint is written during a NaN/inf streak, unusable data stops before training, one run per output
directory, and an all-unreadable step does not move the weights."""

import math
import signal
import subprocess
import sys

import pytest
import torch
from datasets import Dataset, Features
from datasets import Image as ImageFeature

from hf_ssl.data import ViewCropCollator
from hf_ssl.errors import ConfigError, NonFiniteLossError
from hf_ssl.training.state import checkpointing
from tests.helpers import make_dino_trainer, png_bytes, random_images

ENGINES = ["trainer", "accelerate"]


def weights(trainer):
    return {name: tensor.detach().clone() for name, tensor in trainer.model.state_dict().items()}


def checkpoint_names(output_dir):
    return [path.name for path in checkpointing.list_checkpoints(output_dir)]


# ----- 1. a finished run ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_resuming_a_finished_run_trains_nothing_and_keeps_its_checkpoint(engine, tmp_path, tiny_image_dataset):
    saving = dict(max_steps=4, save_strategy="steps", save_steps=2, save_total_limit=1)
    first = make_dino_trainer(tmp_path, tiny_image_dataset, engine=engine, **saving)
    first.train()
    finished = weights(first)
    assert checkpoint_names(tmp_path) == ["checkpoint-4"]

    again = make_dino_trainer(tmp_path, tiny_image_dataset, engine=engine, **saving)
    again.train(resume_from_checkpoint="auto")
    assert again.state.global_step == 4 and again.finished_before_start
    assert checkpoint_names(tmp_path) == ["checkpoint-4"]  # no checkpoint-5 rotating checkpoint-4 away
    for name, tensor in weights(again).items():  # the model holds the checkpoint's weights: the final model
        assert torch.equal(tensor, finished[name]), name


@pytest.mark.parametrize("engine", ENGINES)
def test_a_resume_rotates_what_a_kill_before_rotation_left(engine, tmp_path, tiny_image_dataset, monkeypatch):
    rotate = checkpointing.rotate_checkpoints

    def killed_before_the_last_rotation(output_dir, policy, busy=()):  # as a kill -9 right after checkpoint-4's commit
        if checkpointing.latest_checkpoint(output_dir).name != "checkpoint-4":
            rotate(output_dir, policy, busy)

    saving = dict(max_steps=4, save_strategy="steps", save_steps=1, save_total_limit=2)
    monkeypatch.setattr(checkpointing, "rotate_checkpoints", killed_before_the_last_rotation)
    make_dino_trainer(tmp_path, tiny_image_dataset, engine=engine, **saving).train()
    assert checkpoint_names(tmp_path) == ["checkpoint-2", "checkpoint-3", "checkpoint-4"]
    monkeypatch.undo()

    resumed = make_dino_trainer(tmp_path, tiny_image_dataset, engine=engine, **saving)
    resumed.train(resume_from_checkpoint="auto")
    assert resumed.finished_before_start and checkpoint_names(tmp_path) == ["checkpoint-3", "checkpoint-4"]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_checkpoint_past_max_steps_trains_nothing(engine, tmp_path, tiny_image_dataset):
    make_dino_trainer(
        tmp_path, tiny_image_dataset, engine=engine, max_steps=4, save_strategy="steps", save_steps=4
    ).train()
    shorter = make_dino_trainer(
        tmp_path, tiny_image_dataset, engine=engine, max_steps=3, save_strategy="steps", save_steps=1
    )
    shorter.train(resume_from_checkpoint="auto")
    assert shorter.state.global_step == 4 and shorter.finished_before_start
    assert checkpoint_names(tmp_path) == ["checkpoint-4"]


# ----- 2. changed settings ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_a_resume_refuses_another_learning_rate(engine, tmp_path, tiny_image_dataset):
    make_dino_trainer(
        tmp_path, tiny_image_dataset, engine=engine, max_steps=2, save_strategy="steps", save_steps=2
    ).train()
    changed = make_dino_trainer(tmp_path, tiny_image_dataset, engine=engine, max_steps=4, learning_rate=2e-3)
    with pytest.raises(
        ConfigError,
        match=r"learning_rate: checkpoint 0.001, now 0.002.*resume_with_changed_settings"
        r".*pretrained_model_name_or_path",
    ):
        changed.train(resume_from_checkpoint="auto")

    # asked for (a lower lr after a divergence, say), the new values apply from the checkpoint's step on
    allowed = make_dino_trainer(
        tmp_path,
        tiny_image_dataset,
        engine=engine,
        max_steps=4,
        learning_rate=2e-3,
        adam_beta2=0.99,
        resume_with_changed_settings=True,
    )
    rates = record_learning_rates(allowed)
    allowed.train(resume_from_checkpoint="auto")
    # cosine from the new 2e-3 at step 0 to min_lr 1e-6 at step 3, by hand
    assert rates == pytest.approx(
        {step: 1e-6 + 0.5 * (2e-3 - 1e-6) * (1 + math.cos(math.pi * step / 3)) for step in (2, 3)}, rel=1e-9
    )
    assert {group["betas"] for group in allowed.optimizer.param_groups} == {(0.9, 0.99)}


def record_learning_rates(trainer):
    """{step: lr of the first (decayed weights) group} as set on the optimizer before each update."""
    rates = {}
    method = trainer.method
    before = method.before_optimizer_step

    def recording(optimizer, step):
        rates[step] = optimizer.param_groups[0]["lr"]
        return before(optimizer, step)

    method.before_optimizer_step = recording
    return rates


@pytest.mark.parametrize("engine", ENGINES)
def test_a_longer_max_steps_stretches_every_schedule_including_the_learning_rate(engine, tmp_path, tiny_image_dataset):
    common = dict(
        learning_rate=1e-3, min_lr=1e-4, weight_decay=0.04, weight_decay_end=0.4, save_strategy="steps", save_steps=2
    )
    make_dino_trainer(tmp_path, tiny_image_dataset, engine=engine, max_steps=4, **common).train()
    longer = make_dino_trainer(tmp_path, tiny_image_dataset, engine=engine, max_steps=8, **common)
    rates = record_learning_rates(longer)
    longer.train(resume_from_checkpoint="auto")
    assert longer.state.global_step == 8
    # no warmup: cosine from 1e-3 at step 0 to 1e-4 at step 7 of the new length, by hand
    expected = {step: 1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + math.cos(math.pi * step / 7)) for step in range(4, 8)}
    assert rates == pytest.approx(expected, rel=1e-9)
    # the old length ended at min_lr: the resumed steps are well above it
    assert rates[4] > 4e-4
    # weight decay and teacher momentum follow the same new length
    assert longer.method.schedules.weight_decay(4) == pytest.approx(
        0.4 + 0.5 * (0.04 - 0.4) * (1 + math.cos(math.pi * 4 / 7))
    )


# ----- 4. NaN/inf streaks and checkpoints ----------------------------------------------------------------------------


def poison_losses_from(trainer, first_bad_call: int):
    """Every forward call from ``first_bad_call`` on returns a NaN loss."""
    model = trainer.model
    original = model.forward
    calls = {"count": 0}

    def forward(*args, **kwargs):
        outputs = original(*args, **kwargs)
        if calls["count"] >= first_bad_call:
            outputs.loss = outputs.loss * float("nan")
        calls["count"] += 1
        return outputs

    model.forward = forward


@pytest.mark.parametrize("engine", ENGINES)
def test_no_checkpoint_is_written_during_a_nonfinite_streak_and_the_good_one_survives(
    engine, tmp_path, tiny_image_dataset
):
    trainer = make_dino_trainer(
        tmp_path,
        tiny_image_dataset,
        engine=engine,
        max_steps=12,
        save_strategy="steps",
        save_steps=1,
        save_total_limit=1,
        max_consecutive_nonfinite_steps=4,
    )
    poison_losses_from(trainer, first_bad_call=3)  # steps 1-3 are finite, every later one NaN
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(NonFiniteLossError) as raised:
        trainer.train()
    # the run's SIGINT/SIGTERM handler goes with it (in a notebook, Ctrl-C must work again)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    assert checkpoint_names(tmp_path) == ["checkpoint-3"]
    assert raised.value.last_good_checkpoint.name == "checkpoint-3"
    message = str(raised.value)
    assert "4 optimizer steps in a row" in message and "checkpoint-3" in message and "learning_rate" in message
    saved = checkpointing.read_state(tmp_path / "checkpoint-3")
    assert saved["method_state"]["consecutive_nonfinite_steps"] == 0


# ----- 5. no usable data ---------------------------------------------------------------------------------------------


def broken_dataset(count: int) -> Dataset:
    rows = [{"bytes": b"not an image at all", "path": f"broken-{index}.jpg"} for index in range(count)]
    return Dataset.from_dict({"image": rows}, features=Features({"image": ImageFeature(decode=False)}))


@pytest.mark.parametrize("engine", ENGINES)
def test_a_dataset_of_only_unreadable_images_stops_before_training(engine, tmp_path):
    trainer = make_dino_trainer(tmp_path, broken_dataset(12), engine=engine)
    with pytest.raises(ConfigError, match=r"none of the 12 training images checked could be read.*broken-0.jpg"):
        trainer.train()
    assert not checkpoint_names(tmp_path) and trainer.state.global_step == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_fewer_images_than_one_batch_stops_before_training(engine, tmp_path, tiny_image_dataset):
    trainer = make_dino_trainer(
        tmp_path, tiny_image_dataset.select(range(3)), engine=engine, per_device_train_batch_size=4
    )
    with pytest.raises(ConfigError, match=r"3 images, fewer than one batch of 4.*dataloader_drop_last"):
        trainer.train()
    # without drop_last the incomplete batch is a step
    trainer = make_dino_trainer(
        tmp_path,
        tiny_image_dataset.select(range(3)),
        engine=engine,
        per_device_train_batch_size=4,
        dataloader_drop_last=False,
        max_steps=1,
    )
    trainer.train()
    assert trainer.state.global_step == 1


class DropEveryExampleOfBatch(ViewCropCollator):
    """Marks every example of the given micro-batches unreadable, as a folder of broken files would."""

    def __init__(self, unreadable_batches):
        self.unreadable_batches, self.calls = set(unreadable_batches), 0

    def __call__(self, examples):
        if self.calls in self.unreadable_batches:
            examples = [{**example, "valid": False} for example in examples]
        self.calls += 1
        return super().__call__(examples)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_step_without_one_readable_image_does_not_move_the_weights(engine, tmp_path, tiny_image_dataset):
    from hf_ssl import DinoForPreTraining
    from hf_ssl.data import ViewCropTransform, with_view_crops
    from hf_ssl.training import build_trainer
    from tests.helpers import tiny_dino_config, tiny_multicrop_config, tiny_training_arguments

    multicrop = tiny_multicrop_config()
    trainer = build_trainer(
        model=DinoForPreTraining(tiny_dino_config()),
        args=tiny_training_arguments(tmp_path, engine=engine, max_steps=3, weight_decay=0.4),
        view_config=multicrop,
        train_dataset=with_view_crops(tiny_image_dataset, ViewCropTransform(multicrop)),
        data_collator=DropEveryExampleOfBatch({1}),
    )
    snapshots = []
    after = trainer.method.after_optimizer_step

    def snapshot_after(step, *args, **kwargs):
        after(step, *args, **kwargs)
        snapshots.append(weights(trainer))

    trainer.method.after_optimizer_step = snapshot_after
    trainer.train()
    assert trainer.method.skipped_steps == 1 and trainer.method.skipped_images == 4
    # step 1 saw no image: AdamW with weight decay and momentum would still have moved every weight
    for name, tensor in snapshots[1].items():
        assert torch.equal(tensor, snapshots[0][name]), name
    assert any(not torch.equal(tensor, snapshots[1][name]) for name, tensor in snapshots[2].items())


# ----- 6. one run per output directory ------------------------------------------------------------------------------


HOLD_LOCK = """
import fcntl, sys, time
handle = open(sys.argv[1], "a+")
fcntl.lockf(handle.fileno(), fcntl.LOCK_EX)
handle.write("pid 4242 on another-machine, since earlier"); handle.flush()
print("locked", flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_a_second_run_on_a_busy_output_dir_is_refused(engine, tmp_path, tiny_image_dataset):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path / checkpointing.LOCK_FILE)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        trainer = make_dino_trainer(tmp_path, tiny_image_dataset, engine=engine, max_steps=1)
        with pytest.raises(ConfigError, match=r"in use by another run \(pid 4242 on another-machine"):
            trainer.train()
    finally:
        holder.kill()
        holder.wait()
    # once the other run is gone (killed: the OS drops its lock), the folder is free
    trainer.train()
    assert trainer.state.global_step == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_a_fresh_run_refuses_a_folder_holding_another_run(engine, tmp_path, tiny_image_dataset):
    make_dino_trainer(
        tmp_path, tiny_image_dataset, engine=engine, max_steps=2, save_strategy="steps", save_steps=2
    ).train()
    with pytest.raises(
        ConfigError, match=r"already holds a run \(checkpoint-2\).*--resume auto.*overwrite_output_dir"
    ):
        make_dino_trainer(tmp_path, tiny_image_dataset, engine=engine, max_steps=2).train()
    # overwrite_output_dir starts afresh and removes the old run's checkpoints (a later --resume auto must not find
    # them)
    fresh = make_dino_trainer(
        tmp_path,
        tiny_image_dataset,
        engine=engine,
        max_steps=1,
        save_strategy="steps",
        save_steps=1,
        overwrite_output_dir=True,
    )
    fresh.train()
    assert checkpoint_names(tmp_path) == ["checkpoint-1"]


def test_resume_auto_without_a_checkpoint_beside_a_trained_model_is_refused(tmp_path, tiny_image_dataset):
    trainer = make_dino_trainer(tmp_path, tiny_image_dataset, max_steps=1)
    trainer.train()
    trainer.save_model()
    with pytest.raises(
        ConfigError, match=r"holds a trained model \(model.safetensors, config.json\) but no checkpoint"
    ):
        make_dino_trainer(tmp_path, tiny_image_dataset, max_steps=2).train(resume_from_checkpoint="auto")


def test_an_unreadable_image_among_good_ones_only_warns(tmp_path, caplog):
    rows = [{"bytes": png_bytes(image), "path": None} for image in random_images(7)] + [
        {"bytes": b"broken", "path": "x.png"}
    ]
    dataset = Dataset.from_dict({"image": rows}, features=Features({"image": ImageFeature(decode=False)}))
    trainer = make_dino_trainer(tmp_path, dataset, max_steps=1)
    with caplog.at_level("WARNING"):
        trainer.train()
    assert "1 of 8 training images checked cannot be read" in caplog.text


# ----- 10. after training --------------------------------------------------------------------------------------------


class FailingKnn:
    def __call__(self, backbone, device=None):
        raise OSError("image file is truncated")


@pytest.mark.parametrize("engine", ENGINES)
def test_a_failing_knn_evaluation_is_logged_and_the_run_ends_normally(engine, tmp_path, tiny_image_dataset, caplog):
    trainer = make_dino_trainer(
        tmp_path, tiny_image_dataset, engine=engine, max_steps=2, knn_evaluator=FailingKnn(), knn_eval_steps=1
    )
    with caplog.at_level("ERROR"):
        trainer.train()
    assert trainer.state.global_step == 2 and not trainer.last_knn_metrics
    assert trainer.knn_error == "k-NN evaluation at step 2 failed (see the log)"
    assert "k-NN evaluation at step 1 failed" in caplog.text and "image file is truncated" in caplog.text
    trainer.save_model()  # what the script does next: the model is saved
    assert (tmp_path / "model.safetensors").is_file()


@pytest.mark.parametrize("engine", ENGINES)
def test_push_to_hub_without_a_reachable_hub_stops_before_training(engine, tmp_path, tiny_image_dataset, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        ConfigError,
        match=r"push_to_hub=true, but the Hub repository 'someone/tiny-dino' cannot be created.*has not started",
    ):
        make_dino_trainer(
            tmp_path, tiny_image_dataset, engine=engine, push_to_hub=True, hub_model_id="someone/tiny-dino"
        )
