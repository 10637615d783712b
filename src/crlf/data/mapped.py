"""The training images as the loop sees them: one uint8 tensor in memory, or batches gathered from the
cache file when the data are too large to load whole.

``data.storage`` decides: ``memory`` loads the array (today's path: on a GPU the whole set then lives
in device memory and a batch is one index), ``memmap`` leaves it in the cache file and each
``images[idx]`` reads just that batch's rows, ``auto`` loads data up to ``MEMMAP_ABOVE_BYTES`` and leaves
larger data on disk.

The rows are read with ``os.preadv`` rather than through the memory map. Both go through the kernel's
page cache (shared with every other process reading the file, dropped first under memory pressure), but
pages touched through a map count as the process's resident memory, and on recent kernels a random row
maps the whole large folio around it: after a few dozen random batches of a 3.6 GB cache the process
"held" 2 GB of it (measured, bench/large_data.py). Read into a buffer, only the batch is the process's.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import torch

from crlf.data.cache import file_region

MEMMAP_ABOVE_BYTES = 2 * 1024**3  # CIFAR-10 (150 MB) and Tiny-ImageNet at 64 px (1.2 GB) load; STL-10 stays on disk
READ_CHUNK_BYTES = 256 * 1024**2  # loading a whole array: read in pieces of this size


class _RowFile:
    """Fixed-size rows of an open file, read into numpy buffers (closed with the object)."""

    def __init__(self, path: str, offset: int, row_bytes: int):
        self.path, self.offset, self.row_bytes = path, offset, row_bytes
        self.fd = os.open(path, os.O_RDONLY)

    def read(self, first_row: int, out: np.ndarray) -> None:
        """Rows ``first_row, first_row + 1, ...`` into ``out`` (C-contiguous, ``len(out)`` rows)."""
        view = memoryview(out).cast("B")
        done = 0
        while done < len(view):
            n = os.preadv(self.fd, [view[done:]], self.offset + first_row * self.row_bytes + done)
            if n <= 0:
                raise OSError(f"'{self.path}' ended before row {first_row + len(out) - 1} (truncated?); delete it "
                              f"and run again to rebuild the cache")
            done += n

    def __del__(self):
        os.close(self.fd)


def _row_file(array: np.ndarray) -> _RowFile | None:
    region = file_region(array) if hasattr(os, "preadv") else None  # no preadv (Windows): through the map
    return _RowFile(region[0], region[1], array[0].nbytes) if region and len(array) else None


class MappedImages:
    """A uint8 ``(N, 3, H, W)`` array left in the cache file that training indexes like a tensor on ``device``.

    ``images[idx]`` (a tensor, array or slice of row numbers) reads those rows, in file order and runs of
    neighbours at once, and returns them in the order asked as a tensor on ``device``; ``images.to(device)``
    returns a copy that delivers batches there. Only what the loop uses of a tensor is here: ``len``,
    ``shape``, ``dtype``, ``device``, ``to`` and indexing."""

    def __init__(self, array: np.ndarray, device: torch.device | str = "cpu"):
        if array.dtype != np.uint8 or array.ndim != 4:
            raise ValueError(f"expected a uint8 (N, 3, H, W) array, got {array.dtype} {array.shape}")
        self.array = array
        self.file = _row_file(array)  # None for an array in memory (e.g. a --limit subset): indexed directly
        self.device = torch.device(device)
        self.shape = torch.Size(array.shape)
        self.dtype = torch.uint8

    def __len__(self) -> int:
        return len(self.array)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> MappedImages:
        moved = copy.copy(self)  # the same open file
        moved.device = torch.device(device)
        return moved

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """``array[rows]`` as a new ``(len(rows), 3, H, W)`` array, read from the file."""
        if self.file is None:
            return np.array(self.array[rows])
        unique, where = np.unique(rows, return_inverse=True)  # sorted: the disk reads forwards
        buffer = np.empty((len(unique), *self.array.shape[1:]), np.uint8)  # (u, 3, H, W)
        cuts = np.flatnonzero(np.diff(unique) != 1) + 1  # runs of consecutive rows: one read each
        for start, stop in zip(np.r_[0, cuts], np.r_[cuts, len(unique)]):
            self.file.read(int(unique[start]), buffer[start:stop])
        return buffer if len(unique) == len(rows) and (where == np.arange(len(rows))).all() else buffer[where]

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, (int, np.integer)):
            return self[np.array([idx])][0]  # (3, H, W)
        if isinstance(idx, slice):
            idx = np.arange(len(self.array))[idx]
        rows = idx.cpu().numpy() if isinstance(idx, torch.Tensor) else np.asarray(idx)
        rows = rows.astype(np.int64, copy=False).reshape(-1)
        rows = np.where(rows < 0, rows + len(self.array), rows)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self.array)):
            raise IndexError(f"row index out of range for {len(self.array)} images")
        tensor = torch.from_numpy(self.rows(rows))  # (B, 3, H, W) uint8
        if self.device.type == "cuda":
            tensor = tensor.pin_memory()  # lets the copy to the GPU run without an extra staging copy
        return tensor.to(self.device, non_blocking=self.device.type == "cuda")

    def __repr__(self) -> str:
        return f"MappedImages(shape={tuple(self.shape)}, device={self.device})"


def training_images(array: np.ndarray, storage: str = "auto") -> torch.Tensor | MappedImages:
    """The pretraining images for the loop: in memory (a tensor), or left on disk (see the module docstring)."""
    if storage == "memmap" or (storage == "auto" and array.nbytes > MEMMAP_ABOVE_BYTES):
        return MappedImages(array)
    file = _row_file(array)
    if file is not None:  # read the cache file into process memory once (plain reads: no mapped pages linger)
        loaded = np.empty(array.shape, np.uint8)  # (N, 3, H, W)
        step = max(1, READ_CHUNK_BYTES // file.row_bytes)
        for start in range(0, len(array), step):
            file.read(start, loaded[start:start + step])
        array = loaded
    elif isinstance(array, np.memmap) or not array.flags.writeable:
        array = np.array(array)
    return torch.from_numpy(array)  # (N, 3, H, W) uint8
