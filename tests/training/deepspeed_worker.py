"""Run by test_deepspeed.py under ``accelerate launch`` (DeepSpeed ZeRO-2 or DDP, 2 CPU processes): a small
DINO run on either engine (``--engine``) that crosses the end of the last-layer freeze, with a NaN loss
injected on process 1 at one step (``--nan-step``). ``--stop-after N`` sends SIGTERM during step N (checkpoint,
stop); ``--resume`` goes on. The main process writes ``final.safetensors`` (the model as saved by ``save_model``)
and ``run.json``."""

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
    # DeepSpeed's CPU communication first compiles a shared-memory extension (a C++ build of about a minute);
    # it only speeds up CPU collectives, so the test runs on plain gloo without it
    import importlib

    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from hf_ssl import DinoForPreTraining  # noqa: E402
from hf_ssl.data import ViewCropTransform, with_view_crops  # noqa: E402
from hf_ssl.training import build_trainer  # noqa: E402
from hf_ssl.training.engines.base import end_process_group  # noqa: E402
from tests.helpers import (  # noqa: E402
    random_images,
    sigterm_during_step,
    tiny_dino_config,
    tiny_multicrop_config,
    tiny_training_arguments,
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--nan-step", type=int, default=None)
    parser.add_argument("--stop-after", type=int, default=None)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--engine", default="accelerate")
    options = parser.parse_args()
    torch.manual_seed(0)
    model = DinoForPreTraining(tiny_dino_config())
    # 32 images / (4 per process x 2 processes x accumulation 2) = 2 optimizer steps per epoch; 6 steps,
    # the last layer frozen for the first epoch (2 steps), warmup over the first epoch
    multicrop = tiny_multicrop_config()
    if options.bf16:
        # TrainingArguments refuses bf16 without a bf16 GPU; DeepSpeed's bf16 (the whole model cast, float32
        # master weights in the optimizer) runs on CPU as well, so let this CPU pass for one
        import transformers.training_args

        transformers.training_args.is_torch_bf16_gpu_available = lambda: True
    arguments = tiny_training_arguments(
        options.output_dir,
        engine=options.engine,
        max_steps=6,
        gradient_accumulation_steps=2,
        warmup_epochs=1.0,
        freeze_last_layer_epochs=1.0,
        max_grad_norm=1.0,
        adam_epsilon=1e-4,
        save_strategy="steps",
        save_steps=100,
        bf16=options.bf16,
    )
    dataset = with_view_crops(Dataset.from_dict({"image": random_images(32)}), ViewCropTransform(multicrop))
    evaluated = {}

    def knn_stand_in(backbone, device=None):
        # what KnnEvaluator needs: a backbone that takes float32 pixels, whatever precision DeepSpeed trains in
        evaluated["dtype"] = str(next(backbone.parameters()).dtype)
        features = backbone(pixel_values=torch.rand(2, 3, 16, 16, device=device)).last_hidden_state
        return {"knn_top1": float(torch.isfinite(features).all()) * 100.0}

    trainer = build_trainer(
        model=model,
        args=arguments,
        view_config=multicrop,
        train_dataset=dataset,
        knn_evaluator=knn_stand_in,
    )
    step_object = trainer.method
    loss = step_object.loss

    def loss_with_nan(model, batch, step):
        value, outputs = loss(model, batch, step)
        if step == options.nan_step and step_object.process_index == 1:
            value = value * float("nan")
            step_object.step_had_nonfinite_loss = True
        return value, outputs

    step_object.loss = loss_with_nan
    sigterm_during_step(trainer, options.stop_after)
    trainer.train(resume_from_checkpoint=options.resume)
    trainer.save_model()
    if trainer.is_world_process_zero():
        saved = load_file(Path(options.output_dir) / "model.safetensors")
        os.replace(Path(options.output_dir) / "model.safetensors", Path(options.output_dir) / "final.safetensors")
        report = {
            "distributed_type": str(trainer.accelerator.distributed_type),
            "world_size": trainer.accelerator.num_processes,
            "step": trainer.state.global_step,
            "skipped_steps": step_object.skipped_steps,
            "dtypes": sorted({str(tensor.dtype) for tensor in saved.values()}),
            "module_teacher_dtype": str(next(trainer.model.teacher.parameters()).dtype),
            "knn_backbone_dtype": evaluated.get("dtype"),
            "knn_top1": trainer.last_knn_metrics.get("knn_top1"),
        }
        (Path(options.output_dir) / "run.json").write_text(json.dumps(report))
    end_process_group()


if __name__ == "__main__":
    main()
