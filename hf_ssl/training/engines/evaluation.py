"""When both engines evaluate during a run, written once: k-NN of the evaluated backbone and the method's
``val_loss`` on a held-out split, every N optimizer steps and at the end of training.

The engine calls ``after_step`` after each optimizer step and ``at_end`` when training ends (``SslTrainer`` through
``EvaluationCallback``, the Accelerate loop directly); the results are logged through the engine's ``log``, so
history, trackers, early stopping and best-N retention see them like the training numbers."""

from __future__ import annotations

import logging

import torch
from transformers import TrainerCallback

from hf_ssl.models.backbone import build_backbone
from hf_ssl.training.engines.validation import ValidationLoss, run_validation
from hf_ssl.training.state import checkpointing

logger = logging.getLogger(__name__)


def run_knn_evaluation(evaluator, backbone, device, step: int) -> dict[str, float] | None:
    """``evaluator(backbone)``, or None after logging the error with its traceback: an evaluation that fails
    (unreadable images, out of memory) must not end the run before its model is saved."""
    try:
        return evaluator(backbone, device=device)
    except Exception:
        logger.exception("k-NN evaluation at step %d failed; training goes on and the model will be saved", step)
        return None


def evaluation_backbone_on_main(accelerator, wrapped_model):
    """The whole evaluated backbone (``model.evaluation_backbone()``: DINO's teacher backbone, SimCLR's backbone)
    on the main process (None on the others), for k-NN evaluation.

    Under FSDP the weights are sharded: every process must call this, the full state is gathered (a
    collective) and loaded into an unsharded copy. Otherwise the backbone itself is returned (a float32 copy
    where the engine cast it to bf16/fp16, as the exported backbone will be).
    """
    model = accelerator.unwrap_model(wrapped_model)
    if checkpointing.sharding_of(accelerator) != "fsdp":
        if not accelerator.is_main_process:
            return None
        backbone = model.evaluation_backbone()
        if next(backbone.parameters()).dtype == torch.float32:
            return backbone
        copy = build_backbone(model.evaluation_backbone_config())
        copy.load_state_dict({name: tensor.float() for name, tensor in backbone.state_dict().items()})
        return copy.to(accelerator.device).eval()
    state = accelerator.get_state_dict(wrapped_model)
    if not accelerator.is_main_process:
        return None
    prefix = model.evaluation_backbone_prefix
    weights = {}
    for name, tensor in state.items():
        name = name.replace("_fsdp_wrapped_module.", "")
        if name.startswith(prefix):
            weights[name[len(prefix) :]] = tensor
    backbone = build_backbone(model.evaluation_backbone_config())
    backbone.load_state_dict(weights, strict=True)
    return backbone.to(accelerator.device).eval()


class PeriodicEvaluation:
    """k-NN (``knn_evaluator``: a ``KnnEvaluator``, logs ``knn_top1``/``knn_top5``) every ``knn_eval_steps`` optimizer
    steps and at the end when ``knn_at_end``; ``val_loss`` (``validation``: a ``ValidationLoss``) every
    ``val_eval_steps`` and at the end when ``val_at_end``. 0 steps: never during training. Neither runs at the end of
    a session cut by a signal or ``max_time_seconds`` (the checkpoint is saved; the evaluation can wait), nor twice at
    one step (early stopping right after an evaluation); validation does not run at the end of a session that
    resumed a finished run.

    k-NN runs on the main process (every process takes part in gathering a sharded backbone first); validation
    runs on every process, each its share, and the mean is reduced.

    The engine passed to ``after_step`` / ``at_end`` offers ``state`` (``global_step``, ``max_steps``),
    ``accelerator``, ``method``, ``evaluation_model`` (the model as the engine trains it: wrapped or not),
    ``autocast_context`` (its mixed-precision context), ``session_was_cut``, ``finished_before_start`` and ``log``.
    """

    def __init__(
        self,
        knn_evaluator=None,
        knn_eval_steps: int = 0,
        knn_at_end: bool = True,
        validation: ValidationLoss | None = None,
        val_eval_steps: int = 0,
        val_at_end: bool = True,
    ):
        self.knn_evaluator, self.knn_eval_steps, self.knn_at_end = knn_evaluator, knn_eval_steps, knn_at_end
        self.validation, self.val_eval_steps, self.val_at_end = validation, val_eval_steps, val_at_end
        self.last_knn_metrics: dict[str, float] = {}
        self.last_validation_metrics: dict[str, float] = {}
        self.knn_error: str | None = None  # the last k-NN evaluation that failed (logged; training went on)
        self._knn_step: int | None = None
        self._validation_step: int | None = None

    @staticmethod
    def _due(every: int, step: int, max_steps: int) -> bool:
        return bool(every) and step % every == 0 and step < max_steps

    def after_step(self, engine) -> None:
        step, max_steps = engine.state.global_step, engine.state.max_steps
        if self.knn_evaluator is not None and self._due(self.knn_eval_steps, step, max_steps):
            self.evaluate_knn(engine)
        if self.validation is not None and self._due(self.val_eval_steps, step, max_steps):
            self.evaluate_validation(engine)

    def at_end(self, engine) -> None:
        if engine.session_was_cut:
            return
        step = engine.state.global_step
        if self.knn_evaluator is not None and self.knn_at_end and self._knn_step != step:
            self.evaluate_knn(engine)
        if (
            self.validation is not None
            and self.val_at_end
            and self._validation_step != step
            and not engine.finished_before_start
        ):
            self.evaluate_validation(engine)

    def evaluate_knn(self, engine) -> dict[str, float]:
        """k-NN of the evaluated backbone on the main process (the others go on), logged as ``knn_top1``..."""
        if self.knn_evaluator is None:
            return {}
        step, accelerator = engine.state.global_step, engine.accelerator
        self._knn_step = step
        backbone = evaluation_backbone_on_main(accelerator, engine.evaluation_model)  # every process
        if not accelerator.is_main_process:
            return {}
        metrics = run_knn_evaluation(self.knn_evaluator, backbone, accelerator.device, step)
        if metrics is None:
            self.knn_error = f"k-NN evaluation at step {step} failed (see the log)"
            return {}
        self.last_knn_metrics = metrics
        engine.log(dict(metrics))
        return metrics

    def evaluate_validation(self, engine) -> dict[str, float]:
        """``val_loss`` of the method on the held-out split, every process its share, logged on every process."""
        if self.validation is None:
            return {}
        step, accelerator = engine.state.global_step, engine.accelerator
        self._validation_step = step
        several = accelerator.num_processes > 1
        metrics = run_validation(
            self.validation,
            engine.method,
            engine.evaluation_model,
            step,
            accelerator.device,
            accelerator.process_index,
            accelerator.num_processes,
            reduce=(lambda tensor: accelerator.reduce(tensor, reduction="sum")) if several else None,
            autocast=engine.autocast_context,
        )
        if metrics:
            self.last_validation_metrics = metrics
            engine.log(dict(metrics))
        return self.last_validation_metrics


class EvaluationCallback(TrainerCallback):
    """``SslTrainer``'s moments for ``PeriodicEvaluation``: after each optimizer step and at the end of training."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.evaluations.after_step(self.trainer)

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer.evaluations.at_end(self.trainer)
