"""training.torch_compile on both engines: the compiled run gives the eager run's weights (float tolerance;
inductor fuses and reorders float operations). Slow on CPU: the first compile takes about a minute."""

import pytest
import torch
from accelerate.utils import is_compiled_module
from datasets import Dataset

from hf_ssl import DinoForPretraining
from tests.helpers import make_dino_trainer, random_images, tiny_dino_config


def final_weights(tmp_path, engine, compiled):
    torch.manual_seed(0)
    model = DinoForPretraining(tiny_dino_config())
    trainer = make_dino_trainer(
        tmp_path / f"{engine}-{compiled}", Dataset.from_dict({"image": random_images(16)}), engine=engine, model=model,
        max_steps=3, torch_compile=compiled,
    )
    trainer.train()
    wrapped = trainer.model_wrapped if engine == "trainer" else trainer.wrapped_model
    assert is_compiled_module(wrapped) == compiled
    return model.state_dict()


@pytest.mark.slow
def test_compiled_engines_match_the_eager_run(tmp_path):
    eager = final_weights(tmp_path, "accelerate", False)
    for engine in ("accelerate", "trainer"):  # the second compile reuses the first one's kernels
        compiled = final_weights(tmp_path, engine, True)
        for name in eager:
            torch.testing.assert_close(compiled[name], eager[name], rtol=1e-4, atol=1e-4, msg=f"{engine}: {name}")
