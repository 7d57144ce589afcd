"""training.activation_checkpointing (less activation memory for many crops) on both engines: the backbone
layers recompute their activations in backward, and the run ends with the same weights as without."""

import pytest
import torch
from datasets import Dataset

from hf_ssl import DinoForPreTraining
from tests.helpers import make_dino_trainer, random_images, tiny_dino_config


def final_weights(tmp_path, engine, checkpointing):
    torch.manual_seed(0)
    model = DinoForPreTraining(tiny_dino_config())
    trainer = make_dino_trainer(
        tmp_path / f"{engine}-{checkpointing}",
        Dataset.from_dict({"image": random_images(16)}),
        engine=engine,
        model=model,
        max_steps=3,
        activation_checkpointing=checkpointing,
    )
    trainer.train()
    layers = list(model.student.backbone.layers)
    assert all(layer.gradient_checkpointing == checkpointing for layer in layers)
    return model.state_dict()


@pytest.mark.parametrize("engine", ["trainer", "accelerate"])
def test_activation_checkpointing_gives_the_same_run(engine, tmp_path):
    plain = final_weights(tmp_path, engine, False)
    recomputed = final_weights(tmp_path, engine, True)
    for name in plain:
        torch.testing.assert_close(recomputed[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)
