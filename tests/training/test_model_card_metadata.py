"""What a model card's YAML metadata says: Hub datasets only (no loader names or local paths), and the pretrained
backbone a run started from as base_model when it is a Hub repository."""

import yaml

from hf_ssl.training.sharing.model_card import hub_datasets, hub_model_id


def test_datasets_keep_hub_ids_only(tmp_path):
    assert (
        hub_datasets("imagefolder") is None and hub_datasets("parquet") is None and hub_datasets("arrayfolder") is None
    )
    assert hub_datasets("fashion_mnist") == ["zalando-datasets/fashion_mnist"]
    assert hub_datasets(["ILSVRC/imagenet-1k", str(tmp_path), "./data", "csv"]) == ["ILSVRC/imagenet-1k"]
    assert hub_datasets(None) is None


def test_base_model_is_a_hub_repository_or_nothing(tmp_path):
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "local").mkdir()
    assert hub_model_id("facebook/dinov2-small") == "facebook/dinov2-small"
    assert hub_model_id(str(tmp_path / "org" / "local")) is None  # a folder on this machine
    assert hub_model_id("not a repo id") is None and hub_model_id(None) is None


def test_a_run_from_a_pretrained_backbone_names_it_in_its_card(tmp_path, monkeypatch):
    from transformers import ViTConfig, ViTModel

    from hf_ssl.models.backbone import load_pretrained_backbone
    from hf_ssl.models.simclr import SimClrConfig, SimClrForPreTraining
    from hf_ssl.training.methods.simclr import SimClrMethod, SimClrTrainingArguments
    from hf_ssl.training.sharing.model_card import write_model_card
    from tests.helpers import TINY_VIT

    tiny = {key: value for key, value in TINY_VIT.items() if key != "model_type"}
    ViTModel(ViTConfig(**tiny), add_pooling_layer=False).save_pretrained(tmp_path / "source")
    model = SimClrForPreTraining(
        SimClrConfig(backbone_config=dict(TINY_VIT), projection_hidden_dim=16, projection_dim=8)
    )
    load_pretrained_backbone(model, str(tmp_path / "source"))
    assert model.config.pretrained_backbone == str(tmp_path / "source")  # recorded, saved in config.json

    args = SimClrTrainingArguments(output_dir=str(tmp_path / "run"), report_to="none")
    method = SimClrMethod.__new__(SimClrMethod)  # the card reads the method's name and values only
    method.views = None
    monkeypatch.setattr(SimClrMethod, "model_card_values", lambda self, model, args, schedules: {})

    def metadata():
        card = write_model_card(method, model, args, None, 3, [], dataset="imagefolder")
        return yaml.safe_load(card.content.split("---")[1])

    assert "base_model" not in metadata() and "datasets" not in metadata()  # a local folder and a loader: neither
    model.config.pretrained_backbone = "google/vit-base-patch16-224-in21k"
    assert metadata()["base_model"] == "google/vit-base-patch16-224-in21k"
