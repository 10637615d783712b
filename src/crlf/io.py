"""Atomic file writes: every artefact is written to a temp file in the same folder, then renamed.

A crash or a full disk in the middle of a write leaves the previous file byte-identical and no temp
file behind, and the error names the path.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once, at import: os.umask can only be read by setting it


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Yield a temp file next to ``path``; on success fsync and ``os.replace`` it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; artefacts get the usual permissions
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
            raise OSError(exc.errno, f"could not write '{path}': {exc.strerror or exc}") from exc
        raise


def atomic_write_bytes(path: str | Path, data: bytes | memoryview) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_save_with(path: str | Path, writer: Callable[[IO[bytes]], None]) -> None:
    """Serialise through ``writer(buffer)`` in memory, then write atomically (torch.save, np.save, ...)."""
    buffer = io.BytesIO()
    writer(buffer)
    atomic_write_bytes(path, buffer.getbuffer())  # a view, not a copy: checkpoints are 100+ MB

