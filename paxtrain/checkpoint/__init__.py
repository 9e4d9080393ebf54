"""Checkpoints: the store every road into a checkpoint directory goes through, the integrity
records that detect damage, and loading parameters for fine-tuning.

    >>> from paxtrain.checkpoint import CheckpointManager, flatten_state
    >>> list(flatten_state({"a": [1, 2]}))
    ['a.0', 'a.1']
"""

from paxtrain.checkpoint.finetune import freeze_by_path, load_parameters
from paxtrain.checkpoint.store import CheckpointManager, flatten_state, open_checkpoints
from paxtrain.errors import CheckpointError

__all__ = [
    "CheckpointError",
    "CheckpointManager",
    "flatten_state",
    "freeze_by_path",
    "load_parameters",
    "open_checkpoints",
]
