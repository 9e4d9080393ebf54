"""`make_mesh`: the device mesh with a data, an fsdp and a tensor axis."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

from paxtrain.errors import LayoutError

DATA, FSDP, TENSOR = "data", "fsdp", "tensor"
AXES = (DATA, FSDP, TENSOR)
# The batch is split over both: FSDP is data parallelism whose parameters are also split.
BATCH_AXES = (DATA, FSDP)

MESH_SIZE_MSG = """\
The mesh data={data} x fsdp={fsdp} x tensor={tensor} needs {needed} devices, but {available} are \
available ({platform}). Make the product equal {available}, or set one axis to -1 to take the \
remaining devices, e.g. `make_mesh({example})` (in a config: `{overrides}`)."""


def _fitting_sizes(sizes: dict[str, int], count: int) -> dict[str, int]:
    """A layout over `count` devices close to `sizes`: data takes what is left (-1), fsdp and
    tensor keep the part of their size that divides the devices, so the example a message gives
    is never the layout that just failed.

    Example:
        >>> _fitting_sizes({"data": -1, "fsdp": 2, "tensor": 1}, 1)
        {'data': -1, 'fsdp': 1, 'tensor': 1}
    """
    fsdp = math.gcd(max(sizes[FSDP], 1), count)
    return {DATA: -1, FSDP: fsdp, TENSOR: math.gcd(max(sizes[TENSOR], 1), count // fsdp)}


MESH_AXIS_MSG = """\
Mesh axis sizes must be positive integers, with at most one -1 (all remaining devices); \
got data={data}, fsdp={fsdp}, tensor={tensor}."""


MULTI_SLICE_MSG = """\
The devices span {slices} TPU slices, joined by the data-center network (DCN), and only the \
"data" axis may cross it (FSDP gathers and tensor-parallel sums every layer would be far too \
slow over DCN), so data={data} must be a multiple of {slices}. Use e.g. \
`mesh.data={example}` with the same fsdp and tensor."""


def _slice_count(devices: Sequence[jax.Device]) -> int:
    return len({getattr(device, "slice_index", 0) for device in devices})


def make_mesh(
    data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A mesh of axes ("data", "fsdp", "tensor") over all devices (of every process).

    The batch is split over `data` and `fsdp`; large parameters over `fsdp`; the parameters that
    tensor-parallel rules name over `tensor` (see `state_shardings`). The axes are `Auto`: the
    compiler inserts the collectives. On several TPU slices (multi-slice, devices with
    different `slice_index`) the "data" axis spans the slices
    (`mesh_utils.create_hybrid_device_mesh`), so only gradient sums cross the slower DCN.

    Args:
      data: data-parallel size; -1 takes the devices the other axes leave.
      fsdp: fully-sharded data-parallel size (-1 allowed likewise).
      tensor: tensor-parallel size (-1 allowed likewise).
      devices: the devices to use; default `jax.devices()`.

    Returns:
      A `jax.sharding.Mesh`.

    Example:
        >>> mesh = make_mesh(data=-1)
        >>> mesh.axis_names
        ('data', 'fsdp', 'tensor')
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = {DATA: data, FSDP: fsdp, TENSOR: tensor}
    unknown = [name for name, size in sizes.items() if size == -1]
    if len(unknown) > 1 or any(
        not isinstance(size, int) or (size != -1 and size < 1) for size in sizes.values()
    ):
        raise LayoutError(MESH_AXIS_MSG.format(**sizes))
    known = math.prod(size for size in sizes.values() if size != -1)
    fits = len(devices) % known == 0 if unknown else known == len(devices)
    if not fits:
        example = _fitting_sizes(sizes, len(devices))
        raise LayoutError(
            MESH_SIZE_MSG.format(
                example=", ".join(f"{axis}={size}" for axis, size in example.items()),
                overrides=" ".join(
                    f"mesh.{axis}={size}" for axis, size in example.items() if size != sizes[axis]
                ),
                data=data,
                fsdp=fsdp,
                tensor=tensor,
                needed=f"a multiple of {known}" if unknown else known,
                available=len(devices),
                platform=devices[0].platform,
            )
        )
    if unknown:
        sizes[unknown[0]] = len(devices) // known
    shape = tuple(sizes[axis] for axis in AXES)
    axis_types = (AxisType.Auto,) * 3
    slices = _slice_count(devices)
    if slices > 1:
        if shape[0] % slices:
            raise LayoutError(
                MULTI_SLICE_MSG.format(
                    slices=slices, data=shape[0], example=slices * max(1, shape[0] // slices)
                )
            )
        within = (shape[0] // slices, *shape[1:])
        grid = mesh_utils.create_hybrid_device_mesh(within, (slices, 1, 1), devices)
        return Mesh(grid, AXES, axis_types=axis_types)
    return jax.make_mesh(shape, AXES, axis_types=axis_types, devices=devices)


def data_parallel_size(mesh: Mesh) -> int:
    """How many ways the batch is split: the product of the mesh's data and fsdp axes.

    Example:
        >>> data_parallel_size(make_mesh(data=-1)) == jax.device_count()
        True
    """
    return math.prod(mesh.shape.get(axis, 1) for axis in BATCH_AXES)
