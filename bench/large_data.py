"""Pretraining on 130,000 STL-10-like 96-px images (3.6 GB as uint8) without loading them: the process's
resident memory, sampled every second, against the size of the array.

    .venv/bin/python bench/large_data.py                      # ~7.5 GB under /tmp for a few minutes, then deleted
    .venv/bin/python bench/large_data.py --steps 40 --also-memory --keep

It writes an STL-10 binary folder (train 5,000 + unlabeled 125,000 = 130,000 pretraining images, test 8,000;
random pixels), then runs ``crlf pretrain`` on it with ``data.image_size: 96`` and tiny steps (batch 64,
two 32-px crops), and stops it with SIGINT after ``--steps`` steps (the loop checkpoints and exits 130).
Phase 1 builds the decode cache (the binaries streamed into one .npy, a few hundred MB of memory);
phase 2 trains with ``data.storage: auto``, which leaves the 3.6 GB cache on disk and reads each batch's
rows from it (crlf.data.mapped).
``--also-memory`` repeats phase 2 with ``data.storage=memory`` (the whole array loaded) for comparison.

Expected: resident memory stays around 1.5 GB (under 1 GB of it private), far below the 3.6 GB array;
with ``--also-memory`` the loaded run holds the array on top (about 4.7 GB). "Mapped files" are mostly
torch's shared libraries. Measured 2026-11-29 on 2 busy CPU cores: 1.43 GB vs 4.72 GB peak.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
IMAGE_BYTES = 3 * 96 * 96
SPLITS = {"train": 5_000, "unlabeled": 125_000, "test": 8_000}
GB = 1e9


def write_stl10_like(root: Path, splits: dict[str, int], chunk: int = 4096) -> None:
    """Random 96x96 images and labels 1..10 in STL-10's binary layout, written chunk by chunk."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in splits.items():
        with open(root / f"{split}_X.bin", "wb") as handle:
            for start in range(0, n, chunk):
                rng.integers(0, 256, (min(chunk, n - start), IMAGE_BYTES), dtype=np.uint8).tofile(handle)
        if split != "unlabeled":
            ((np.arange(n) % 10) + 1).astype(np.uint8).tofile(root / f"{split}_y.bin")
    (root / "class_names.txt").write_text("airplane\nbird\ncar\ncat\ndeer\ndog\nhorse\nmonkey\nship\ntruck\n")


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon (private), RssFile (mapped files, e.g. the cache) and VmHWM of ``pid``, in kB."""
    fields = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                fields[key] = int(value.split()[0])
    return fields


def run_pretrain(data: Path, out: Path, cache: Path, steps: int, storage: str, threads: int) -> dict:
    """``crlf pretrain`` on ``data``, SIGINT after ``steps`` steps; memory samples split by phase."""
    cmd = [sys.executable, "-m", "crlf.cli", "pretrain", "--config", str(REPO / "configs" / "seed.yaml"),
           "--data", str(data), "--out", str(out), "--epochs", "1", "--batch-size", "64", "--device", "cpu",
           "--threads", str(threads), "--set", "data.image_size=96", "--set", f"data.storage={storage}",
           "--set", "augment.crops=[{size: 32, count: 2}]", "--set", "augment.blur_kernel_fraction=0.1"]
    env = {**os.environ, "CRLF_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True, bufsize=1)
    state = {"step": 0, "first_step_s": None, "seen": []}  # seen: (seconds, step) as the bar moves

    def read_progress() -> None:  # tqdm writes "epoch 1/1:  12%|#  | 250/2031 [..]" with carriage returns
        buf = ""
        while True:
            ch = proc.stderr.read(1)
            if not ch:
                return
            if ch in "\r\n":
                match = re.search(r"epoch 1/1.*?\|\s*(\d+)/(\d+) \[", buf)
                if match and int(match.group(1)) > state["step"]:
                    now = time.perf_counter() - t0
                    if state["first_step_s"] is None:
                        state["first_step_s"] = now
                    state["seen"].append((now, int(match.group(1))))
                    state["step"] = int(match.group(1))
                elif buf.strip() and "epoch 1/1" not in buf and "reading" not in buf:
                    print(f"  crlf: {buf.strip()}")
                buf = ""
            else:
                buf += ch

    reader = threading.Thread(target=read_progress, daemon=True)
    reader.start()
    samples = []  # (seconds, training?, VmRSS, RssAnon, RssFile) in kB
    interrupted = False
    while proc.poll() is None:
        try:
            m = memory_kb(proc.pid)
        except (FileNotFoundError, ProcessLookupError):
            break
        samples.append((time.perf_counter() - t0, state["step"] > 0, m["VmRSS"], m["RssAnon"], m["RssFile"]))
        if state["step"] >= steps and not interrupted:
            proc.send_signal(signal.SIGINT)
            interrupted = True
        time.sleep(1.0)
    proc.wait()
    reader.join(timeout=5)
    seen = state["seen"][1:]  # from the end of the first step (warm-up) on
    step_s = (seen[-1][0] - seen[0][0]) / (seen[-1][1] - seen[0][1]) if len(seen) > 1 else float("nan")
    return {"returncode": proc.returncode, "samples": samples, "steps": state["step"],
            "first_step_s": state["first_step_s"], "wall_s": time.perf_counter() - t0, "step_s": step_s}


def report(name: str, result: dict, array_bytes: int) -> None:
    def peak(train: bool, column: int) -> float:
        values = [s[column] for s in result["samples"] if s[1] == train]
        return max(values) * 1024 / GB if values else float("nan")

    print(f"{name}: exit {result['returncode']} after {result['steps']} steps, {result['wall_s']:.0f} s "
          f"(first step done at {result['first_step_s'] or float('nan'):.0f} s; then {result['step_s']:.2f} s/step)")
    for phase, train in (("before training (cache build / load)", False), ("training", True)):
        print(f"  peak {phase:38s} VmRSS {peak(train, 2):5.2f} GB = private {peak(train, 3):5.2f} GB + mapped files "
              f"{peak(train, 4):5.2f} GB   (array {array_bytes / GB:.2f} GB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="training steps before SIGINT (default 30)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where the ~7.5 GB go")
    parser.add_argument("--also-memory", action="store_true", help="repeat training with data.storage=memory")
    parser.add_argument("--keep", action="store_true", help="keep the generated data and cache")
    parser.add_argument("--unlabeled", type=int, default=SPLITS["unlabeled"], help="a smaller run, to try the script")
    args = parser.parse_args()
    SPLITS["unlabeled"] = args.unlabeled

    total = sum(SPLITS.values()) * IMAGE_BYTES
    pretrain_bytes = (SPLITS["train"] + SPLITS["unlabeled"]) * IMAGE_BYTES
    free = shutil.disk_usage(args.dir).free
    if free < 2 * total + 2 * GB:
        sys.exit(f"needs {2 * total / GB + 2:.1f} GB free under {args.dir}; {free / GB:.1f} GB free")
    work = Path(tempfile.mkdtemp(prefix="crlf_large_", dir=args.dir))
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GB:.1f} GB RAM; working in {work}")
    try:
        t0 = time.perf_counter()
        write_stl10_like(work / "stl10_binary", SPLITS)
        print(f"wrote {sum(SPLITS.values()):,} images ({total / GB:.2f} GB) in {time.perf_counter() - t0:.0f} s; "
              f"pretraining set: {SPLITS['train'] + SPLITS['unlabeled']:,} images = {pretrain_bytes / GB:.2f} GB")
        runs = [("auto (left in the cache file, rows read per batch)", "auto")] + ([("memory (loaded whole)", "memory")] if args.also_memory else [])
        for i, (name, storage) in enumerate(runs):
            result = run_pretrain(work / "stl10_binary", work / f"run{i}", work / "cache", args.steps, storage,
                                  args.threads)
            report(name, result, pretrain_bytes)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
            print(f"deleted {work}")


if __name__ == "__main__":
    main()
