"""Decode many image files in a pool of processes, in order, with a progress bar.

Decoding is Pillow work in Python, one core per process: a pool of one process per CPU divides the first
decode of a large folder or archive (CIFAR-10's 60,000 JPEGs, Tiny-ImageNet's 110,000) by the number of
cores. Results come back chunk by chunk *in input order*, so the cached arrays are byte-identical to a
decode in one process, and only a few chunks are in flight at a time, so memory stays flat however
large the source.

Small sources (under ``PARALLEL_MIN_IMAGES``) are decoded in this process: starting workers would cost
more than it saves, and the tests' tiny folders stay simple to reason about.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from crlf.data.decode import BadImage, decode_image

PARALLEL_MIN_IMAGES = 2048
CHUNK_IMAGES = 256  # per task: large enough to amortise the inter-process transfer, small enough to stream


def default_workers() -> int:
    """One process per CPU this process may run on (cgroups and taskset respected), at most 16."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 16))


def decode_chunk(items: list[bytes | Path], size: int,
                 decode: Callable[[bytes, int], np.ndarray] = decode_image) -> tuple[np.ndarray, dict[int, str]]:
    """``(n, 3, size, size)`` uint8 (zeros where an item is bad) and {position: why} for the bad ones.
    A file that cannot be read at all (permissions, I/O error) raises its OSError, as a plain read does."""
    out = np.zeros((len(items), 3, size, size), np.uint8)
    bad: dict[int, str] = {}
    for i, item in enumerate(items):
        data = item.read_bytes() if isinstance(item, Path) else item
        try:
            out[i] = decode(data, size)
        except BadImage as exc:
            bad[i] = str(exc)
    return out, bad


def _ignore_sigint() -> None:
    # Ctrl-C goes to the whole process group: the main process stops the pool; workers need not print
    # a traceback each.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _context():
    # forkserver: workers are forked from a clean server process, not from a parent that may already run
    # torch's thread pools (fork() of a multi-threaded process can deadlock the child).
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["crlf.data.parallel"])  # numpy and Pillow imported once, in the server
        return ctx
    return multiprocessing.get_context("spawn")


def decode_in_order(items: list[bytes | Path], size: int, progress: bool = True, desc: str = "decoding",
                    workers: int | None = None, decode: Callable[[bytes, int], np.ndarray] = decode_image,
                    ) -> Iterator[tuple[np.ndarray, dict[int, str]]]:
    """Yield ``decode_chunk`` results for consecutive chunks of ``items``, in order.

    ``decode`` is used in this process only; worker processes always use :func:`decode_image` (a function
    passed to another process must be importable by name)."""
    workers = default_workers() if workers is None else workers
    # CHUNK_IMAGES and PARALLEL_MIN_IMAGES are read at call time: the tests lower them.
    chunks = [items[i:i + CHUNK_IMAGES] for i in range(0, len(items), CHUNK_IMAGES)]
    bar = tqdm(total=len(items), desc=desc, unit="img", disable=not progress, leave=False)
    try:
        if workers <= 1 or len(items) < PARALLEL_MIN_IMAGES:
            for chunk in chunks:
                yield decode_chunk(chunk, size, decode)
                bar.update(len(chunk))
            return
        done = 0  # chunks yielded so far
        try:
            with ProcessPoolExecutor(workers, mp_context=_context(), initializer=_ignore_sigint) as pool:
                pending: deque = deque()
                try:
                    for chunk in chunks:
                        pending.append(pool.submit(decode_chunk, chunk, size))
                        if len(pending) >= 2 * workers + 2:  # a bounded window: memory stays flat
                            result = pending.popleft().result()
                            yield result
                            done += 1
                            bar.update(len(result[0]))
                    while pending:
                        result = pending.popleft().result()
                        yield result
                        done += 1
                        bar.update(len(result[0]))
                finally:  # a bad image in "error" mode (or Ctrl-C) stops here: drop the work not started
                    for future in pending:
                        future.cancel()
        except BrokenProcessPool:
            # Workers could not start, typically a script without the `if __name__ == "__main__":` guard
            # (workers import the main script again). Finish here rather than fail.
            warnings.warn("decoding in one process: the worker processes could not start (a script that calls "
                          "CRLF needs the `if __name__ == '__main__':` guard to use them)", stacklevel=2)
            for chunk in chunks[done:]:
                yield decode_chunk(chunk, size, decode)
                bar.update(len(chunk))
    finally:
        bar.close()
