"""Early stopping and best-N checkpoint retention through both engines, driven by a scripted k-NN metric."""

import json

import pytest

from hf_ssl.training.state import checkpointing
from tests.helpers import make_dino_trainer

SCRIPTED_KNN_TOP1 = [10.0, 30.0, 20.0, 25.0, 40.0, 50.0]  # evaluations after steps 1, 2, 3, ...


class ScriptedKnn:
    """Stands in for ``KnnEvaluator``: returns the next scripted ``knn_top1`` and records the calls."""

    def __init__(self, values):
        self.values = list(values)
        self.calls = 0

    def __call__(self, backbone, device=None):
        assert backbone is not None
        value = self.values[self.calls]
        self.calls += 1
        return {"knn_top1": value, "knn_top5": 100.0}


@pytest.mark.parametrize("engine", ["trainer", "accelerate"])
def test_early_stopping_stops_and_keeps_the_last_and_the_best_checkpoint(engine, tmp_path, tiny_image_dataset):
    knn = ScriptedKnn(SCRIPTED_KNN_TOP1)
    trainer = make_dino_trainer(
        tmp_path / "run",
        tiny_image_dataset,
        engine=engine,
        knn_evaluator=knn,
        knn_eval_steps=1,
        max_steps=6,
        save_strategy="steps",
        save_steps=1,
        save_total_limit=1,
        save_best_total_limit=1,
        metric_for_best_model="knn_top1",
        greater_is_better=True,
        early_stopping_patience=2,
        early_stopping_min_delta=1.0,
    )
    trainer.train()
    # 10, 30 (best), 20, 25: two evaluations without an improvement of more than 1.0 -> stop after step 4
    assert trainer.state.global_step == 4
    assert knn.calls == 4  # the teacher of step 4 is evaluated once, not again at the end
    kept = {
        path.name: json.loads((path / checkpointing.STATE_FILE).read_text())
        for path in checkpointing.list_checkpoints(tmp_path / "run")
    }
    assert set(kept) == {"checkpoint-2", "checkpoint-4"}  # the best (30.0) and the last
    assert kept["checkpoint-2"]["metrics"] == {"knn_top1": 30.0}
    assert kept["checkpoint-4"]["metrics"] == {"knn_top1": 25.0}
    assert kept["checkpoint-4"]["control_state"]["early_stopping"]["evaluations_without_improvement"] == 2
