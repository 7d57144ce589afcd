"""A disk that fills up during a checkpoint save, on a real (tiny tmpfs) file system, on both engines: a clear
error naming the intact checkpoint, no staging folder left behind, and the run resumes once space is free.
Needs permission to mount a tmpfs (root); skipped elsewhere."""

import shutil
import subprocess

import pytest

from hf_ssl.training.state import checkpointing
from tests.helpers import make_dino_trainer


@pytest.fixture
def small_disk(tmp_path):
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount_point)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield mount_point
    checkpointing.release_output_dir(mount_point / "run")  # the run's lock file is open on this disk
    subprocess.run(["umount", "--lazy", str(mount_point)], check=True)  # lazy: detached even if a file is still open


def fill_disk_before_the_save_of(trainer, step_to_fail: int, filler):
    """Leave the disk 1 KiB of room right before checkpoint ``step_to_fail`` is written."""
    after = trainer.method.after_optimizer_step

    def filling(step, *args, **kwargs):
        after(step, *args, **kwargs)
        if step + 1 == step_to_fail:
            free = shutil.disk_usage(filler.parent).free
            with filler.open("wb") as handle:
                handle.truncate(0)
                handle.write(b"\0" * (free - 1024))

    trainer.method.after_optimizer_step = filling


@pytest.mark.parametrize("engine", ["trainer", "accelerate"])
def test_a_full_disk_during_a_save_is_reported_and_the_run_resumes_afterwards(engine, small_disk, tiny_image_dataset):
    output_dir = small_disk / "run"
    settings = dict(max_steps=3, save_strategy="steps", save_steps=1)
    trainer = make_dino_trainer(output_dir, tiny_image_dataset, engine=engine, **settings)
    filler = small_disk / "filler.bin"
    fill_disk_before_the_save_of(trainer, 2, filler)
    with pytest.raises(checkpointing.CheckpointSaveError) as raised:
        trainer.train()
    message = str(raised.value)
    assert message.startswith("no space left on device while saving checkpoint 2"), message
    assert "checkpoint-1 is intact" in message
    assert not any(path.name.startswith(".staging-") for path in output_dir.iterdir())
    assert [path.name for path in checkpointing.list_checkpoints(output_dir)] == ["checkpoint-1"]
    assert checkpointing.checkpoint_damage(output_dir / "checkpoint-1") is None

    filler.unlink()  # space is back: the same run continues from checkpoint-1
    resumed = make_dino_trainer(output_dir, tiny_image_dataset, engine=engine, **settings)
    resumed.train(resume_from_checkpoint="auto")
    assert resumed.state.global_step == 3
    assert [path.name for path in checkpointing.list_checkpoints(output_dir)][-1] == "checkpoint-3"
