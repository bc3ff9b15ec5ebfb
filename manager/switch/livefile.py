"""A safetensors file opened for writing in place.

safetensors lays every tensor out contiguously at a fixed offset after a JSON header, so a
memory map of the file gives tensors whose in-place writes land directly in the file: a switch
then rewrites only the bytes of the two supports, never the whole backbone.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from manager.errors import MgrError
from manager.switch.livecheck import header_and_offset, metadata, read_header
from manager.switch.livecheck import layout as header_layout

if TYPE_CHECKING:
    from manager.store.fs import Store

_DTYPES = {
    "F32": (np.float32, torch.float32),
    "F16": (np.float16, torch.float16),
    "F64": (np.float64, torch.float64),
    "I64": (np.int64, torch.int64),
    "I32": (np.int32, torch.int32),
    "BF16": (np.int16, torch.bfloat16),  # numpy has no bfloat16: map the bits, view in torch
}


def read_metadata(path: Path) -> dict[str, str]:
    """The file's ``__metadata__`` (string to string), empty if it has none."""
    return metadata(read_header(path))


def layout(path: Path) -> dict[str, tuple[str, tuple[int, ...], tuple[int, int]]]:
    """``{name: (dtype, shape, data_offsets)}`` of the file (see `livecheck.layout`)."""
    return header_layout(read_header(path))


class LiveFile:
    """Tensors of a safetensors file, memory-mapped read-write; ``flush`` makes writes durable.

    ``readonly=True`` maps the file copy-on-write (``MAP_PRIVATE``): pages are read lazily from the
    file and a stray write lands in private memory, never in the file. That is how W0 is read
    without loading a whole backbone for a switch that touches 0.4% of it.

    A writable map needs the home's ``store``: the file is opened through `Store.open_update`,
    which refuses a path (or a symbolic link) that leads outside the home.
    """

    def __init__(self, path: Path, readonly: bool = False, *, store: Store | None = None):
        if not readonly and store is None:
            raise ValueError("a writable LiveFile is opened through the home's Store")
        self.path = store.confine(path) if store is not None else Path(path)
        self.readonly = readonly
        offset, header = header_and_offset(self.path)
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        size = self.path.stat().st_size
        end = max((e["data_offsets"][1] for e in header.values()), default=0)
        if offset + end > size:
            raise MgrError(f"{path}: truncated ({size} bytes, the header needs {offset + end})")
        # lives as long as the map
        self._file = open(self.path, "rb") if readonly else store.open_update(self.path)  # noqa: SIM115
        access = mmap.ACCESS_COPY if readonly else mmap.ACCESS_WRITE
        self._mmap = mmap.mmap(self._file.fileno(), 0, access=access)
        self.tensors: dict[str, torch.Tensor] = {}
        for name, entry in header.items():
            if entry["dtype"] not in _DTYPES:
                raise MgrError(f"{path}: unsupported dtype {entry['dtype']} for {name}")
            np_dtype, torch_dtype = _DTYPES[entry["dtype"]]
            start, end = entry["data_offsets"]
            count = (end - start) // np.dtype(np_dtype).itemsize
            arr = np.frombuffer(self._mmap, dtype=np_dtype, count=count, offset=offset + start)
            self.tensors[name] = torch.from_numpy(arr).view(torch_dtype).view(entry["shape"])

    def flush(self) -> None:
        if self.readonly:
            return
        self._mmap.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self.tensors.clear()  # views must go before the map can close
        # A caller may still hold a view; the OS then closes the map at exit.
        with contextlib.suppress(BufferError):
            self._mmap.close()
        self._file.close()

    def __enter__(self) -> LiveFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
