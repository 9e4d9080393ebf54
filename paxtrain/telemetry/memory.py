"""Memory: what a laid-out state takes on each device (from its shardings, nothing allocated),
what a compiled step adds, what a device has, and what a process uses now.

`bytes_per_device` reads each leaf's `sharding.shard_shape`: a leaf split over 4 devices counts
a quarter of its bytes, a replicated one all of them. A compiled step's `memory_analysis()`
gives its arguments, outputs (less those aliased to donated arguments) and temporaries, which
include the gradients and the activations kept for the backward pass.
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax
import numpy as np

GIB = 1024**3


def leaf_bytes_per_device(leaf: Any) -> int:
    """Bytes of one device's shard of `leaf` (an array or a `jax.ShapeDtypeStruct` with a
    sharding; without one, the whole leaf).

    Example:
        >>> mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("x",))
        >>> split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x"))
        >>> leaf_bytes_per_device(jax.ShapeDtypeStruct((8, 4), "float32", sharding=split))
        128
    """
    shape = tuple(leaf.shape)
    sharding = getattr(leaf, "sharding", None)
    if sharding is not None:
        shape = tuple(sharding.shard_shape(shape))
    return math.prod(shape) * np.dtype(leaf.dtype).itemsize


def bytes_per_device(tree: Any) -> int:
    """Bytes of the largest per-device share of `tree`'s leaves (see `leaf_bytes_per_device`).

    Example:
        >>> bytes_per_device({"w": jax.ShapeDtypeStruct((10, 10), "float32"), "b": None})
        400
    """
    return sum(leaf_bytes_per_device(x) for x in jax.tree_util.tree_leaves(tree))


def compiled_memory(compiled: Any) -> dict[str, int]:
    """A compiled function's memory from `memory_analysis()`: its `arguments`, `outputs` not
    aliased to donated arguments, and `temporaries`, in bytes per device.

    Example:
        >>> compiled = jax.jit(lambda x: x * 2).lower(np.ones(4, np.float32)).compile()
        >>> compiled_memory(compiled)["arguments"]
        16
    """
    analysis = compiled.memory_analysis()
    return {
        "arguments": int(analysis.argument_size_in_bytes),
        "outputs": int(analysis.output_size_in_bytes - analysis.alias_size_in_bytes),
        "temporaries": int(analysis.temp_size_in_bytes),
    }


def device_memory_limit(device: Any) -> tuple[int, str]:
    """Bytes a device can hold and where the number comes from: `memory_stats()["bytes_limit"]`
    on GPU and TPU; on CPU, the host's physical memory shared by its devices.

    Example:
        >>> limit, source = device_memory_limit(jax.devices("cpu")[0])
        >>> limit > 0, source.startswith("host memory")
        (True, True)
    """
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]), "memory_stats()"
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    devices = max(1, sum(1 for d in jax.local_devices() if d.platform == device.platform))
    shared = f" / {devices} devices" if devices > 1 else ""
    return host // devices, f"host memory{shared}"


def host_rss_bytes() -> int:
    """The process's resident memory now (`/proc/self/statm`; 0 where there is none).

    Example:
        >>> host_rss_bytes() > 0
        True
    """
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def host_peak_rss_bytes() -> int:
    """The process's peak resident memory (`VmHWM` of `/proc/self/status`; 0 where there is
    none). Writing "5" to `/proc/self/clear_refs` resets it (`reset_host_peak`).

    Example:
        >>> host_peak_rss_bytes() >= host_rss_bytes() > 0
        True
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_host_peak() -> None:
    """Resets the peak that `host_peak_rss_bytes` reports to the current resident memory.

    Example:
        >>> reset_host_peak(); host_peak_rss_bytes() > 0
        True
    """
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass


def memory_in_use(devices: Any = None) -> dict[str, float]:
    """GiB in use and the peak so far: the largest over this process's devices'
    `memory_stats()` (GPU, TPU), or the process's resident memory on CPU.

    Example:
        >>> sorted(memory_in_use())
        ['memory_in_use_gib', 'memory_peak_gib']
    """
    devices = jax.local_devices() if devices is None else devices
    stats = [d.memory_stats() for d in devices if d.platform != "cpu"]
    stats = [s for s in stats if s]
    if stats:
        in_use = max(s.get("bytes_in_use", 0) for s in stats)
        peak = max(s.get("peak_bytes_in_use", 0) for s in stats)
    else:
        in_use, peak = host_rss_bytes(), host_peak_rss_bytes()
    return {"memory_in_use_gib": in_use / GIB, "memory_peak_gib": peak / GIB}
