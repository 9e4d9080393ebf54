"""Batch placement on TPU pods, simulated with mock devices as JAX's own `mesh_utils` tests do.

`jax.make_mesh` orders a TPU slice's devices along the chips' torus, so on a v5e pod a host's
devices hold rows scattered over the batch, not one block. The mock devices carry what JAX's
mesh code reads (coordinates, core, process); the rows each process reads and the answers each
device gets from `jax.make_array_from_callback` are checked against the global batch here,
without TPUs. The real placement path runs on two processes in test_parallel.py.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import numpy as np
import pytest

from paxtrain import parallel
from paxtrain.parallel import mesh as mesh_module
from paxtrain.parallel.batch import _rows_callback


@dataclasses.dataclass(frozen=True)
class MockTpuDevice:
    id: int
    platform: str
    device_kind: str
    process_index: int
    coords: tuple[int, int, int]
    core_on_chip: int = 0
    slice_index: int = 0


def mock_v5e(x: int, y: int, host: tuple[int, int] = (2, 4)) -> list[MockTpuDevice]:
    """jax.devices() of a v5e slice of x by y chips, one device per chip, hosts of 2x4 chips,
    listed host by host (as JAX lists them)."""
    hx, hy = host
    devices = []
    for py in range(y // hy):
        for px in range(x // hx):
            process = px + (x // hx) * py
            for dy in range(hy):
                for dx in range(hx):
                    coords = (px * hx + dx, py * hy + dy, 0)
                    devices.append(
                        MockTpuDevice(len(devices), "tpu", "TPU v5 lite", process, coords)
                    )
    return devices


@pytest.mark.parametrize(("x", "y", "hosts"), [(16, 16, 32), (4, 8, 4)], ids=["v5e-256", "v5e-32"])
def test_the_default_mesh_of_a_v5e_pod_places_batches(x, y, hosts):
    devices = mock_v5e(x, y)
    mesh = parallel.make_mesh(devices=devices)  # the default: every device on "data"
    size = 4 * len(devices)
    batch = np.arange(size * 3).reshape(size, 3)
    indices = parallel.batch_sharding(mesh).devices_indices_map(batch.shape)
    read = defaultdict(int)
    scattered = 0
    for process in range(hosts):
        blocks = parallel.process_row_blocks(size, mesh, process_index=process)
        scattered += len(blocks) > 1
        parts = [batch[block] for block in blocks]
        callback = _rows_callback(blocks, parts, 0)
        for device, index in indices.items():
            if device.process_index == process:
                np.testing.assert_array_equal(callback(index), batch[index])
        for block in blocks:
            for row in range(block.start, block.stop):
                read[row] += 1
    # Every row is read by exactly one host, and the torus order does scatter them.
    assert read == {row: 1 for row in range(size)}
    assert scattered == hosts
    # The one-block view that placement used before fails on such a mesh (process 0 here).
    with pytest.raises(parallel.LayoutError, match="not one contiguous block"):
        parallel.process_batch_slice(size, mesh)


def mock_slices(slices: int, x: int = 4, y: int = 4) -> list[MockTpuDevice]:
    """jax.devices() of `slices` v5e slices of x by y chips, joined over DCN."""
    devices = []
    for index in range(slices):
        for device in mock_v5e(x, y):
            process = device.process_index + index * (x * y // 8)
            devices.append(
                dataclasses.replace(
                    device, id=len(devices), process_index=process, slice_index=index
                )
            )
    return devices


def test_a_multi_slice_mesh_puts_only_the_data_axis_across_slices():
    devices = mock_slices(2)  # 2 slices of 16 chips, 2 hosts each
    mesh = parallel.make_mesh(fsdp=4, devices=devices)
    assert mesh.shape == {"data": 8, "fsdp": 4, "tensor": 1}
    slice_of = np.vectorize(lambda d: d.slice_index)(mesh.devices)
    # Each slice holds one half of the data axis, whole along fsdp and tensor: only the
    # gradient sum crosses the DCN.
    assert (slice_of[:4] == 0).all() and (slice_of[4:] == 1).all()
    for process in range(4):
        blocks = parallel.process_row_blocks(64, mesh, process_index=process)
        assert sum(b.stop - b.start for b in blocks) == 16
    with pytest.raises(parallel.LayoutError) as error:
        parallel.make_mesh(data=1, fsdp=-1, devices=devices)
    assert str(error.value) == mesh_module.MULTI_SLICE_MSG.format(slices=2, data=1, example=2)
