"""Training: the state, the jitted step and its options, the `Trainer` loop and its hooks."""

from paxtrain.train.builtin_hooks import default_hooks
from paxtrain.train.hooks import EarlyStopping, EveryN, Hook, TrainerView
from paxtrain.train.monitor import Monitor
from paxtrain.train.nonfinite import skip_nonfinite
from paxtrain.train.options import StepOption, ema_of_parameters
from paxtrain.train.precision import dynamic_loss_scale
from paxtrain.train.settings import Layout, StepSettings
from paxtrain.train.state import TrainState
from paxtrain.train.step import TrainStep, make_eval_step, make_train_step
from paxtrain.train.trainer import Trainer

__all__ = [
    "EarlyStopping",
    "EveryN",
    "Hook",
    "Layout",
    "Monitor",
    "StepOption",
    "StepSettings",
    "TrainState",
    "TrainStep",
    "Trainer",
    "TrainerView",
    "default_hooks",
    "dynamic_loss_scale",
    "ema_of_parameters",
    "make_eval_step",
    "make_train_step",
    "skip_nonfinite",
]
