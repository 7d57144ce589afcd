"""Checkpoints on the Hub during training (``hub_strategy``) and ``--resume hub``, on both engines: a session cut
by SIGTERM has pushed its committed checkpoints (the model so far at the root, the checkpoint as last-checkpoint/);
its output directory is lost; a new session in a fresh folder resumes with resume="hub" and ends with the weights
of an uninterrupted run. A newer local checkpoint wins over the Hub's; a repository without one starts afresh."""

import shutil

import pytest
import torch

from hf_ssl import DinoForPreTraining
from hf_ssl.training.sharing.hub import fetch_hub_checkpoint
from tests.helpers import make_dino_trainer, sigterm_during_step
from tests.training.test_hub_push import FakeHub

REPO = "tiny-org/cut-run"


def make_trainer(output_dir, dataset, **overrides):
    torch.manual_seed(0)  # the same initial weights in every session
    return make_dino_trainer(output_dir, dataset, **overrides)


def weights(model) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def assert_same_weights(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("engine", ["trainer", "accelerate"])
def test_a_session_cut_and_lost_resumes_from_its_hub_checkpoint_to_the_uninterrupted_weights(
    engine, tmp_path, tiny_image_dataset, monkeypatch, caplog
):
    hub = FakeHub(tmp_path / "hub-cache").install(monkeypatch)
    common = dict(engine=engine, max_steps=2, save_strategy="steps", save_steps=1)
    full = make_trainer(tmp_path / "full", tiny_image_dataset, **common)
    full.train()
    expected = weights(full.model)

    # session 1: cut by SIGTERM during step 1, after pushing checkpoint-1
    pushing = dict(push_to_hub=True, hub_model_id=REPO, hub_always_push=True)
    cut = make_trainer(tmp_path / "session-1", tiny_image_dataset, hub_strategy="checkpoint", **pushing, **common)
    sigterm_during_step(cut, stop_after=1)
    cut.train()
    assert cut.state.global_step == 1
    checkpoint = sorted(
        path.relative_to(tmp_path / "session-1" / "checkpoint-1").as_posix()
        for path in (tmp_path / "session-1" / "checkpoint-1").rglob("*")
        if path.is_file()
    )
    assert (
        "hf_ssl_state.json" in checkpoint and "history.json" in checkpoint
    )  # the committed folder, not the staging one
    assert hub.files(REPO) == sorted(
        ["config.json", "model.safetensors", *(f"last-checkpoint/{name}" for name in checkpoint)]
    )
    assert [commit.message for commit in hub.commits_to(REPO)] == [
        "Training in progress, step 1",
        "Training in progress, step 1, checkpoint",
    ]
    shutil.rmtree(tmp_path / "session-1")  # the session's disk is gone

    # session 2, in a fresh folder: last-checkpoint/ comes back as checkpoint-1 and the run goes on from there
    resumed = make_trainer(
        tmp_path / "session-2", tiny_image_dataset, hub_strategy="all_checkpoints", **pushing, **common
    )
    with caplog.at_level("INFO", logger="hf_ssl"):
        resumed.train(resume_from_checkpoint="hub")
    assert f"resume=hub: downloaded {REPO}/last-checkpoint (step 1)" in caplog.text
    assert resumed.state.global_step == 2
    assert_same_weights(weights(resumed.model), expected)
    # all_checkpoints: the new one as checkpoint-2/; at the root, the final weights as from_pretrained loads them
    assert "checkpoint-2/hf_ssl_state.json" in hub.files(REPO) and "last-checkpoint/hf_ssl_state.json" in hub.files(
        REPO
    )
    assert_same_weights(weights(DinoForPreTraining.from_pretrained(hub.snapshot(REPO))), expected)
    assert not list((tmp_path / "session-2").glob(".hub-weights-*")) and not list(
        (tmp_path / "session-2").glob(".staging-*")
    )

    # a local checkpoint at or past the Hub's is used as it is; a repository with no last-checkpoint/ starts afresh
    caplog.clear()
    with caplog.at_level("INFO", logger="hf_ssl"):
        assert fetch_hub_checkpoint(tmp_path / "full", REPO) == tmp_path / "full" / "checkpoint-2"
        assert "the local checkpoint-2 is at or past tiny-org/cut-run/last-checkpoint (step 1)" in caplog.text
        hub.create_repo("tiny-org/empty")
        assert fetch_hub_checkpoint(tmp_path / "fresh", "tiny-org/empty") is None
        assert "tiny-org/empty has no last-checkpoint/" in caplog.text


def test_a_checkpoint_saved_during_an_upload_waits_and_the_latest_is_pushed_when_training_ends(tmp_path, monkeypatch):
    import threading
    from types import SimpleNamespace

    from huggingface_hub import HfApi

    from hf_ssl.training.sharing.hub import CheckpointPusher

    hub = FakeHub(tmp_path / "hub-cache").install(monkeypatch)
    hub.create_repo(REPO)
    release, commit = threading.Event(), HfApi.create_commit

    def slow_commit(api, *args, **kwargs):  # the first upload takes until the test releases it
        release.wait(timeout=30)
        return commit(api, *args, **kwargs)

    monkeypatch.setattr(HfApi, "create_commit", slow_commit)
    checkpoints = []
    for step in (1, 2, 3):
        checkpoint = tmp_path / f"checkpoint-{step}"
        checkpoint.mkdir()
        for name in ("config.json", "model.safetensors", "hf_ssl_state.json"):
            (checkpoint / name).write_text(f"{name} of step {step}")
        checkpoints.append(checkpoint)
    args = SimpleNamespace(
        push_to_hub=True,
        hub_strategy="checkpoint",
        hub_always_push=False,
        hub_token=None,
        hub_revision=None,
        save_strategy="steps",
    )
    pusher = CheckpointPusher(args)
    assert pusher.push(REPO, checkpoints[0], 1, 0.0)
    assert not pusher.push(REPO, checkpoints[1], 2, 0.0) and not pusher.push(REPO, checkpoints[2], 3, 0.0)
    assert pusher.pushing() == {checkpoints[0], checkpoints[2]}  # rotation keeps them; checkpoint-2 was superseded
    release.set()
    pusher.wait()  # the end of training: checkpoint-3 goes up after checkpoint-1
    assert [commit.message for commit in hub.commits_to(REPO)] == [
        "Training in progress, step 1",
        "Training in progress, step 1, checkpoint",
        "Training in progress, step 3",
        "Training in progress, step 3, checkpoint",
    ]
    assert (hub.snapshot(REPO) / "last-checkpoint" / "hf_ssl_state.json").read_text() == "hf_ssl_state.json of step 3"
    assert pusher.pushing() == set()
