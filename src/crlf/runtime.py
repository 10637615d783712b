"""Where code runs: device choice, thread settings, and the facts every metrics file records."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch

from crlf.errors import UsageError


def flush_denormals() -> bool:
    """Treat subnormal floats (below ~1.2e-38) as zero in CPU arithmetic (x86 FTZ/DAZ); returns whether
    the CPU supports it.

    Why: after a few epochs of Adam with weight decay, weights whose gradient is always zero shrink into
    the subnormal range (e.g. the off-centre taps of 3x3 convolutions that run on 1x1 maps: layer4 of
    the ImageNet stem at 32 px, layer3 too at 16 px). 35 % of the encoder's weights were subnormal by
    epoch 8 of a fast-cpu run (31 % at the end of the seed run), which made the backward pass ~1.5x and
    the fused Adam step ~13x slower (subnormals take a slow path in x86 float units).
    Flushing them to zero changes no result that matters and keeps every epoch as fast as the first.
    Call it before torch starts its CPU thread pool: the worker threads inherit the setting from the
    thread that creates them.
    """
    return torch.set_flush_denormal(True)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks cuda > mps > cpu; an explicit device that is not there is a usage error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device '{name}'; use auto, cpu, cuda, cuda:N or mps.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device '{name}' was asked for but CUDA is not available here; use --device cpu or auto.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"device '{name}' was asked for but Apple MPS is not available here; use --device cpu or auto.")
    return device


def hardware_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads" + (" (MPS)" if device.type == "mps" else "")


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=Path(__file__).resolve().parent)
        if out.returncode == 0:
            return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def environment_record(device: torch.device) -> dict:
    return {"device": str(device), "hardware": hardware_description(device), "torch": torch.__version__,
            "python": platform.python_version(), "git_commit": git_commit()}
