"""Training machinery: the DINO Trainer, its callbacks, schedules, EMA and recipe configuration."""

from hf_ssl.training.callbacks import DinoStepCallback, EmaCallback
from hf_ssl.training.cli import parse_command_line
from hf_ssl.training.config import ConfigError
from hf_ssl.training.dino_accelerate import DinoAccelerateTrainer, build_dino_trainer
from hf_ssl.training.dino_step import DinoStep
from hf_ssl.training.dino_trainer import DinoSchedules, DinoTrainer, DinoTrainingArguments, parameter_groups
from hf_ssl.training.ema import ema_update_
from hf_ssl.training.knn_callback import KnnCallback
from hf_ssl.training.run_control import EarlyStopping, RunControl
from hf_ssl.training.recipe import DataArguments, DinoRecipe, EvaluationArguments
from hf_ssl.training.schedules import LinearWarmupConstantSchedule, WarmupCosineSchedule, scaled_learning_rate

__all__ = [
    "ConfigError",
    "DataArguments",
    "DinoAccelerateTrainer",
    "DinoRecipe",
    "DinoSchedules",
    "DinoStep",
    "DinoStepCallback",
    "DinoTrainer",
    "DinoTrainingArguments",
    "EarlyStopping",
    "EmaCallback",
    "EvaluationArguments",
    "KnnCallback",
    "LinearWarmupConstantSchedule",
    "RunControl",
    "WarmupCosineSchedule",
    "build_dino_trainer",
    "ema_update_",
    "parameter_groups",
    "parse_command_line",
    "scaled_learning_rate",
]
