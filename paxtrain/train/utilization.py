"""`Utilization`: model FLOPs utilisation, tokens/s per device and memory, logged as `perf/*`.

    perf/mfu                       model FLOP/s over the devices' peak (when the peak is known)
    perf/tokens_per_s_per_device   tokens/s over the devices (data that counts tokens)
    perf/memory_in_use_gib         the largest device's `memory_stats()`; on CPU the process RSS
    perf/memory_peak_gib           the same, the peak so far

Model FLOPs per step come from the trainer (`Trainer.model_info`: the model's formula
or its jaxpr's matmuls, see `telemetry.flops`); the peak from `peak_flops.PEAK_TFLOPS` by device
kind and compute dtype, or `peak_tflops`. The clock starts after the first step call, which
compiles, so the first MFU is the step's, not the compiler's; evaluations and checkpoints
(`train.pauses`) are left out of the time.
"""

from __future__ import annotations

import time

import jax

from paxtrain.errors import ArgumentError
from paxtrain.telemetry.memory import memory_in_use
from paxtrain.telemetry.peak_flops import peak_flops
from paxtrain.train import pauses
from paxtrain.train.hooks import Hook, TrainerView, check_at_least_one

NO_PEAK_MSG = (
    "paxtrain: no peak FLOP/s known for {kind} ({dtype}), so no perf/mfu: set "
    "`trainer.peak_tflops` (TFLOP/s per device) to log it."
)
PEAK_MSG = "peak_tflops is {value}; it must be positive, e.g. peak_tflops=989.0."
PARAMETERS_MSG = (
    "paxtrain: {count:,} parameters{trainable}; {flops:.4g} model FLOPs per step ({source})"
)
FIRST_MFU_MSG = "paxtrain: step {step}: MFU {mfu:.1%} ({flops:.3g} model FLOP/s per device)"


class Utilization(Hook):
    """Logs `perf/mfu`, `perf/tokens_per_s_per_device` and the memory every `every` steps;
    prints the parameter count at the start and the first MFU.

    Args:
      every: steps between logs (the trainer's `log_every`).
      peak_tflops: peak TFLOP/s of one device; None: from `PEAK_TFLOPS` (no MFU on a device
        that is not in it, such as a CPU).

    Example:
        >>> trainer.add_hook(Utilization(every=50, peak_tflops=989.0))  # doctest: +SKIP
    """

    at_end = True

    def __init__(self, every: int, peak_tflops: float | None = None):
        check_at_least_one("log_every", every, 50)
        if peak_tflops is not None and peak_tflops <= 0:
            raise ArgumentError("peak_tflops", PEAK_MSG.format(value=peak_tflops))
        self.every, self.peak_tflops = every, peak_tflops
        self._printed_mfu = False

    def on_train_start(self, view: TrainerView) -> None:
        info = view.model_info
        self._flops = info.flops_per_step
        self._devices = jax.device_count()
        device = jax.devices()[0]
        self._peak = peak_flops(device, info.compute_dtype, self.peak_tflops)
        self._start: float | None = None
        self._steps = 0
        if view.is_main_process:
            frozen = info.trainable != info.parameters  # fine-tuning, LoRA
            trainable = f" ({info.trainable:,} trainable)" if frozen else ""
            count, source = info.parameters, info.flops_source
            print(
                PARAMETERS_MSG.format(
                    count=count, trainable=trainable, flops=self._flops, source=source
                ),
                flush=True,
            )
            if self._peak is None and device.platform != "cpu":  # a CPU's MFU is rarely wanted
                print(NO_PEAK_MSG.format(kind=device.device_kind, dtype=info.compute_dtype))

    def on_step_taken(self, view: TrainerView, metrics: dict[str, jax.Array]) -> None:
        if self._start is None:  # the first call compiled: time from its end
            jax.block_until_ready(metrics)
            self._start, self._paused = time.perf_counter(), pauses.total_seconds()
            return
        self._steps += view.steps_per_call

    def on_step(self, view: TrainerView, metrics: dict[str, jax.Array]) -> None:
        scalars = {f"perf/{k}": v for k, v in memory_in_use().items()}
        if self._steps:
            jax.block_until_ready(metrics)
            paused = pauses.total_seconds() - self._paused  # evaluations, checkpoints
            steps_per_s = self._steps / (time.perf_counter() - self._start - paused)
            if view.tokens_per_step:
                per_device = steps_per_s * view.tokens_per_step / self._devices
                scalars["perf/tokens_per_s_per_device"] = per_device
            flops_per_device = steps_per_s * self._flops / self._devices
            if self._peak is not None:
                scalars["perf/mfu"] = flops_per_device / self._peak
                if not self._printed_mfu and view.is_main_process:
                    mfu = scalars["perf/mfu"]
                    print(FIRST_MFU_MSG.format(step=view.step, mfu=mfu, flops=flops_per_device))
                    self._printed_mfu = True
            self._start, self._steps = time.perf_counter(), 0
            self._paused = pauses.total_seconds()
        view.log(scalars)
