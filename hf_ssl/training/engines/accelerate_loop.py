"""Any hf_ssl method on a raw Accelerate loop: the ``training.engine: accelerate`` engine.

The loop below reads top to bottom like the transformers ``*_no_trainer`` examples. It takes the same
training arguments as ``SslTrainer`` and shares everything else with it: the model and loss, the method
(``hf_ssl.training.methods``: schedules, device augmentation, NaN guard, what happens around the optimizer
step, EMA), ``History`` and collapse detection, k-NN evaluation, checkpoints (``hf_ssl.training.state.checkpointing``)
and ``RunControl`` (signals, time budget, early stopping). What it owns is only the loop itself.

    trainer = AccelerateTrainer(model, args, view_config, train_dataset)
    trainer.train(resume_from_checkpoint="auto")
    trainer.save_model()
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, TorchDynamoPlugin
from tqdm.auto import tqdm

from hf_ssl.errors import NonFiniteLossError
from hf_ssl.training.arguments import PretrainingArguments
from hf_ssl.training.engines.base import (
    PretrainingEngine,
    create_optimizer,
    default_collator,
    is_deepspeed,
    restore_optimizer_settings,
    save_full_precision_model,
    train_sampler,
)
from hf_ssl.training.sharing.hub import create_hub_repo
from hf_ssl.training.sharing.outputs import hub_repo_error, hub_repo_name
from hf_ssl.training.state import checkpointing
from hf_ssl.training.state.history import History

logger = logging.getLogger(__name__)


@dataclass
class LoopState:
    """Where the loop is; ``log_history`` mirrors ``TrainerState.log_history`` (one dict per log)."""

    global_step: int = 0
    epoch: float = 0.0
    max_steps: int = 0
    log_history: list[dict] = field(default_factory=list)


class AccelerateTrainer(PretrainingEngine):
    """Any registered method on ``accelerate.Accelerator``, with the constructor and ``train`` of ``SslTrainer``.

    Args:
        model: the method's pretraining model (``DinoForPreTraining``, ``SimClrForPreTraining``...).
        args: the method's training arguments (batch size, accumulation, bf16/fp16, schedules, saving, report_to...).
        view_config: the augmentation settings (the photometric part runs on the device); default: the method's.
        train_dataset: ``with_view_crops(dataset, transform)``; a ``ViewCropDataset`` makes resumes exact.
        knn_evaluator, knn_eval_steps, knn_at_end: k-NN of the evaluated backbone, as in ``SslTrainer``.
        validation, val_eval_steps, val_at_end: ``val_loss`` on a held-out split, as in ``SslTrainer``.
        method: the method's name or ``MethodSpec``; default: the method whose pretraining model ``model`` is.
    """

    def __init__(
        self,
        model,
        args: PretrainingArguments,
        view_config=None,
        train_dataset=None,
        data_collator=None,
        knn_evaluator=None,
        knn_eval_steps: int = 0,
        knn_at_end: bool = True,
        method=None,
        validation=None,
        val_eval_steps: int = 0,
        val_at_end: bool = True,
    ):
        if train_dataset is None:
            raise ValueError(
                "AccelerateTrainer needs a train_dataset (with_view_crops(dataset, ViewCropTransform(...)))"
            )
        self.args = args
        self.model = model
        self.train_dataset = train_dataset
        self.data_collator = data_collator or default_collator(model, method, view_config, args)
        self.trackers = [name for name in _as_list(args.report_to) if name != "none"]
        self.accelerator = Accelerator(
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            mixed_precision="bf16" if args.bf16 else "fp16" if args.fp16 else "no",
            log_with=self.trackers or None,
            # TensorBoard event files under <output_dir>/runs, as with the Trainer (or $TENSORBOARD_LOGGING_DIR)
            project_config=ProjectConfiguration(
                project_dir=args.output_dir,
                logging_dir=os.environ.get("TENSORBOARD_LOGGING_DIR", os.path.join(args.output_dir, "runs")),
            ),
            cpu=args.use_cpu,
            # training.torch_compile (+ torch_compile_backend / torch_compile_mode): prepare compiles the model
            dynamo_plugin=TorchDynamoPlugin(
                backend=args.torch_compile_backend or "inductor", mode=args.torch_compile_mode
            )
            if args.torch_compile
            else None,
        )
        self.deepspeed = is_deepspeed(self.accelerator)
        if self.deepspeed:
            self._configure_deepspeed()
        self.state = LoopState()
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
        self.history = History()
        self.collapse_detector = self.method.collapse_detector()
        self.optimizer = None
        self.wrapped_model = model
        # as the Trainer does: the repository of push_to_hub exists before training, or the run does not start
        self.hub_model_id = self._create_hub_repo() if args.push_to_hub and self.accelerator.is_main_process else None

    engine_name = "accelerate"

    def _configure_deepspeed(self) -> None:
        """The recipe decides what DeepSpeed does inside its step: clipping (``max_grad_norm``, 0 = none) and
        the accumulation that its step boundary and loss scaling follow."""
        plugin = self.accelerator.state.deepspeed_plugin
        config = plugin.deepspeed_config
        recipe = {
            "gradient_clipping": float(self.args.max_grad_norm),
            "gradient_accumulation_steps": int(self.args.gradient_accumulation_steps),
        }
        for key, value in recipe.items():
            if config.get(key, "auto") not in ("auto", value):
                logger.info("DeepSpeed config has %s=%s; the recipe's %s is used", key, config[key], value)
            config[key] = value
        self.accelerator.gradient_accumulation_steps = self.args.gradient_accumulation_steps

    # ----- small helpers ---------------------------------------------------------------------------
    def is_world_process_zero(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def evaluation_model(self):
        return self.wrapped_model

    @property
    def autocast_context(self):
        return self.accelerator.autocast

    def get_train_dataloader(self) -> torch.utils.data.DataLoader:
        """Per-process batches of ``per_device_train_batch_size``; accelerate shards them after ``prepare``."""
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        self.sampler = train_sampler(self.train_dataset, self.args)
        if self.sampler is None:
            self.sampler = torch.utils.data.RandomSampler(
                self.train_dataset, generator=torch.Generator().manual_seed(seed)
            )
        return torch.utils.data.DataLoader(
            self.train_dataset,
            batch_size=self.args.per_device_train_batch_size,
            sampler=self.sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
            drop_last=self.args.dataloader_drop_last,
            persistent_workers=self.args.dataloader_persistent_workers and self.args.dataloader_num_workers > 0,
            prefetch_factor=self.args.dataloader_prefetch_factor if self.args.dataloader_num_workers > 0 else None,
        )

    # ----- the loop --------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | bool | None = None) -> LoopState:
        args, accelerator = self.args, self.accelerator
        checkpoint, saved_state = self._resolve_resume(resume_from_checkpoint, hub_repo_id=self.hub_model_id)

        # 1. data, optimizer and the length of the run (in optimizer steps)
        if args.activation_checkpointing:  # recompute the backbone's activations in backward: less memory per crop
            self.model.activation_checkpointing_enable(
                activation_checkpointing_kwargs=args.activation_checkpointing_kwargs
            )
        dataloader = self.get_train_dataloader()
        self.optimizer = create_optimizer(self.method, self.model, args)
        model, self.optimizer, dataloader = accelerator.prepare(self.model, self.optimizer, dataloader)
        self.wrapped_model = model
        # FSDP2 swaps in sharded parameters; DeepSpeed steps inside backward and may cast the model to bf16/fp16
        self.method.bind(accelerator.unwrap_model(model), optimizer_steps_in_backward=self.deepspeed)
        if self.method.full_precision_teacher is not None:
            accelerator.register_for_checkpointing(self.method.full_precision_teacher)
        updates_per_epoch = max(math.ceil(len(dataloader) / args.gradient_accumulation_steps), 1)
        if args.max_steps > 0:
            total_steps = args.max_steps
        else:
            total_steps = math.ceil(args.num_train_epochs * updates_per_epoch)
        num_epochs = math.ceil(total_steps / updates_per_epoch)
        self.schedules = self.method.build_schedules(args, total_steps, updates_per_epoch, self.total_batch_size)
        self.state.max_steps = total_steps

        # 2. resume: weights, optimizer, scaler, RNG states (accelerate), then our own state
        if checkpoint is not None:
            accelerator.load_state(str(checkpoint))
            restore_optimizer_settings(self.optimizer, args)
            self.state.global_step = int(saved_state["step"])
            self._restore_resumed_state(checkpoint, saved_state)
            self.state.log_history = list(self.history.steps)
            logger.info("Resumed from %s at step %d", checkpoint, self.state.global_step)
            self.begin_session(self.state.global_step, total_steps)
        if self.trackers:
            run_name = {"name": args.run_name} if args.run_name else {}
            accelerator.init_trackers(
                os.environ.get("WANDB_PROJECT", args.project) if "wandb" in self.trackers else args.project,
                config=_tracker_config(args),
                init_kwargs={"wandb": run_name, "trackio": run_name},
            )

        # 3. the loop: one iteration per micro-batch, the method's per-step work on the optimizer-step boundaries
        start_epoch, updates_done_in_epoch = divmod(self.state.global_step, updates_per_epoch)
        progress = tqdm(
            total=total_steps,
            initial=self.state.global_step,
            desc=self.method.name,
            disable=not accelerator.is_local_main_process,
        )
        self.run_control.start()
        loss_sum, loss_count, grad_norm = torch.zeros((), device=accelerator.device), 0, None
        model.train()
        try:
            # a run resumed at (or past) its last step has nothing left to train
            for epoch in range(start_epoch, start_epoch if self.finished_before_start else num_epochs):
                batches = dataloader
                if epoch == start_epoch and updates_done_in_epoch:
                    batches = accelerator.skip_first_batches(
                        dataloader, updates_done_in_epoch * args.gradient_accumulation_steps
                    )
                # on the loader, not the sampler: a prepared loader sets its sampler's epoch to its own count
                batches.set_epoch(epoch)
                micro_batch = 0
                for batch in batches:
                    step = self.state.global_step
                    if micro_batch == 0:
                        self.method.begin_step(self.optimizer, step)
                    with accelerator.accumulate(model):
                        loss, outputs = self.method.loss(model, batch, step)
                        accelerator.backward(loss)
                        if accelerator.sync_gradients:
                            if args.max_grad_norm > 0:
                                grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                            self.method.before_optimizer_step(self.optimizer, step)
                        self.optimizer.step()
                        self.optimizer.zero_grad(set_to_none=True)
                    if outputs is not None and torch.isfinite(loss.detach()):  # not an all-unreadable batch's zero
                        loss_sum += loss.detach().float()
                        loss_count += 1
                    micro_batch += 1
                    if not accelerator.sync_gradients:
                        continue

                    # an optimizer step happened (or was skipped as a whole): EMA, bookkeeping, logs, saves
                    micro_batch = 0
                    self.method.after_optimizer_step(step, accelerator.optimizer_step_was_skipped)
                    self.state.global_step += 1
                    self.state.epoch = epoch + min((updates_done_in_epoch + 1) / updates_per_epoch, 1.0)
                    updates_done_in_epoch += 1
                    progress.update(1)
                    if (
                        self.state.global_step % max(int(args.logging_steps), 1) == 0
                        or self.state.global_step == total_steps
                    ):
                        logs = self._step_logs(loss_sum, loss_count, grad_norm)
                        loss_sum, loss_count = torch.zeros((), device=accelerator.device), 0
                        progress.set_postfix(loss=f"{logs.get('loss', float('nan')):.4f}")
                        self.log(logs)
                    self.evaluations.after_step(self)
                    stop_reason = self.run_control.check(accelerator.device)
                    if stop_reason is not None:
                        logger.warning(
                            "step %d: %s; saving a checkpoint",
                            self.state.global_step,
                            self.run_control.describe_stop(),
                        )
                    if stop_reason is not None or self._save_due(total_steps):
                        self.save_checkpoint()
                    if stop_reason is not None or self.state.global_step >= total_steps:
                        break
                if updates_done_in_epoch >= updates_per_epoch:
                    self.history.record_epoch(epoch + 1, step=self.state.global_step)
                updates_done_in_epoch = 0
                if self.run_control.stop_reason is not None or self.state.global_step >= total_steps:
                    break
        except NonFiniteLossError as error:
            self._point_to_last_good_checkpoint(error)
            raise
        finally:
            self.run_control.finish()
            progress.close()

        # 4. the end: k-NN and validation (unless the session was cut), history and trackers
        self.evaluations.at_end(self)
        if accelerator.is_main_process:
            self.save_history()
        # the trackers end here; not the process group (accelerator.end_training): save_model still gathers
        for tracker in accelerator.trackers:
            tracker.finish()
        self.checkpoint_pusher.wait()  # as the Trainer: the last checkpoint push is done when train returns
        return self.state

    def _save_due(self, total_steps: int) -> bool:
        step, args = self.state.global_step, self.args
        strategy = str(getattr(args.save_strategy, "value", args.save_strategy))
        if strategy == "steps":
            return step % max(int(args.save_steps), 1) == 0 or step >= total_steps
        if strategy == "epoch":
            return self.state.epoch == int(self.state.epoch) or step >= total_steps
        return False

    # ----- logging -----------------------------------------------------------------------------------
    def _step_logs(self, loss_sum: torch.Tensor, loss_count: int, grad_norm) -> dict[str, float]:
        """The logged numbers since the last log: loss (mean over micro-batches and processes), grad norm,
        schedules, collapse signals, throughput and skip counters (``PretrainingMethod.log_metrics``)."""
        accelerator = self.accelerator
        totals = accelerator.reduce(torch.stack([loss_sum, loss_sum.new_tensor(float(loss_count))]), reduction="sum")
        logs = {}
        if totals[1] > 0:
            logs["loss"] = round(float(totals[0] / totals[1]), 6)
        if grad_norm is not None:
            logs["grad_norm"] = float(grad_norm)
        logs.update(self.method.log_metrics(self.state.global_step - 1, accelerator.num_processes))
        logs["epoch"] = round(self.state.epoch, 4)
        return logs

    def log(self, logs: dict[str, float]) -> None:
        """Record ``logs`` at the current step: history, trackers, collapse warnings and early stopping."""
        step = self.state.global_step
        self.state.log_history.append({**logs, "step": step})
        self.history.record_step(step, logs, epoch=self.state.epoch)
        # "train/<name>", the names the Trainer's tracker callbacks use, so both engines' runs compare
        self.accelerator.log({f"train/{key}": value for key, value in logs.items()}, step=step)
        self.run_control.observe(logs)
        message = self.collapse_detector.update(logs, step=step)
        if message is not None and self.accelerator.is_main_process:
            logger.warning(message)
        if self.accelerator.is_main_process:
            logger.info("step %d: %s", step, logs)

    def save_history(self) -> None:
        path = self.history.save(Path(self.args.output_dir) / "history.json")
        if any(key not in ("step", "epoch") for key in self.history.metric_names()):
            self.history.plot(path.with_suffix(".png"))

    # ----- checkpoints -------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """``accelerator.save_state`` (model, optimizer, scaler, RNG states of every process) plus config,
        history and ``hf_ssl_state.json``, in a staging folder renamed to ``checkpoint-<step>`` once complete; then,
        with ``push_to_hub`` and a ``hub_strategy`` other than end, pushed in the background (``CheckpointPusher``),
        with a ``from_pretrained`` copy of the weights for the repository's root (written by every process: it
        gathers sharded weights; removed once pushed)."""
        accelerator, step, output_dir = self.accelerator, self.state.global_step, self.args.output_dir
        final = checkpointing.checkpoint_path(output_dir, step)
        if not self.method.may_checkpoint(step):
            return None
        staging = checkpointing.staging_path(output_dir, step)
        if accelerator.is_main_process:
            checkpointing.prepare_staging(output_dir, step)
        accelerator.wait_for_everyone()
        with checkpointing.saving_checkpoint(output_dir, step):
            accelerator.save_state(str(staging))
            tracker_ids = checkpointing.tracker_run_ids()
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                self.model.config.save_pretrained(staging)
                self.history.save(staging / "history.json")
                checkpointing.write_state(staging, self.checkpoint_record(step, tracker_ids))
                checkpointing.commit_checkpoint(staging, final)
        weights = None
        if self.checkpoint_pusher.active:
            weights = self.checkpoint_pusher.weights_copy(output_dir, step) if accelerator.is_main_process else None
            self.save_model(str(weights) if weights is not None else None)
        if accelerator.is_main_process:
            self._after_checkpoint(final, step, weights=weights)
        accelerator.wait_for_everyone()
        return final

    # ----- saving and sharing ------------------------------------------------------------------------
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """``save_pretrained`` of the hf_ssl model: the full state gathered from every process under FSDP; in
        float32 from DeepSpeed's master weights and the float32 teacher when DeepSpeed trained an EMA method in
        bf16/fp16. (``_internal_call``: the Trainer's signature; this engine never pushes from ``save_model``.)"""
        self.accelerator.wait_for_everyone()
        model = self.accelerator.unwrap_model(self.wrapped_model)
        if self.method.full_precision_teacher is not None:  # a collective
            save_full_precision_model(
                model,
                self.method.full_precision_teacher,
                output_dir or self.args.output_dir,
                self.accelerator.is_main_process,
            )
            return
        state_dict = self.accelerator.get_state_dict(self.wrapped_model)  # a collective under FSDP
        if self.accelerator.is_main_process:
            model.save_pretrained(output_dir or self.args.output_dir, state_dict=state_dict)

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs,
    ):
        """As ``SslTrainer.push_to_hub``: save the model (every process), rewrite the card (``kwargs`` go to
        ``create_model_card``), wait for a checkpoint push still running, then upload ``hub.files_to_push(output_dir)``
        as one commit; its ``CommitInfo`` (a ``Future`` when not ``blocking``) on the main process, None elsewhere."""
        self.save_model()
        if not self.accelerator.is_main_process:
            return None
        token = token if token is not None else self.args.hub_token
        if self.hub_model_id is None:
            self.hub_model_id = self._create_hub_repo(token=token, private=private)
        self.create_model_card(**kwargs)
        return self._upload_outputs(token, revision, commit_message, blocking)

    def _create_hub_repo(self, token: str | None = None, private: bool | None = None) -> str:
        try:
            return create_hub_repo(
                hub_repo_name(self.args),
                token if token is not None else self.args.hub_token,
                private if private is not None else self.args.hub_private_repo,
            )
        except Exception as error:
            raise hub_repo_error(self.args, error) from error


def _as_list(report_to) -> list[str]:
    if report_to is None:
        return []
    return [report_to] if isinstance(report_to, str) else list(report_to)


def _tracker_config(args: PretrainingArguments) -> dict:
    """The training arguments as flat scalars, the form trackers accept as a run config."""
    return {key: value for key, value in args.to_dict().items() if isinstance(value, (int, float, str, bool))}


def build_trainer(model, args: PretrainingArguments, **kwargs):
    """The engine ``args.engine`` names: ``SslTrainer`` ("trainer") or ``AccelerateTrainer`` ("accelerate").
    Both take the same arguments (``view_config``, ``train_dataset``, ``knn_evaluator``..., ``method``) and offer
    ``train``, ``save_model``, ``create_model_card`` and ``push_to_hub``."""
    if args.engine == "accelerate":
        return AccelerateTrainer(model, args, **kwargs)
    from hf_ssl.training.engines.trainer import SslTrainer

    return SslTrainer(model=model, args=args, **kwargs)
