"""VICReg's training step: its official defaults and views, its logged terms, a process without images still taking
part in the gather of the loss, and its recipes."""

from pathlib import Path

import pytest
import torch

import hf_ssl  # noqa: F401
from hf_ssl.models.vicreg import loss_vicreg
from hf_ssl.training import get_method
from hf_ssl.training.methods.byol import ByolViewConfig
from hf_ssl.training.methods.vicreg import VicRegTrainingArguments, VicRegViewConfig
from hf_ssl.training.setup.recipe import Recipe
from tests.training.test_methods import TINY_SETUPS

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def test_defaults_are_the_official_recipe(tmp_path):
    args = VicRegTrainingArguments(output_dir=str(tmp_path))
    assert (args.optimizer, args.learning_rate, args.scale_learning_rate, args.warmup_epochs) == (
        "lars",
        0.2,
        True,
        10.0,
    )
    assert (args.weight_decay, args.max_grad_norm, args.lars_trust_coefficient) == (1e-6, 0.0, 0.001)
    # the paper's views are BYOL's
    assert VicRegViewConfig().to_views_config() == ByolViewConfig().to_views_config()
    group = VicRegViewConfig().to_views_config().groups["views"]
    assert group.blur_probabilities == (1.0, 0.1) and group.solarize_probabilities == (0.0, 0.2)
    with pytest.raises(ValueError, match="invalid VICReg views"):
        VicRegViewConfig(input_size=0)


def test_a_process_without_images_takes_part_in_the_gather(monkeypatch):
    # its peers hold 3 images: its empty-batch loss is their global loss, and its backward reaches the gather
    spec = get_method("vicreg")
    config, views, _ = TINY_SETUPS["vicreg"]()
    model = spec.pretraining_model_class(config)
    method = spec.method_class(
        model, views, seed=0, process_index=0, max_consecutive_nonfinite_steps=3, reduce=lambda t: t
    )
    dim = config.expander_dims[-1]
    peer_rows = torch.randn(3, 2 * dim, requires_grad=True)  # (images, view a | view b), as the loss gathers them
    expected = loss_vicreg.VicRegLoss()(peer_rows[:, :dim].detach(), peer_rows[:, dim:].detach())
    gathered = []

    def gather_with_peers(local):
        gathered.append(local.shape)
        return torch.cat([local, peer_rows])

    monkeypatch.setattr(loss_vicreg, "all_gather_with_grad", gather_with_peers)
    loss = method.empty_batch_loss(model)
    assert gathered == [(0, 2 * dim)]
    torch.testing.assert_close(loss.detach(), expected)
    loss.backward()
    assert peer_rows.grad is not None and peer_rows.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    ("recipe", "backbone_type", "expander"),
    [("vicreg.yaml", "resnet", [8192, 8192, 8192]), ("vicreg_fashion_mnist_demo.yaml", "vit", [512, 512, 512])],
)
def test_the_recipes_parse(recipe, backbone_type, expander):
    parsed = Recipe.for_method("vicreg").from_yaml(RECIPES / recipe)
    config = parsed.model_config
    assert (
        parsed.method == "vicreg"
        and config.backbone_config.model_type == backbone_type
        and config.expander_dims == expander
    )
    assert (config.invariance_weight, config.variance_weight, config.covariance_weight) == (25.0, 25.0, 1.0)
    group = parsed.view_config.first
    assert group.blur_probabilities == (1.0, 0.1) and group.solarize_probabilities == (0.0, 0.2)
    assert type(parsed.training).__name__ == "VicRegTrainingArguments"
