"""The pretraining models are named as transformers names them (`DinoForPreTraining`); the old names
(`DinoForPretraining`) stay importable, and checkpoints saved under them load with every loader."""

import json

import pytest
import torch
from transformers import AutoModel, AutoModelForPreTraining

import hf_ssl
import hf_ssl.models
from tests.models.pretraining_cases import METHODS, pretraining_case

# each method's subpackage and its class name prefix
PREFIXES = {"dino": "Dino", "simclr": "SimClr", "byol": "Byol", "vicreg": "VicReg", "ijepa": "IJepa", "hjepa": "HJepa"}


def perturb_(model: torch.nn.Module) -> None:
    """Move every parameter away from its init, so loaded weights cannot pass for freshly initialised ones."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))


def assert_bit_exact(state_dict: dict, expected: dict) -> None:
    assert list(state_dict) == list(expected)
    for name, tensor in expected.items():
        assert torch.equal(state_dict[name], tensor), name


def save_as_old_code_did(model, folder) -> None:
    """`save_pretrained`, then `architectures` as the code before the rename wrote it: `DinoForPretraining`..."""
    model.save_pretrained(folder)
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    assert config["architectures"] == [type(model).__name__]  # the new name, e.g. DinoForPreTraining
    config["architectures"] = [type(model).__name__.replace("ForPreTraining", "ForPretraining")]
    config_file.write_text(json.dumps(config, indent=2))


@pytest.mark.parametrize("method", METHODS)
def test_old_names_are_the_new_classes_everywhere_they_were_exported(method):
    prefix = PREFIXES[method]
    subpackage = getattr(hf_ssl.models, method)
    modeling = getattr(subpackage, f"modeling_{method}")
    new_class = getattr(modeling, f"{prefix}ForPreTraining")
    assert new_class.__name__ == f"{prefix}ForPreTraining"
    for module in (hf_ssl, hf_ssl.models, subpackage, modeling):
        assert getattr(module, f"{prefix}ForPretraining") is new_class, module.__name__
    for module in (subpackage, modeling):
        assert getattr(module, f"{prefix}ForPretrainingOutput") is getattr(module, f"{prefix}ForPreTrainingOutput")
    # hf_ssl registers the Auto classes under the old name: the same object, so they build the new class
    assert type(AutoModelForPreTraining.from_config(pretraining_case(method).config)) is new_class


def test_the_ijepa_base_keeps_its_old_name():
    from hf_ssl.models.ijepa import IJepaForPreTraining, IJepaPretrainingPreTrainedModel, IJepaSslPreTrainedModel

    assert IJepaPretrainingPreTrainedModel is IJepaSslPreTrainedModel
    assert issubclass(IJepaForPreTraining, IJepaSslPreTrainedModel)


@pytest.mark.parametrize("method", METHODS)
def test_a_checkpoint_saved_under_the_old_name_loads_bit_exact(method, tmp_path):
    case = pretraining_case(method)
    model = case.build()
    perturb_(model)
    expected = model.state_dict()
    save_as_old_code_did(model, tmp_path)

    old_class = getattr(hf_ssl.models, f"{PREFIXES[method]}ForPretraining")
    for loader in (AutoModelForPreTraining, case.model_class, old_class):
        loaded, info = loader.from_pretrained(tmp_path, output_loading_info=True)
        assert type(loaded) is case.model_class, loader
        assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), (loader, info)
        assert_bit_exact(loaded.state_dict(), expected)

    # AutoModel: the feature model, holding the evaluated backbone (DINO's teacher, I-JEPA's target encoder...)
    features = AutoModel.from_pretrained(tmp_path)
    assert_bit_exact(features.backbone.state_dict(), model.evaluation_backbone().state_dict())

    # saved again, it carries the new name
    loaded.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["architectures"] == [case.model_class.__name__]
