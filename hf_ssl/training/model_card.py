"""Model cards rendered from the templates in ``model_cards/`` with ``huggingface_hub.ModelCard``."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData


def template_path(method: str) -> Path:
    """The card template of a method, shipped with the package (``hf_ssl/model_cards/<method>.md``)."""
    path = Path(str(resources.files("hf_ssl") / "model_cards" / f"{method}.md"))
    if not path.is_file():
        raise FileNotFoundError(f"no model card template for {method!r} at {path}")
    return path


def render_model_card(method: str, output_dir: str | Path, card_data: ModelCardData, **values) -> ModelCard:
    """Render the ``method`` template with ``values`` and write it to ``<output_dir>/README.md``."""
    card = ModelCard.from_template(card_data, template_path=str(template_path(method)), **values)
    card.save(Path(output_dir) / "README.md")
    return card


def write_dino_model_card(model, args, multicrop_config, schedules, steps: int, log_history: list[dict], model_name=None, dataset=None, tags=None, license=None) -> ModelCard:
    """The card of a DINO run in ``args.output_dir``: architecture, recipe and the last k-NN result found in
    ``log_history`` (the logged dicts of either engine)."""
    config = model.config
    backbone = config.backbone_config
    crops = multicrop_config
    knn = [entry for entry in log_history if "knn_top1" in entry]
    if knn:
        last = knn[-1]
        evaluation = (
            f"Weighted k-NN (T=0.07) on frozen teacher features at step {last.get('step', steps)}: "
            f"top-1 {last['knn_top1']:.2f}%, top-5 {last['knn_top5']:.2f}%."
        )
    else:
        evaluation = "No k-NN evaluation was run."
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    repo_id = args.hub_model_id or model_name or Path(args.output_dir).name
    card_data = ModelCardData(
        library_name="transformers",
        license=license,
        tags=["hf_ssl", "dino", "self-supervised", "image-feature-extraction", *(tags or [])],
        datasets=[dataset] if isinstance(dataset, str) else dataset,
        pipeline_tag="image-feature-extraction",
    )
    described = ("hidden_size", "num_hidden_layers", "patch_size", "image_size")
    return render_model_card(
        "dino",
        args.output_dir,
        card_data,
        model_name=model_name or repo_id,
        repo_id=repo_id,
        backbone_class=model.teacher.backbone.__class__.__name__,
        backbone_summary=f"{backbone.model_type}, " + ", ".join(f"{key} {getattr(backbone, key)}" for key in described if hasattr(backbone, key)),
        out_dim=config.out_dim,
        head_hidden_dim=config.head_hidden_dim,
        head_bottleneck_dim=config.head_bottleneck_dim,
        norm_last_layer=config.norm_last_layer,
        crops=(
            f"{crops.global_crops_number} x {crops.global_crop_size}px (scale {tuple(crops.global_crops_scale)}), "
            f"{crops.local_crops_number} x {crops.local_crop_size}px (scale {tuple(crops.local_crops_scale)})"
        ),
        steps=steps,
        total_batch_size=args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
        peak_learning_rate=f"{schedules.peak_learning_rate:.3g}" if schedules else args.learning_rate,
        teacher_temperature=(
            f"{config.warmup_teacher_temperature} -> {config.teacher_temperature} over "
            f"{config.warmup_teacher_temperature_epochs} epochs"
        ),
        precision=precision,
        evaluation=evaluation,
    )
