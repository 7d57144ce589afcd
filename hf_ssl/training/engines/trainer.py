"""Any hf_ssl method on the transformers ``Trainer``: ``SslTrainer``.

The Trainer supplies the loop, mixed precision, gradient accumulation, DDP/FSDP/DeepSpeed through
accelerate, checkpointing and the Hub repository; what a push uploads is ``hf_ssl.training.sharing.hub``'s, as on the
accelerate engine. The method (``hf_ssl.training.methods``) adds, per optimizer step:
the lr / weight-decay schedules and its own (DINO: teacher momentum and temperature, last-layer freeze), the
device-side photometric augmentation, its loss, what happens around the optimizer step (an EMA teacher update)
and the collapse metrics in the logs; callbacks call it at the Trainer's moments.
"""

from __future__ import annotations

import logging
import math

import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer

from hf_ssl.errors import NonFiniteLossError
from hf_ssl.training.arguments import PretrainingArguments
from hf_ssl.training.engines.base import (
    FULL_PRECISION_TEACHER_FILE,
    PretrainingEngine,
    create_optimizer,
    default_collator,
    restore_optimizer_settings,
    save_full_precision_model,
    train_sampler,
)
from hf_ssl.training.engines.callbacks import EmaCallback, MethodStepCallback
from hf_ssl.training.engines.evaluation import EvaluationCallback
from hf_ssl.training.sharing.outputs import hub_repo_error
from hf_ssl.training.state import checkpointing
from hf_ssl.training.state.history import HistoryCallback
from hf_ssl.training.state.run_control import RunControlCallback

logger = logging.getLogger(__name__)


class SslTrainer(PretrainingEngine, checkpointing.StagedTrainerCheckpoints, Trainer):
    """``Trainer`` for the pretraining model of any registered method, on batches from ``ViewCropCollator``.

    Args:
        model: the method's pretraining model (``DinoForPreTraining``, ``SimClrForPreTraining``...).
        args: the method's training arguments (``DinoTrainingArguments``, ...: a ``PretrainingArguments``).
        view_config: the augmentation settings (the recipe's ``augmentation`` section); its photometric part runs
            batched on the training device inside ``compute_loss``. Default: the method's defaults.
        method: the method's name or ``MethodSpec``; default: the method whose pretraining model ``model`` is.
        train_dataset: a dataset with the ``ViewCropTransform`` attached (``with_view_crops``); a
            ``ViewCropDataset`` is shuffled by ``EpochShuffleSampler`` so that a resume is exact.
        knn_evaluator: a ``KnnEvaluator`` run every ``knn_eval_steps`` optimizer steps (0: never during
            training) and at the end when ``knn_at_end``; it logs ``knn_top1``/``knn_top5``.
        validation: a ``ValidationLoss`` on a held-out split run every ``val_eval_steps`` optimizer steps (0: never
            during training) and at the end when ``val_at_end``; it logs ``val_loss``.
        Other keyword arguments go to ``transformers.Trainer`` (``callbacks``, ``processing_class``...).

    Checkpoints (``save_strategy``/``save_steps``, at the end, on SIGTERM/SIGINT, at ``max_time_seconds``, on
    early stopping) are committed atomically and rotated by ``save_total_limit`` (last K) and
    ``save_best_total_limit`` (best N by ``metric_for_best_model``); ``train(resume_from_checkpoint="auto")``
    continues from the latest one.
    """

    def __init__(
        self,
        model,
        args: PretrainingArguments,
        view_config=None,
        data_collator=None,
        method=None,
        knn_evaluator=None,
        knn_eval_steps: int = 0,
        knn_at_end: bool = True,
        validation=None,
        val_eval_steps: int = 0,
        val_at_end: bool = True,
        **kwargs,
    ):
        data_collator = data_collator or default_collator(model, method, view_config, args)
        super().__init__(model=model, args=args, data_collator=data_collator, **kwargs)
        self._set_up_engine(
            model,
            args,
            method,
            view_config,
            knn_evaluator=knn_evaluator,
            knn_eval_steps=knn_eval_steps,
            knn_at_end=knn_at_end,
            validation=validation,
            val_eval_steps=val_eval_steps,
            val_at_end=val_at_end,
        )
        self.add_callback(MethodStepCallback(self))
        self.add_callback(EmaCallback(self))
        self.add_callback(EvaluationCallback(self))
        # after the evaluations: it saves history.json at the end of training, once their last results are logged
        self.history_callback = HistoryCallback(args.output_dir, collapse_detector=self.method.collapse_detector())
        self.add_callback(self.history_callback)
        # last: it decides on the metrics the callbacks above logged in the same step
        self.add_callback(RunControlCallback(self.run_control))

    engine_name = "trainer"

    @property
    def history(self):
        return self.history_callback.history

    @history.setter
    def history(self, history) -> None:
        self.history_callback.history = history

    @property
    def evaluation_model(self):
        return self.model_wrapped

    @property
    def autocast_context(self):
        return self.autocast_smart_context_manager

    # ----- data order ----------------------------------------------------------------------------
    def _get_train_sampler(self, train_dataset=None):
        sampler = train_sampler(train_dataset if train_dataset is not None else self.train_dataset, self.args)
        return sampler if sampler is not None else super()._get_train_sampler(train_dataset)

    # ----- optimizer and schedules -------------------------------------------------------------
    def create_optimizer(self, model=None):
        if self.optimizer is None:
            self.optimizer = create_optimizer(self.method, self.model, self.args)
        return self.optimizer

    def updates_per_epoch(self) -> int:
        batches = len(self.get_train_dataloader())
        return max(math.ceil(batches / self.args.gradient_accumulation_steps), 1)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            optimizer = optimizer or self.optimizer
            self.schedules = self.method.build_schedules(
                self.args, num_training_steps, self.updates_per_epoch(), self.total_batch_size
            )
            # LambdaLR multiplies each group's initial lr; set it to 1 so the factor is the lr itself
            for group in optimizer.param_groups:
                group["lr"] = 1.0
                group["initial_lr"] = 1.0
            # A closure, not the schedule object: LambdaLR saves callable objects in its state and a resume would
            # load the old run's schedule into this one (its lr and length), whatever the new run says.
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: self.schedules.learning_rate(step)
            )
            self._created_lr_scheduler = True
        return self.lr_scheduler

    # ----- one micro-batch ---------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = self.method.loss(model, inputs, self.state.global_step)
        return (loss, outputs) if return_outputs else loss

    # ----- checkpoints and resume ---------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """``Trainer.train``; ``resume_from_checkpoint`` may also be ``"auto"`` (the latest checkpoint of
        ``output_dir``, or a fresh start when there is none) or ``"hub"`` (``last-checkpoint/`` of the Hub repository
        first, see ``prepare_run``), and defaults to ``args.resume_from_checkpoint``.
        A checkpoint of another method, engine, model configuration or total batch is refused before training."""
        checkpoint, state = self._resolve_resume(resume_from_checkpoint, hub_repo_id=self.hub_model_id)
        if checkpoint is not None:
            self._restore_resumed_state(checkpoint, state)
        try:
            return super().train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None, **kwargs)
        except NonFiniteLossError as error:
            self._point_to_last_good_checkpoint(error)
            raise
        finally:
            # on_train_end does this after a normal end; a run that raised must not keep Ctrl-C (a notebook)
            self.run_control.finish()

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        # The Trainer creates the Hub repository of push_to_hub in its constructor: say what to do, not a traceback
        try:
            super().init_hf_repo(token=token, private=private)
        except Exception as error:
            raise hub_repo_error(self.args, error) from error

    def _load_optimizer_and_scheduler(self, checkpoint) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            restore_optimizer_settings(self.optimizer, self.args)

    def _run_epoch(self, *args, **kwargs):
        # A run resumed at (or past) its last step has nothing left to train; the Trainer would still run one
        # step of the epoch it resumes in before it looks at max_steps.
        if self.state.global_step >= self.state.max_steps:
            return None
        return super()._run_epoch(*args, **kwargs)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        # through from_pretrained, copied in place (the EMA and the optimizer keep their tensors); DeepSpeed and FSDP
        # load their own formats
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        checkpointing.load_weights_in_place(model if model is not None else self.model, resume_from_checkpoint)

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint (model, optimizer, scheduler, scaler, RNG states, trainer state) plus
        ``hf_ssl_state.json`` and ``history.json``, written under a staging folder by every process and
        then renamed to ``checkpoint-<step>`` by the main process: a kill during a save loses nothing."""
        step = self.state.global_step
        if not self.method.may_checkpoint(step):
            return
        with self.staged_trainer_checkpoint(model, trial) as written:
            if self.method.full_precision_teacher is not None and self.args.should_save:
                # DeepSpeed bf16/fp16: its checkpoint holds the rounded teacher; the EMA's float32 copy goes beside it
                copies = self.method.full_precision_teacher.state_dict()["teacher"]
                save_file(
                    {str(index): copy.contiguous() for index, copy in enumerate(copies)},
                    str(written / FULL_PRECISION_TEACHER_FILE),
                )
            tracker_ids = checkpointing.tracker_run_ids()
            self.accelerator.wait_for_everyone()
            if self.args.should_save:
                self.history_callback.history.save(written / "history.json")
                final = self.commit_staged(written, self.checkpoint_record(step, tracker_ids))
        if self.args.should_save:
            self._after_checkpoint(final, step)
        self.accelerator.wait_for_everyone()

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # The Trainer calls this from its _save_checkpoint with the staging folder, before hf_ssl_state.json and
        # history.json are in it; _save_checkpoint pushes the committed checkpoint instead (CheckpointPusher).
        return None

    def _finish_current_push(self) -> None:
        super()._finish_current_push()
        self.checkpoint_pusher.wait()

    def restore_full_precision_teacher(self) -> None:
        """After DeepSpeed loaded a checkpoint: the EMA's float32 teacher saved beside it (bf16/fp16 runs)."""
        checkpoint = self._resume_checkpoint
        if self.method.full_precision_teacher is None or checkpoint is None:
            return
        path = checkpoint / FULL_PRECISION_TEACHER_FILE
        if not path.is_file():
            logger.warning(
                "%s has no %s: the EMA continues from the checkpoint's rounded teacher",
                checkpoint,
                FULL_PRECISION_TEACHER_FILE,
            )
            return
        saved = load_file(path)
        self.method.full_precision_teacher.load_state_dict(
            {"teacher": [saved[str(index)] for index in range(len(saved))]}
        )

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """``Trainer.save_model``; after DeepSpeed bf16/fp16 training the model is saved in float32 from the
        optimizer's master weights and the EMA's float32 teacher (every process must call it). Checkpoints (an
        internal call with a folder) keep DeepSpeed's own save: their float32 teacher is saved beside it."""
        checkpoint_save = _internal_call and output_dir is not None
        if self.method.full_precision_teacher is None or checkpoint_save:
            return super().save_model(output_dir, _internal_call)
        save_full_precision_model(
            self.model,
            self.method.full_precision_teacher,
            output_dir or self.args.output_dir,
            self.is_world_process_zero(),
        )
        self.accelerator.wait_for_everyone()

    # ----- logging -----------------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self.schedules is not None:
            logs.update(self.method.log_metrics(max(self.state.global_step - 1, 0), self.args.world_size))
        super().log(logs, start_time)

    # ----- sharing -----------------------------------------------------------------------------
    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs,
    ):
        """``Trainer.push_to_hub`` with hf_ssl's file list: save the model (every process: it gathers sharded
        weights), rewrite the card (``kwargs`` go to ``create_model_card``), wait for a checkpoint push still running,
        then upload ``hub.files_to_push(output_dir)`` (the model, backbone/, processor, card, recipe, history, k-NN
        results; never the checkpoints) as one commit. Returns its ``CommitInfo`` (a ``Future`` when not
        ``blocking``) on the main process, None elsewhere."""
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        token = token if token is not None else self.args.hub_token
        if self.hub_model_id is None:
            self.init_hf_repo(token=token, private=private)
        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        self.create_model_card(**kwargs)
        self._finish_current_push()
        return self._upload_outputs(token, revision, commit_message, blocking)
