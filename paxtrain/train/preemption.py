"""Graceful stops on preemption signals: finish the step, save, flush, exit with a known code."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import jax
from jax.experimental import multihost_utils

from paxtrain.train.hooks import Hook, TrainerView

DEFAULT_PREEMPTION_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")

# EX_TEMPFAIL from sysexits.h: "try again later", which is what a preempted job should do.
PREEMPTED_EXIT_CODE = 75

STOPPING_MSG = (
    "paxtrain: {name}: stopping after this step and saving a checkpoint; press Ctrl-C (or send "
    "the signal) again to exit as soon as the checkpoint is saved."
)
HURRY_MSG = "paxtrain: {name} again: exiting as soon as the checkpoint is saved (kill -9 aborts)."
BEFORE_TRAINING_MSG = (
    "paxtrain: {name} before training started: nothing to save. Run the same command again."
)


class PreemptedBeforeTraining(BaseException):
    """A preemption signal arrived while the run was being set up (`before_training`).

    A BaseException, like KeyboardInterrupt, so that no `except Exception` swallows it.
    """

    def __init__(self, name: str):
        super().__init__(BEFORE_TRAINING_MSG.format(name=name))
        self.signal_name = name


class _Received:
    """The first preemption signal `before_training` recorded and nobody has acted on yet,
    whether training started (`stop_on_signals`) since it began, and how many are active."""

    name: str | None = None
    trained = False
    depth = 0
    # The signals an outer `before_training` handles: an inner one leaves them alone, since
    # installing a handler again would also displace one native code put in since (the SIGTERM
    # handler of JAX's preemption service, installed when the processes joined).
    handled: frozenset[str] = frozenset()


@contextlib.contextmanager
def before_training(names: Iterable[str] = DEFAULT_PREEMPTION_SIGNALS) -> Iterator[None]:
    """While active, the named signals are recorded, and `raise_if_signalled` raises
    `PreemptedBeforeTraining` (exit code 75 on the command line) at the next safe point of the
    start-up (the data and the state built, the checkpoint restored, training about to start):
    a signal while data and model are built has nothing to save. The trainer's
    `stop_on_signals` takes over once training starts, and acts on a signal recorded before.

    The handler only records: an exception raised in a signal handler surfaces wherever the
    main thread happens to be, which may be a garbage-collection callback (JAX's) or a
    `__del__`, where Python prints "Exception ignored" and drops it. A second signal (Ctrl-C
    pressed again) raises at once, for start-up work that reaches no safe point soon.

    Nested, the inner one adds its signals (a run's configured `preemption_signals`, known
    once its config is read) to the outer one's record. Names that are no signal are left to
    the trainer, which refuses them.

    Example:
        >>> with before_training():
        ...     raise_if_signalled()  # no signal yet: goes on
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outermost = _Received.depth == 0
    if outermost:
        _Received.name, _Received.trained = None, False

    def handle(number: int, frame: Any) -> None:
        name = signal.Signals(number).name
        if _Received.name is not None:
            raise PreemptedBeforeTraining(_Received.name)
        _Received.name = name

    added = [n for n in names if _python_may_handle(n) and n not in _Received.handled]
    outer_handled, _Received.handled = _Received.handled, _Received.handled | set(added)
    _Received.depth += 1
    try:
        with _handling(added, handle):
            yield
            # A command without training (eval, data...) ends here: the signal it ran through
            # still ends in exit 75. After a training, the run's own exit code stands.
            if outermost and not _Received.trained:
                raise_if_signalled()
    finally:
        _Received.depth -= 1
        _Received.handled = outer_handled
        if outermost:
            _Received.name = None


def _python_may_handle(name: str) -> bool:
    """Whether `name` is a signal whose handler Python may take over: not one that native code
    installed before Python looked (`signal.getsignal` is None), which must keep seeing it.

    Example:
        >>> _python_may_handle("SIGTERM"), _python_may_handle("SIGFOO")
        (True, False)
    """
    number = getattr(signal, name, None)
    return isinstance(number, signal.Signals) and signal.getsignal(number) is not None


def raise_if_signalled() -> None:
    """Raises `PreemptedBeforeTraining` if a preemption signal arrived during the start-up
    (`before_training`); a safe point, called between the steps of the start-up.

    Example:
        >>> raise_if_signalled()  # no signal: returns
    """
    name, _Received.name = _Received.name, None
    if name is not None:
        raise PreemptedBeforeTraining(name)


def _say(text: str) -> None:
    """Prints from a signal handler: never raises (a handler that raises ends up somewhere in
    the main thread), e.g. when the signal came while the main thread itself was printing."""
    try:
        print(text, flush=True)
    except (RuntimeError, OSError, ValueError):  # a reentrant call into stdout's buffer
        with contextlib.suppress(OSError):
            os.write(1, f"{text}\n".encode())


@contextlib.contextmanager
def stop_on_signals(trainer: TrainerView, names: Iterable[str]) -> Iterator[None]:
    """While active, the named signals ask `trainer` (the trainer's view) to stop after its
    current step.

    The handler only records the request: the step in flight (even one being compiled) runs
    to completion, then the loop ends and the end-of-training hooks save and flush. Repeated
    signals never interrupt the save: they call `trainer.hurry_up()`, which skips what comes after
    the checkpoint (the plot). SIGKILL remains the way to abort without saving.

    On several processes a signal reaches the hosts at different moments, but the final save
    is collective: they must all stop after the same step. There JAX's preemption service
    decides (`multihost_utils.reached_preemption_sync_point`): a SIGTERM to any process (the
    others' signals are passed on as one) is shared with every process, which all stop at the
    first step that none has passed yet.

    Example:
        >>> with stop_on_signals(trainer, ["SIGTERM"]):  # doctest: +SKIP
        ...     trainer._loop()
    """
    names = tuple(names)
    _Received.trained = True
    if threading.current_thread() is not threading.main_thread():
        warnings.warn("Not in the main thread: preemption signals are not handled.", stacklevel=3)
        yield
    elif preemption_service_active():
        with _stop_all_processes(trainer, names):
            raise_if_signalled()  # recorded during the start-up: nothing trained to save
            yield
    else:
        with _stop_this_process(trainer, names):
            raise_if_signalled()
            yield


def preemption_service_active() -> bool:
    """Whether this is one of several processes joined by `jax.distributed` with JAX's
    preemption service on (`jax_enable_preemption_service`, the default).

    Example:
        >>> preemption_service_active()  # a single process
        False
    """
    return (
        jax.distributed.is_initialized()
        and jax.process_count() > 1
        and bool(jax.config.jax_enable_preemption_service)
    )


class PreemptionSync(Hook):
    """Stops the trainer at the step JAX's preemption service picks for every process.

    `reached_preemption_sync_point` takes one id per step, the same on every process, one
    more each time: the service picks the largest id any process passed last, plus one. The
    ids are the step numbers, one per step of a `steps_per_call` group, because Orbax asks the
    same service at every save with the step it saves (`CheckpointManager.save`): with ids
    of another count (calls since start-up, 0 again after a resume) a notice arriving just
    after a save picked a step the loop would not reach, and the run kept training.
    """

    def on_step(self, view: TrainerView, metrics: Any) -> None:
        first = view.step - view.steps_per_call + 1
        steps = range(first, view.step + 1)
        reached = [multihost_utils.reached_preemption_sync_point(step) for step in steps]
        if any(reached):
            view.preempt(OTHER_PROCESS)
            view.stop(f"preempted by {view.preempted}")


# What `trainer.preempted` says when JAX's preemption service stopped the run: SIGTERM reaches
# its own handler, not Python's, so no process knows more.
OTHER_PROCESS = "a preemption notice (SIGTERM to one of the processes)"


@contextlib.contextmanager
def _stop_all_processes(trainer: TrainerView, names: tuple[str, ...]) -> Iterator[None]:
    # SIGTERM stays with the handler JAX's preemption service installed when the processes
    # joined; the other signals are passed on to it as a SIGTERM.
    others = [getattr(signal, name) for name in names if name != "SIGTERM"]
    previous = {number: signal.getsignal(number) for number in others}

    def handle(number: int, frame: Any) -> None:
        name = signal.Signals(number).name
        trainer.preempt(name)
        if trainer.is_main_process:
            _say(STOPPING_ALL_MSG.format(name=name))
        os.kill(os.getpid(), signal.SIGTERM)

    sync = PreemptionSync()
    trainer.add_hook(sync)
    for number in others:
        signal.signal(number, handle)
    try:
        yield
    finally:
        trainer.remove_hook(sync)
        for number, handler in previous.items():
            signal.signal(number, handler)


STOPPING_ALL_MSG = (
    "paxtrain: {name}: every process stops at the step JAX's preemption service picks and saves "
    "a checkpoint."
)


@contextlib.contextmanager
def _handling(names: Iterable[str], handle: Any) -> Iterator[None]:
    """`handle` for the named signals while inside; the previous handlers afterwards."""
    numbers = [getattr(signal, name) for name in names]
    previous = {number: signal.getsignal(number) for number in numbers}
    for number in numbers:
        signal.signal(number, handle)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@contextlib.contextmanager
def _stop_this_process(trainer: TrainerView, names: Iterable[str]) -> Iterator[None]:

    def handle(number: int, frame: Any) -> None:
        name = signal.Signals(number).name
        again = trainer.preempted is not None
        if again:
            trainer.hurry_up()
        else:
            trainer.preempt(name)
            trainer.stop(f"preempted by {name}")  # the loop names the step it ended at
        if trainer.is_main_process:
            _say((HURRY_MSG if again else STOPPING_MSG).format(name=name))

    with _handling(names, handle):
        yield
