"""Periodic k-NN evaluation of the evaluated backbone (DINO: the teacher) during training."""

from __future__ import annotations

import logging

from transformers import TrainerCallback

from hf_ssl.training.engine import evaluation_backbone_on_main

logger = logging.getLogger(__name__)


def run_knn_evaluation(evaluator, backbone, device, step: int) -> dict[str, float] | None:
    """``evaluator(backbone)``, or None after logging the error with its traceback: an evaluation that fails
    (unreadable images, out of memory) must not end the run before its model is saved."""
    try:
        return evaluator(backbone, device=device)
    except Exception:
        logger.exception("k-NN evaluation at step %d failed; training goes on and the model will be saved", step)
        return None


class KnnCallback(TrainerCallback):
    """Runs a ``KnnEvaluator`` on the model's ``evaluation_backbone()`` every ``eval_steps`` optimizer steps (0: never
    during training) and at the end of training, and logs ``knn_top1``/``knn_top5``.

    Evaluation runs on the main process (under FSDP after gathering the backbone from every process);
    the other processes go on. The last result is kept in ``self.last_metrics``.
    """

    def __init__(self, trainer, evaluator, eval_steps: int = 0, at_end: bool = True):
        self.trainer = trainer
        self.evaluator = evaluator
        self.eval_steps = eval_steps
        self.at_end = at_end
        self.last_metrics: dict[str, float] = {}
        self.last_step: int | None = None
        self.last_error: str | None = None

    def _evaluate(self, state):
        self.last_step = state.global_step
        # every process takes part: under FSDP the backbone's shards are gathered first
        backbone = evaluation_backbone_on_main(self.trainer.accelerator, self.trainer.model_wrapped)
        if not self.trainer.is_world_process_zero():
            return
        metrics = run_knn_evaluation(self.evaluator, backbone, self.trainer.args.device, state.global_step)
        if metrics is None:
            self.last_error = f"k-NN evaluation at step {state.global_step} failed (see the log)"
            return
        self.last_metrics = metrics
        logger.info("step %d: %s", state.global_step, {key: round(value, 2) for key, value in metrics.items()})
        self.trainer.log(dict(metrics))

    def on_step_end(self, args, state, control, **kwargs):
        if self.eval_steps and state.global_step % self.eval_steps == 0 and state.global_step < state.max_steps:
            self._evaluate(state)

    def on_train_end(self, args, state, control, **kwargs):
        run_control = getattr(self.trainer, "run_control", None)
        if run_control is not None and run_control.stop_reason in ("signal", "max_time"):
            return  # a cut session has seconds left: the checkpoint is saved, the evaluation can wait
        if self.at_end and self.last_step != state.global_step:  # early stopping right after an evaluation
            self._evaluate(state)
