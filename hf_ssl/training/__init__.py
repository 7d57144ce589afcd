"""Training machinery shared by every method: the two engines, the method interface, schedules, EMA,
optimizers, checkpoints and recipe configuration."""

from hf_ssl.training.accelerate_loop import AccelerateTrainer, build_trainer
from hf_ssl.training.arguments import EmaTeacherArguments, PretrainingArguments
from hf_ssl.training.callbacks import EmaCallback, MethodStepCallback
from hf_ssl.training.cli import parse_command_line
from hf_ssl.training.config import ConfigError
from hf_ssl.training.ema import ema_update_
from hf_ssl.training.hub import files_to_push, push_backbone, push_output_dir, push_run
from hf_ssl.training.knn_callback import KnnCallback
from hf_ssl.training.methods import (
    EmaTeacherMethod,
    MethodSpec,
    NonFiniteLossError,
    PretrainingMethod,
    Schedules,
    get_method,
    register_method,
    registered_methods,
)
from hf_ssl.training.methods.byol import ByolMethod, ByolTrainingArguments, ByolViewConfig
from hf_ssl.training.methods.dino import DinoMethod, DinoSchedules, DinoTrainingArguments
from hf_ssl.training.methods.hjepa import HJepaMethod, HJepaTrainingArguments
from hf_ssl.training.methods.ijepa import IJepaMethod, IJepaTrainingArguments, IJepaViewConfig
from hf_ssl.training.optimizers import LARS, build_optimizer
from hf_ssl.training.methods.simclr import SimClrMethod, SimClrTrainingArguments, SimClrViewConfig
from hf_ssl.training.methods.vicreg import VicRegMethod, VicRegTrainingArguments, VicRegViewConfig
from hf_ssl.training.recipe import (
    ByolRecipe,
    DataArguments,
    DinoRecipe,
    EvaluationArguments,
    HJepaRecipe,
    IJepaRecipe,
    Recipe,
    RecipeData,
    SimClrRecipe,
    VicRegRecipe,
)
from hf_ssl.training.run_control import EarlyStopping, RunControl
from hf_ssl.training.schedules import LinearWarmupConstantSchedule, WarmupCosineSchedule, scaled_learning_rate
from hf_ssl.training.trainer import SslTrainer
from hf_ssl.training.validation import ValidationCallback, ValidationLoss

__all__ = [
    "LARS",
    "AccelerateTrainer",
    "ByolMethod",
    "ByolRecipe",
    "ByolTrainingArguments",
    "ByolViewConfig",
    "ConfigError",
    "DataArguments",
    "DinoMethod",
    "DinoRecipe",
    "DinoSchedules",
    "DinoTrainingArguments",
    "EarlyStopping",
    "EmaCallback",
    "EmaTeacherArguments",
    "EmaTeacherMethod",
    "EvaluationArguments",
    "HJepaMethod",
    "HJepaRecipe",
    "HJepaTrainingArguments",
    "IJepaMethod",
    "IJepaRecipe",
    "IJepaTrainingArguments",
    "IJepaViewConfig",
    "KnnCallback",
    "LinearWarmupConstantSchedule",
    "MethodSpec",
    "MethodStepCallback",
    "NonFiniteLossError",
    "PretrainingArguments",
    "PretrainingMethod",
    "Recipe",
    "RecipeData",
    "RunControl",
    "Schedules",
    "SimClrMethod",
    "SimClrRecipe",
    "SimClrTrainingArguments",
    "SimClrViewConfig",
    "SslTrainer",
    "ValidationCallback",
    "ValidationLoss",
    "VicRegMethod",
    "VicRegRecipe",
    "VicRegTrainingArguments",
    "VicRegViewConfig",
    "WarmupCosineSchedule",
    "build_optimizer",
    "build_trainer",
    "ema_update_",
    "files_to_push",
    "get_method",
    "parse_command_line",
    "push_backbone",
    "push_output_dir",
    "push_run",
    "register_method",
    "registered_methods",
    "scaled_learning_rate",
]
