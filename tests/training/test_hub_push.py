"""Sharing a run on the Hub, offline: every method on either engine pushes the same files (the model, backbone/,
processor, card, recipe, history, k-NN results; never checkpoints, locks or training_args.bin) with a card whose
metadata is true for what the repository holds; the backbone alone goes to its own repository with a card for a
plain transformers model; a push that fails at the end loses nothing and says how to retry (hf-ssl push), and the
retry pushes the same files; what was pushed loads from a Hub cache with transformers alone.

The Hub is ``FakeHub``: ``HfApi``'s repository, commit and download calls, monkeypatched to keep each repository as
a snapshot folder of a Hugging Face cache (``models--org--name/refs/main`` + ``snapshots/<commit>/``), which
``from_pretrained`` then resolves with ``HF_HUB_OFFLINE=1``."""

import importlib
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
import yaml
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, ModelCard
from huggingface_hub.errors import LocalTokenNotFoundError, RemoteEntryNotFoundError, RepositoryNotFoundError

import hf_ssl  # noqa: F401  (registers the Auto classes)
from hf_ssl.commands.cli import main as hf_ssl_command
from hf_ssl.training import files_to_push, get_method
from hf_ssl.training.pretrain import run_pretraining
from hf_ssl.training.setup.recipe import DataArguments, EvaluationArguments, Recipe, RecipeData
from hf_ssl.training.sharing.outputs import RunOutputError
from tests.helpers import random_images
from tests.training.test_methods import TINY_SETUPS

COMMIT = "0123456789abcdef0123456789abcdef01234567"
DATASET = "tiny-org/striped-images"  # a Hub id: the cards' datasets and model-index name it
# what a push of a finished run uploads, whatever the method and the engine
PUSHED = [
    "README.md",
    "backbone/config.json",
    "backbone/model.safetensors",
    "backbone/preprocessor_config.json",
    "config.json",
    "history.json",
    "history.png",
    "knn_results.json",
    "model.safetensors",
    "preprocessor_config.json",
    "recipe.yaml",
]
BACKBONE_PUSHED = ["README.md", "config.json", "model.safetensors", "preprocessor_config.json"]


def hub_error(error_class, message: str):
    """A ``huggingface_hub`` HTTP error as the Hub raises it (they need a response with its request)."""
    http = importlib.import_module(huggingface_hub.errors.Response.__module__.split(".")[0])
    return error_class(
        message, response=http.Response(404, request=http.Request("GET", "https://huggingface.co/fake"))
    )


class FakeHub:
    """The Hub calls hf_ssl makes, answered from ``cache`` (a Hugging Face cache layout): a repository is the
    snapshot folder of one fixed commit, each commit applies its operations to it and is recorded in ``commits``.
    ``failure``: an exception every commit raises (no token, no network)."""

    user = "tiny-user"

    def __init__(self, cache: Path):
        self.cache = cache
        self.commits: list[SimpleNamespace] = []
        self.failure: BaseException | None = None

    def install(self, monkeypatch) -> "FakeHub":
        hub = self
        for name in (
            "create_repo",
            "create_commit",
            "list_repo_files",
            "file_exists",
            "hf_hub_download",
            "snapshot_download",
        ):
            monkeypatch.setattr(
                HfApi, name, lambda api, *args, _call=getattr(hub, name), **kwargs: _call(*args, **kwargs)
            )
        return self

    def snapshot(self, repo_id: str) -> Path:
        return self.cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / COMMIT

    def files(self, repo_id: str) -> list[str]:
        folder = self.snapshot(repo_id)
        return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())

    def commits_to(self, repo_id: str) -> list[SimpleNamespace]:
        return [commit for commit in self.commits if commit.repo_id == repo_id]

    # ----- the HfApi methods --------------------------------------------------------------------------------
    def create_repo(self, repo_id, token=None, private=None, exist_ok=False, **kwargs):
        full = repo_id if "/" in repo_id else f"{self.user}/{repo_id}"
        self.snapshot(full).mkdir(parents=True, exist_ok=True)
        (self.snapshot(full).parents[1] / "refs").mkdir(exist_ok=True)
        (self.snapshot(full).parents[1] / "refs" / "main").write_text(COMMIT)
        return SimpleNamespace(repo_id=full)

    def create_commit(self, repo_id, operations, *, commit_message, run_as_future=False, **kwargs):
        if self.failure is not None:
            raise self.failure
        folder = self.snapshot(repo_id)
        if not folder.is_dir():
            raise hub_error(RepositoryNotFoundError, f"no repository {repo_id}")
        added, deleted = [], []
        for operation in operations:
            target = folder / operation.path_in_repo
            if isinstance(operation, CommitOperationDelete):
                target.unlink(missing_ok=True)
                deleted.append(operation.path_in_repo)
                continue
            assert isinstance(operation, CommitOperationAdd)
            target.parent.mkdir(parents=True, exist_ok=True)
            source = operation.path_or_fileobj
            if isinstance(source, bytes):
                target.write_bytes(source)
            else:
                shutil.copyfile(source, target)
            added.append(operation.path_in_repo)
        commit = SimpleNamespace(repo_id=repo_id, message=commit_message, added=sorted(added), deleted=sorted(deleted))
        self.commits.append(commit)
        if run_as_future:
            future = Future()
            future.set_result(commit)
            return future
        return commit

    def list_repo_files(self, repo_id, **kwargs):
        return self.files(repo_id)

    def file_exists(self, repo_id, filename, **kwargs):
        return (self.snapshot(repo_id) / filename).is_file()

    def hf_hub_download(self, repo_id, filename, **kwargs):
        if not self.snapshot(repo_id).is_dir():
            raise hub_error(RepositoryNotFoundError, f"no repository {repo_id}")
        path = self.snapshot(repo_id) / filename
        if not path.is_file():
            raise hub_error(RemoteEntryNotFoundError, f"{repo_id} has no {filename}")
        return str(path)

    def snapshot_download(self, repo_id, *, allow_patterns=None, local_dir=None, **kwargs):
        import fnmatch

        for name in self.files(repo_id):
            if allow_patterns is None or any(fnmatch.fnmatch(name, pattern) for pattern in allow_patterns):
                (Path(local_dir) / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.snapshot(repo_id) / name, Path(local_dir) / name)
        return str(local_dir)


# ----- one tiny run per method, on alternating engines -------------------------------------------------------------

# method -> (engine, what the end of the run meets): "push" (the run), "backbone" (the run and its backbone alone),
# or a push that fails (no token / no network) and is retried with hf-ssl push
RUNS = {
    "dino": ("trainer", "push"),
    "simclr": ("accelerate", "push"),
    "ijepa": ("trainer", "backbone"),
    "hjepa": ("accelerate", "backbone"),
    "byol": ("trainer", LocalTokenNotFoundError("Token is required (`token=True`), but no token found.")),
    "vicreg": ("accelerate", ConnectionError("Failed to resolve 'huggingface.co'")),
}


def tiny_recipe(method: str, engine: str, output_dir: Path, **training) -> Recipe:
    """The tiny setup of ``method`` (``TINY_SETUPS``) as a recipe: one step, k-NN at the end."""
    config, views, overrides = TINY_SETUPS[method]()
    model = {
        key: value
        for key, value in config.to_diff_dict().items()
        if key not in ("model_type", "transformers_version", "architectures")
    }
    arguments = get_method(method).training_arguments_class(
        output_dir=str(output_dir),
        engine=engine,
        per_device_train_batch_size=4,
        max_steps=1,
        logging_steps=1,
        report_to="none",
        dataloader_num_workers=0,
        warmup_epochs=0.0,
        scale_learning_rate=False,
        seed=0,
        **{**overrides, **training},
    )
    return Recipe(
        method=method,
        model=model,
        data=DataArguments(dataset=DATASET, eval_split="test"),
        augmentation=views,
        training=arguments,
        evaluation=EvaluationArguments(knn_k=3, batch_size=8, linear_probe=method == "dino"),
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each method of ``RUNS`` trained, saved and pushed (or failing to) through ``run_pretraining``."""
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["vertical", "horizontal"])})
    images = Dataset.from_dict({"image": random_images(16), "label": [i % 2 for i in range(16)]}, features=features)
    root = tmp_path_factory.mktemp("hub-runs")
    with pytest.MonkeyPatch.context() as monkeypatch:
        hub = FakeHub(root / "hub-cache").install(monkeypatch)
        done = {}
        for method, (engine, end) in RUNS.items():
            output_dir = root / method
            training = {
                "push_to_hub": True,
                "hub_model_id": f"tiny-org/{method}-run",
                "hub_license": "apache-2.0" if method in ("dino", "ijepa") else None,
            }
            if end == "backbone" or method == "vicreg":
                training["push_backbone_to_hub"] = f"tiny-org/{method}-backbone"
            recipe = tiny_recipe(method, engine, output_dir, **training)
            recipe.load_datasets = lambda: RecipeData(images, (images, images.select(range(8))), None)
            hub.failure = end if isinstance(end, BaseException) else None
            error = None
            try:
                results = run_pretraining(recipe)
            except RunOutputError as raised:
                error, results = raised, None
            hub.failure = None
            done[method] = SimpleNamespace(
                engine=engine, output_dir=output_dir, error=error, results=results, repo=f"tiny-org/{method}-run"
            )
        yield hub, done


@pytest.mark.parametrize("method", [method for method, (_, end) in RUNS.items() if isinstance(end, str)])
def test_every_method_pushes_the_same_files_from_either_engine(runs, method):
    # (the runs whose push fails push these files on their retry: test_a_failed_push_keeps_everything...)
    hub, done = runs
    run = done[method]
    assert run.error is None
    commits = hub.commits_to(run.repo)
    assert [commit.message for commit in commits] == ["End of training"]  # one commit, as the Trainer's push
    assert commits[0].added == PUSHED == files_to_push(run.output_dir)
    # what stays local: the run's lock, and the Trainer's training_args.bin (a pickle; recipe.yaml has its settings)
    assert (run.output_dir / "_hf_ssl.lock").is_file()
    assert (run.output_dir / "training_args.bin").is_file() == (run.engine == "trainer")
    assert hub.files(run.repo) == PUSHED


@pytest.mark.parametrize("method", sorted(RUNS))
def test_the_card_says_what_the_repository_holds(runs, method):
    hub, done = runs
    run = done[method]
    readme = hub.snapshot(run.repo) / "README.md" if hub.files(run.repo) else run.output_dir / "README.md"
    card = ModelCard.load(readme)  # the YAML parses and the model-index reads back
    metadata = yaml.safe_load(card.content.split("---")[1])
    assert metadata["library_name"] == "hf_ssl" and "pipeline_tag" not in metadata  # the root needs import hf_ssl
    assert metadata["tags"][:2] == ["hf_ssl", method] and metadata["datasets"] == [DATASET]
    assert metadata.get("license") == ("apache-2.0" if method in ("dino", "ijepa") else None)
    trained = json.loads((run.output_dir / "knn_results.json").read_text())["trained"]
    results = {result.metric_name: result for result in card.data.eval_results}
    expected = {"k-NN top-1 accuracy": "knn_top1", "k-NN top-5 accuracy": "knn_top5"}
    if method == "dino":
        expected.update({"Linear probe top-1 accuracy": "linear_top1", "Linear probe top-5 accuracy": "linear_top5"})
    assert set(results) == set(expected)
    for name, key in expected.items():
        result = results[name]
        assert result.metric_value == round(trained[key], 2)
        assert result.metric_type == ("accuracy" if key.endswith("top1") else "top_5_accuracy")
        assert (result.task_type, result.dataset_type, result.dataset_name, result.dataset_split) == (
            "image-classification",
            DATASET,
            DATASET,
            "test",
        )
    assert card.data.model_name == metadata["model-index"][0]["name"]
    pushed_to = card.data.model_name
    assert f'AutoModel.from_pretrained("{pushed_to}", subfolder="backbone")' in card.text
    assert f"top-1 {trained['knn_top1']:.2f}%" in card.text
    assert "![training history](history.png)" in card.text


@pytest.mark.parametrize("method", ["ijepa", "hjepa"])
def test_the_backbone_goes_to_its_own_repository_with_a_card_for_plain_transformers(runs, method):
    hub, done = runs
    run = done[method]
    repo = f"tiny-org/{method}-backbone"
    [commit] = hub.commits_to(repo)
    assert commit.added == BACKBONE_PUSHED == files_to_push(run.output_dir, backbone_only=True)
    for name in BACKBONE_PUSHED[1:]:  # the files of backbone/, at the root
        assert (hub.snapshot(repo) / name).read_bytes() == (run.output_dir / "backbone" / name).read_bytes()
    card = ModelCard.load(hub.snapshot(repo) / "README.md")
    metadata = yaml.safe_load(card.content.split("---")[1])
    assert metadata["library_name"] == "transformers" and metadata["pipeline_tag"] == "image-feature-extraction"
    assert metadata["base_model"] == run.repo  # the run's repository, pushed just before
    assert metadata.get("license") == ("apache-2.0" if method == "ijepa" else None) and metadata["datasets"] == [
        DATASET
    ]
    assert [result.metric_name for result in card.data.eval_results] == ["k-NN top-1 accuracy", "k-NN top-5 accuracy"]
    assert f'AutoModel.from_pretrained("{repo}")' in card.text and "last_hidden_state.mean(dim=1)" in card.text


@pytest.mark.parametrize("method", ["byol", "vicreg"])
def test_a_failed_push_keeps_everything_and_the_retry_pushes_the_same_files(runs, method, capsys):
    hub, done = runs
    run = done[method]
    cause = RUNS[method][1]
    assert isinstance(run.error, RunOutputError) and run.error.step == "push" and run.error.cause is cause
    message = str(run.error)
    assert message.startswith("uploading the output directory to the Hub (push_to_hub) failed after training")
    assert f"{type(cause).__name__}: {cause}" in message and "Not written" not in message
    assert f"hf-ssl push {run.output_dir} --repo_id {run.repo}" in message
    if method == "vicreg":  # its backbone push was due too: the message gives both commands
        assert f"then hf-ssl push {run.output_dir} --repo_id tiny-org/vicreg-backbone --backbone_only" in message
    assert hub.files(run.repo) == [] and hub.commits_to("tiny-org/vicreg-backbone") == []
    for name in PUSHED:  # every local output is in place
        assert (run.output_dir / name).is_file(), name

    # the retry: the recipe's hub_model_id, or another repository whose name the card then uses
    repo = run.repo if method == "byol" else "tiny-org/vicreg-elsewhere"
    assert hf_ssl_command(["push", str(run.output_dir)] + (["--repo_id", repo] if method == "vicreg" else [])) == 0
    assert f"Pushed {run.output_dir} to https://huggingface.co/{repo}" in capsys.readouterr().out
    [commit] = hub.commits_to(repo)
    assert commit.added == PUSHED
    card = (hub.snapshot(repo) / "README.md").read_text()
    assert f'"{repo}"' in card and (method == "byol" or '"tiny-org/vicreg-run"' not in card)
    if method == "vicreg":
        assert hf_ssl_command(["push", str(run.output_dir), "--backbone_only"]) == 0  # training.push_backbone_to_hub
        [commit] = hub.commits_to("tiny-org/vicreg-backbone")
        assert commit.added == BACKBONE_PUSHED
        backbone = ModelCard.load(hub.snapshot("tiny-org/vicreg-backbone") / "README.md")
        assert backbone.data.base_model == repo  # the run's repository, found on the Hub


def test_pushed_repositories_load_from_the_hub_cache_and_the_backbone_with_transformers_alone(runs, tmp_path):
    hub, done = runs
    run = done["dino"]
    # the root, with hf_ssl: the pretraining model of the run, its saved weights
    import numpy as np
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel, AutoModelForPreTraining

    model = AutoModelForPreTraining.from_pretrained(run.repo, cache_dir=hub.cache)
    saved = AutoModelForPreTraining.from_pretrained(run.output_dir)
    assert type(model) is get_method("dino").pretraining_model_class
    for name, tensor in saved.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=0)

    # backbone/ of the run and the backbone repository, in an interpreter where hf_ssl cannot be imported
    script = """
import sys
sys.modules["hf_ssl"] = None
import numpy as np, torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, pipeline

run, backbone_repo = sys.argv[1:]
model = AutoModel.from_pretrained(run, subfolder="backbone")
processor = AutoImageProcessor.from_pretrained(run, subfolder="backbone")
image = Image.fromarray((np.arange(20 * 24 * 3).reshape(20, 24, 3) % 251).astype("uint8"))
pixels = processor(image, return_tensors="pt")["pixel_values"]
with torch.no_grad():
    pooled = model(pixel_values=pixels).pooler_output
extractor = pipeline("image-feature-extraction", model=backbone_repo)
features = extractor(image, return_tensors=True)
backbone_pixels = AutoImageProcessor.from_pretrained(backbone_repo)(image, return_tensors="pt")["pixel_values"]
torch.save(
    {"pixels": pixels, "pooled": pooled, "backbone_pixels": backbone_pixels, "features": features}, "outputs.pt"
)
print(type(model).__name__, tuple(pooled.shape), type(extractor.model).__name__, tuple(features.shape))
"""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub.cache), "PYTHONPATH": ""}
    completed = subprocess.run(
        [sys.executable, "-c", script, run.repo, "tiny-org/ijepa-backbone"],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    # ViT: the CLS embedding (hidden 32); IJepa on 16-px images, 4-px patches: 16 patch tokens of width 32
    assert completed.stdout.split() == ["ViTModel", "(1,", "32)", "IJepaModel", "(1,", "16,", "32)"]
    # and the same numbers as the trained models with hf_ssl: their processors' pixels, their features, bit for bit
    loaded = torch.load(tmp_path / "outputs.pt")
    image = Image.fromarray((np.arange(20 * 24 * 3).reshape(20, 24, 3) % 251).astype("uint8"))
    for folder, pixels in ((run.output_dir, loaded["pixels"]), (done["ijepa"].output_dir, loaded["backbone_pixels"])):
        expected = AutoImageProcessor.from_pretrained(folder)(image, return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(pixels, expected, rtol=0, atol=0)
    with torch.no_grad():
        pooled = AutoModel.from_pretrained(run.output_dir).eval()(pixel_values=loaded["pixels"]).pooler_output
        patches = AutoModel.from_pretrained(done["ijepa"].output_dir).eval()(pixel_values=loaded["backbone_pixels"])
    torch.testing.assert_close(loaded["pooled"], pooled, rtol=0, atol=0)
    torch.testing.assert_close(loaded["features"], patches.last_hidden_state, rtol=0, atol=0)


def test_files_to_push_leaves_out_checkpoints_staging_locks_and_pickles(tmp_path):
    files = [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "README.md",
        "recipe.yaml",
        "history.json",
        "preprocessor_config.json",
        "backbone/config.json",
        "backbone/model.safetensors",
        "runs/Jan01_run/events.out.tfevents.1.host.2.0",
        # left out
        "training_args.bin",
        "_hf_ssl.lock",
        "checkpoint-4/model.safetensors",
        "checkpoint-4/hf_ssl_state.json",
        ".staging-checkpoint-6/model.safetensors",
        ".hub-weights-6/model.safetensors",
        "final.safetensors",
        "backbone/.ipynb_checkpoints/config.json",
        "notes.txt",
    ]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert files_to_push(tmp_path) == sorted(files[:11])
    assert files_to_push(tmp_path, backbone_only=True) == ["README.md", "config.json", "model.safetensors"]


def test_push_refuses_a_folder_without_a_trained_model(tmp_path, capsys):
    (tmp_path / "checkpoint-2").mkdir()
    assert hf_ssl_command(["push", str(tmp_path), "--repo_id", "tiny-org/nothing"]) == 2
    assert f"error: {tmp_path} holds no trained model (config.json, model.safetensors)" in capsys.readouterr().err
    assert hf_ssl_command(["push", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_the_model_index_names_hub_datasets_only():
    from hf_ssl.training.sharing.model_card import evaluation_results

    metrics = {"knn_top1": 61.234, "knn_top5": 90.0}
    assert evaluation_results(metrics, "imagefolder", split="test") == []  # local data: in the card's text only
    assert evaluation_results({}, "fashion_mnist") == [] and evaluation_results(metrics, None) == []
    [top1, top5] = evaluation_results(metrics, "fashion_mnist", split="test")
    assert (top1.dataset_type, top1.dataset_split, top1.metric_type, top1.metric_value) == (
        "zalando-datasets/fashion_mnist",
        "test",
        "accuracy",
        61.23,
    )
    assert (top5.metric_type, top5.metric_name, top5.metric_value) == ("top_5_accuracy", "k-NN top-5 accuracy", 90.0)


def test_a_backbone_repository_that_cannot_be_created_stops_the_run_before_training(
    tmp_path, monkeypatch, tiny_image_dataset
):
    from hf_ssl.errors import ConfigError

    def no_token(api, repo_id, **kwargs):
        raise LocalTokenNotFoundError("Token is required (`token=True`), but no token found.")

    monkeypatch.setattr(HfApi, "create_repo", no_token)
    recipe = tiny_recipe("simclr", "trainer", tmp_path / "run", push_backbone_to_hub="tiny-org/simclr-backbone")
    recipe.load_datasets = lambda: RecipeData(tiny_image_dataset, None, None)
    with pytest.raises(
        ConfigError,
        match=r"training.push_backbone_to_hub=tiny-org/simclr-backbone, but the Hub repository "
        r"'tiny-org/simclr-backbone' cannot be created \(LocalTokenNotFoundError: .*the run has not started",
    ):
        run_pretraining(recipe)
    assert not (tmp_path / "run" / "model.safetensors").exists()
