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
