"""The hook dispatcher: calls each hook at the steps its cadence declares, in its order, and
keeps the hooks' states by their `state_key`.

A hook says once when its `on_step` runs (`every`, `at_end`, `skip_last`, see `Hook`); no hook
counts steps itself. With `steps_per_call` > 1 the step jumps by that many, so "every N steps"
means "a multiple of N was crossed by the call".
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from paxtrain.errors import ArgumentError
from paxtrain.train.hooks import Hook, TrainerView

SHARED_STATE_KEY_MSG = (
    "two hooks save their state under the same key `{key}`, so a resume could not tell them "
    "apart: give them different arguments, or a `state_key` of their own."
)


def crossed(step: int, steps_done: int, every: int | None) -> bool:
    """Whether a multiple of `every` lies in (step - steps_done, step].

    Example:
        >>> crossed(12, 4, 10), crossed(8, 4, 10), crossed(8, 4, None)
        (True, False, False)
    """
    return bool(every) and step // every > (step - steps_done) // every


def due(hook: Hook, step: int, steps_done: int, max_steps: int) -> bool:
    """Whether `hook.on_step` runs after the call that brought the run to `step`.

    Example:
        >>> hook = Hook()
        >>> hook.every, hook.at_end = 10, True
        >>> [s for s in range(1, 26) if due(hook, s, 1, 25)]
        [10, 20, 25]
    """
    last = step >= max_steps
    if last and hook.skip_last:
        return False
    return crossed(step, steps_done, hook.every) or (last and hook.at_end)


class HookList:
    """The trainer's hooks in the order they run: as added, except that hooks with a larger
    `order` run after (the checkpoint after what it records, the plot after the final save).

    Example:
        >>> hooks = HookList([Hook()])
        >>> len(hooks)
        1
    """

    def __init__(self, hooks: Iterable[Hook] = ()):
        self._hooks: list[Hook] = []
        for hook in hooks:
            self.add(hook)

    def add(self, hook: Hook) -> None:
        """Adds `hook` after the hooks of its `order` or lower; refuses a shared `state_key`."""
        if hook.has_state:
            keys = {h.state_key for h in self._hooks if h.has_state}
            if hook.state_key in keys:
                raise ArgumentError("hooks", SHARED_STATE_KEY_MSG.format(key=hook.state_key))
        at = sum(1 for h in self._hooks if h.order <= hook.order)
        self._hooks.insert(at, hook)

    def remove(self, hook: Hook) -> None:
        """Removes `hook`."""
        self._hooks.remove(hook)

    def extend(self, hooks: Iterable[Hook]) -> None:
        """Adds each of `hooks` (see `add`)."""
        for hook in hooks:
            self.add(hook)

    def __iter__(self) -> Iterator[Hook]:
        return iter(self._hooks)

    def __len__(self) -> int:
        return len(self._hooks)

    def run(self, event: str, view: TrainerView, *args: Any) -> None:
        """Calls `event` (`on_train_start`, `on_log`...) of every hook this process runs."""
        for hook in self._hooks:
            if view.is_main_process or not hook.main_process_only:
                getattr(hook, event)(view, *args)

    def step_taken(self, view: TrainerView, metrics: dict[str, Any]) -> None:
        """After a step call: every hook's `on_step_taken`, and `on_step` where it is due."""
        step, done, last = view.step, view.steps_per_call, view.max_steps
        for hook in self._hooks:
            if view.is_main_process or not hook.main_process_only:
                hook.on_step_taken(view, metrics)
                if due(hook, step, done, last):
                    hook.on_step(view, metrics)

    def state_dicts(self) -> dict[str, Any]:
        """Each hook's `state_dict()` by its `state_key` (hooks with none are left out).

        Example:
            >>> from paxtrain.train.hooks import EarlyStopping
            >>> HookList([EarlyStopping("loss")]).state_dicts()
            {'EarlyStopping{monitor=eval/loss,mode=min}': {'best': None, 'bad_evals': 0}}
        """
        return {hook.state_key: hook.state_dict() for hook in self._hooks if hook.has_state}

    def load_state_dicts(self, states: dict[str, Any]) -> None:
        """Gives each hook the state saved under its `state_key`; checkpoints of earlier
        versions saved them by class name, numbered when repeated (`EarlyStopping#1`), which
        is read as such.

        Example:
            >>> from paxtrain.train.hooks import EarlyStopping
            >>> stopper = EarlyStopping("loss")
            >>> HookList([stopper]).load_state_dicts({"EarlyStopping": {"best": 1.5, "bad_evals": 2}})
            >>> stopper.best, stopper.bad_evals
            (1.5, 2)
        """
        for hook in self._hooks:
            if not hook.has_state:
                continue
            key = hook.state_key if hook.state_key in states else self._positional_key(hook)
            if key in states:
                hook.load_state_dict(states[key])

    def _positional_key(self, hook: Hook) -> str:
        """The key checkpoints saved before `state_key`: the class name, `#i` for the i-th
        hook of that class (i > 0) among those with a state."""
        same = [h for h in self._hooks if type(h) is type(hook) and h.has_state]
        index = same.index(hook)
        return type(hook).__name__ + (f"#{index}" if index else "")
