"""The decode cache: every split's images in one memory-mapped ``.npy``, labels and names beside it.

A cached source is two files in the cache folder, both written atomically (temp file, fsync, rename):

* ``KEY.images.npy``: uint8 ``(N, 3, S, S)``, the rows of every split one after another in the order
  ``train | unlabeled | test`` (so pretraining on train + unlabeled is one contiguous slice);
* ``KEY.npz``: labels ``(N,)``, file names ``(N,)`` (or none), and a JSON ``meta`` with the classes, the
  row range of each split, the skipped files and the array's shape. It is written last: an images file
  without its index is an unfinished cache and is rebuilt.

The images are streamed into the file as they are decoded (never all in memory: a 3.6 GB STL-10 cache
decodes in a few hundred MB) and read back with ``np.load(mmap_mode="c")``: opening costs nothing,
pages are read when a batch touches them and shared with every process that maps the same file.
Copy-on-write (``"c"``) rather than read-only (``"r"``) because it reads the same pages but gives
writable arrays: ``torch.from_numpy`` (evaluation, search, demo) then takes them without a warning, and
an accidental in-place write stays private to the process instead of reaching the shared file.
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crlf.errors import UsageError
from crlf.io import atomic_open, atomic_save_with

HEADER_BYTES = 128  # a fixed-size .npy header (a multiple of 64: the rows stay aligned), rewritten at the end
# Room left on the disk beyond the cache itself: a full disk breaks more than this run.
DISK_HEADROOM_BYTES = 256 * 2**20
SPLIT_ORDER = ("train", "unlabeled", "test")


@dataclass
class Decoded:
    """Every split of a source, as the decoders produce it and the cache stores it."""

    images: np.ndarray  # (N, 3, S, S) uint8, rows train | unlabeled | test
    labels: np.ndarray  # (N,) int64; -1 where there is no label
    files: list[str]  # one name per row, or [] (binary formats)
    splits: dict[str, tuple[int, int]]  # split -> [start, stop) rows
    classes: list[str]
    format: str = "folder"  # folder | stl10 | cifar10 | cifar100 | tinyimagenet
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) with on_bad_image=skip


def npy_header(shape: tuple[int, ...]) -> bytes:
    """A version-1.0 ``.npy`` header for uint8 ``shape`` padded to exactly ``HEADER_BYTES``, so the final
    row count can be written over the provisional one without moving the data."""
    text = f"{{'descr': '|u1', 'fortran_order': False, 'shape': {tuple(int(s) for s in shape)!r}, }}"
    text = text.ljust(HEADER_BYTES - 10 - 1) + "\n"  # magic (6) + version (2) + length (2) + text
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin-1")


class ImageSink:
    """Collects ``(n, 3, S, S)`` uint8 chunks, in order, into ``path`` (atomically) or, when the cache
    folder cannot be written, into memory (a cache that cannot be written only costs time next run)."""

    def __init__(self, path: Path | None, side: int):
        self.path, self.side, self.count = path, side, 0
        self._chunks: list[np.ndarray] = []
        self._ctx = self._handle = None
        if path is not None:
            try:
                self._ctx = atomic_open(path, "wb")
                self._handle = self._ctx.__enter__()
                self._handle.write(npy_header((0, 3, side, side)))
            except OSError:
                self._ctx = self._handle = None

    def reserve(self, count: int, progress: bool = True) -> None:
        """Before decoding ``count`` images: say how much disk the cache takes and where, and refuse (a usage
        error, exit 2, before any image is decoded) when the disk cannot hold it."""
        if self._handle is None:  # an in-memory decode: nothing on disk
            return
        need = HEADER_BYTES + count * 3 * self.side * self.side
        where = self.path.parent
        free = shutil.disk_usage(where).free
        what = f"{count:,} images at {self.side} px: {_size(need)} in {where}"
        if free < need + DISK_HEADROOM_BYTES:
            raise UsageError(f"not enough disk for the decode cache: {what}, which has {_size(free)} free "
                             f"(and {_size(DISK_HEADROOM_BYTES)} should stay free). Free space there, point "
                             f"CRLF_CACHE at a disk with room, or train at a smaller --set data.image_size.")
        if progress:
            print(f"decode cache: {what} ({_size(free)} free)", file=sys.stderr)

    def add(self, chunk: np.ndarray) -> None:
        if chunk.dtype != np.uint8 or chunk.ndim != 4 or chunk.shape[1:] != (3, self.side, self.side):
            raise ValueError(f"expected uint8 (n, 3, {self.side}, {self.side}) images, got {chunk.dtype} {chunk.shape}")
        if self._handle is not None:
            self._handle.write(np.ascontiguousarray(chunk).data)
        else:
            self._chunks.append(np.array(chunk))
        self.count += len(chunk)

    def finish(self) -> np.ndarray:
        """The images so far: a memory map of the finished file, or the in-memory array."""
        if self._handle is None:
            empty = np.empty((0, 3, self.side, self.side), np.uint8)
            return np.concatenate([empty, *self._chunks])
        handle, ctx = self._handle, self._ctx
        self._handle = self._ctx = None
        handle.seek(0)
        handle.write(npy_header((self.count, 3, self.side, self.side)))
        ctx.__exit__(None, None, None)  # flush, fsync, rename onto self.path
        return open_images(self.path)

    def __enter__(self) -> ImageSink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._ctx is not None:  # not finished: an error (or a bad image) stopped the decode; drop the temp
            ctx, self._ctx, self._handle = self._ctx, None, None
            ctx.__exit__(exc_type or RuntimeError, exc or RuntimeError("unfinished cache"), tb)


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB"


def open_images(path: Path) -> np.ndarray:
    images = np.load(path, mmap_mode="c", allow_pickle=False)  # (N, 3, S, S) uint8, paged in on use
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"'{path}' is not a (N, 3, S, S) uint8 image array")
    return images


def file_region(array: np.ndarray) -> tuple[str, int] | None:
    """``(file, byte offset of array[0])`` when ``array`` is a C-contiguous run of rows of a memory-mapped
    file (the cache, or a slice of it); None for arrays in memory."""
    root = array
    while isinstance(root, np.memmap) and isinstance(root.base, np.ndarray):  # a view of a view of the map
        root = root.base
    if not isinstance(root, np.memmap) or not root.filename or not array.flags.c_contiguous:
        return None
    return root.filename, root.offset + (array.ctypes.data - root.ctypes.data)  # root's data starts at its offset


def write_index(path: Path, decoded: Decoded) -> None:
    meta = {"classes": decoded.classes, "skipped": decoded.skipped, "format": decoded.format,
            "splits": {name: list(rows) for name, rows in decoded.splits.items()},
            "shape": list(decoded.images.shape)}
    arrays = {"labels": decoded.labels, "files": np.asarray(decoded.files, dtype=str),
              "meta": np.asarray(json.dumps(meta))}
    try:
        atomic_save_with(path, lambda buf: np.savez(buf, **arrays))
    except OSError:
        pass  # a cache that cannot be written only costs time on the next run


def read_cache(index_path: Path, images_path: Path) -> Decoded:
    """The cached source, or an exception if anything is missing or inconsistent (the caller rebuilds)."""
    with np.load(index_path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        labels, files = z["labels"], z["files"].tolist()
    images = open_images(images_path)
    if list(images.shape) != meta["shape"] or len(labels) != len(images) or files and len(files) != len(images):
        raise ValueError(f"'{images_path}' does not match its index '{index_path}'")
    splits = {name: (int(a), int(b)) for name, (a, b) in meta["splits"].items()}
    if not all(0 <= a <= b <= len(images) for a, b in splits.values()):
        raise ValueError(f"'{index_path}' has split ranges outside the array")
    return Decoded(images, labels, files, splits, list(meta["classes"]), meta["format"],
                   [tuple(s) for s in meta["skipped"]])
