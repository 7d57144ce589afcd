"""Pretrain any registered method from a recipe, on the transformers Trainer or a raw Accelerate loop
(``training.engine``): ``run_pretraining(recipe, resume)`` loads the data, builds the model, the k-NN and validation
evaluators and the engine, trains, and writes the outputs (model, backbone/, processor, recipe.yaml, card; Hub
pushes when asked). ``hf-ssl pretrain``, ``recipes/pretrain.py`` and ``recipes/train_<method>.py`` run it through
the command line in ``hf_ssl.commands.pretrain``, whose docstring shows the commands.
"""

from __future__ import annotations

import logging

from transformers import set_seed

from hf_ssl.data import ViewCropTransform, with_view_crops
from hf_ssl.evaluation import KnnEvaluator, RawPixels, subsample
from hf_ssl.models import build_image_processor
from hf_ssl.training.engines.accelerate_loop import build_trainer
from hf_ssl.training.engines.validation import ValidationLoss
from hf_ssl.training.setup.recipe import Recipe
from hf_ssl.training.sharing.hub import create_hub_repo, push_backbone, push_command
from hf_ssl.training.sharing.outputs import RunOutputError, hub_repo_error, hub_repo_name, save_run_outputs

logger = logging.getLogger("hf_ssl.pretrain")


def run_pretraining(recipe: Recipe, resume: str | None = None) -> dict:
    """Train ``recipe`` and write its outputs; returns the k-NN results (``random_init`` / ``trained``)."""
    training_args = recipe.training
    set_seed(training_args.seed)

    # 1. data: decode + random resized crops on the CPU, per example, in DataLoader workers
    data = recipe.load_datasets()
    recipe.check_best_metric(data)  # early stopping / best-N on a metric this run logs
    recipe.resolve_normalisation(data.train)  # per-band mean / std of multispectral data, when the recipe has none
    views = recipe.view_config  # the augmentation section's named view groups
    transform = ViewCropTransform(views, recipe.data.skip_bad_images, channels_last=recipe.data.channels_last)
    train_dataset = with_view_crops(data.train, transform, seed=training_args.seed)
    knn_splits = data.knn

    # 2. model: a new one, or continue from a pretrained hf_ssl model of the same method
    model = recipe.build_model()
    image_processor = build_image_processor(
        model.config.backbone_config.model_type, recipe.evaluation_image_size, views.mean, views.std
    )

    # 3. k-NN on the labelled split, then the trainer
    results, evaluator, evaluation = {}, None, recipe.evaluation
    if knn_splits is not None:
        evaluator = KnnEvaluator(
            subsample(knn_splits[0], evaluation.knn_max_train_samples),
            subsample(knn_splits[1], evaluation.knn_max_eval_samples),
            image_processor,
            k=evaluation.knn_k,
            temperature=evaluation.knn_temperature,
            batch_size=evaluation.batch_size,
            linear_probe=evaluation.linear_probe,
            channels_last=recipe.data.channels_last,
        )
    validation = None
    if data.validation is not None:  # the method's loss on held-out images, through the training pipeline
        validation = ValidationLoss(
            with_view_crops(data.validation, transform, seed=training_args.seed),
            recipe.spec.method_class.build_collator(model.config, recipe.augmentation, training_args.seed),
            batch_size=training_args.per_device_train_batch_size,
            num_workers=training_args.dataloader_num_workers,
        )
    trainer = build_trainer(  # SslTrainer, or AccelerateTrainer with training.engine=accelerate
        model=model,
        args=training_args,
        view_config=recipe.augmentation,
        train_dataset=train_dataset,
        method=recipe.method,
        knn_evaluator=evaluator,
        knn_eval_steps=evaluation.knn_eval_steps,
        knn_at_end=evaluation.knn_at_end,
        validation=validation,
        val_eval_steps=evaluation.val_eval_steps,
        val_at_end=evaluation.val_at_end,
    )
    backbone_repo = None
    if training_args.push_backbone_to_hub and trainer.is_world_process_zero():  # as push_to_hub: before training
        try:
            backbone_repo = create_hub_repo(
                training_args.push_backbone_to_hub, training_args.hub_token, training_args.hub_private_repo
            )
        except Exception as error:
            raise hub_repo_error(training_args, error, key="push_backbone_to_hub") from error
    if evaluator is not None and evaluation.knn_raw_pixels and trainer.is_world_process_zero():
        results["raw_pixels"] = evaluator(RawPixels(), device=training_args.device)
        logger.info("k-NN of the raw pixels: %s", results["raw_pixels"])
    if evaluator is not None and evaluation.knn_at_start and trainer.is_world_process_zero():
        # the model before training: random, or the pretrained backbone / model the recipe starts from
        start = "pretrained_start" if recipe.starts_pretrained else "random_init"
        results[start] = evaluator(model.evaluation_backbone(), device=training_args.device)
        logger.info("k-NN of the model before training (%s): %s", start.replace("_", " "), results[start])

    # 4. train, then save: the model first, then the backbone for plain transformers, processor, recipe, card
    trainer.train(resume_from_checkpoint=resume)
    output_dir = training_args.output_dir
    if trainer.run_control.stop_reason is not None and trainer.is_world_process_zero():
        print(
            f"Training {trainer.run_control.describe_stop()} at step {trainer.state.global_step}; "
            f"continue with --resume auto (checkpoints in {output_dir})"
        )
    if trainer.last_knn_metrics:
        results["trained"] = trainer.last_knn_metrics

    model_class = recipe.spec.pretraining_model_class

    def export_backbone(path):  # from the saved model: whole weights even when training sharded them (FSDP)
        model_class.from_pretrained(output_dir).export_backbone(path, image_processor=image_processor)

    # the card's metadata: the data trained on, and the split the k-NN numbers (model-index) were measured on
    card_arguments = dict(
        dataset=recipe.data.dataset,
        dataset_config=recipe.data.dataset_config_name,
        evaluation_split=recipe.data.eval_split,
    )
    save_run_outputs(
        trainer,
        output_dir,
        image_processor=image_processor,
        recipe=recipe,
        knn_results=results,
        only_missing=trainer.finished_before_start,
        card_arguments=card_arguments,
        export_backbone=export_backbone,
    )
    if trainer.is_world_process_zero():
        for name, metrics in results.items():
            print(f"k-NN top-1 ({name.replace('_', ' ')}): {metrics['knn_top1']:.2f}%")
            if "linear_top1" in metrics:
                print(f"linear probe top-1 ({name.replace('_', ' ')}): {metrics['linear_top1']:.2f}%")
        print(f"Saved to {output_dir} (backbone for plain transformers in {output_dir}/backbone)")

    # 5. share (every process: the Trainer gathers sharded weights), then report a k-NN evaluation that failed.
    # Everything is saved by now: a failed push says how to upload the same files later (hf-ssl push).
    base_model = None
    if training_args.push_to_hub:
        try:
            trainer.push_to_hub(**card_arguments)
            base_model = trainer.hub_model_id
            if trainer.is_world_process_zero():
                print(f"Pushed to https://huggingface.co/{base_model}")
        except Exception as error:
            retry = push_command(output_dir, trainer.hub_model_id or hub_repo_name(training_args))
            if backbone_repo is not None:
                retry += f", then {push_command(output_dir, backbone_repo, backbone_only=True)}"
            raise RunOutputError("push", output_dir, error, trainer.state.global_step, retry=retry) from error
    if backbone_repo is not None:
        try:
            push_backbone(
                output_dir,
                backbone_repo,
                base_model=base_model,
                token=training_args.hub_token,
                private=training_args.hub_private_repo,
            )
        except Exception as error:
            retry = push_command(output_dir, backbone_repo, backbone_only=True)
            raise RunOutputError("push_backbone", output_dir, error, trainer.state.global_step, retry=retry) from error
        if trainer.is_world_process_zero():
            print(f"Pushed the backbone to https://huggingface.co/{backbone_repo}")
    if trainer.knn_error is not None and trainer.is_world_process_zero():
        raise RunOutputError("knn", output_dir, RuntimeError(trainer.knn_error), trainer.state.global_step)
    return results
