"""Multi-process training: `initialize_distributed`, `is_main_process`, `main_process_decides`.

Every process runs the same program on its own devices; `jax.distributed.initialize` connects
them, after which `jax.devices()` lists the devices of all processes and one mesh spans them.
Each process then places only its own rows of each batch (`shard_batch`, `process_batch_slice`)
and only the main process writes logs and files.

`initialize_distributed` must run before anything starts JAX's backends (any computation,
`jax.devices()`); importing paxtrain does not start them.

Tested with two processes on one machine (coordinator on 127.0.0.1, 2 CPU devices each): JAX
0.10's CPU backend runs cross-process collectives with gloo, and a train step sharded across the
processes (mesh data=2 x fsdp=2), as well as the pmap strategy, matches one device
(`tests/test_parallel.py`). Slurm, TPU pods and Open MPI are detected from their environment, as
JAX does, but none has been run from this repository.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils

# Set by `srun` for each task; JAX's Slurm detection reads all of them.
SLURM_VARIABLES = (
    "SLURM_JOB_ID",
    "SLURM_STEP_NODELIST",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_LOCALID",
)
GOOGLE_PCI_VENDOR = "0x1ae0"
EXPLICIT_VARIABLES = {
    "coordinator_address": "JAX_COORDINATOR_ADDRESS",
    "num_processes": "JAX_NUM_PROCESSES",
    "process_id": "JAX_PROCESS_ID",
}

MISSING_SETTINGS_MSG = """\
Multi-process training needs the coordinator's address, the number of processes and this \
process's id, but {missing} {verb} not given. Pass all three, \
`initialize_distributed(coordinator_address="host:1234", num_processes=2, process_id=0)`, or set \
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID; under Slurm, start one process per \
task with `srun` and set none of them."""

NOT_AN_INTEGER_MSG = "{name} must be an integer, got {value!r}."

PROCESS_ID_MSG = "process_id must be in [0, num_processes={num_processes}); got {process_id}."

SLURM_INCOMPLETE_MSG = """\
SLURM_NTASKS={ntasks} says this job runs {ntasks} processes, but {missing} {verb} not set: the \
program was started once, not once per task, so the other processes will never join. Start it \
with `srun` inside the sbatch script (see launch/slurm.sbatch)."""


@dataclasses.dataclass(frozen=True)
class DistributedSettings:
    """How `jax.distributed.initialize` is called: `source` is "explicit" (the three settings
    below), or "slurm", "tpu" or "mpi", where JAX reads them from the environment (None here)."""

    source: str
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


def _as_int(name: str, value: str | int | None) -> int | None:
    try:
        return None if value is None else int(value)
    except ValueError:
        raise ValueError(NOT_AN_INTEGER_MSG.format(name=name, value=value)) from None


def _plural(names: list[str]) -> tuple[str, str]:
    return " and ".join(names), "is" if len(names) == 1 else "are"


def on_cloud_tpu_vm() -> bool:
    """Whether this host has Google TPU chips (JAX's own test: a PCI device of vendor 0x1ae0).

    Example:
        >>> on_cloud_tpu_vm()  # doctest: +SKIP
        False
    """
    try:
        vendors = pathlib.Path("/sys/bus/pci/devices").glob("*/vendor")
        return any(path.read_text().strip() == GOOGLE_PCI_VENDOR for path in vendors)
    except OSError:
        return False


def detect_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> DistributedSettings | None:
    """How this process should join a multi-process run, or None when it runs alone.

    In order: explicit settings (arguments, else the JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES
    and JAX_PROCESS_ID variables); a Slurm job step with SLURM_NTASKS > 1; a Cloud TPU VM (JAX
    reads the slice's workers from the TPU metadata; one host is a slice of one) or a GKE TPU
    pod (TPU_WORKER_HOSTNAMES lists several hosts); an Open MPI job (OMPI_COMM_WORLD_SIZE > 1).

    Args:
      coordinator_address: "host:port" of process 0's coordinator service.
      num_processes: the number of processes.
      process_id: this process's index, from 0.
      environ: the environment to read; default `os.environ`.

    Returns:
      `DistributedSettings`, or None for a single process.

    Example:
        >>> detect_distributed(environ={}) is None
        True
        >>> detect_distributed(environ={"SLURM_NTASKS": "1"}) is None
        True
    """
    environ = os.environ if environ is None else environ
    given = {"coordinator_address": coordinator_address, "num_processes": num_processes}
    given["process_id"] = process_id
    for name, variable in EXPLICIT_VARIABLES.items():
        if given[name] is None:
            given[name] = environ.get(variable)
    if any(value is not None for value in given.values()):
        count = _as_int("num_processes", given["num_processes"])
        pid = _as_int("process_id", given["process_id"])
        if count == 1 and pid in (None, 0):
            return None
        missing = [name for name, value in given.items() if value is None]
        if missing:
            names, verb = _plural(missing)
            raise ValueError(MISSING_SETTINGS_MSG.format(missing=names, verb=verb))
        if not 0 <= pid < count:
            raise ValueError(PROCESS_ID_MSG.format(num_processes=count, process_id=pid))
        return DistributedSettings("explicit", str(given["coordinator_address"]), count, pid)
    ntasks = _as_int("SLURM_NTASKS", environ.get("SLURM_NTASKS"))
    if ntasks is not None and ntasks > 1:
        missing = [name for name in SLURM_VARIABLES if name not in environ]
        if missing:
            names, verb = _plural(missing)
            raise RuntimeError(SLURM_INCOMPLETE_MSG.format(ntasks=ntasks, missing=names, verb=verb))
        return DistributedSettings("slurm")
    if len(environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1 or on_cloud_tpu_vm():
        return DistributedSettings("tpu")
    if (_as_int("OMPI_COMM_WORLD_SIZE", environ.get("OMPI_COMM_WORLD_SIZE")) or 1) > 1:
        return DistributedSettings("mpi")
    return None


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout_s: int = 300,
) -> DistributedSettings | None:
    """Joins a multi-process run when the arguments or the environment describe one.

    Call it first thing, before any JAX computation. A single process (no settings, a
    one-task Slurm job, one TPU host) is left alone, so the same program runs anywhere; a second
    call is a no-op. See `detect_distributed` for what is read from the environment.

    Args:
      coordinator_address: "host:port" of process 0's coordinator service.
      num_processes: the number of processes.
      process_id: this process's index, from 0.
      timeout_s: how long to wait for every process to join.

    Returns:
      The `DistributedSettings` used, or None when running as a single process.

    Example:
        >>> initialize_distributed()  # a single process: nothing to do
        >>> initialize_distributed("10.0.0.1:1234", num_processes=2, process_id=0)  # doctest: +SKIP
    """
    settings = detect_distributed(coordinator_address, num_processes, process_id)
    if settings is None or jax.distributed.is_initialized():
        return settings
    jax.distributed.initialize(
        settings.coordinator_address,
        settings.num_processes,
        settings.process_id,
        initialization_timeout=timeout_s,
    )
    return settings


def is_main_process() -> bool:
    """Whether this is process 0, the one that writes logs, plots and checkpoint metadata.

    Example:
        >>> is_main_process()
        True
    """
    return jax.process_index() == 0


def main_process_decides(flag: bool) -> bool:
    """Process 0's `flag`, on every process: for a choice each process would make by its own
    clock (a save every N seconds) that all must make alike, because what follows is
    collective. A broadcast between the processes; a single process keeps its own flag.

    Example:
        >>> main_process_decides(True)
        True
    """
    if jax.process_count() == 1:
        return flag
    return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))
