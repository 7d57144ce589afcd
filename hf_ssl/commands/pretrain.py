"""The command line of pretraining: ``hf-ssl pretrain``, ``recipes/pretrain.py`` and ``recipes/train_<method>.py``.

    hf-ssl pretrain --config recipes/simclr_fashion_mnist_demo.yaml
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml recipes/pretrain.py \\
        --config recipes/dino.yaml data.data_dir=/path/to/images --output_dir outputs/run1

Every key of the YAML file can be overridden as section.key=value (or --key value for a key only one
section has, e.g. --max_steps 100); --help lists them all. Checkpoints go to <output_dir>/checkpoint-<step>;
--resume auto continues from the latest (SIGTERM/SIGINT and training.max_time_seconds save one and stop);
--resume hub first fetches last-checkpoint/ of the run's Hub repository (training.hub_strategy=checkpoint pushes it).
The output directory receives the hf_ssl model (AutoModelForPreTraining / AutoModel), the evaluated backbone
as a plain transformers model in backbone/, the image processor, the resolved recipe.yaml and a model card;
training.push_to_hub=true uploads them (hf-ssl push OUTPUT_DIR does it later, or again), and
training.push_backbone_to_hub=ORG/NAME the backbone alone.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import transformers

from hf_ssl.errors import BandLayoutError, ConfigError, NonFiniteLossError
from hf_ssl.training.engines.base import end_process_group
from hf_ssl.training.pretrain import run_pretraining
from hf_ssl.training.setup.cli import parse_command_line
from hf_ssl.training.sharing.outputs import RunOutputError
from hf_ssl.training.state.checkpointing import CheckpointSaveError


def main(
    argv: Sequence[str] | None = None,
    method: str | None = None,
    description: str | None = None,
    prog: str | None = None,
) -> int:
    """Parse the command line into a recipe (``method``: None reads the method from the file's ``method:`` key; a
    name is taken for a file without one, and a file of another method is refused), run it, and return the exit code: 2
    for a recipe or command-line mistake (``error: ...`` on stderr, no traceback), 1 for a run that stopped on NaN/inf
    losses, a failed checkpoint save or a failed output step (the message says what is saved where), 0 otherwise."""
    try:
        recipe, resume = parse_command_line(argv, method=method, description=description or __doc__, prog=prog)
        logging.basicConfig(
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            level=logging.INFO if recipe.training.should_log else logging.WARNING,
        )
        transformers.utils.logging.set_verbosity_warning()
        run_pretraining(recipe, resume)
        end_process_group()  # every process got here: close the group so that none aborts at exit
    except (
        ConfigError,
        BandLayoutError,
    ) as error:  # a bad recipe, override, resume path or dataset: say what to fix, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (NonFiniteLossError, CheckpointSaveError, RunOutputError) as error:  # the message says what is saved where
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
