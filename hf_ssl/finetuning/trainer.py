"""``FinetuneTrainer``: the transformers ``Trainer`` with layer-wise lr decay, batches left empty by unreadable images
skipped, and the pretraining engines' run control: a per-session time budget for Kaggle / Colab, SIGTERM / SIGINT."""

from __future__ import annotations

import contextlib
import logging

import torch
from transformers import Trainer

from hf_ssl.finetuning.model import parameter_groups
from hf_ssl.training.callbacks import RunControlCallback
from hf_ssl.training.checkpointing import load_weights_in_place
from hf_ssl.training.run_control import RunControl

logger = logging.getLogger(__name__)


class FinetuneTrainer(Trainer):
    """``Trainer`` for image classification.

    Args (besides the Trainer's):
        layer_decay: layer-wise lr decay factor (None: one lr); see `hf_ssl.finetuning.model.parameter_groups`.
        eval_data_collator: the collator of evaluation batches (default: ``data_collator``): training crops at random,
            evaluation prepares images as the saved processor does.
    """

    def __init__(self, *args, layer_decay: float | None = None, eval_data_collator=None, **kwargs):
        self.layer_decay = layer_decay
        self.eval_data_collator = eval_data_collator
        super().__init__(*args, **kwargs)
        # SIGTERM / SIGINT and max_time_seconds save a checkpoint and stop, on every process at the same step (the
        # pretraining engines' RunControl; early stopping is the Trainer's own EarlyStoppingCallback here)
        self.run_control = RunControl(
            max_time_seconds=self.args.max_time_seconds, reduce_max=self._reduce_max if self.args.world_size > 1 else None
        )
        self.add_callback(RunControlCallback(self.run_control))

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
                model, self.args.learning_rate, self.args.weight_decay, set(self.get_decay_parameter_names(model)), self.layer_decay
            )
            optimizer_class, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            self.optimizer = optimizer_class([{key: value for key, value in group.items() if key != "names"} for group in groups], **optimizer_kwargs)
            if self.layer_decay is not None:
                logger.info(
                    "Layer-wise lr decay %g: lr x %s from the embeddings to the head", self.layer_decay,
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
        logger.info("Loading the best model from %s (%s %s)", self.state.best_model_checkpoint, self.args.metric_for_best_model, self.state.best_metric)
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def training_step(self, model, inputs, num_items_in_batch=None):
        if inputs["labels"].numel() == 0:  # every image of the batch was unreadable (counted by the collator)
            return torch.zeros((), device=self.args.device)
        return super().training_step(model, inputs, num_items_in_batch)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if inputs["labels"].numel() == 0:
            return None, None, None
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
