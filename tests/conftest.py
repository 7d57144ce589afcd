"""Shared fixtures: everything is generated, nothing is downloaded."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# trackio reads its folder once, at import: keep the tests' databases out of the user's cache
os.environ.setdefault("TRACKIO_DIR", tempfile.mkdtemp(prefix="hf_ssl-trackio-"))

import pytest

from tests.helpers import random_images


@pytest.fixture
def tiny_image_dataset():
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    images = random_images(16)
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["vertical", "horizontal"])})
    return Dataset.from_dict({"image": images, "label": [i % 2 for i in range(16)]}, features=features)
