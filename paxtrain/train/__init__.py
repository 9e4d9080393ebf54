"""Training: the state, the jitted step and its options, the `Trainer` loop and its hooks."""

from paxtrain.train.hooks import EarlyStopping, EveryN, Hook
from paxtrain.train.nonfinite import skip_nonfinite
from paxtrain.train.options import StepOption, ema_of_parameters
from paxtrain.train.precision import dynamic_loss_scale
from paxtrain.train.state import TrainState
from paxtrain.train.step import TrainStep, make_eval_step, make_train_step
from paxtrain.train.trainer import Trainer

__all__ = [
    "EarlyStopping",
    "EveryN",
    "Hook",
    "StepOption",
    "TrainState",
    "TrainStep",
    "Trainer",
    "dynamic_loss_scale",
    "ema_of_parameters",
    "make_eval_step",
    "make_train_step",
    "skip_nonfinite",
]
