"""The safetensors format, read by memory map and written without the `safetensors` package.

A file is an 8-byte little-endian header length, a JSON header mapping each tensor's name to its
`dtype`, `shape` and `data_offsets` (a byte range of the data that follows the header), then the
tensors' bytes, row-major and little-endian. A large checkpoint is split over several files that
`model.safetensors.index.json` lists (`weight_map`: tensor name -> file name).

Reading maps a tensor's bytes (`numpy.memmap`) and copies only the slices asked for, so a loader
can read each device's shard of a tensor without the rest of it ever being in memory.

    >>> import tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> files = write_checkpoint(folder, {"w": np.arange(6, dtype=np.float32).reshape(2, 3)})
    >>> entry = checkpoint_tensors(folder)["w"]
    >>> entry.shape, open_tensor(entry)[:, 1].tolist()
    ((2, 3), [1.0, 4.0])
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping

import ml_dtypes
import numpy as np

from paxtrain.errors import CheckpointError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
HEADER_LENGTH_BYTES = 8
# The safetensors package pads the header to a multiple of 8 bytes so that the tensors' bytes
# are aligned for every dtype; readers accept any padding made of spaces.
ALIGNMENT = 8
DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
NAMES = {dtype: name for name, dtype in DTYPES.items()}

NO_WEIGHTS_MSG = """\
{directory} is not a Hugging Face checkpoint directory: it has no {single} and no {index}. \
Give the directory that `save_pretrained` (or `paxtrain export --format hf`) wrote, holding \
config.json and the safetensors weights (PyTorch .bin weights are not read: convert them with \
`transformers` first)."""

BAD_FILE_MSG = """\
{path} is not a readable safetensors file ({reason}): the download or copy may be incomplete. \
Fetch the file again."""

BAD_INDEX_MSG = """\
{path} is not a readable safetensors index ({reason}): it must be a JSON object with a \
"weight_map" of tensor names to file names. Fetch the file again."""

INDEX_NAMES_MISSING_FILE_MSG = """\
{index} puts `{tensor}` in {file}, which is not in {directory}: the checkpoint is incomplete. \
Fetch {file} again."""

NOT_IN_FILE_MSG = """\
{index} puts `{tensor}` in {file}, but that file does not hold it: the index and the files \
are from different checkpoints. Fetch the checkpoint again."""

UNKNOWN_DTYPE_MSG = "tensor `{tensor}` has dtype {dtype!r}; paxtrain reads {known}"

NO_DTYPE_NAME_MSG = """\
`{tensor}` has dtype {dtype}, which safetensors has no name for: cast it to float32, bfloat16 or \
float16 before writing."""


@dataclasses.dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lies: its file, dtype, shape and first byte in the file.

    Example:
        >>> TensorEntry(pathlib.Path("model.safetensors"), np.dtype("float32"), (2,), 64).nbytes
        8
    """

    file: pathlib.Path
    dtype: np.dtype
    shape: tuple[int, ...]
    start: int

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def read_header(path: pathlib.Path) -> dict[str, TensorEntry]:
    """The tensors of one safetensors file, from its header, checked against the file's size.

    Example:
        >>> import tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "x.safetensors"
        >>> write_safetensors(path, {"b": np.zeros(3, np.float16)})
        >>> read_header(path)["b"].shape
        (3,)
    """

    def bad(reason: str) -> CheckpointError:
        return CheckpointError(BAD_FILE_MSG.format(path=path, reason=reason))

    size = path.stat().st_size
    with path.open("rb") as file:
        length = int.from_bytes(file.read(HEADER_LENGTH_BYTES), "little")
        if size < HEADER_LENGTH_BYTES or length > size - HEADER_LENGTH_BYTES:
            raise bad(f"a header of {length} bytes in a file of {size}")
        try:
            header = json.loads(file.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise bad(f"its header is not JSON: {error}") from None
    data_start = HEADER_LENGTH_BYTES + length
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = DTYPES.get(info["dtype"])
            shape, (begin, end) = tuple(int(n) for n in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise bad(f"the header entry of `{name}` is {info!r}") from None
        if dtype is None:
            raise bad(
                UNKNOWN_DTYPE_MSG.format(tensor=name, dtype=info["dtype"], known=list(DTYPES))
            )
        entry = TensorEntry(path, dtype, shape, data_start + begin)
        if end - begin != entry.nbytes or data_start + end > size:
            raise bad(f"`{name}` {list(shape)} {info['dtype']} at bytes {begin}..{end}")
        entries[name] = entry
    return entries


def _read_index(path: pathlib.Path) -> dict[str, str]:
    try:
        weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise CheckpointError(BAD_INDEX_MSG.format(path=path, reason=repr(error))) from None
    if not isinstance(weight_map, dict):
        raise CheckpointError(BAD_INDEX_MSG.format(path=path, reason="weight_map is no object"))
    return weight_map


def checkpoint_tensors(directory: str | pathlib.Path) -> dict[str, TensorEntry]:
    """The tensors of a checkpoint directory: `model.safetensors`, or the files its
    `model.safetensors.index.json` names; no tensor is read.

    Example:
        >>> import tempfile
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> arrays = {"a": np.zeros(256, np.float32), "b": np.ones(256, np.float32)}
        >>> _ = write_checkpoint(folder, arrays, max_shard_bytes=1024)  # two files, an index
        >>> {name: entry.file.name for name, entry in checkpoint_tensors(folder).items()}
        {'a': 'model-00001-of-00002.safetensors', 'b': 'model-00002-of-00002.safetensors'}
    """
    directory = pathlib.Path(directory)
    index = directory / INDEX_FILE
    if index.is_file():
        weight_map = _read_index(index)
        headers: dict[str, dict[str, TensorEntry]] = {}
        entries = {}
        for tensor, file in weight_map.items():
            if file not in headers:
                if not (directory / file).is_file():
                    raise CheckpointError(
                        INDEX_NAMES_MISSING_FILE_MSG.format(
                            index=index, tensor=tensor, file=file, directory=directory
                        )
                    )
                headers[file] = read_header(directory / file)
            if tensor not in headers[file]:
                raise CheckpointError(NOT_IN_FILE_MSG.format(index=index, tensor=tensor, file=file))
            entries[tensor] = headers[file][tensor]
        return entries
    if (directory / SINGLE_FILE).is_file():
        return read_header(directory / SINGLE_FILE)
    raise CheckpointError(
        NO_WEIGHTS_MSG.format(directory=directory, single=SINGLE_FILE, index=INDEX_FILE)
    )


def open_tensor(entry: TensorEntry) -> np.ndarray:
    """A read-only memory map of one tensor: slicing it reads only those bytes.

    Example:
        >>> import tempfile
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = write_checkpoint(folder, {"w": np.arange(12, dtype=np.float32).reshape(3, 4)})
        >>> open_tensor(checkpoint_tensors(folder)["w"])[1:, :2].tolist()
        [[4.0, 5.0], [8.0, 9.0]]
    """
    if entry.nbytes == 0:  # numpy cannot map zero bytes
        return np.zeros(entry.shape, entry.dtype)
    dtype = entry.dtype.newbyteorder("<")
    return np.memmap(entry.file, dtype, mode="r", offset=entry.start, shape=entry.shape)


def write_safetensors(path: pathlib.Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Writes `arrays` as one safetensors file, tensor by tensor (none is copied whole).

    Example:
        >>> import tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "x.safetensors"
        >>> write_safetensors(path, {"a": np.ones((2, 2), np.float32)})
        >>> path.stat().st_size  # 8 + a header padded to 88 bytes + 16 bytes of data
        112
    """
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, array in arrays.items():
        if array.dtype not in NAMES:
            raise CheckpointError(NO_DTYPE_NAME_MSG.format(tensor=name, dtype=array.dtype))
        header[name] = {
            "dtype": NAMES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(HEADER_LENGTH_BYTES + len(text)) % ALIGNMENT)
    with path.open("wb") as file:
        file.write(len(text).to_bytes(HEADER_LENGTH_BYTES, "little"))
        file.write(text)
        for array in arrays.values():
            file.write(np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes())


def write_checkpoint(
    directory: pathlib.Path, arrays: Mapping[str, np.ndarray], max_shard_bytes: int | None = None
) -> list[str]:
    """Writes `arrays` into `directory` as `model.safetensors`, or, when they exceed
    `max_shard_bytes`, as `model-0000i-of-0000n.safetensors` files of at most that size (a
    larger tensor alone in its file) with `model.safetensors.index.json`; returns the names of
    the files written.

    Example:
        >>> import tempfile
        >>> arrays = {f"w{i}": np.zeros(256, np.float32) for i in range(3)}
        >>> write_checkpoint(pathlib.Path(tempfile.mkdtemp()), arrays, max_shard_bytes=2048)
        ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', \
'model.safetensors.index.json']
    """
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, array in arrays.items():
        if max_shard_bytes is not None and shards[-1] and size + array.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = array
        size += array.nbytes
    if len(shards) == 1:
        write_safetensors(directory / SINGLE_FILE, shards[0])
        return [SINGLE_FILE]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        write_safetensors(directory / name, shard)
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(array.nbytes for array in arrays.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return [*names, INDEX_FILE]
