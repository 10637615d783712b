"""Helpers for the fault-injection tests: tiny synthetic image folders and `crlf pretrain` subprocesses.

Every run here is tiny (32x32 PNGs, batch 4, 2 epochs, 1 thread) so that the whole fault suite stays
within a minute or two on 2 CPU cores.
"""

from __future__ import annotations

import os
import runpy
import signal
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

# Imported once here, so that forked children (below) start with torch and torchvision loaded.
import crlf.cli
import crlf.training.pretrain  # noqa: F401

from conftest import make_image_folder  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SEED_CONFIG = REPO / "configs" / "seed.yaml"

# 2 classes x 4 training images, batch 4 -> 2 steps per epoch, 4 steps in 2 epochs.
TINY_FLAGS = ["--epochs", "2", "--batch-size", "4", "--device", "cpu", "--threads", "1", "--quiet"]
STEPS_PER_EPOCH = 2


def write_tiny_folder(root: Path, train_per_class: int = 4, test_per_class: int = 2, size: int = 32,
                      classes: tuple[str, ...] = ("a", "b"), seed: int = 0) -> Path:
    """ROOT/{train,test}/<class>/NNNN.png: a base colour per class plus noise."""
    return make_image_folder(root, train_per_class, test_per_class, size, classes, seed=seed, noise=40)


def fault_env(cache: Path, **faults: int | str) -> dict[str, str]:
    """The current environment without any CRLF_FAULT_* variable, plus ``faults`` and an isolated cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRLF_FAULT_")}
    env["CRLF_CACHE"] = str(cache)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    for name, value in faults.items():
        env[f"CRLF_FAULT_{name.upper()}"] = str(value)
    return env


def pretrain_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "crlf.cli", "pretrain", "--config", str(SEED_CONFIG), "--data", str(data),
            "--out", str(out), *TINY_FLAGS, *extra]


def run_pretrain(data: Path, out: Path, cache: Path, *extra: str, timeout: float = 120,
                 **faults: int | str) -> subprocess.CompletedProcess:
    """``python -m crlf.cli pretrain ...`` in a subprocess (niced), with fault-injection variables set."""
    return subprocess.run(["nice", "-n", "19", *pretrain_cmd(data, out, *extra)], cwd=REPO,
                          env=fault_env(cache, **faults), capture_output=True, text=True, timeout=timeout,
                          check=False)


# ---------------------------------------------------------------------------------------------------
# `python -m crlf.cli` in a forked child.
#
# A fresh interpreter spends ~10 s (on 2 busy cores) importing torch and torchvision before it trains a
# single step. A forked child of the test process starts with them imported and then runs crlf.cli as
# ``__main__`` exactly as ``python -m crlf.cli`` does, in its own process: a SIGKILL there is a real
# hard kill, and signals, exit codes and files on disk behave as in a fresh process.

def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


@dataclass
class ChildResult:
    returncode: int  # the exit status, or -N when killed by signal N (as subprocess reports it)
    output: str  # stdout and stderr together

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL


def fork_cli(args: list[str], cache: Path, log: Path, timeout: float = 120,
             signal_when: tuple[Path, int] | None = None, **faults: int | str) -> ChildResult:
    """Run ``crlf <args>`` as ``__main__`` in a forked child with CRLF_FAULT_* variables; wait for it.

    ``signal_when=(path, sig)``: send the child ``sig`` from outside as soon as ``path`` exists.
    """
    env = fault_env(cache, **faults)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 70
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = sys.stderr = open(fd, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives until _exit
            os.environ.clear()
            os.environ.update(env)
            # pytest records warnings instead of printing them: print them, as a fresh interpreter would.
            warnings.resetwarnings()
            warnings.showwarning = _print_warning
            sys.argv = ["crlf", *args]
            sys.modules.pop("crlf.cli", None)  # runpy runs a fresh copy as __main__, as `python -m` does
            try:
                runpy.run_module("crlf.cli", run_name="__main__", alter_sys=True)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:  # noqa: BLE001 - as the interpreter does: a traceback, exit status 1
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if signal_when is not None and signal_when[0].exists():
            os.kill(pid, signal_when[1])
            signal_when = None
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise TimeoutError(f"crlf {' '.join(args)} did not finish in {timeout} s:\n{log.read_text()}")
        time.sleep(0.05)
    returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    return ChildResult(returncode, log.read_text() if log.exists() else "")


def pretrain_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["pretrain", "--config", str(SEED_CONFIG), "--data", str(data), "--out", str(out), *TINY_FLAGS, *extra]


def fork_pretrain(data: Path, out: Path, cache: Path, *extra: str, signal_when: tuple[Path, int] | None = None,
                  **faults: int | str) -> ChildResult:
    log = out.parent / f"{out.name}.{time.monotonic_ns()}.log"
    return fork_cli(pretrain_args(data, out, *extra), cache, log, signal_when=signal_when, **faults)


# ---------------------------------------------------------------------------------------------------
# Comparing runs


def run_weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "encoder.safetensors"))


def step_losses(run: Path) -> np.ndarray:
    return np.load(run / "step_losses.npy", allow_pickle=False)


def checkpoint_step(path: Path) -> int:
    from crlf.training.checkpoint import load_checkpoint_file

    return load_checkpoint_file(path)["progress"]["global_step"]


def assert_same_run(run: Path, reference: dict) -> None:
    """``run`` ended with exactly the reference's weights (torch.equal) and per-step losses."""
    import torch

    from crlf.training.checkpoint import LATEST, load_checkpoint_file

    losses = step_losses(run)
    assert losses.shape == reference["losses"].shape, (losses, reference["losses"])
    assert np.array_equal(losses, reference["losses"]), (losses, reference["losses"])
    weights = run_weights(run)
    assert weights.keys() == reference["weights"].keys()
    different = [k for k in weights if not torch.equal(weights[k], reference["weights"][k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    state = load_checkpoint_file(run / LATEST)
    assert state["method"].keys() == reference["method"].keys()
    different = [k for k, v in state["method"].items() if not torch.equal(v, reference["method"][k])]
    assert not different, f"checkpoint method state: {len(different)} tensors differ, e.g. {different[:3]}"
    assert state["progress"]["global_step"] == len(reference["losses"])
    # The online linear probe's per-epoch accuracy (its weights and optimiser are in the checkpoint): the same too.
    assert probe_history(run) == reference.get("probe", probe_history(run)), (probe_history(run), reference["probe"])


def probe_history(run: Path) -> list:
    import json

    return [json.loads(line).get("online_probe_top1") for line in (run / "metrics.jsonl").read_text().splitlines()]


def load_reference(run: Path) -> dict:
    from crlf.training.checkpoint import LATEST, load_checkpoint_file

    state = load_checkpoint_file(run / LATEST)
    return {"weights": run_weights(run), "losses": step_losses(run), "method": state["method"],
            "probe": probe_history(run)}


def drop_large_files(folder: Path, limit: int = 1 << 20) -> None:
    """Delete checkpoints and weights (100+ MB each) a test left behind; pytest keeps its temp folders."""
    for path in folder.rglob("*"):
        if path.is_file() and path.stat().st_size > limit:
            path.unlink()


def make_reference(base: Path) -> dict:
    """A tiny image folder, a shared decode cache, and the uninterrupted reference run in ``base``."""
    data, cache = write_tiny_folder(base / "data"), base / "cache"
    result = fork_pretrain(data, base / "reference", cache)
    assert result.returncode == 0, result.output
    assert "collapse" not in result.output  # a healthy run does not warn
    return {"data": data, "cache": cache, "reference": load_reference(base / "reference"), "base": base}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Module-scoped: a tiny image folder, a shared decode cache and the uninterrupted reference run."""
    base = tmp_path_factory.mktemp("reference")
    yield make_reference(base)
    drop_large_files(base)
