"""Model cards rendered from the templates in ``model_cards/`` with ``huggingface_hub.ModelCard``."""

from __future__ import annotations

import re
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


# Names `data.dataset` takes that are loaders or local data, not Hub datasets: the card's metadata leaves them out.
LOCAL_DATASET_NAMES = frozenset({
    "imagefolder", "parquet", "arrow", "csv", "json", "webdataset", "arrayfolder", "fashion_mnist_multispectral",
})
BUILTIN_HUB_DATASETS = {"fashion_mnist": "zalando-datasets/fashion_mnist"}


def hub_model_id(name_or_path) -> str | None:
    """``name_or_path`` when it names a Hub repository (``org/name``, not a local folder), else None."""
    if not isinstance(name_or_path, str) or Path(name_or_path).expanduser().exists():
        return None
    return name_or_path if re.fullmatch(r"[\w.-]+/[\w.-]+", name_or_path) else None


def hub_datasets(dataset) -> list[str] | None:
    """The Hub datasets among ``dataset`` (a name or list): loader names (imagefolder, parquet, ...) and local
    paths are left out, a built-in dataset becomes the Hub copy it mirrors."""
    names = [dataset] if isinstance(dataset, str) else list(dataset or [])
    kept = []
    for name in names:
        name = BUILTIN_HUB_DATASETS.get(name, name)
        if name in LOCAL_DATASET_NAMES or Path(name).expanduser().exists() or name.startswith((".", "/", "~")):
            continue
        kept.append(name)
    return kept or None


def write_model_card(method, model, args, schedules, steps: int, log_history: list[dict], model_name=None, dataset=None, tags=None, license=None) -> ModelCard:
    """The card of a run in ``args.output_dir`` from ``model_cards/<method.name>.md``: the shared part (backbone,
    steps, batch, lr, precision, the last k-NN result found in ``log_history``, the logged dicts of either engine)
    and the method's own values (``method.model_card_values``)."""
    backbone = model.config.backbone_config
    knn = [entry for entry in log_history if "knn_top1" in entry]
    if knn:
        last = knn[-1]
        evaluation = (
            f"Weighted k-NN (T=0.07) on frozen {method.evaluated_features} at step {last.get('step', steps)}: "
            f"top-1 {last['knn_top1']:.2f}%, top-5 {last['knn_top5']:.2f}%."
        )
        if "linear_top1" in last:
            evaluation += f" Linear probe on the same frozen features: top-1 {last['linear_top1']:.2f}%, top-5 {last['linear_top5']:.2f}%."
    else:
        evaluation = "No k-NN evaluation was run."
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    repo_id = args.hub_model_id or model_name or Path(args.output_dir).name
    card_data = ModelCardData(
        library_name="transformers",
        license=license,
        tags=["hf_ssl", method.name, "self-supervised", "image-feature-extraction", *(tags or [])],
        datasets=hub_datasets(dataset),
        base_model=hub_model_id(getattr(model.config, "pretrained_backbone", None)),
        pipeline_tag="image-feature-extraction",
    )
    described = ("hidden_size", "num_hidden_layers", "patch_size", "image_size", "hidden_sizes", "depths")
    return render_model_card(
        method.name,
        args.output_dir,
        card_data,
        model_name=model_name or repo_id,
        repo_id=repo_id,
        backbone_class=model.evaluation_backbone().__class__.__name__,
        backbone_summary=f"{backbone.model_type}, " + ", ".join(f"{key} {getattr(backbone, key)}" for key in described if hasattr(backbone, key)),
        steps=steps,
        total_batch_size=args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
        peak_learning_rate=f"{schedules.peak_learning_rate:.3g}" if schedules else args.learning_rate,
        optimizer=args.optimizer,
        precision=precision,
        evaluation=evaluation,
        **method.model_card_values(model, args, schedules),
    )
