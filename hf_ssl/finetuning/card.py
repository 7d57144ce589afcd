"""The model card of a fine-tuned classifier, rendered from ``model_cards/finetune.md``: metadata a Hub page and
search can rely on (``pipeline_tag: image-classification``, ``base_model`` when the start is a Hub model, Hub
datasets only, the test and validation results as ``model-index``) and the results and settings in tables."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from hf_ssl.training.sharing.model_card import evaluation_results, hub_datasets, hub_model_id, template_path

SPLITS = (("test", "test"), ("eval", "validation"))
# (key in classification_metrics, model-index metric type, metric name)
METRICS = (
    ("accuracy", "accuracy", "Top-1 accuracy"),
    ("top5_accuracy", "top_5_accuracy", "Top-5 accuracy"),
    ("macro_f1", "f1", "Macro F1"),
)


def write_finetune_card(
    output_dir,
    recipe,
    model,
    metrics: dict,
    steps: int,
    image_size: int,
    license: str | None = None,
    stopped: str | None = None,
) -> ModelCard:
    """Write ``<output_dir>/README.md`` for a finished fine-tuning run (``recipe``: a ``FinetuneRecipe``; ``metrics``:
    what ``run_finetuning`` measured, ``eval_*`` and ``test_*`` in [0, 1]; ``stopped``: why a run that has not finished
    stopped, said at the top of the card)."""
    args, source = recipe.training, recipe.model
    repo_id = args.hub_model_id or Path(args.output_dir).absolute().name
    base_model = None if source.from_scratch else hub_model_id(source.model_name_or_path)
    datasets = hub_datasets(recipe.data.dataset)
    dataset_name = datasets[0] if datasets else recipe.data.dataset
    results, rows = [], []
    for prefix, split in SPLITS:
        if f"{prefix}_accuracy" not in metrics:
            continue
        percent = {key: 100 * metrics[f"{prefix}_{key}"] for key, _, _ in METRICS}
        rows.append(
            f"| {split} | {percent['accuracy']:.2f}% | {percent['top5_accuracy']:.2f}% | {percent['macro_f1']:.2f}% "
            f"| {metrics.get(f'{prefix}_samples', '')} |"
        )
        results += evaluation_results(percent, recipe.data.dataset, split=split, metric_table=METRICS, task_name=None)
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        license=license,
        base_model=base_model,
        datasets=datasets,
        tags=["hf_ssl", "image-classification", source.mode.replace("_", "-")],
        model_name=repo_id,
        eval_results=results or None,
    )
    if source.from_scratch:
        start = "trained from a random initialisation"
    else:
        start = f"starting from `{source.model_name_or_path}`"
    mode = {"full": "full fine-tune", "linear_probe": "linear probe: frozen backbone, trained head"}[source.mode]
    if source.layer_decay is not None:
        mode += f", layer-wise lr decay {source.layer_decay}"
    augmentation = recipe.augmentation
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path("finetune")),
        model_name=repo_id,
        repo_id=repo_id,
        backbone_class=_backbone_class(model),
        start=start,
        mode=mode,
        dataset=dataset_name,
        results_table="\n".join(rows) or "| (no evaluation) | | | | |",
        num_classes=model.config.num_labels,
        epochs=f"{metrics.get('epoch', args.num_train_epochs):g}",
        steps=steps,
        total_batch_size=args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
        learning_rate=f"{args.learning_rate:g}",
        weight_decay=f"{args.weight_decay:g}",
        lr_scheduler_type=str(
            args.lr_scheduler_type.value if hasattr(args.lr_scheduler_type, "value") else args.lr_scheduler_type
        ),
        warmup=f"{args.warmup_ratio:g} of the steps" if args.warmup_ratio else f"{args.warmup_steps} steps",
        image_size=image_size,
        crop_scale=list(augmentation.crop_scale),
        horizontal_flip=augmentation.horizontal_flip,
        precision="bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        metric_for_best_model=args.metric_for_best_model or "(none: the last)",
        status=f"**Unfinished:** training {stopped} at step {steps}; the results below are of these weights, and the "
        "run continues with `--resume auto` (or `--resume hub`)."
        if stopped
        else "",
    )
    card.save(Path(output_dir) / "README.md")
    return card


def _backbone_class(model) -> str:
    base = getattr(model, model.base_model_prefix, None)
    return type(base).__name__ if base is not None else type(model).__name__
