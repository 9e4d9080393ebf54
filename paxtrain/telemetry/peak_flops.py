"""Peak FLOP/s of a device by its kind and compute dtype: what MFU divides by.

Dense (no sparsity) tensor-core peaks from the vendors' datasheets. float32 matmuls on these
GPUs run as TF32 under XLA's default precision, so float32 uses the TF32 peak. A device kind
missing here (CPUs among them) has no MFU unless the peak is given
(`trainer.peak_tflops`, `Utilization(peak_tflops=...)`).
"""

from __future__ import annotations

from typing import Any

import jax

# (substrings of the lower-cased `device_kind`, all of which must match), then TFLOP/s by
# dtype; the first matching row wins, so the more specific rows come first.
PEAK_TFLOPS: tuple[tuple[tuple[str, ...], dict[str, float]], ...] = (
    (("h100", "pcie"), {"bfloat16": 756.0, "float16": 756.0, "float32": 378.0}),
    (("h100",), {"bfloat16": 989.0, "float16": 989.0, "float32": 494.5}),  # SXM, "HBM3"
    (("h200",), {"bfloat16": 989.0, "float16": 989.0, "float32": 494.5}),
    (("gh200",), {"bfloat16": 989.0, "float16": 989.0, "float32": 494.5}),
    (("a100",), {"bfloat16": 312.0, "float16": 312.0, "float32": 156.0}),
    (("l4",), {"bfloat16": 121.0, "float16": 121.0, "float32": 60.0}),
    (("tpu v4",), {"bfloat16": 275.0, "float32": 275.0}),
    (("tpu v5 lite",), {"bfloat16": 197.0, "float32": 197.0}),
    (("tpu v5",), {"bfloat16": 459.0, "float32": 459.0}),
    (("tpu v6",), {"bfloat16": 918.0, "float32": 918.0}),
)


def peak_flops(device: Any = None, dtype: str = "float32", override_tflops: float | None = None):
    """Peak FLOP/s of one `device` (default: the first) computing in `dtype`, or None when
    the table has no row for it; `override_tflops` (TFLOP/s) wins over the table.

    Example:
        >>> peak_flops(override_tflops=100.0)
        100000000000000.0
        >>> peak_flops(jax.devices("cpu")[0]) is None
        True
    """
    if override_tflops is not None:
        return override_tflops * 1e12
    device = jax.devices()[0] if device is None else device
    kind = device.device_kind.lower()
    for substrings, by_dtype in PEAK_TFLOPS:
        if all(s in kind for s in substrings):
            tflops = by_dtype.get(dtype)
            return None if tflops is None else tflops * 1e12
    return None
