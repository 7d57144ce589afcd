"""What the k-NN and linear-probe tests share: a tiny ViT, its processor and small labelled image datasets."""

import datasets
import torch
from transformers import ViTConfig, ViTModel

from hf_ssl.models import build_image_processor
from tests.helpers import TINY_VIT, png_bytes, random_images

TRUNCATED_PNG = "truncated.png"
NOT_AN_IMAGE = "notes.jpg"


# 8 classes, ranked by a query's similarity to them (best first), and 4 labels of that query at ranks 1, 4, 5 and 6:
# top-1 is 25%, top-4 50%, top-5 75%, top-6 100%.
CLASSES_BY_SIMILARITY = [3, 0, 5, 1, 7, 2, 6, 4]
RANKED_LABELS = torch.tensor([3, 1, 7, 2])


def ranked_query() -> torch.Tensor:
    """(1, 8) feature whose c-th entry falls with the rank of class c in `CLASSES_BY_SIMILARITY` (8 down to 1): a
    query whose similarity to the class corners ``e_c`` follows that ranking."""
    query = torch.zeros(1, len(CLASSES_BY_SIMILARITY))
    query[0, CLASSES_BY_SIMILARITY] = torch.arange(len(CLASSES_BY_SIMILARITY), 0, -1, dtype=torch.float32)
    return query


def tiny_vit():
    torch.manual_seed(0)
    return ViTModel(
        ViTConfig(**{k: v for k, v in TINY_VIT.items() if k != "model_type"}), add_pooling_layer=False
    ).eval()


def processor():
    return build_image_processor("vit", 16, [0.5] * 3, [0.5] * 3)


def labelled_dataset(rows, labels):
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["vertical", "horizontal"])}
    )
    return datasets.Dataset.from_dict({"image": rows, "label": labels}, features=features)


def encoded(images):
    return [{"bytes": png_bytes(image), "path": None} for image in images]


def unreadable(name):
    """An undecodable ``Image`` row that names its file: a truncated PNG, or a text file."""
    if name == TRUNCATED_PNG:
        return {"bytes": png_bytes(random_images(1)[0])[:60], "path": name}
    return {"bytes": b"this is a text file, not an image", "path": name}
