"""Fine-tuning: metrics against hand-computed values, layer-wise lr decay groups, the frozen linear probe, where the
backbone comes from, and whole runs of the recipe script on a tiny image folder (resume, time budget, bad images)."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageClassification, ResNetConfig, ViTConfig, ViTModel

from hf_ssl.errors import ConfigError
from hf_ssl.finetuning.metrics import classification_metrics
from hf_ssl.finetuning.model import (
    BackboneSource,
    build_classification_model,
    freeze_backbone,
    layer_id,
    parameter_groups,
    resolve_backbone_source,
)
from hf_ssl.finetuning.run import main
from hf_ssl.models import build_image_processor
from tests.finetuning.conftest import MEAN, STD, write_recipe
from tests.helpers import TINY_RESNET, TINY_VIT, random_images


# ----- metrics -------------------------------------------------------------------------------------------------------
def test_classification_metrics_hand_computed():
    # 6 images, 3 classes; predictions (argmax) 0, 1, 1, 2, 2, 0 for labels 0, 0, 1, 2, 2, 1
    logits = np.array(
        [
            [3.0, 2.0, 1.0, 0.0, -1.0, -2.0],
            [0.0, 3.0, 1.0, 0.5, 0.2, -2.0],  # label 0 is the 5th best score: in the top 5, not in the top 4
            [0.0, 3.0, 1.0, 0.5, -1.0, -2.0],
            [0.0, 1.0, 3.0, 0.5, -1.0, -2.0],
            [0.0, 1.0, 3.0, 0.5, -1.0, -2.0],
            [3.0, -5.0, 1.0, 0.5, 0.2, 0.1],  # label 1 is the lowest score: outside the top 5 of 6 classes
        ]
    )
    labels = np.array([0, 0, 1, 2, 2, 1])
    metrics = classification_metrics(logits, labels)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["top5_accuracy"] == pytest.approx(5 / 6)  # top-4 would be 4 / 6, top-6 6 / 6
    # class 0: TP 1, FP 1, FN 1 -> 0.5; class 1: TP 1, FP 1, FN 1 -> 0.5; class 2: TP 2 -> 1.0; classes 3-5 never occur
    assert metrics["macro_f1"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)


def test_classification_metrics_reject_bad_shapes():
    with pytest.raises(ValueError, match="expected logits"):
        classification_metrics(np.zeros((3, 2)), np.zeros(4))


# ----- layer-wise lr decay and the linear probe --------------------------------------------------------------------
def _tiny_vit_classifier(num_labels=3):
    from transformers import ViTForImageClassification

    return ViTForImageClassification(
        ViTConfig(**{k: v for k, v in TINY_VIT.items() if k != "model_type"}, num_labels=num_labels)
    )


def test_layer_decay_groups_follow_the_blocks():
    model = _tiny_vit_classifier()
    decay_names = {name for name, _ in model.named_parameters() if not name.endswith("bias") and "norm" not in name}
    groups = parameter_groups(model, 1.0, 0.05, decay_names, layer_decay=0.5)
    scale_of = {name: group["lr"] for group in groups for name in group["names"]}
    decay_of = {name: group["weight_decay"] for group in groups for name in group["names"]}
    layers = TINY_VIT[
        "num_hidden_layers"
    ]  # 2 blocks: embeddings at 0.5^3, block 0 at 0.5^2, block 1 at 0.5, head at 1
    assert scale_of["vit.embeddings.patch_embeddings.projection.weight"] == pytest.approx(0.5 ** (layers + 1))
    block0 = next(name for name in scale_of if name.startswith(("vit.layers.0.", "vit.encoder.layer.0.")))
    assert scale_of[block0] == pytest.approx(0.5**layers)
    assert scale_of["classifier.weight"] == 1.0 and scale_of["vit.layernorm.weight"] == 1.0
    assert decay_of["classifier.weight"] == 0.05
    for name in (
        "vit.embeddings.position_embeddings",
        "vit.embeddings.cls_token",
        "classifier.bias",
        "vit.layernorm.weight",
    ):
        assert decay_of[name] == 0.0, name
    assert sum(len(group["params"]) for group in groups) == len(list(model.parameters()))


def test_layer_decay_counts_resnet_stages():
    from transformers import ResNetForImageClassification

    model = ResNetForImageClassification(
        ResNetConfig(**{k: v for k, v in TINY_RESNET.items() if k != "model_type"}, num_labels=3)
    )
    names = [name for name, _ in model.named_parameters()]
    stage1 = next(name for name in names if ".stages.1." in name)
    assert layer_id(stage1, 2) == 2  # not the index of the "layers.<j>" inside the stage
    assert layer_id(next(name for name in names if ".embedder." in name), 2) == 0
    assert layer_id("classifier.1.weight", 2) == 3


def test_linear_probe_trains_only_the_head_and_keeps_the_backbone_in_eval_mode():
    from transformers import ResNetForImageClassification

    model = ResNetForImageClassification(
        ResNetConfig(**{k: v for k, v in TINY_RESNET.items() if k != "model_type"}, num_labels=3)
    )
    trained = freeze_backbone(model)
    assert trained and all(name.startswith("classifier.") for name in trained)
    model.train()
    assert model.classifier.training and not model.resnet.training
    statistics = [buffer.clone() for name, buffer in model.named_buffers() if "running_mean" in name]
    backbone_before = {name: p.clone() for name, p in model.named_parameters() if not name.startswith("classifier")}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = model(pixel_values=torch.randn(4, 3, 16, 16), labels=torch.tensor([0, 1, 2, 0])).loss
    loss.backward()
    optimizer.step()
    assert all(
        torch.equal(before, after)
        for before, after in zip(statistics, (b for n, b in model.named_buffers() if "running_mean" in n))
    )
    assert all(
        torch.equal(backbone_before[name], p) for name, p in model.named_parameters() if name in backbone_before
    )


# ----- where the backbone comes from -------------------------------------------------------------------------------
def _backbone_state(model):
    return {
        name.split(".", 1)[1]: tensor
        for name, tensor in model.state_dict().items()
        if not name.startswith("classifier")
    }


def test_every_backbone_weight_is_loaded(vit_backbone_dir):
    model = build_classification_model(BackboneSource(str(vit_backbone_dir)), ["a", "b", "c"])
    reference = ViTModel.from_pretrained(vit_backbone_dir, add_pooling_layer=False).state_dict()
    loaded = _backbone_state(model)
    assert loaded.keys() == reference.keys()
    assert all(torch.equal(loaded[key], reference[key]) for key in reference)
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"} and model.config.label2id["c"] == 2
    scratch = build_classification_model(BackboneSource(str(vit_backbone_dir)), ["a", "b"], from_scratch=True)
    assert not torch.equal(_backbone_state(scratch)["embeddings.cls_token"], reference["embeddings.cls_token"])


def test_a_checkpoint_missing_backbone_weights_is_a_clear_error(vit_backbone_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(vit_backbone_dir, broken)
    weights = load_file(broken / "model.safetensors")
    dropped = [key for key in weights if "layernorm_before" in key or ".0.attention" in key]
    save_file(
        {key: value for key, value in weights.items() if key not in dropped},
        broken / "model.safetensors",
        metadata={"format": "pt"},
    )
    with pytest.raises(ConfigError, match="do not fit ViTForImageClassification: missing"):
        build_classification_model(BackboneSource(str(broken)), ["a", "b"])


def test_hf_ssl_runs_and_checkpoints_give_their_evaluated_backbone(tmp_path):
    from hf_ssl import SimClrConfig, SimClrForPreTraining

    torch.manual_seed(0)
    model = SimClrForPreTraining(
        SimClrConfig(backbone_config=dict(TINY_VIT), projection_hidden_dim=16, projection_dim=8)
    )
    checkpoint = tmp_path / "run" / "checkpoint-5"
    model.save_pretrained(checkpoint)  # a checkpoint folder: no backbone/, the processor is in the run folder
    build_image_processor("vit", 16, MEAN, STD).save_pretrained(tmp_path / "run")
    expected = {key: value for key, value in model.evaluation_backbone().state_dict().items()}

    exported = resolve_backbone_source(str(checkpoint), export_dir=tmp_path / "exported")
    assert exported.pretraining_model_type == "hf_ssl_simclr" and exported.subfolder == ""
    written = (tmp_path / "exported" / "model.safetensors").stat().st_mtime_ns
    resolve_backbone_source(str(checkpoint), export_dir=tmp_path / "exported")  # a resumed run: the export is reused
    assert (tmp_path / "exported" / "model.safetensors").stat().st_mtime_ns == written
    classifier = build_classification_model(exported, ["x", "y"])
    loaded = _backbone_state(classifier)
    assert all(torch.equal(loaded[key], expected[key]) for key in loaded)

    run = tmp_path / "run"
    model.save_pretrained(run)
    model.export_backbone(str(run / "backbone"), image_processor=build_image_processor("vit", 16, MEAN, STD))
    source = resolve_backbone_source(str(run))
    assert source.subfolder == "backbone" and source.processor_subfolder == "backbone"
    loaded = _backbone_state(build_classification_model(source, ["x", "y"]))
    assert all(torch.equal(loaded[key], expected[key]) for key in loaded)


def test_a_path_that_is_no_model_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read as a model"):
        resolve_backbone_source(str(tmp_path / "nowhere"))


# ----- whole runs of the recipe script -----------------------------------------------------------------------------
def test_full_fine_tune_run_keeps_the_best_checkpoint(vit_backbone_dir, image_folder, tmp_path, capsys):
    output = tmp_path / "out"
    recipe = write_recipe(tmp_path / "recipe.yaml", vit_backbone_dir, image_folder, output, num_train_epochs=3)
    assert main(["--config", str(recipe)]) == 0
    printed = capsys.readouterr().out
    assert "test_accuracy:" in printed
    results = json.loads((output / "all_results.json").read_text())
    assert results["num_skipped_images"] >= 1  # broken.png, counted and left out
    assert (
        results["test_samples"] == 12
        and {"test_accuracy", "test_top5_accuracy", "test_macro_f1", "eval_accuracy"} <= results.keys()
    )
    # the saved model is the best checkpoint by validation accuracy, loaded whole (not the last step's weights)
    state = json.loads((output / "trainer_state.json").read_text())
    best = AutoModelForImageClassification.from_pretrained(state["best_model_checkpoint"])
    final = AutoModelForImageClassification.from_pretrained(output)
    assert all(torch.equal(a, b) for a, b in zip(best.state_dict().values(), final.state_dict().values()))
    assert final.config.id2label == {0: "horizontal", 1: "vertical"}
    assert (output / "preprocessor_config.json").is_file() and (output / "recipe.yaml").is_file()
    card = (output / "README.md").read_text()
    assert "pipeline_tag: image-classification" in card and "layer-wise lr decay 0.75" in card
    assert "base_model" not in card  # a local folder is no Hub model
    from transformers import pipeline

    classify = pipeline("image-classification", model=str(output))
    assert {item["label"] for item in classify(random_images(1)[0], top_k=2)} == {"horizontal", "vertical"}


def test_time_budget_stops_with_a_checkpoint_and_resume_finishes(vit_backbone_dir, image_folder, tmp_path, capsys):
    output = tmp_path / "out"
    recipe = write_recipe(tmp_path / "recipe.yaml", vit_backbone_dir, image_folder, output, max_time_seconds=1e-6)
    assert main(["--config", str(recipe)]) == 0
    assert "continue with --resume auto" in capsys.readouterr().out
    assert "**Unfinished:** training stopped after max_time_seconds" in (output / "README.md").read_text()
    assert [path.name for path in output.glob("checkpoint-*")] == ["checkpoint-1"]
    assert main(["--config", str(recipe)]) == 2  # checkpoints there and no --resume: an error, nothing deleted
    assert "--resume auto" in capsys.readouterr().err
    assert main(["--config", str(recipe), "--resume", "auto", "training.max_time_seconds=null"]) == 0
    state = json.loads((output / "trainer_state.json").read_text())
    assert state["global_step"] == state["max_steps"] > 1
    # a finished run resumed again trains no more and still writes its outputs
    assert main(["--config", str(recipe), "--resume", "auto", "training.max_time_seconds=null"]) == 0
    assert json.loads((output / "trainer_state.json").read_text())["global_step"] == state["global_step"]
    assert "Unfinished" not in (output / "README.md").read_text()


def test_resume_from_the_hub_copy_of_the_last_checkpoint(vit_backbone_dir, image_folder, tmp_path, monkeypatch):
    first, second = tmp_path / "session1", tmp_path / "session2"
    recipe = write_recipe(tmp_path / "recipe.yaml", vit_backbone_dir, image_folder, first, max_time_seconds=1e-6)
    assert main(["--config", str(recipe)]) == 0
    hub = tmp_path / "hub" / "org--ft"
    shutil.copytree(first / "checkpoint-1", hub / "last-checkpoint")  # what hub_strategy=checkpoint leaves in the repo

    def fake_snapshot_download(repo_id, allow_patterns, local_dir, **kwargs):
        assert repo_id == "org/ft" and allow_patterns == ["last-checkpoint/*"]
        shutil.copytree(hub, local_dir, dirs_exist_ok=True)
        return str(local_dir)

    monkeypatch.setattr(
        "huggingface_hub.snapshot_download", lambda *args, **kwargs: None
    )  # a repo with nothing pushed yet
    fresh = tmp_path / "fresh"
    assert (
        main(
            [
                "--config",
                str(recipe),
                "--resume",
                "hub",
                f"training.output_dir={fresh}",
                "training.hub_model_id=org/ft",
            ]
        )
        == 0
    )
    assert [path.name for path in fresh.glob("checkpoint-*")] == [
        "checkpoint-1"
    ]  # started afresh, then stopped on time

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    overrides = [f"training.output_dir={second}", "training.hub_model_id=org/ft", "training.max_time_seconds=null"]
    assert main(["--config", str(recipe), "--resume", "hub", *overrides]) == 0
    state = json.loads((second / "trainer_state.json").read_text())
    assert state["global_step"] == state["max_steps"]
    assert state["log_history"][0]["step"] == 1  # the first session's logged step came along with its checkpoint


def test_recipe_mistakes_are_clear_errors(vit_backbone_dir, image_folder, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "recipe.yaml", vit_backbone_dir, image_folder, tmp_path / "out")
    assert main(["--config", str(recipe), "model.mode=probe"]) == 2
    assert "mode must be one of full, linear_probe" in capsys.readouterr().err
    assert main(["--config", str(recipe), "data.lable_column=x"]) == 2
    assert "lable_column" in capsys.readouterr().err
    assert main(["--config", str(recipe), "data.train_split=training"]) == 2
    assert "no split 'training'" in capsys.readouterr().err
    assert main(["--config", str(recipe), "--resume", "hub"]) == 2
    assert "needs training.hub_model_id" in capsys.readouterr().err


def test_early_stopping_ends_the_run_after_patience_validations(vit_backbone_dir, image_folder, tmp_path):
    output = tmp_path / "early"
    recipe = write_recipe(tmp_path / "recipe.yaml", vit_backbone_dir, image_folder, output, num_train_epochs=6)
    # no validation can improve by more than 1.0 (accuracy is in [0, 1]): the run stops after the second epoch
    assert (
        main(["--config", str(recipe), "training.early_stopping_patience=1", "training.early_stopping_threshold=1.0"])
        == 0
    )
    state = json.loads((output / "trainer_state.json").read_text())
    assert state["epoch"] == 2 and state["global_step"] < state["max_steps"]


def test_linear_probe_run_changes_only_the_head(vit_backbone_dir, image_folder, tmp_path):
    output = tmp_path / "probe"
    recipe = write_recipe(tmp_path / "recipe.yaml", vit_backbone_dir, image_folder, output, num_train_epochs=1)
    assert (
        main(
            [
                "--config",
                str(recipe),
                "model.mode=linear_probe",
                "model.layer_decay=null",
                "training.learning_rate=0.1",
            ]
        )
        == 0
    )
    reference = ViTModel.from_pretrained(vit_backbone_dir, add_pooling_layer=False).state_dict()
    tuned = AutoModelForImageClassification.from_pretrained(output)
    loaded = _backbone_state(tuned)
    assert all(torch.equal(loaded[key], reference[key]) for key in loaded)


def test_linear_probe_run_on_a_resnet_keeps_its_batchnorm_statistics_and_reloads(image_folder, tmp_path):
    # the probe's backbone stays in eval mode (freeze_backbone): BatchNorm normalises with its pretrained running
    # statistics and never updates them, so the saved backbone is the loaded one, buffer for buffer
    from transformers import AutoImageProcessor, ResNetForImageClassification, ResNetModel

    backbone_dir, output = tmp_path / "resnet", tmp_path / "probe"
    torch.manual_seed(0)
    backbone = ResNetModel(ResNetConfig(**{k: v for k, v in TINY_RESNET.items() if k != "model_type"}))
    for module in backbone.modules():  # statistics a training step would move, unlike the initial mean 0, variance 1
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0.0, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    backbone.save_pretrained(backbone_dir)
    build_image_processor("resnet", 16, MEAN, STD).save_pretrained(backbone_dir)
    recipe = write_recipe(tmp_path / "recipe.yaml", backbone_dir, image_folder, output, num_train_epochs=1)
    assert (
        main(
            [
                "--config",
                str(recipe),
                "model.mode=linear_probe",
                "model.layer_decay=null",
                "training.learning_rate=0.1",
            ]
        )
        == 0
    )

    tuned = AutoModelForImageClassification.from_pretrained(output)
    assert type(tuned) is ResNetForImageClassification
    reference, loaded = ResNetModel.from_pretrained(backbone_dir).state_dict(), _backbone_state(tuned)
    assert set(loaded) == set(reference) and any(key.endswith("running_var") for key in loaded)
    assert [key for key in loaded if not torch.equal(loaded[key], reference[key])] == []
    # the reloaded model gives the test accuracy the run reported (the test split goes through the saved processor)
    images = sorted((image_folder / "test").glob("*/*.png"))
    labels = torch.tensor([tuned.config.label2id[path.parent.name] for path in images])
    from PIL import Image

    pixels = AutoImageProcessor.from_pretrained(output)(
        [Image.open(path).convert("RGB") for path in images], return_tensors="pt"
    )
    with torch.no_grad():
        predictions = tuned.eval()(**pixels).logits.argmax(1)
    results = json.loads((output / "all_results.json").read_text())
    assert results["test_accuracy"] == pytest.approx((predictions == labels).float().mean().item())


# ----- every family an hf_ssl method exports, and N-band inputs ---------------------------------------------------
EXPORTS = {  # (backbone config, processor means): what each method's export looks like at tiny size
    "vit (dino, simclr, byol, vicreg)": ({**TINY_VIT}, MEAN),
    "ijepa (ijepa, hjepa)": ({**TINY_VIT, "model_type": "ijepa"}, MEAN),
    "resnet (simclr, byol, vicreg)": ({**TINY_RESNET}, MEAN),
    "vit with 5 bands (multispectral)": ({**TINY_VIT, "num_channels": 5}, [0.1, 0.2, 0.3, 0.4, 0.5]),
}


@pytest.mark.parametrize("family", list(EXPORTS))
def test_every_exported_family_fine_tunes(family, tmp_path):
    from transformers import AutoConfig, AutoModel

    from hf_ssl.finetuning.data import ClassificationCollator

    backbone_config, mean = EXPORTS[family]
    values = dict(backbone_config)
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(tmp_path)
    processor = build_image_processor(config.model_type, 16, mean, [0.5] * len(mean))
    processor.save_pretrained(tmp_path)
    model = build_classification_model(BackboneSource(str(tmp_path)), ["a", "b", "c"])
    if len(mean) == 3:
        rows = [{"image": image, "label": index % 3} for index, image in enumerate(random_images(6))]
    else:  # N-band arrays of another size, channels last, as a datasets Array3D column may hold them
        rows = [
            {"image": np.random.default_rng(index).random((20, 24, 5)).astype(np.float32), "label": index % 3}
            for index in range(6)
        ]
    for train in (True, False):
        batch = ClassificationCollator(processor, train=train, seed=0)(rows)
        assert batch["pixel_values"].shape == (6, len(mean), 16, 16) and batch["labels"].tolist() == [0, 1, 2, 0, 1, 2]
    batch = ClassificationCollator(processor, train=True, seed=0)(rows)
    groups = parameter_groups(model, 1e-3, 0.0, set(), layer_decay=0.5)
    optimizer = torch.optim.AdamW([{k: v for k, v in group.items() if k != "names"} for group in groups])
    losses = []
    for _ in range(5):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_gpu_precision_on_a_cpu_trains_in_float32_and_says_so(precision, tmp_path, caplog):
    from hf_ssl.finetuning.arguments import FinetuningArguments

    if torch.cuda.is_available():
        pytest.skip("the fallback is for machines without a GPU")
    arguments = FinetuningArguments(output_dir=str(tmp_path), **{precision: True})
    assert not arguments.fp16 and not arguments.bf16
    assert f"training.{precision}=true needs a GPU" in caplog.text
