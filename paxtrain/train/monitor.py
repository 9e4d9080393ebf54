"""`Monitor`: the eval metric that early stopping and best-checkpoint ranking watch.

One rule for its name: "loss" and "eval/loss" are the same metric. Evaluation reports metrics
without the prefix (`metrics["loss"]`); logs and checkpoints record them with it
(`eval/loss`), so a `Monitor` has both spellings and nothing else strips or adds the prefix.
"""

from __future__ import annotations

import dataclasses

from paxtrain.errors import ArgumentError

EVAL_PREFIX = "eval/"

MODE_MSG = "mode must be 'min' or 'max' (which is better for `{metric}`), got {mode!r}."
EMPTY_MSG = "monitor names no metric: give an eval metric, e.g. monitor='eval/loss'."


@dataclasses.dataclass(frozen=True)
class Monitor:
    """An eval metric and which way is better.

    Args:
      metric: with or without the `eval/` prefix ("loss" and "eval/loss" are one metric).
      mode: "min" or "max".

    Example:
        >>> Monitor("loss") == Monitor("eval/loss")
        True
        >>> Monitor("loss").key, Monitor("eval/loss").name
        ('eval/loss', 'loss')
        >>> Monitor("accuracy", "max").sign
        -1.0
    """

    metric: str
    mode: str = "min"

    def __post_init__(self) -> None:
        name = self.metric.removeprefix(EVAL_PREFIX)
        if not name:
            raise ArgumentError("monitor", EMPTY_MSG)
        if self.mode not in ("min", "max"):
            raise ArgumentError("mode", MODE_MSG.format(metric=self.metric, mode=self.mode))
        object.__setattr__(self, "metric", name)

    @property
    def name(self) -> str:
        """The name evaluation reports (`metrics[name]`), without the prefix."""
        return self.metric

    @property
    def key(self) -> str:
        """The name logs and checkpoints record, with the `eval/` prefix."""
        return EVAL_PREFIX + self.metric

    @property
    def sign(self) -> float:
        """+1 for "min", -1 for "max": `sign * value` is smaller when better."""
        return 1.0 if self.mode == "min" else -1.0

