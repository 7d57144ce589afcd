"""The method's own loss on a held-out split, every ``val_eval_steps`` optimizer steps: ``val_loss``.

The validation images go through the training pipeline (crops on the CPU, the method's collator, the photometric
augmentation on the device, the method's forward), but every random draw is fixed: the crops and masks come from
the examples' indices (epoch 0 of a ``ViewCropDataset``), the device augmentation from a generator seeded by the
run's seed and the batch's position. Two evaluations of the same weights give the same number, so the curve shows
the weights moving, not the draws. Gradients are off, the model is in eval mode (no dropout or drop path), and
whatever the method accumulates for its next step (DINO's center statistics) is dropped afterwards.

Every process evaluates its own equal share of the split (the last few images that do not divide evenly are left
out), so sharded models (FSDP) run the same forwards everywhere; the mean is reduced over processes.
"""

from __future__ import annotations

import contextlib
import logging
import math

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

logger = logging.getLogger(__name__)

# the third number of the device augmentation's seed of a validation batch: apart from every training step's
VALIDATION_STREAM = 2**62


class ValidationLoss:
    """``val_loss``: the mean of the method's loss over the batches of a held-out ``ViewCropDataset``.

    Args:
        dataset: the held-out split with the training transform attached (``with_view_crops``).
        collator: the method's collator (``PretrainingMethod.build_collator``; I-JEPA's adds its masks).
        batch_size: images per process per forward.
        num_workers: DataLoader workers.

    ``evaluator(method, model, step, device, process_index, num_processes)`` returns ``{"val_loss": mean}`` on
    every process (the same number everywhere); ``model`` is the model the engine trains with (wrapped or not).
    """

    def __init__(self, dataset, collator, batch_size: int, num_workers: int = 0):
        if len(dataset) == 0:
            raise ValueError("the validation split is empty")
        self.dataset = dataset
        self.collator = collator
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)

    def loader(self, process_index: int, num_processes: int) -> DataLoader:
        """This process's share: examples ``process_index, process_index + P, ...`` of the first
        ``len - len % P``, in order."""
        usable = len(self.dataset) - len(self.dataset) % num_processes
        if usable == 0:
            raise ValueError(
                f"the validation split has {len(self.dataset)} images, fewer than the {num_processes} processes"
            )
        indices = list(range(process_index, usable, num_processes))
        return DataLoader(
            Subset(self.dataset, indices),
            batch_size=self.batch_size,
            shuffle=False,
            collate_fn=self.collator,
            num_workers=self.num_workers,
        )

    @torch.no_grad()
    def __call__(
        self,
        method,
        model,
        step: int,
        device,
        process_index: int = 0,
        num_processes: int = 1,
        reduce=None,
        autocast=None,
    ) -> dict[str, float]:
        """The mean loss over every readable validation image of every process.

        ``reduce(tensor) -> tensor`` sums over processes (None: one process); ``autocast()`` is the engine's mixed
        precision context (None: none)."""
        was_training = model.training
        model.eval()
        totals = torch.zeros(2, dtype=torch.float64, device=device)
        try:
            for batch_index, batch in enumerate(self.loader(process_index, num_processes)):
                batch = {key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items()}
                generator_seed = np.random.SeedSequence((method.seed, process_index, VALIDATION_STREAM, batch_index))
                context = autocast() if autocast is not None else contextlib.nullcontext()
                with context:
                    result = method.validation_loss(
                        model, batch, step, int(generator_seed.generate_state(1, np.uint64)[0] >> 1)
                    )
                if result is not None:
                    loss, images = result
                    if torch.isfinite(loss):
                        totals += torch.stack([loss.double() * images, loss.new_tensor(images, dtype=torch.float64)])
        finally:
            method.discard_step_statistics()  # DINO's forward accumulated center statistics: not for training
            model.train(was_training)
        if reduce is not None:
            totals = reduce(totals)
        loss_sum, images = totals.tolist()
        if images == 0:
            logger.warning(
                "step %d: no validation image could be read or every validation loss was NaN/inf: no val_loss", step
            )
            return {}
        return {"val_loss": round(loss_sum / images, 6) if math.isfinite(loss_sum) else float("nan")}


def run_validation(
    evaluator: ValidationLoss,
    method,
    model,
    step: int,
    device,
    process_index: int,
    num_processes: int,
    reduce=None,
    autocast=None,
) -> dict[str, float] | None:
    """``evaluator(...)``, or None after logging the error with its traceback on the main process: a validation that
    fails must not end the run before its model is saved. Every process must call it (a collective under several)."""
    try:
        return evaluator(method, model, step, device, process_index, num_processes, reduce=reduce, autocast=autocast)
    except Exception:
        logger.exception("validation at step %d failed; training goes on and the model will be saved", step)
        return None
