"""The training loop, its steps, callbacks and optimizers."""

from deepworks.config import bind_component
from deepworks.training.callbacks import Callback, EarlyStopping, ProgressLogger
from deepworks.training.optim import OPTIMIZERS, build_optimizer
from deepworks.training.schedules import SCHEDULES, build_schedule
from deepworks.training.step import eval_step, train_step
from deepworks.training.tasks import TASKS, Classification, Regression, Task
from deepworks.training.tensorboard import TensorBoardLogger
from deepworks.training.tracking import MlflowTracker, Tracker
from deepworks.training.trainer import Trainer, load_model_weights

bind_component(("train", "optimizer"), OPTIMIZERS)
bind_component(("train", "schedule"), SCHEDULES)
bind_component(("gan", "d_optimizer"), OPTIMIZERS)

__all__ = [
    "Trainer",
    "Callback",
    "EarlyStopping",
    "ProgressLogger",
    "TensorBoardLogger",
    "Tracker",
    "MlflowTracker",
    "OPTIMIZERS",
    "build_optimizer",
    "SCHEDULES",
    "build_schedule",
    "train_step",
    "eval_step",
    "load_model_weights",
    "TASKS",
    "Task",
    "Classification",
    "Regression",
]
