"""Factories for tiny DINO configs and models."""

import pytest
import torch

from hf_ssl import DinoConfig, DinoForPreTraining
from tests.helpers import TINY_HEAD, TINY_VIT


@pytest.fixture
def tiny_config():
    """Factory: a DinoConfig with a tiny backbone (ViT unless given) and a tiny head."""

    def make(backbone_config=None, **overrides):
        return DinoConfig(backbone_config=dict(backbone_config or TINY_VIT), **{**TINY_HEAD, **overrides})

    return make


@pytest.fixture
def tiny_model(tiny_config):
    """Factory: a freshly initialised, seeded DinoForPreTraining."""

    def make(backbone_config=None, **overrides):
        torch.manual_seed(0)
        return DinoForPreTraining(tiny_config(backbone_config, **overrides))

    return make
