"""Training machinery: the DINO Trainer, its callbacks, schedules, EMA and recipe configuration."""

from hf_ssl.training.callbacks import DinoStepCallback, EmaCallback
from hf_ssl.training.config import ConfigError
from hf_ssl.training.dino_step import DinoStep
from hf_ssl.training.dino_trainer import DinoSchedules, DinoTrainer, DinoTrainingArguments, parameter_groups
from hf_ssl.training.ema import ema_update_
from hf_ssl.training.knn_callback import KnnCallback
from hf_ssl.training.recipe import DataArguments, DinoRecipe, EvaluationArguments
from hf_ssl.training.schedules import LinearWarmupConstantSchedule, WarmupCosineSchedule, scaled_learning_rate

__all__ = [
    "ConfigError",
    "DataArguments",
    "DinoRecipe",
    "DinoSchedules",
    "DinoStep",
    "DinoStepCallback",
    "DinoTrainer",
    "DinoTrainingArguments",
    "EmaCallback",
    "EvaluationArguments",
    "KnnCallback",
    "LinearWarmupConstantSchedule",
    "WarmupCosineSchedule",
    "ema_update_",
    "parameter_groups",
    "scaled_learning_rate",
]
