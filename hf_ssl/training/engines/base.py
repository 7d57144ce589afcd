"""What both engines (``SslTrainer`` and ``AccelerateTrainer``) do the same way, written once: the engine base
class ``PretrainingEngine`` and the steps it is made of (the method object, the optimizer, the checks before a run,
the resume record, the backbone k-NN evaluates, the float32 save after DeepSpeed bf16/fp16 training, the checkpoint
record in ``hf_ssl_state.json``)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from hf_ssl.data import EpochShuffleSampler, ViewCropDataset
from hf_ssl.errors import ConfigError, NonFiniteLossError
from hf_ssl.training.engines.evaluation import PeriodicEvaluation
from hf_ssl.training.methods import MethodSpec, get_method, method_for_model
from hf_ssl.training.methods.base import PretrainingMethod
from hf_ssl.training.optim.ema import FullPrecisionTeacher
from hf_ssl.training.optim.optimizers import apply_optimizer_settings, build_optimizer
from hf_ssl.training.setup.config import to_plain
from hf_ssl.training.sharing import hub
from hf_ssl.training.sharing.hub import CheckpointPusher, push_output_dir
from hf_ssl.training.sharing.model_card import write_model_card
from hf_ssl.training.state import checkpointing
from hf_ssl.training.state.history import History
from hf_ssl.training.state.run_control import build_run_control

logger = logging.getLogger(__name__)

FULL_PRECISION_TEACHER_FILE = "teacher_float32.safetensors"


def resolve_method(model, method: str | MethodSpec | None) -> MethodSpec:
    """The spec of ``method`` (a name or a spec), or of the method whose pretraining model ``model`` is."""
    spec = method_for_model(model) if method is None else get_method(method) if isinstance(method, str) else method
    if not isinstance(model.config, spec.config_class):
        raise ValueError(
            f"the {spec.name!r} method trains a {spec.pretraining_model_class.__name__}, not a {type(model).__name__}"
        )
    return spec


def build_method(
    model, method: str | MethodSpec | None, view_config, args, process_index: int, reduce
) -> PretrainingMethod:
    """The ``PretrainingMethod`` of ``method`` (``resolve_method``) around ``model`` for this process; ``view_config``
    is the recipe's augmentation section (None: the method's defaults), kept as given in ``.view_config`` (what a
    checkpoint records) and as the pipeline's ``ViewsConfig`` in ``.views``."""
    spec = resolve_method(model, method)
    view_config = view_config if view_config is not None else spec.view_config_class()
    return spec.method_class(
        model, view_config, args.seed, process_index, args.max_consecutive_nonfinite_steps, reduce=reduce
    )


def default_collator(model, method: str | MethodSpec | None, view_config, args):
    """The collator the method's batches need when the caller gives none (``PretrainingMethod.build_collator``:
    ``ViewCropCollator``, or one that adds masks)."""
    spec = resolve_method(model, method)
    view_config = view_config if view_config is not None else spec.view_config_class()
    data_seed = args.data_seed if args.data_seed is not None else args.seed
    return spec.method_class.build_collator(model.config, view_config, data_seed)


def create_optimizer(method: PretrainingMethod, model, args) -> torch.optim.Optimizer:
    """``args.optimizer`` (adamw, sgd or lars) over the method's parameter groups; lr and weight decay are set
    every step by ``method.begin_step``."""
    return build_optimizer(
        args.optimizer,
        method.parameter_groups(model),
        learning_rate=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        momentum=args.momentum,
        nesterov=args.nesterov,
        trust_coefficient=args.lars_trust_coefficient,
    )


def restore_optimizer_settings(optimizer, args) -> None:
    """The recipe's optimizer hyper-parameters (not lr and weight decay, set every step) on every param group:
    loading an optimizer state brings back the saved ones, and ``resume_with_changed_settings`` promises the new."""
    apply_optimizer_settings(
        optimizer,
        args.optimizer,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        momentum=args.momentum,
        nesterov=args.nesterov,
        trust_coefficient=args.lars_trust_coefficient,
    )


def train_sampler(dataset, args):
    """``EpochShuffleSampler`` for a ``ViewCropDataset`` (exact resume), None for other datasets."""
    if isinstance(dataset, ViewCropDataset):
        seed = args.data_seed if args.data_seed is not None else args.seed
        return EpochShuffleSampler(len(dataset), seed=seed, epoch_holder=dataset)
    return None


def resume_settings(args, view_config, train_dataset) -> dict:
    """What a checkpoint records and a resume must match (see ``checkpointing.check_resume_compatible``): the
    arguments that shape the run (``args.fixed_settings()``), the augmentation section as the recipe gives it and
    the number of training images (the model configuration and the total batch are checked on their own)."""
    settings = args.fixed_settings()
    settings["augmentation"] = to_plain(view_config)
    settings["num_train_images"] = len(train_dataset) if hasattr(train_dataset, "__len__") else None
    return settings


def prepare_run(
    resume,
    args,
    *,
    method: str,
    engine: str,
    model,
    view_config,
    train_dataset,
    world_size: int,
    total_batch_size: int,
    accelerator,
    hub_repo_id: str | None = None,
) -> tuple[Path | None, dict | None]:
    """What both engines do before training, so that a mistake stops the run before it starts: resolve the
    checkpoint to resume from, check the data (``check_training_data``), take the output directory (main
    process: ``checkpointing.guard_output_dir``) and check that the checkpoint can continue this run; then rotate
    the checkpoints (``save_total_limit``, ``save_best_total_limit``), keeping the one resumed from. Returns the
    checkpoint and its saved state, or ``(None, None)`` for a fresh start.

    ``resume="hub"``: the main process first brings ``last-checkpoint/`` of ``hub_repo_id`` (default
    ``args.hub_model_id``) into the output directory (``hub.fetch_hub_checkpoint``), then the run resumes as with
    ``"auto"``: from the latest checkpoint there, the downloaded one or a newer local one (the output directory
    must be one the processes share)."""
    if hub.is_hub_resume(resume):
        if accelerator.is_main_process:
            checkpointing.lock_output_dir(args.output_dir)  # no other run may write there while it downloads
            hub.fetch_hub_checkpoint(
                args.output_dir, hub_repo_id or args.hub_model_id, token=args.hub_token, revision=args.hub_revision
            )
        accelerator.wait_for_everyone()
        resume = "auto"
    checkpoint = checkpointing.resolve_resume(resume, args.output_dir)
    check_training_data(train_dataset, args.per_device_train_batch_size, world_size, args.dataloader_drop_last)
    if accelerator.is_main_process:
        checkpointing.guard_output_dir(args.output_dir, checkpoint, bool(resume), args.overwrite_output_dir)
    if checkpoint is None:
        return None, None
    state = checkpointing.check_resume_compatible(
        checkpoint,
        method=method,
        engine=engine,
        model_config=model.config,
        total_batch_size=total_batch_size,
        world_size=world_size,
        sharding=checkpointing.sharding_of(accelerator),
        settings=resume_settings(args, view_config, train_dataset),
        allow_changed_settings=args.resume_with_changed_settings,
    )
    # a run killed after committing a checkpoint and before rotating left one too many, and a resumed run that
    # trains nothing saves none that would rotate them
    accelerator.wait_for_everyone()  # no process is still choosing among the checkpoints
    if accelerator.is_main_process:
        checkpointing.rotate_checkpoints(args.output_dir, checkpointing.retention_policy(args), busy=[checkpoint])
    return checkpoint, state


def checkpoint_record(
    *,
    method: PretrainingMethod,
    engine: str,
    args,
    step: int,
    epoch: float,
    world_size: int,
    total_batch_size: int,
    history,
    run_control,
    accelerator,
    total_steps: int,
    view_config,
    train_dataset,
    tracker_ids: dict[str, str],
) -> dict:
    """The ``hf_ssl_state.json`` of a checkpoint at ``step`` (``checkpointing.CheckpointRecord``)."""
    metric = args.metric_for_best_model
    value = history.latest(metric) if metric else None
    control_state = {}
    if run_control.early_stopping is not None:
        control_state["early_stopping"] = run_control.early_stopping.state_dict()
    return vars(
        checkpointing.CheckpointRecord(
            method=method.name,
            engine=engine,
            step=step,
            epoch=epoch,
            world_size=world_size,
            total_batch_size=total_batch_size,
            metrics={metric: value} if value is not None else {},
            tracker_run_ids=tracker_ids,
            method_state=method.state_dict(),
            control_state=control_state,
            sharding=checkpointing.sharding_of(accelerator),
            total_steps=total_steps,
            settings=resume_settings(args, view_config, train_dataset),
        )
    )


def restore_run_state(state: dict, method: PretrainingMethod, run_control) -> None:
    """The method's counters and the early-stopping state of a checkpoint's ``hf_ssl_state.json``; the tracker
    run ids go to the environment, so a resumed run continues the same tracker runs."""
    method.load_state_dict(state.get("method_state", {}))
    if run_control.early_stopping is not None:
        run_control.early_stopping.load_state_dict(state.get("control_state", {}).get("early_stopping", {}))
    checkpointing.restore_tracker_run_ids(state.get("tracker_run_ids", {}))


def check_training_data(train_dataset, per_device_batch_size: int, world_size: int, drop_last: bool) -> None:
    """Stop before training, saying what to change, when the data cannot give one real step: no image, fewer
    images than one batch while incomplete batches are dropped, or (a ``ViewCropDataset``) not one readable
    image among a sample spread over the dataset. Streaming datasets (no length) are not checked."""
    if not hasattr(train_dataset, "__len__"):
        return
    count, batch = len(train_dataset), per_device_batch_size * world_size
    if count == 0:
        raise ConfigError("the training split has no images: check data.dataset, data.data_dir and data.train_split")
    if drop_last and count < batch:
        raise ConfigError(
            f"the training split has {count} images, fewer than one batch of {batch} (per_device_train_batch_size "
            f"{per_device_batch_size} x {world_size} processes), and training.dataloader_drop_last=true drops an "
            "incomplete batch: not one step would run. Lower training.per_device_train_batch_size, or set "
            "training.dataloader_drop_last=false"
        )
    if isinstance(train_dataset, ViewCropDataset):
        readable, checked, first_error = train_dataset.probe_readable_images()
        if readable == 0:
            raise ConfigError(
                f"none of the {checked} training images checked could be read (first: {first_error}). Check "
                "data.dataset / data.data_dir: training would skip every image"
            )
        if readable < checked:
            logger.warning(
                "%d of %d training images checked cannot be read (first: %s): such images are skipped and counted "
                "(skipped_images in the logs).",
                checked - readable,
                checked,
                first_error,
            )


def is_deepspeed(accelerator) -> bool:
    return checkpointing.sharding_of(accelerator) == "deepspeed"


def check_distributed_setup(accelerator, engine: str) -> None:
    """Refuse, before any training, the setups the training step cannot run correctly."""
    if not is_deepspeed(accelerator):
        return
    stage = getattr(accelerator.state.deepspeed_plugin, "zero_stage", None)
    if stage == 3:
        raise ValueError(
            "DeepSpeed ZeRO-3 partitions the parameters outside autograd, and the engines' EMA teacher update and "
            "state handling do not support that: use ZeRO-2 (accelerate_configs/deepspeed_zero2.yaml) or FSDP "
            "(accelerate_configs/fsdp_full_shard.yaml), which also shards the parameters."
        )


def full_precision_state_dict(model, full_precision_teacher: FullPrecisionTeacher) -> dict[str, torch.Tensor]:
    """The model's state in float32 when DeepSpeed holds it in bf16/fp16: the trained parameters from the
    optimizer's float32 master copies (a collective: every process must call it), the teacher from the EMA's
    float32 copies, everything else cast."""
    from deepspeed.utils import safe_get_full_fp32_param

    teacher_copies = {
        id(parameter): copy
        for parameter, copy in zip(full_precision_teacher.parameters, full_precision_teacher.copies)
    }
    state = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            value = safe_get_full_fp32_param(parameter)
        else:
            value = teacher_copies.get(id(parameter), parameter.detach())
        state[name] = value.detach().float().cpu()
    persistent = model.state_dict()
    for name, buffer in model.named_buffers():
        if name in persistent:
            state[name] = buffer.detach().float().cpu() if buffer.is_floating_point() else buffer.detach().cpu()
    return state


def save_full_precision_model(
    model, full_precision_teacher: FullPrecisionTeacher, output_dir, is_main_process: bool
) -> None:
    """``save_pretrained`` of a float32 copy of ``model`` built from ``full_precision_state_dict`` (every process
    must call it; the main process writes)."""
    state_dict = full_precision_state_dict(model, full_precision_teacher)
    if is_main_process:
        copy = type(model)(model.config)
        copy.load_state_dict(state_dict)
        copy.save_pretrained(output_dir)


def end_process_group() -> None:
    """Close the process group of a distributed run once every process has finished (a barrier first). Without
    it, a process may leave while communication threads still run, and abort at exit ("terminate called without
    an active exception") after a run that succeeded. Nothing to do on one process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


class PretrainingEngine:
    """What ``SslTrainer`` and ``AccelerateTrainer`` do alike, written once; they differ only in the loop.

    A subclass has ``args``, ``model``, ``accelerator``, ``state`` (``global_step``, ``epoch``, ``max_steps``,
    ``log_history``), ``train_dataset``, ``history`` (a ``History``) and ``log(logs)``, calls ``_set_up_engine`` in its
    constructor once its accelerator exists, and names itself in ``engine_name`` (the checkpoint's ``engine``). It
    supplies ``evaluation_model`` (the model as it trains it: wrapped or not) and ``autocast_context``.

    Shared: the method object around the model, periodic k-NN / validation (``PeriodicEvaluation``), run control,
    the resume prologue (``_resolve_resume``, ``_restore_resumed_state``, ``begin_session``), the checkpoint record
    and what follows a committed checkpoint (log, Hub push, rotation), the model card and the upload of the outputs.
    """

    engine_name: str = ""

    def _set_up_engine(
        self,
        model,
        args,
        method,
        view_config,
        *,
        knn_evaluator=None,
        knn_eval_steps: int = 0,
        knn_at_end: bool = True,
        validation=None,
        val_eval_steps: int = 0,
        val_at_end: bool = True,
    ) -> None:
        check_distributed_setup(self.accelerator, engine=self.engine_name)
        self.method = build_method(
            model, method, view_config, args, self.accelerator.process_index, reduce=self._reduce_sum
        )
        self.view_config = self.method.view_config
        self.schedules = None
        self.evaluations = PeriodicEvaluation(
            knn_evaluator, knn_eval_steps, knn_at_end, validation, val_eval_steps, val_at_end
        )
        several = self.accelerator.num_processes > 1
        self.run_control = build_run_control(args, reduce_max=self._reduce_max if several else None)
        self.checkpoint_pusher = CheckpointPusher(args)  # hub_strategy: the committed checkpoints, in the background
        self._resume_checkpoint: Path | None = None
        self._resume_state: dict | None = None
        self.finished_before_start = False  # resumed at or past the last step: this session trains nothing

    # ----- arithmetic and reductions ----------------------------------------------------------------
    @property
    def total_batch_size(self) -> int:
        """Images per optimizer step over every process: per-device batch x accumulation x processes."""
        args = self.args
        return args.per_device_train_batch_size * args.gradient_accumulation_steps * self.accelerator.num_processes

    def _reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(tensor, reduction="sum")

    def _reduce_max(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(tensor.to(self.accelerator.device), reduction="max")

    @property
    def session_was_cut(self) -> bool:
        """This session stopped for a signal or ``max_time_seconds``: a checkpoint is saved, the run is not over."""
        return self.run_control.stop_reason in ("signal", "max_time")

    # ----- results ----------------------------------------------------------------------------------
    @property
    def last_knn_metrics(self) -> dict[str, float]:
        """The last k-NN result (empty without an evaluator or before the first evaluation)."""
        return self.evaluations.last_knn_metrics

    @property
    def last_validation_metrics(self) -> dict[str, float]:
        """The last ``val_loss`` (empty without a validation split or before the first evaluation)."""
        return self.evaluations.last_validation_metrics

    @property
    def knn_error(self) -> str | None:
        """The last k-NN evaluation that failed (logged; training went on), or None."""
        return self.evaluations.knn_error

    @property
    def skipped_steps(self) -> int:
        return self.method.skipped_steps

    @property
    def skipped_images(self) -> int:
        return self.method.skipped_images

    # ----- resume -----------------------------------------------------------------------------------
    def _resolve_resume(
        self, resume_from_checkpoint, hub_repo_id: str | None = None
    ) -> tuple[Path | None, dict | None]:
        """The checkpoint to continue from and its saved state (``prepare_run``), ``(None, None)`` for a fresh
        start."""
        if resume_from_checkpoint is None:
            resume_from_checkpoint = self.args.resume_from_checkpoint
        checkpoint, state = prepare_run(
            resume_from_checkpoint,
            self.args,
            method=self.method.name,
            engine=self.engine_name,
            model=self.model,
            view_config=self.view_config,
            train_dataset=self.train_dataset,
            world_size=self.accelerator.num_processes,
            total_batch_size=self.total_batch_size,
            accelerator=self.accelerator,
            hub_repo_id=hub_repo_id,
        )
        self._resume_checkpoint, self._resume_state = checkpoint, state
        return checkpoint, state

    def _restore_resumed_state(self, checkpoint: Path, state: dict) -> None:
        """The method's counters, early stopping, tracker run ids and the history of ``checkpoint``."""
        restore_run_state(state, self.method, self.run_control)
        if (checkpoint / "history.json").is_file():
            self.history = History.load(checkpoint / "history.json")

    def begin_session(self, global_step: int, max_steps: int) -> None:
        """Where a resumed run stands, once the engine knows its step and length."""
        if self._resume_checkpoint is not None:
            self.finished_before_start = checkpointing.log_resume_position(
                self._resume_checkpoint, self._resume_state, global_step, max_steps
            )

    def _point_to_last_good_checkpoint(self, error: NonFiniteLossError) -> None:
        error.last_good_checkpoint = checkpointing.latest_checkpoint(self.args.output_dir)

    # ----- checkpoints ------------------------------------------------------------------------------
    def checkpoint_record(self, step: int, tracker_ids: dict[str, str]) -> dict:
        """The ``hf_ssl_state.json`` of a checkpoint at ``step``."""
        return checkpoint_record(
            method=self.method,
            engine=self.engine_name,
            args=self.args,
            step=step,
            epoch=float(self.state.epoch or 0.0),
            world_size=self.accelerator.num_processes,
            total_batch_size=self.total_batch_size,
            history=self.history,
            run_control=self.run_control,
            accelerator=self.accelerator,
            total_steps=self.state.max_steps,
            view_config=self.view_config,
            train_dataset=self.train_dataset,
            tracker_ids=tracker_ids,
        )

    def _after_checkpoint(self, final: Path, step: int, weights: Path | None = None) -> None:
        """On the main process, once checkpoint ``final`` is committed: log it, push it (``hub_strategy``) and
        rotate."""
        logger.info("Saved checkpoint %s", final)
        self.checkpoint_pusher.push(self.hub_model_id, final, step, float(self.state.epoch or 0.0), weights=weights)
        checkpointing.rotate_checkpoints(
            self.args.output_dir, checkpointing.retention_policy(self.args), busy=self.checkpoint_pusher.pushing()
        )

    def best_checkpoint(self) -> str | None:
        """The kept checkpoint with the best ``metric_for_best_model`` (None without one)."""
        if not self.args.metric_for_best_model:
            return None
        ranked = checkpointing.ranked_by_metric(
            checkpointing.list_checkpoints(self.args.output_dir),
            self.args.metric_for_best_model,
            self.args.greater_is_better if self.args.greater_is_better is not None else True,
        )
        return str(ranked[0]) if ranked else None

    # ----- sharing ----------------------------------------------------------------------------------
    def create_model_card(
        self,
        model_name: str | None = None,
        dataset: str | list[str] | None = None,
        tags=None,
        license: str | None = None,
        dataset_config: str | None = None,
        evaluation_split: str | None = None,
        **kwargs,
    ) -> None:
        """Write ``<output_dir>/README.md`` from ``model_cards/<method>.md`` (``push_to_hub`` uploads it); its snippets
        load the Hub repository of this run. ``dataset`` (+ ``dataset_config``, ``evaluation_split``: the split k-NN
        queried) names the data in the metadata and the model-index; ``license`` defaults to ``args.hub_license``."""
        if self.is_world_process_zero():
            write_model_card(
                self.method,
                self.model,
                self.args,
                self.schedules,
                self.state.global_step,
                self.state.log_history,
                model_name=model_name,
                dataset=dataset,
                tags=tags,
                license=license,
                repo_id=self.hub_model_id,
                dataset_config=dataset_config,
                evaluation_split=evaluation_split,
            )

    def _upload_outputs(self, token, revision, commit_message, blocking):
        """Upload ``hub.files_to_push(output_dir)`` as one commit, once a checkpoint push still running is done."""
        self.checkpoint_pusher.wait()
        return push_output_dir(
            self.args.output_dir,
            self.hub_model_id,
            token=token,
            revision=revision or self.args.hub_revision,
            commit_message=commit_message or "End of training",
            blocking=blocking,
        )
