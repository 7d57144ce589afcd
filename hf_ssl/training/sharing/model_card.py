"""Model cards rendered from the templates in ``model_cards/`` with ``huggingface_hub.ModelCard``.

Two cards, with metadata true to what each repository holds:

- the run's card (``model_cards/<method>.md``, ``README.md`` of the output directory): its root is an hf_ssl
  pretraining model, which transformers loads only after ``import hf_ssl``, so ``library_name`` is ``hf_ssl``
  (the Hub would otherwise take a repository with a ``config.json`` for a plain transformers one) and there is no
  ``pipeline_tag`` (no widget or inference provider could run it); ``backbone/`` is the plain transformers part.
- the backbone's card (``model_cards/backbone.md``), when ``backbone/`` is pushed as a repository of its own:
  a plain transformers model, so ``library_name: transformers`` and ``pipeline_tag: image-feature-extraction``,
  with the run's repository as ``base_model`` when it is on the Hub.

Both carry the k-NN (and linear-probe) numbers as ``model-index`` when an evaluation ran on a Hub dataset, the
``license`` only when one is given (``training.hub_license``), and the Hub datasets the run trained on.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

LIBRARY_NAME = "hf_ssl"  # the root of a run's repository is an hf_ssl model (backbone/ is the transformers one)
HISTORY_PLOT = "history.png"
# The evaluations a card reports: (logged key, model-index metric type, metric name); values in percent
EVALUATION_METRICS = (
    ("knn_top1", "accuracy", "k-NN top-1 accuracy"),
    ("knn_top5", "top_5_accuracy", "k-NN top-5 accuracy"),
    ("linear_top1", "accuracy", "Linear probe top-1 accuracy"),
    ("linear_top5", "top_5_accuracy", "Linear probe top-5 accuracy"),
)
# Backbones whose transformers model has no pooled output: the image embedding is the mean of the patch tokens.
MEAN_POOLED_MODEL_TYPES = frozenset({"ijepa"})


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
LOCAL_DATASET_NAMES = frozenset(
    {
        "imagefolder",
        "parquet",
        "arrow",
        "csv",
        "json",
        "webdataset",
        "arrayfolder",
        "fashion_mnist_multispectral",
    }
)
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


def evaluation_results(
    metrics: dict | None,
    dataset,
    dataset_config: str | None = None,
    split: str | None = None,
    metric_table=EVALUATION_METRICS,
    task_name: str | None = "Image classification on frozen features",
) -> list[EvalResult]:
    """The ``model-index`` entries of an image-classification evaluation on ``dataset``: one per row ``(key, metric
    type, metric name)`` of ``metric_table`` whose key is in ``metrics`` (values in percent; by default the k-NN and
    linear-probe numbers of frozen features). Only for a Hub dataset (a reader must be able to find it; local data is
    named in the card's text only)."""
    hub = hub_datasets(dataset) if isinstance(dataset, str) else None
    if not metrics or not hub:
        return []
    return [
        EvalResult(
            task_type="image-classification",
            task_name=task_name,
            dataset_type=hub[0],
            dataset_name=hub[0],
            dataset_config=dataset_config,
            dataset_split=split,
            metric_type=metric,
            metric_name=name,
            metric_value=round(float(metrics[key]), 2),
        )
        for key, metric, name in metric_table
        if key in metrics
    ]


def evaluation_text(metrics: dict | None, features: str, step: int | None, temperature: float = 0.07) -> str:
    """The card's sentence about the last k-NN (and linear-probe) evaluation in ``metrics``."""
    if not metrics or "knn_top1" not in metrics:
        return "No k-NN evaluation was run."
    at = f" at step {step}" if step is not None else ""
    text = (
        f"Weighted k-NN (T={temperature:g}) on frozen {features}{at}: "
        f"top-1 {metrics['knn_top1']:.2f}%, top-5 {metrics['knn_top5']:.2f}%."
    )
    if "linear_top1" in metrics:
        text += (
            f" Linear probe on the same frozen features: top-1 {metrics['linear_top1']:.2f}%, top-5 "
            f"{metrics['linear_top5']:.2f}%."
        )
    return text


def write_model_card(
    method,
    model,
    args,
    schedules,
    steps: int,
    log_history: list[dict],
    model_name=None,
    dataset=None,
    tags=None,
    license=None,
    repo_id: str | None = None,
    dataset_config: str | None = None,
    evaluation_split: str | None = None,
) -> ModelCard:
    """The card of a run in ``args.output_dir`` from ``model_cards/<method.name>.md``: the shared part (backbone,
    steps, batch, lr, precision, the last k-NN result found in ``log_history``, the logged dicts of either engine,
    the history plot when ``history.png`` is there) and the method's own values (``method.model_card_values``).

    ``repo_id`` is the repository the usage snippets load (default: ``hub_model_id``, else the output directory's
    name); ``dataset`` (+ ``dataset_config``, ``evaluation_split``: the split k-NN queried) names the data of the
    metadata's ``datasets`` and ``model-index``; ``license`` defaults to ``args.hub_license``."""
    backbone = model.config.backbone_config
    knn = [entry for entry in log_history if "knn_top1" in entry]
    last = knn[-1] if knn else None
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    repo_id = repo_id or args.hub_model_id or model_name or Path(args.output_dir).name
    results = evaluation_results(last, dataset, dataset_config, evaluation_split)
    card_data = ModelCardData(
        library_name=LIBRARY_NAME,
        license=license or getattr(args, "hub_license", None),
        tags=["hf_ssl", method.name, "self-supervised", "image-feature-extraction", *(tags or [])],
        datasets=hub_datasets(dataset),
        base_model=hub_model_id(getattr(model.config, "pretrained_backbone", None)),
        model_name=repo_id if results else None,  # the model-index's name (ModelCardData writes it only there)
        eval_results=results or None,
    )
    described = ("hidden_size", "num_hidden_layers", "patch_size", "image_size", "hidden_sizes", "depths")
    return render_model_card(
        method.name,
        args.output_dir,
        card_data,
        model_name=model_name or repo_id,
        repo_id=repo_id,
        backbone_class=model.evaluation_backbone().__class__.__name__,
        backbone_summary=f"{backbone.model_type}, "
        + ", ".join(f"{key} {getattr(backbone, key)}" for key in described if hasattr(backbone, key)),
        steps=steps,
        total_batch_size=args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
        peak_learning_rate=f"{schedules.peak_learning_rate:.3g}" if schedules else args.learning_rate,
        optimizer=args.optimizer,
        precision=precision,
        evaluation=evaluation_text(last, method.evaluated_features, last.get("step", steps) if last else steps),
        history_plot=HISTORY_PLOT if (Path(args.output_dir) / HISTORY_PLOT).is_file() else None,
        **method.model_card_values(model, args, schedules),
    )


def backbone_card(output_dir: str | Path, repo_id: str, base_model: str | None = None) -> ModelCard:
    """The card of ``<output_dir>/backbone`` pushed as a repository of its own (``model_cards/backbone.md``), from
    what the run wrote: the method, data and license from ``recipe.yaml``, the final k-NN numbers from
    ``knn_results.json``, the architecture from ``backbone/config.json``. ``base_model``: the run's repository, when
    it is on the Hub. Not written to disk: ``hf_ssl.training.sharing.hub.push_backbone`` uploads it as
    ``README.md``."""
    from hf_ssl.training.methods import get_method

    output_dir = Path(output_dir)
    recipe = _read(output_dir / "recipe.yaml", yaml.safe_load) or {}
    data, training, evaluation = (recipe.get(section) or {} for section in ("data", "training", "evaluation"))
    method = recipe.get("method")
    try:
        summary = get_method(method).summary if method else ""
    except KeyError:
        summary = ""
    backbone = _read(output_dir / "backbone" / "config.json", json.loads) or {}
    trained = (_read(output_dir / "knn_results.json", json.loads) or {}).get("trained")
    dataset = data.get("dataset")
    results = evaluation_results(trained, dataset, data.get("dataset_config_name"), data.get("eval_split"))
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-feature-extraction",
        license=training.get("hub_license"),
        tags=["hf_ssl", *([method] if method else []), "self-supervised", "image-feature-extraction"],
        datasets=hub_datasets(dataset),
        base_model=base_model,
        model_name=repo_id if results else None,
        eval_results=results or None,
    )
    model_type = backbone.get("model_type", "")
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path("backbone")),
        repo_id=repo_id,
        base_model=base_model,
        method=method,
        method_summary=summary,
        backbone_class=(backbone.get("architectures") or ["AutoModel"])[0],
        backbone_type=model_type,
        embedding="last_hidden_state.mean(dim=1)"
        if model_type in MEAN_POOLED_MODEL_TYPES
        else "pooler_output.flatten(1)",
        evaluation=evaluation_text(
            trained, "features of this backbone", None, evaluation.get("knn_temperature", 0.07)
        ),
    )


def _read(path: Path, parse):
    return parse(path.read_text()) if path.is_file() else None
