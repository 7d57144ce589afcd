"""The method interface: what a self-supervised method does around one optimizer step, called by both engines
(``SslTrainer`` and the raw Accelerate loop) so that neither names a method.

One optimizer step, in order::

    begin_step(optimizer, step)              learning rate and weight decay of this step (the method may set
                                             its own per group, e.g. DINO's frozen last layer)
    loss(model, batch, step)  x micro-batches device augmentation, the method's forward (``compute_outputs``);
                                             statistics a method accumulates are not applied yet
    (backward, gradient clipping)
    before_optimizer_step(optimizer, step)   NaN/inf and empty-step check agreed by all processes (skip = drop
                                             every gradient), then the method's ``commit_step_statistics`` and
                                             ``adjust_gradients``
    optimizer.step(); lr scheduler step
    after_optimizer_step(step)               the method's ``update_after_step`` (an EMA teacher update)

Under DeepSpeed the optimizer step happens inside ``backward`` (``bind(..., optimizer_steps_in_backward=True)``):
DeepSpeed itself skips a step whose gradients are not finite, gradient changes must be tensor hooks, and the
step's statistics are committed in ``after_optimizer_step``.

A method subclasses ``PretrainingMethod`` (``EmaTeacherMethod`` when it has an EMA teacher) and fills in the
hooks below; ``hf_ssl.training.methods.register_method`` makes it known to the recipes and the engines.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from hf_ssl.data import DeviceAugmentation, ViewCropCollator, ViewsConfig, as_views_config, view_size_keys
from hf_ssl.errors import NonFiniteLossError  # noqa: F401 (re-exported)
from hf_ssl.evaluation.collapse import CollapseDetector, effective_rank, mean_l2_norm
from hf_ssl.models.backbone import check_input_sizes, get_backbone_embed_dim
from hf_ssl.training.optim.ema import FullPrecisionTeacher, ema_update_, local_shards
from hf_ssl.training.optim.schedules import LinearWarmupConstantSchedule, WarmupCosineSchedule, scaled_learning_rate

logger = logging.getLogger(__name__)

# batch keys that are not inputs of a method's forward (beside the view groups, which it gets augmented)
NOT_INPUTS = frozenset({"labels", "num_skipped"})


@dataclass(frozen=True)
class Schedules:
    """The per-optimizer-step schedules every method has; a method's subclass adds its own fields."""

    learning_rate: WarmupCosineSchedule
    weight_decay: WarmupCosineSchedule
    peak_learning_rate: float

    @staticmethod
    def common(args, total_steps: int, steps_per_epoch: int, total_batch_size: int) -> dict:
        """The keyword arguments of the shared fields: lr with linear warmup then cosine (peak scaled by
        total batch / 256 when ``scale_learning_rate``), weight decay on a cosine from ``weight_decay`` to
        ``weight_decay_end``."""
        peak = (
            scaled_learning_rate(args.learning_rate, total_batch_size)
            if args.scale_learning_rate
            else args.learning_rate
        )
        warmup_steps = min(round(args.warmup_epochs * steps_per_epoch), total_steps)
        return {
            "learning_rate": WarmupCosineSchedule(peak, args.min_lr, total_steps, warmup_steps, args.warmup_start_lr),
            "weight_decay": WarmupCosineSchedule(args.weight_decay, args.final_weight_decay, total_steps),
            "peak_learning_rate": peak,
        }


def decay_parameter_groups(model: torch.nn.Module, tagged: dict[str, set[int]] | None = None) -> list[dict]:
    """Trainable parameters split by weight decay: weights (ndim > 1) get the weight-decay schedule
    (``apply_weight_decay``); biases and normalisation parameters (ndim <= 1) never get weight decay (and LARS
    leaves them unadapted). ``tagged`` (tag -> parameter ids) puts those parameters in groups of their own, after
    the others, with ``group[tag] = True`` (DINO's ``last_layer``)."""
    tagged = tagged or {}
    tags = [None, *tagged]
    members: dict[tuple, list] = {(tag, decayed): [] for tag in tags for decayed in (True, False)}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        decayed = not (parameter.ndim <= 1 or name.endswith(".bias"))
        tag = next((tag for tag in tagged if id(parameter) in tagged[tag]), None)
        members[(tag, decayed)].append(parameter)
    groups = []
    for (tag, decayed), parameters in members.items():
        if not parameters:
            continue
        options = {"apply_weight_decay": True} if decayed else {"weight_decay": 0.0, "apply_weight_decay": False}
        if tag is not None:
            options[tag] = True
        groups.append({"params": parameters, **options})
    return groups


def check_view_sizes(model_config, view_config, evaluation_image_size: int | None = None) -> None:
    """Every view group's size against the backbone (``check_input_sizes``): patch multiples, and the first group's
    size (and ``evaluation_image_size``) at the backbone's own ``image_size`` where the exported model needs it.
    Errors name the keys of the augmentation section ``view_config`` (``view_size_keys``)."""
    views, size_keys = as_views_config(view_config), view_size_keys(view_config)
    sizes = {
        size_keys.get(name, f"augmentation.groups.{name}.size"): group.size for name, group in views.groups.items()
    }
    native = [size_keys.get(views.names[0], f"augmentation.groups.{views.names[0]}.size")]
    if evaluation_image_size is not None:
        sizes["evaluation.image_size"] = evaluation_image_size
        native.append("evaluation.image_size")
    check_input_sizes(model_config.backbone_config, sizes, native=tuple(native))


class PretrainingMethod:
    """A method's per-step logic around its pretraining model (``<Method>ForPretraining``).

    Args:
        model: the unwrapped pretraining model.
        view_config: the augmentation section (a ``ViewsConfig`` or a config with ``to_views_config()``, such as
            ``MultiCropConfig``); its view groups' photometric part runs batched on the training device in ``loss``.
        seed, process_index: the device augmentation of micro-batch ``i`` of optimizer step ``t`` draws from a
            generator seeded by ``(seed, process_index, t, i)``: every process draws its own stream, and a
            resumed run draws exactly what an uninterrupted one would.
        max_consecutive_nonfinite_steps: stop after this many NaN/inf steps in a row.
        reduce: ``fn(tensor) -> tensor`` summing over processes (``accelerator.reduce(t, "sum")``).

    What a method fills in (class attributes and hooks; the defaults suit a method without extra state):

    - ``name``: the method's name in recipes, checkpoints and model cards (``"dino"``).
    - ``logged_outputs``: scalar fields of the model output averaged into the logs.
    - ``monitored_embeddings``: the output field with the (N, D) embeddings whose effective rank is logged.
    - ``required_view_groups`` / ``optional_view_groups``: the batch keys of the view groups it trains on
      (``check_view_groups`` refuses others); ``compute_outputs(model, views, step)``: the model's forward on
      this step's augmented views.
    - ``check_training_arguments(model_config, args)``: the method's training keys against the model.
    - ``build_schedules(...)``: ``Schedules`` plus the method's own (a teacher momentum, a temperature...).
    - ``parameter_groups(model)``: the optimizer's groups (weight decay on weights only by default).
    - ``bind_model``, ``group_learning_rate``, ``on_begin_step``, ``commit_step_statistics``,
      ``discard_step_statistics``, ``adjust_gradients``, ``update_after_step``: the moments of a step.
    - ``schedule_logs`` / ``derived_logs``: what the method adds to each log.
    - ``collapse_detector()``: the collapse checks that suit the method.
    """

    name: ClassVar[str] = ""
    logged_outputs: ClassVar[tuple[str, ...]] = ("embedding_std",)
    monitored_embeddings: ClassVar[str] = "embeddings"
    nonfinite_advice: ClassVar[str] = ""
    evaluated_features: ClassVar[str] = "backbone features"  # what k-NN measures, in the model card
    required_view_groups: ClassVar[tuple[str, ...]] = ()  # empty: any groups
    optional_view_groups: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self, model, view_config, seed: int, process_index: int, max_consecutive_nonfinite_steps: int, reduce
    ):
        self.model = model
        self.view_config = view_config  # the section as given: what a checkpoint records
        self.views = as_views_config(view_config)
        self.check_view_groups(self.views)
        check_view_sizes(model.config, view_config)
        self.device_augmentation = DeviceAugmentation(self.views)
        self.seed = seed
        self.process_index = process_index
        self.augmentation_generator: torch.Generator | None = None
        self.micro_batch_index = 0
        self.max_consecutive_nonfinite_steps = max_consecutive_nonfinite_steps
        self.reduce = reduce
        self.schedules: Schedules | None = None  # set once the run length is known (build_schedules)
        self.current_step = 0
        self.bind(model)
        self.step_had_nonfinite_loss = False
        self.step_images = 0  # readable images this process fed into the current optimizer step
        self.step_skipped = False
        self.consecutive_nonfinite_steps = 0
        self.skipped_steps = 0
        self.skipped_images = 0
        self._window = defaultdict(float)
        self._window_count = 0
        self._window_images = 0
        self._window_start = time.perf_counter()
        self._last_embeddings: torch.Tensor | None = None

    @classmethod
    def build_collator(cls, model_config, view_config, seed: int):
        """The collator of the method's batches (what the engines use when given none): ``ViewCropCollator``, which
        stacks the view groups; a masked method returns one that adds its masks, seeded by ``seed`` and the
        examples' sampler keys so that a resume draws the same masks."""
        return ViewCropCollator()

    @classmethod
    def check_view_groups(cls, views: ViewsConfig) -> None:
        """The view groups against what the method trains on (``required_view_groups``, ``optional_view_groups``);
        a method adds its own rules (SimCLR: exactly 2 views)."""
        if not cls.required_view_groups:
            return
        names = set(views.names)
        allowed = (*cls.required_view_groups, *cls.optional_view_groups)
        if any(name not in names for name in cls.required_view_groups) or not names <= set(allowed):
            optional = f", optionally {list(cls.optional_view_groups)}" if cls.optional_view_groups else ""
            raise ValueError(
                f"{cls.name} trains on the view groups {list(cls.required_view_groups)}{optional}; the augmentation "
                f"has {list(views.names)} (use the {cls.name} recipe's augmentation section)"
            )

    @classmethod
    def check_training_arguments(cls, model_config, args) -> None:
        """The training section against the model config, before any data or model is built: a ``ValueError``
        naming the key when a method's setting does not fit the model (H-JEPA: one warmup per level)."""

    # ----- the model as the engine runs it ---------------------------------------------------------
    def bind(self, model, optimizer_steps_in_backward: bool = False) -> None:
        """Take the parameters the engine will update from ``model``. Call it again after accelerate's
        ``prepare``: FSDP2 replaces parameters with sharded ``DTensor`` ones, DeepSpeed bf16/fp16 casts the model
        (the loss and its buffers go back to float32 here).

        ``optimizer_steps_in_backward``: the engine steps the optimizer inside ``backward`` (DeepSpeed), so
        nothing can act between the gradients and the update; see the module docstring.
        """
        self.optimizer_steps_in_backward = optimizer_steps_in_backward
        loss = getattr(model, "loss", None)
        if isinstance(loss, torch.nn.Module):
            loss.float()  # a loss's state (DINO's center) stays float32 whatever the engine did to the model
        self.input_dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        self.bind_model(model, optimizer_steps_in_backward)

    def bind_model(self, model, optimizer_steps_in_backward: bool) -> None:
        """The method's part of ``bind`` (an EMA's parameter pairs, gradient hooks under DeepSpeed)."""

    @property
    def full_precision_teacher(self) -> FullPrecisionTeacher | None:
        """The float32 copy of a teacher that DeepSpeed bf16/fp16 holds in low precision (EMA methods), or None."""
        return None

    # ----- the optimizer -------------------------------------------------------------------------
    def parameter_groups(self, model) -> list[dict]:
        """The optimizer's parameter groups (``decay_parameter_groups``)."""
        return decay_parameter_groups(model)

    def build_schedules(self, args, total_steps: int, steps_per_epoch: int, total_batch_size: int) -> Schedules:
        """Every per-step schedule of the run, once its length is known; stored in ``self.schedules``."""
        self.schedules = Schedules(**Schedules.common(args, total_steps, steps_per_epoch, total_batch_size))
        return self.schedules

    # ----- before the micro-batches --------------------------------------------------------------
    def begin_step(self, optimizer, step: int) -> None:
        """Learning rate of this step on every group (``group_learning_rate``), weight decay on the regularised
        ones: both are functions of the step, so a resume needs no scheduler state."""
        self.current_step = step
        self.micro_batch_index = 0
        learning_rate, weight_decay = self.schedules.learning_rate(step), self.schedules.weight_decay(step)
        for group in optimizer.param_groups:
            group["lr"] = self.group_learning_rate(group, step, learning_rate)
            if group.get("apply_weight_decay", False):
                group["weight_decay"] = weight_decay
        self.on_begin_step(optimizer, step)

    def group_learning_rate(self, group: dict, step: int, learning_rate: float) -> float:
        """The lr of one parameter group at ``step`` (the scheduled lr unless the method says otherwise)."""
        return learning_rate

    def on_begin_step(self, optimizer, step: int) -> None:
        """The method's work at the start of a step, after the lr and weight decay are set."""

    # ----- one micro-batch -----------------------------------------------------------------------
    def loss(self, model, batch: dict, step: int):
        """Loss of one micro-batch from ``ViewCropCollator`` (uint8 views already on the device).

        Returns ``(loss, outputs)``; ``outputs`` is None for a batch whose images were all unreadable
        (its zero loss still touches every trainable parameter, so distributed ranks stay in step).
        """
        skipped = batch.get("num_skipped")
        if skipped is not None:
            self.skipped_images += int(skipped.sum())
        names = self.views.names
        num_images = batch[names[0]].shape[1]
        if num_images == 0:
            return self.empty_batch_loss(model), None
        self._window_images += num_images
        self.step_images += num_images
        views = self._model_inputs(self.augment({name: batch[name] for name in names}, step), batch)
        outputs = self.compute_outputs(model, views, step)
        if not torch.isfinite(outputs.loss.detach()):
            # keep the graph (DDP expects every rank to run backward); before_optimizer_step drops the gradients
            self.step_had_nonfinite_loss = True
        else:
            for name in self.logged_outputs:
                value = getattr(outputs, name, None)
                if value is not None:
                    self._window[name] += value.detach().float()
            self._window_count += 1
            self._last_embeddings = getattr(outputs, self.monitored_embeddings, None)  # measured only when logging
        return outputs.loss, outputs

    def validation_loss(
        self, model, batch: dict[str, torch.Tensor], step: int, augmentation_seed: int
    ) -> tuple[torch.Tensor, int] | None:
        """``(loss, number of images)`` of one held-out batch, or None when it holds no readable image: the
        training forward (``compute_outputs`` at ``step``) on views augmented by a generator seeded with
        ``augmentation_seed``, touching neither the training streams (``micro_batch_index``) nor the logged
        windows. ``hf_ssl.training.engines.validation.ValidationLoss`` calls it without gradients."""
        names = self.views.names
        num_images = batch[names[0]].shape[1]
        if num_images == 0:
            return None
        crops = {name: batch[name] for name in names}
        device = next(iter(crops.values())).device
        generator = torch.Generator(device=device)
        generator.manual_seed(augmentation_seed)
        views = self._model_inputs(self.device_augmentation(crops, generator=generator), batch)
        return self.compute_outputs(model, views, step).loss.detach().float(), num_images

    def _model_inputs(self, views: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The augmented views in the model's dtype (bf16/fp16 where the engine cast the model: DeepSpeed), plus
        whatever else the method's collator put in the batch (the masks of a masked method), as it is."""
        if self.input_dtype != torch.float32:
            views = {name: value.to(self.input_dtype) for name, value in views.items()}
        views.update({key: value for key, value in batch.items() if key not in NOT_INPUTS and key not in views})
        return views

    def empty_batch_loss(self, model) -> torch.Tensor:
        """The loss of a micro-batch without one readable image: zero, but touching every trainable parameter,
        so that DDP's gradient reduction runs on every process (the step is skipped afterwards). A method whose
        forward holds a collective (SimCLR's gather of the global batch) must take part in it here too."""
        return sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)

    def compute_outputs(self, model, views: dict[str, torch.Tensor], step: int):
        """The model's forward on this micro-batch's augmented, normalised views: one ``(V, B, C, H, W)`` tensor
        per view group under its name (DINO: ``global_crops``, ``local_crops``), plus any other tensor the
        collator put in the batch, such as masks; returns its ``ModelOutput`` with a ``loss``."""
        raise NotImplementedError

    def augment(self, crops: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """Photometric augmentation of every view group on the training device, from a generator seeded by (seed,
        process, step, micro-batch): a pure function of where training is, so a resume needs no generator state."""
        device = next(iter(crops.values())).device
        if self.augmentation_generator is None or self.augmentation_generator.device != device:
            self.augmentation_generator = torch.Generator(device=device)
        seed_sequence = np.random.SeedSequence((self.seed, self.process_index, step, self.micro_batch_index))
        self.augmentation_generator.manual_seed(int(seed_sequence.generate_state(1, np.uint64)[0] >> 1))
        self.micro_batch_index += 1
        return self.device_augmentation(crops, generator=self.augmentation_generator)

    # ----- after backward and clipping -----------------------------------------------------------
    def before_optimizer_step(self, optimizer, step: int) -> bool:
        """Returns True when the step must be skipped (a NaN/inf loss on any process); then every gradient
        is dropped, so the optimizer leaves parameters and moments as they were. Does nothing when the optimizer
        steps inside backward (DeepSpeed): ``after_optimizer_step`` does this work then."""
        if self.optimizer_steps_in_backward:
            return False
        if self._settle_step(step):
            optimizer.zero_grad(set_to_none=True)
            return True
        self.adjust_gradients(step)
        return False

    def adjust_gradients(self, step: int) -> None:
        """The method's change to the gradients of a kept step, before the optimizer uses them."""

    def commit_step_statistics(self) -> None:
        """Apply what the micro-batches of a kept step accumulated (DINO: one center update)."""

    def discard_step_statistics(self) -> None:
        """Drop what the micro-batches of a skipped step accumulated."""

    def reduction_device(self) -> torch.device:
        """Where the per-step flags are reduced across processes."""
        return next(self.model.parameters()).device

    def may_checkpoint(self, step: int) -> bool:
        """False (with a warning) while the loss is NaN/inf: the weights are those that gave it, and saving them
        would let checkpoint rotation delete the good ones. The engines write no checkpoint until a finite step."""
        if self.consecutive_nonfinite_steps == 0:
            return True
        logger.warning("Step %d: no checkpoint while the loss is NaN/inf; the latest one is kept as it is.", step)
        return False

    def _settle_step(self, step: int, optimizer_step_was_skipped: bool = False) -> bool:
        """Whether this step is skipped: a NaN/inf loss on any process, or no readable image on any process
        (an all-unreadable batch gives a zero loss, and AdamW would still move the weights by momentum and weight
        decay), both agreed by one reduction and counted; or a skip decided elsewhere (DeepSpeed's overflow
        check). A skipped step discards its statistics; a kept one commits them."""
        flags = torch.tensor(
            [float(self.step_had_nonfinite_loss), float(self.step_images)], device=self.reduction_device()
        )
        self.step_had_nonfinite_loss, self.step_images = False, 0
        nonfinite_processes, images = self.reduce(flags).tolist()
        nonfinite, empty = nonfinite_processes > 0, images == 0
        self.step_skipped = nonfinite or empty or optimizer_step_was_skipped
        if self.step_skipped:
            self.discard_step_statistics()
            if nonfinite:
                self._count_nonfinite_step(step)
            elif empty:
                self.skipped_steps += 1
                logger.warning(
                    "Step %d had no readable image on any process: optimizer step skipped (%d skipped in total).",
                    step,
                    self.skipped_steps,
                )
            return True
        self.consecutive_nonfinite_steps = 0
        self.commit_step_statistics()
        return False

    def _count_nonfinite_step(self, step: int) -> None:
        self.skipped_steps += 1
        self.consecutive_nonfinite_steps += 1
        logger.warning(
            "Non-finite loss at step %d: optimizer step skipped (%d in a row, %d in total).",
            step,
            self.consecutive_nonfinite_steps,
            self.skipped_steps,
        )
        if self.consecutive_nonfinite_steps >= self.max_consecutive_nonfinite_steps:
            raise NonFiniteLossError(step, self.consecutive_nonfinite_steps, self.nonfinite_advice)

    # ----- after the optimizer step --------------------------------------------------------------
    def after_optimizer_step(self, step: int, optimizer_step_was_skipped: bool = False) -> None:
        """The method's ``update_after_step(step)`` (the update that just happened), unless the step was skipped
        here or by the fp16 gradient scaler (the weights did not change).

        When the optimizer stepped inside backward (DeepSpeed), this is also where a NaN/inf loss on any
        process is counted (DeepSpeed skipped that step: its gradients were not finite) and where the step's
        statistics are committed, or discarded if the step was skipped.
        """
        if self.optimizer_steps_in_backward:
            self._settle_step(step, optimizer_step_was_skipped)
        if self.step_skipped or optimizer_step_was_skipped:
            return
        self.update_after_step(step)

    def update_after_step(self, step: int) -> None:
        """The method's work after a real optimizer step (an EMA teacher update)."""

    # ----- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        """Counters that a resume restores (everything else is a function of the step or in the model)."""
        return {
            "skipped_steps": self.skipped_steps,
            "skipped_images": self.skipped_images,
            "consecutive_nonfinite_steps": self.consecutive_nonfinite_steps,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        for name in ("skipped_steps", "skipped_images", "consecutive_nonfinite_steps"):
            setattr(self, name, int(state.get(name, 0)))

    # ----- logging -------------------------------------------------------------------------------
    def schedule_logs(self, step: int) -> dict[str, float]:
        """The values of the method's own schedules at ``step``."""
        return {}

    def derived_logs(self, logs: dict[str, float]) -> dict[str, float]:
        """Numbers computed from the averaged outputs (DINO: the entropy ratio)."""
        return {}

    def log_metrics(self, step: int, world_size: int) -> dict[str, float]:
        """Schedule values of ``step``, means of the model's logged outputs since the last call, the effective
        rank and norm of the monitored embeddings, throughput and skip counters."""
        logs = {
            "learning_rate": self.schedules.learning_rate(step),
            "weight_decay": self.schedules.weight_decay(step),
            **self.schedule_logs(step),
        }
        if self._window_count:
            for name, total in self._window.items():
                logs[name] = round(float(total) / self._window_count, 6)
            logs.update(self.derived_logs(logs))
        embeddings = self._last_embeddings
        if embeddings is not None and embeddings.shape[0] >= 2:
            # of the last micro-batch's embeddings (an SVD per log, not per step)
            logs["effective_rank"] = round(float(effective_rank(embeddings)), 4)
            logs["mean_l2_norm"] = round(float(mean_l2_norm(embeddings)), 6)
        self._last_embeddings = None
        now = time.perf_counter()
        logs["images_per_second"] = round(self._window_images * world_size / max(now - self._window_start, 1e-9), 2)
        if torch.cuda.is_available():
            logs["max_memory_allocated_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        logs["skipped_steps"] = self.skipped_steps
        logs["skipped_images"] = self.skipped_images
        self._window.clear()
        self._window_count = 0
        self._window_images, self._window_start = 0, now
        return logs

    def collapse_detector(self) -> CollapseDetector:
        """Constant-collapse checks on ``embedding_std`` and the effective rank, with generic advice."""
        return CollapseDetector(embedding_dim=get_backbone_embed_dim(self.model.config.backbone_config))

    # ----- sharing -------------------------------------------------------------------------------
    def model_card_values(self, model, args, schedules) -> dict:
        """Values for the method's card template (``model_cards/<name>.md``) besides the shared ones."""
        return {}


@dataclass(frozen=True)
class EmaSchedules(Schedules):
    """``Schedules`` plus the momentum of an EMA teacher."""

    teacher_momentum: WarmupCosineSchedule | LinearWarmupConstantSchedule


class EmaTeacherMethod(PretrainingMethod):
    """A method with a teacher that follows the student as an exponential moving average (DINO, BYOL, I-JEPA):
    after every real optimizer step ``teacher <- m * teacher + (1 - m) * student`` with the momentum ``m`` of
    ``schedules.teacher_momentum``, on each process's local shards under FSDP2 and on a float32 copy where
    DeepSpeed holds the teacher in bf16/fp16 (a bf16 EMA with m = 0.996 rounds most updates away).

    The model gives ``teacher_student_parameter_pairs()`` (aligned by name); the schedules a
    ``teacher_momentum`` (``EmaTeacherArguments.teacher_momentum`` -> ``teacher_momentum_end`` on a cosine).
    """

    def bind_model(self, model, optimizer_steps_in_backward: bool) -> None:
        teacher, student = local_shards(*model.teacher_student_parameter_pairs())
        self.ema_parameter_pairs = (teacher, student)
        self._full_precision_teacher = FullPrecisionTeacher(teacher) if FullPrecisionTeacher.needed(teacher) else None

    @property
    def full_precision_teacher(self) -> FullPrecisionTeacher | None:
        return self._full_precision_teacher

    @staticmethod
    def teacher_momentum_schedule(args, total_steps: int) -> WarmupCosineSchedule | LinearWarmupConstantSchedule:
        """A cosine from ``teacher_momentum`` to ``teacher_momentum_end`` (DINO, BYOL); I-JEPA's is linear."""
        return WarmupCosineSchedule(args.teacher_momentum, args.teacher_momentum_end, total_steps)

    def build_schedules(self, args, total_steps: int, steps_per_epoch: int, total_batch_size: int) -> EmaSchedules:
        self.schedules = EmaSchedules(
            **Schedules.common(args, total_steps, steps_per_epoch, total_batch_size),
            teacher_momentum=self.teacher_momentum_schedule(args, total_steps),
        )
        return self.schedules

    def update_after_step(self, step: int) -> None:
        """EMA teacher update with the momentum of ``step``."""
        teacher, student = self.ema_parameter_pairs
        momentum = self.schedules.teacher_momentum(step)
        if self._full_precision_teacher is not None:
            self._full_precision_teacher.update_(student, momentum)
        else:
            ema_update_(teacher, student, momentum)

    def schedule_logs(self, step: int) -> dict[str, float]:
        return {"teacher_momentum": self.schedules.teacher_momentum(step)}


def restart_moments(optimizer, tag: str) -> None:
    """Zero the optimizer state (step count, moments, momentum buffers) of the parameter groups tagged ``tag`` of
    ``optimizer`` or of the optimizer it wraps (accelerate's ``AcceleratedOptimizer``, DeepSpeed's ZeRO optimizer)."""
    inner = optimizer
    while hasattr(inner, "optimizer"):
        inner = inner.optimizer
    for group in inner.param_groups:
        if not group.get(tag, False):
            continue
        for parameter in group["params"]:
            state = inner.state.get(parameter)
            if not state:
                continue
            for key, value in state.items():
                if torch.is_tensor(value):
                    value.zero_()
                elif key == "step":
                    state[key] = 0


def log_ratio(value: float, maximum_value: float) -> float:
    """``value / ln(maximum_value)``, rounded as the logs are."""
    return round(value / math.log(maximum_value), 6)
