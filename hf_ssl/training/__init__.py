"""Training machinery shared by every method, a room per job: ``engines/`` (the Trainer and the Accelerate loop
on one base), ``methods/`` (the method interface and each method's step), ``optim/`` (optimisers, schedules, EMA),
``state/`` (checkpoints, run control, history), ``sharing/`` (outputs, model cards, the Hub) and ``setup/`` (recipes,
YAML and the command line). The names below are imported on first use."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hf_ssl._lazy import lazy_exports

_EXPORTS = {
    "AccelerateTrainer": "hf_ssl.training.engines.accelerate_loop",
    "build_trainer": "hf_ssl.training.engines.accelerate_loop",
    "SslTrainer": "hf_ssl.training.engines.trainer",
    "PretrainingEngine": "hf_ssl.training.engines.base",
    "EmaCallback": "hf_ssl.training.engines.callbacks",
    "MethodStepCallback": "hf_ssl.training.engines.callbacks",
    "EvaluationCallback": "hf_ssl.training.engines.evaluation",
    "PeriodicEvaluation": "hf_ssl.training.engines.evaluation",
    "ValidationLoss": "hf_ssl.training.engines.validation",
    "EmaTeacherArguments": "hf_ssl.training.arguments",
    "PretrainingArguments": "hf_ssl.training.arguments",
    "ConfigError": "hf_ssl.errors",
    "NonFiniteLossError": "hf_ssl.errors",
    "EmaTeacherMethod": "hf_ssl.training.methods",
    "MethodSpec": "hf_ssl.training.methods",
    "PretrainingMethod": "hf_ssl.training.methods",
    "Schedules": "hf_ssl.training.methods",
    "get_method": "hf_ssl.training.methods",
    "register_method": "hf_ssl.training.methods",
    "registered_methods": "hf_ssl.training.methods",
    "ByolMethod": "hf_ssl.training.methods.byol",
    "ByolTrainingArguments": "hf_ssl.training.methods.byol",
    "ByolViewConfig": "hf_ssl.training.methods.byol",
    "DinoMethod": "hf_ssl.training.methods.dino",
    "DinoSchedules": "hf_ssl.training.methods.dino",
    "DinoTrainingArguments": "hf_ssl.training.methods.dino",
    "HJepaMethod": "hf_ssl.training.methods.hjepa",
    "HJepaTrainingArguments": "hf_ssl.training.methods.hjepa",
    "IJepaMethod": "hf_ssl.training.methods.ijepa",
    "IJepaTrainingArguments": "hf_ssl.training.methods.ijepa",
    "IJepaViewConfig": "hf_ssl.training.methods.ijepa",
    "SimClrMethod": "hf_ssl.training.methods.simclr",
    "SimClrTrainingArguments": "hf_ssl.training.methods.simclr",
    "SimClrViewConfig": "hf_ssl.training.methods.simclr",
    "VicRegMethod": "hf_ssl.training.methods.vicreg",
    "VicRegTrainingArguments": "hf_ssl.training.methods.vicreg",
    "VicRegViewConfig": "hf_ssl.training.methods.vicreg",
    "LARS": "hf_ssl.training.optim.optimizers",
    "build_optimizer": "hf_ssl.training.optim.optimizers",
    "ema_update_": "hf_ssl.training.optim.ema",
    "LinearWarmupConstantSchedule": "hf_ssl.training.optim.schedules",
    "WarmupCosineSchedule": "hf_ssl.training.optim.schedules",
    "scaled_learning_rate": "hf_ssl.training.optim.schedules",
    "EarlyStopping": "hf_ssl.training.state.run_control",
    "RunControl": "hf_ssl.training.state.run_control",
    "files_to_push": "hf_ssl.training.sharing.hub",
    "push_backbone": "hf_ssl.training.sharing.hub",
    "push_output_dir": "hf_ssl.training.sharing.hub",
    "push_run": "hf_ssl.training.sharing.hub",
    "parse_command_line": "hf_ssl.training.setup.cli",
    "DataArguments": "hf_ssl.training.setup.recipe",
    "EvaluationArguments": "hf_ssl.training.setup.recipe",
    "Recipe": "hf_ssl.training.setup.recipe",
    "RecipeData": "hf_ssl.training.setup.recipe",
}

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # what the names are, for type checkers and editors
    from hf_ssl.errors import ConfigError, NonFiniteLossError
    from hf_ssl.training.arguments import EmaTeacherArguments, PretrainingArguments
    from hf_ssl.training.engines.accelerate_loop import AccelerateTrainer, build_trainer
    from hf_ssl.training.engines.base import PretrainingEngine
    from hf_ssl.training.engines.trainer import SslTrainer
    from hf_ssl.training.methods import MethodSpec, PretrainingMethod, get_method, register_method
