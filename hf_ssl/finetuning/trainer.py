"""``FinetuneTrainer``: the transformers ``Trainer`` with layer-wise lr decay, batches left empty by unreadable images
skipped, and the pretraining engines' guarantees:

- run control: a per-session time budget for Kaggle / Colab, SIGTERM / SIGINT;
- exact resume: the training rows are shuffled by `EpochShuffleSampler` and cropped from ``(seed, epoch, example)``;
- atomic checkpoints: written under ``.staging-checkpoint-<step>``, then renamed to ``checkpoint-<step>`` with an
  ``hf_ssl_state.json`` listing every file (``hf_ssl.training.state.checkpointing``), so a kill during a save loses
  nothing and a resume passes over a damaged checkpoint;
- no NaN model: an optimizer step whose loss or gradients are NaN / inf is skipped, too many in a row stop the run
  (``NonFiniteLossError``), and non-finite weights are never saved.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from transformers import Trainer
from transformers.trainer_utils import rotate_checkpoints

from hf_ssl.data import EpochShuffleSampler
from hf_ssl.errors import (
    NonFiniteLossError,
    NonFiniteWeightsError,  # noqa: F401 (re-exported)
)
from hf_ssl.finetuning.arguments import FINETUNE_ENGINE
from hf_ssl.finetuning.data import SeededExamples
from hf_ssl.finetuning.model import parameter_groups
from hf_ssl.training.state import checkpointing
from hf_ssl.training.state.checkpointing import load_weights_in_place
from hf_ssl.training.state.run_control import RunControl, RunControlCallback

logger = logging.getLogger(__name__)


class FinetuneTrainer(checkpointing.StagedTrainerCheckpoints, Trainer):
    """``Trainer`` for image classification.

    Args (besides the Trainer's):
        layer_decay: layer-wise lr decay factor (None: one lr); see `hf_ssl.finetuning.model.parameter_groups`.
        eval_data_collator: the collator of evaluation batches (default: ``data_collator``): training crops at random,
            evaluation prepares images as the saved processor does.
        resume_settings: what a resume may not change (``hf_ssl.finetuning.run.resume_settings``), written into each
            checkpoint's ``hf_ssl_state.json``.
    """

    def __init__(
        self,
        *args,
        layer_decay: float | None = None,
        eval_data_collator=None,
        resume_settings: dict | None = None,
        **kwargs,
    ):
        self.layer_decay = layer_decay
        self.eval_data_collator = eval_data_collator
        self.resume_settings = resume_settings or {}
        self._step_was_nonfinite = False
        self.consecutive_nonfinite_steps = 0
        self.skipped_nonfinite_steps = 0
        super().__init__(*args, **kwargs)
        # SIGTERM / SIGINT and max_time_seconds save a checkpoint and stop, on every process at the same step (the
        # pretraining engines' RunControl; early stopping is the Trainer's own EarlyStoppingCallback here)
        self.run_control = RunControl(
            max_time_seconds=self.args.max_time_seconds,
            reduce_max=self._reduce_max if self.args.world_size > 1 else None,
        )
        self.add_callback(RunControlCallback(self.run_control))

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:
            # on_train_end does this after a normal end; a run that raised (NaN/inf, a failed save) must not keep the
            # SIGTERM / SIGINT handlers (a notebook)
            self.run_control.finish()

    def _reduce_max(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(tensor.to(self.args.device), reduction="max")

    @property
    def stopped_early(self) -> bool:
        """Training stopped before its last step (a signal or the time budget): a resume continues it."""
        return self.run_control.stop_reason is not None and self.state.global_step < self.state.max_steps

    model_card_writer = None  # set by run_finetuning once the results are known: writes hf_ssl's card

    def create_model_card(self, *args, **kwargs):
        # push_to_hub calls this: hf_ssl's card (results, settings, true metadata) instead of the Trainer's generic one
        if self.model_card_writer is None:
            return super().create_model_card(*args, **kwargs)
        if self.is_world_process_zero():
            self.model_card_writer()

    def get_eval_dataloader(self, eval_dataset=None):
        with self._evaluation_collator():
            return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset):
        with self._evaluation_collator():
            return super().get_test_dataloader(test_dataset)

    @contextlib.contextmanager
    def _evaluation_collator(self):
        # a DataLoader keeps the collate_fn it was built with: swap it in for the build only
        training_collator = self.data_collator
        if self.eval_data_collator is not None:
            self.data_collator = self.eval_data_collator
        try:
            yield
        finally:
            self.data_collator = training_collator

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            model = self.model if model is None else model
            groups = parameter_groups(
                model,
                self.args.learning_rate,
                self.args.weight_decay,
                set(self.get_decay_parameter_names(model)),
                self.layer_decay,
            )
            optimizer_class, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            self.optimizer = optimizer_class(
                [{key: value for key, value in group.items() if key != "names"} for group in groups],
                **optimizer_kwargs,
            )
            self._skip_nonfinite_steps(self.optimizer)
            if self.layer_decay is not None:
                logger.info(
                    "Layer-wise lr decay %g: lr x %s from the embeddings to the head",
                    self.layer_decay,
                    ", ".join(f"{scale:.3g}" for scale in sorted({group["lr_scale"] for group in groups})),
                )
        return self.optimizer

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        # through from_pretrained, copied in place: the Trainer's raw state-dict load would silently keep a ViT's
        # current weights (see load_weights_in_place); DeepSpeed and FSDP load their own formats
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_weights_in_place(model if model is not None else self.model, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_best_model()
        logger.info(
            "Loading the best model from %s (%s %s)",
            self.state.best_model_checkpoint,
            self.args.metric_for_best_model,
            self.state.best_metric,
        )
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def training_step(self, model, inputs, num_items_in_batch=None):
        if inputs["labels"].numel() == 0:  # every image of the batch was unreadable (counted by the collator)
            return torch.zeros((), device=self.args.device)
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not bool(torch.isfinite(loss.detach()).all()):
            self._step_was_nonfinite = True
        return loss

    # ----- exact resume: the data order and the crops depend on (seed, epoch, example) alone -----------------------
    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if isinstance(dataset, SeededExamples):
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return EpochShuffleSampler(len(dataset), seed=seed, epoch_holder=dataset)
        return super()._get_train_sampler(train_dataset)

    # ----- NaN / inf: skip the step, stop after too many, never save such weights ------------------------------------
    def _skip_nonfinite_steps(self, optimizer) -> None:
        # Wraps the optimizer's own step (accelerate's wrapper and the lr scheduler call it), so that every process
        # skips the same steps: one all-reduce of a flag set by a NaN/inf loss here or NaN/inf gradients anywhere.
        step = optimizer.step

        def step_if_finite(*args, **kwargs):
            if self._nonfinite_step():
                return None
            return step(*args, **kwargs)

        optimizer.step = step_if_finite

    def _nonfinite_step(self) -> bool:
        gradients = [parameter.grad for parameter in self.model.parameters() if parameter.grad is not None]
        bad = self._step_was_nonfinite or (
            bool(gradients) and not bool(torch.stack(torch._foreach_norm(gradients)).isfinite().all())
        )
        self._step_was_nonfinite = False
        if self.args.world_size > 1:
            bad = bool(self._reduce_max(torch.tensor(float(bad))).item() > 0)
        if not bad:
            self.consecutive_nonfinite_steps = 0
            return False
        self.consecutive_nonfinite_steps += 1
        self.skipped_nonfinite_steps += 1
        step = self.state.global_step + 1
        logger.warning(
            "Non-finite loss or gradients at step %d: optimizer step skipped (%d in a row, %d in total).",
            step,
            self.consecutive_nonfinite_steps,
            self.skipped_nonfinite_steps,
        )
        if self.consecutive_nonfinite_steps >= self.args.max_consecutive_nonfinite_steps:
            error = NonFiniteLossError(step, self.consecutive_nonfinite_steps)
            error.warmup_key = "training.warmup_ratio"
            error.last_good_checkpoint = checkpointing.latest_checkpoint(self.args.output_dir)
            raise error
        return True

    def _check_finite_weights(self, what: str) -> None:
        bad = [
            name
            for name, parameter in self.model.named_parameters()
            if not bool(torch.isfinite(parameter.detach()).all())
        ]
        if bad:
            raise NonFiniteWeightsError(
                f"refusing to save {what}: {len(bad)} weight tensors hold NaN or inf ({', '.join(bad[:3])}"
                f"{', ...' if len(bad) > 3 else ''}); the checkpoints saved before are kept"
            )

    # ----- atomic checkpoints ----------------------------------------------------------------------------------------
    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint (model, optimizer, scheduler, scaler, RNG states, trainer state) written under
        ``.staging-checkpoint-<step>`` by every process, then ``hf_ssl_state.json`` and the rename to
        ``checkpoint-<step>`` by the main process; then the Hub push and the rotation of committed checkpoints."""
        self._check_finite_weights(f"checkpoint {self.state.global_step}")
        with self.staged_trainer_checkpoint(model, trial) as written:
            self.accelerator.wait_for_everyone()
            if self.state.best_model_checkpoint == str(
                written
            ):  # the Trainer named the staging folder, on every process
                self.state.best_model_checkpoint = str(
                    checkpointing.checkpoint_path(self.args.output_dir, self.state.global_step)
                )
                if self.args.should_save:
                    self.state.save_to_json(str(written / "trainer_state.json"))
            if self.args.should_save:
                final = self.commit_staged(written, self.checkpoint_record(self.state.global_step))
        if self.args.should_save:
            logger.info("Saved checkpoint %s", final)
            if self.args.push_to_hub:
                super()._push_from_checkpoint(str(final))
            self.rotate_checkpoints()
        self.accelerator.wait_for_everyone()

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # The Trainer calls this with the staging folder, before it is complete; _save_checkpoint pushes the
        # committed one
        if self._staging_dir is None:
            super()._push_from_checkpoint(checkpoint_folder)

    def rotate_checkpoints(self) -> None:
        """Keep ``save_total_limit`` committed checkpoints (the newest and the best always), by step. Also run after a
        resume: a run killed between a commit and its rotation left one checkpoint too many."""
        if self.args.should_save:
            rotate_checkpoints(
                str(self.args.output_dir),
                self.args.save_total_limit,
                self.state.best_model_checkpoint,
                use_mtime=False,
            )

    def checkpoint_record(self, step: int) -> dict[str, Any]:
        """What ``hf_ssl_state.json`` of a fine-tuning checkpoint holds besides the file sizes."""
        return {
            "method": FINETUNE_ENGINE,
            "engine": FINETUNE_ENGINE,
            "step": step,
            "epoch": self.state.epoch,
            "world_size": self.args.world_size,
            "total_batch_size": self.args.total_batch_size,
            "total_steps": self.state.max_steps,
            "settings": self.resume_settings,
            "metrics": {
                key: value
                for key, value in (self.state.log_history[-1] if self.state.log_history else {}).items()
                if key.startswith("eval_")
            },
        }

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if not _internal_call:  # a checkpoint's weights were checked by _save_checkpoint, before its staging folder
            self._check_finite_weights("the model")
        super().save_model(output_dir, _internal_call=_internal_call)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if inputs["labels"].numel() == 0:
            return None, None, None
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
