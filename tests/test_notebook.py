"""notebooks/pretrain_finetune.ipynb runs end to end at tiny size: its code cells are executed in order in one
namespace (as a kernel would), with the settings cell's values replaced by tiny ones and the Hub faked."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.helpers import random_images

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "pretrain_finetune.ipynb"


def code_cells(path: Path) -> list[tuple[list[str], str]]:
    """(tags, source) of every code cell; shell and magic lines (``%pip``, ``!nvidia-smi``) are left out."""
    cells = json.loads(path.read_text())["cells"]
    return [
        (
            cell["metadata"].get("tags", []),
            "".join(line for line in cell["source"] if not line.lstrip().startswith(("%", "!"))),
        )
        for cell in cells
        if cell["cell_type"] == "code"
    ]


@pytest.fixture
def image_folder(tmp_path):
    for split, count, seed in (("train", 24, 0), ("test", 8, 1)):
        for index, image in enumerate(random_images(count, seed=seed, size=(28, 28))):
            folder = tmp_path / "images" / split / ("horizontal" if index % 2 else "vertical")
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"{index}.png")
    return tmp_path / "images"


def test_notebook_runs_the_whole_flow(image_folder, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    pushed = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: SimpleNamespace(repo_id=repo_id))
    monkeypatch.setattr(
        HfApi,
        "upload_folder",
        lambda self, repo_id, folder_path, ignore_patterns=None, **kwargs: pushed.append(
            (repo_id, Path(folder_path).name, ignore_patterns)
        ),
    )
    cells = code_cells(NOTEBOOK)
    assert any("parameters" in tags for tags, _ in cells), "the settings cell must be tagged 'parameters'"
    namespace: dict = {}
    for tags, source in cells:
        exec(compile(source, f"{NOTEBOOK.name}", "exec"), namespace)
        if "parameters" in tags:  # tiny sizes, the generated image folder, a fake Hub
            namespace.update(
                WORK=tmp_path / "work",
                DATASET="imagefolder",
                DATA_DIR=str(image_folder),
                PRETRAIN_STEPS=2,
                BATCH_SIZE=8,
                FINETUNE_EPOCHS=1,
                KNN_SAMPLES=(16, 8),
                HUB_REPO="test-org/dino-nb",
                GPU=False,
            )
    assert {"random_init", "trained"} <= namespace["knn"].keys()
    assert "test_accuracy" in namespace["full"] and "test_accuracy" in namespace["probe"]
    work = tmp_path / "work"
    assert (work / "dino" / "backbone" / "model.safetensors").is_file() and (
        work / "finetune" / "model.safetensors"
    ).is_file()
    assert [(repo, folder) for repo, folder, _ in pushed] == [
        ("test-org/dino-nb", "dino"),
        ("test-org/dino-nb-finetuned", "finetune"),
    ]
    assert all("checkpoint-*" in patterns for _, _, patterns in pushed)
