"""Guarantees 1 and 4: a run hard-killed at any moment and restarted with ``--resume`` ends exactly like an
uninterrupted run; a corrupt latest checkpoint falls back to the previous one with a warning; an explicitly
named corrupt checkpoint, or nothing to resume, stops with a clear message. Never a silent restart.

Each run is ``crlf pretrain`` (``crlf.cli`` run as ``__main__``) in its own forked process, SIGKILLed at a
point chosen by a ``CRLF_FAULT_*`` variable (see ``crlf.training.hooks``); 3 steps per epoch, 2 epochs.
One test does the same with fresh ``python -m crlf.cli`` interpreters (slow: ~10 s of imports each).
"""

from __future__ import annotations

import random
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from crlf.errors import UsageError
from crlf.training.checkpoint import (
    LATEST,
    NEXT,
    PREVIOUS,
    find_resumable,
    load_checkpoint_file,
    save_checkpoint,
)

from helpers_faults import (
    assert_same_run,
    checkpoint_step,
    drop_large_files,
    fork_pretrain,
    run_pretrain,
    tiny,  # noqa: F401 - the shared module fixture
)


@pytest.fixture
def work(tmp_path):
    yield tmp_path
    drop_large_files(tmp_path)


def temp_files(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.startswith("."))


# (id, extra flags, fault, global step of the checkpoint the resume starts from, slow?)
# 2 steps per epoch, 2 epochs. With --checkpoint-every-steps 3 the one mid-epoch checkpoint is at global
# step 3 (epoch 2, step 1); a kill at step k comes after step k and before any checkpoint of step k.
EVERY_3 = ["--checkpoint-every-steps", "3"]
KILLS = [
    ("mid-epoch, from a mid-epoch checkpoint", EVERY_3, {"kill_at_step": 4}, 3, False),
    ("mid-epoch, no mid-epoch checkpoint: replays the epoch", [], {"kill_at_step": 3}, 2, False),
    ("right after an epoch checkpoint", [], {"kill_after_epoch": 1}, 2, False),
    ("during a checkpoint write (temp file half written)", EVERY_3, {"kill_in_checkpoint_write": 3}, 2, False),
    ("between the renames of a checkpoint save", EVERY_3, {"kill_in_checkpoint_rotate": 3}, 2, True),
    ("last step of an epoch, before its checkpoint", ["--checkpoint-every-steps", "1"], {"kill_at_step": 2}, 1, True),
]


@pytest.mark.parametrize(
    "flags, fault, resumes_from",
    [pytest.param(f, fault, step, id=name, marks=[pytest.mark.slow] if slow else []) for name, f, fault, step, slow in KILLS],
)
def test_sigkill_then_resume_is_exact(tiny, work, flags, fault, resumes_from):
    run = work / "run"
    killed = fork_pretrain(tiny["data"], run, tiny["cache"], *flags, **fault)
    assert killed.killed, f"expected a SIGKILL, got exit {killed.returncode}: {killed.output}"
    assert not (run / "encoder.safetensors").exists()
    newest = run / LATEST if (run / LATEST).exists() else run / PREVIOUS
    assert checkpoint_step(newest) == resumes_from
    if "kill_in_checkpoint_write" in fault:
        leftovers = temp_files(run)
        assert leftovers and all(name.endswith(".tmp") for name in leftovers), leftovers  # the half-written file
        assert 0 < (run / leftovers[0]).stat().st_size < (run / LATEST).stat().st_size
    if "kill_in_checkpoint_rotate" in fault:
        assert not (run / LATEST).exists() and (run / NEXT).exists()

    resumed = fork_pretrain(tiny["data"], run, tiny["cache"], *flags, "--resume")
    assert resumed.returncode == 0, resumed.output
    assert_same_run(run, tiny["reference"])
    assert temp_files(run) == []  # the killed process's temp files were cleaned up
    if "kill_in_checkpoint_rotate" in fault:
        assert f"no {LATEST}" in resumed.output  # a warning says which checkpoint it resumed from


def test_resume_after_a_kill_before_any_checkpoint_refuses(tiny, work):
    """Killed in epoch 1 with no checkpoint yet: --resume says there is nothing to resume (exit 2)."""
    run = work / "run"
    assert fork_pretrain(tiny["data"], run, tiny["cache"], kill_at_step=1).killed
    resumed = fork_pretrain(tiny["data"], run, tiny["cache"], "--resume")
    assert resumed.returncode == 2, resumed.output
    assert "nothing to resume" in resumed.output and str(run) in resumed.output
    assert not (run / LATEST).exists() and not (run / "encoder.safetensors").exists()


@pytest.mark.slow
def test_sigkill_then_resume_is_exact_with_fresh_interpreters(tiny, work):
    """The same guarantee through real ``python -m crlf.cli pretrain`` subprocesses."""
    run = work / "run"
    killed = run_pretrain(tiny["data"], run, tiny["cache"], *EVERY_3, kill_at_step=4)
    assert killed.returncode == -9, killed.stderr
    resumed = run_pretrain(tiny["data"], run, tiny["cache"], *EVERY_3, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(run, tiny["reference"])


# ---------------------------------------------------------------------------------------------------
# Guarantee 4: corrupt checkpoints


def corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 3])
    elif how == "zero bytes":
        path.write_bytes(b"")
    elif how == "random bytes":
        path.write_bytes(random.Random(len(data)).randbytes(4096))
    else:
        raise ValueError(how)


CORRUPTIONS = ["truncated", "zero bytes", "random bytes"]


def small_state(step: int) -> dict:
    return {"method": {"w": torch.full((3,), float(step))}, "config": {},
            "progress": {"global_step": step}}


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_corrupt_latest_falls_back_to_previous_with_a_warning(tmp_path, how):
    save_checkpoint(tmp_path, small_state(1))
    save_checkpoint(tmp_path, small_state(2))
    corrupt(tmp_path / LATEST, how)
    with pytest.warns(UserWarning, match="checkpoint.pt") as record:
        state, path = find_resumable(tmp_path)
    assert path == tmp_path / PREVIOUS and state["progress"]["global_step"] == 1
    message = str(record[0].message)
    assert str(tmp_path / LATEST) in message and "older checkpoint" in message
    # The bad file is kept aside, so the next save cannot rotate it over the good checkpoint.
    assert (tmp_path / (LATEST + ".corrupt")).exists() and not (tmp_path / LATEST).exists()
    save_checkpoint(tmp_path, small_state(3))
    assert load_checkpoint_file(tmp_path / PREVIOUS)["progress"]["global_step"] == 1


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_named_corrupt_checkpoint_is_an_error(tmp_path, how):
    save_checkpoint(tmp_path, small_state(1))
    corrupt(tmp_path / LATEST, how)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback, no warning: the named file or nothing
        with pytest.raises(UsageError, match=r"checkpoint '.*checkpoint\.pt' (is|was)"):
            find_resumable(tmp_path, tmp_path / LATEST)


def test_both_checkpoints_corrupt_is_an_error(tmp_path):
    save_checkpoint(tmp_path, small_state(1))
    save_checkpoint(tmp_path, small_state(2))
    corrupt(tmp_path / LATEST, "truncated")
    corrupt(tmp_path / PREVIOUS, "zero bytes")
    with pytest.raises(UsageError, match="no usable checkpoint") as error:
        find_resumable(tmp_path)
    assert str(tmp_path / LATEST) in str(error.value) and str(tmp_path / PREVIOUS) in str(error.value)


@pytest.fixture(scope="module")
def killed_run(tiny):
    """A run SIGKILLed after global step 4 that holds checkpoints of steps 3 (latest) and 2 (previous)."""
    run = tiny["base"] / "killed"
    assert fork_pretrain(tiny["data"], run, tiny["cache"], *EVERY_3, kill_at_step=4).killed
    assert checkpoint_step(run / LATEST) == 3 and checkpoint_step(run / PREVIOUS) == 2
    return run


def test_cli_resume_with_corrupt_latest_falls_back_and_ends_exact(tiny, killed_run, work):
    run = work / "run"
    shutil.copytree(killed_run, run)
    corrupt(run / LATEST, "truncated")
    resumed = fork_pretrain(tiny["data"], run, tiny["cache"], *EVERY_3, "--resume")
    assert resumed.returncode == 0, resumed.output
    assert "crlf: warning:" in resumed.output and str(run / LATEST) in resumed.output
    assert_same_run(run, tiny["reference"])


def test_cli_resume_named_corrupt_checkpoint_exits_2(tiny, killed_run, work):
    run = work / "run"
    shutil.copytree(killed_run, run)
    corrupt(run / LATEST, "random bytes")
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}  # tensorboard/ too
    resumed = fork_pretrain(tiny["data"], run, tiny["cache"], "--resume", str(run / LATEST))
    assert resumed.returncode == 2, resumed.output
    assert f"crlf: error: checkpoint '{run / LATEST}'" in resumed.output
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before  # nothing restarted, nothing written


def test_cli_resume_with_every_checkpoint_corrupt_exits_2(tiny, killed_run, work):
    run = work / "run"
    shutil.copytree(killed_run, run)
    corrupt(run / LATEST, "zero bytes")
    corrupt(run / PREVIOUS, "truncated")
    resumed = fork_pretrain(tiny["data"], run, tiny["cache"], "--resume")
    assert resumed.returncode == 2, resumed.output
    assert "no usable checkpoint" in resumed.output
    assert not (run / "encoder.safetensors").exists()
    assert (run / LATEST).stat().st_size == 0  # left as it was, not replaced by a fresh run's checkpoint


def test_new_run_refuses_a_folder_holding_only_a_previous_checkpoint(tiny, killed_run, work):
    """Killed between the renames, only checkpoint.prev.pt exists: a run without --resume must not overwrite it."""
    run = work / "run"
    run.mkdir()
    shutil.copy(killed_run / PREVIOUS, run / PREVIOUS)
    result = fork_pretrain(tiny["data"], run, tiny["cache"])
    assert result.returncode == 2 and "--resume" in result.output, result.output


def test_resume_takes_new_recipe_flags_checked_against_the_runs_own_config(tmp_path, monkeypatch):
    """--set train.low_res_epochs=2 on resume is checked with the run's low_res_size (16), not the default (0)."""
    from crlf.cli import main

    from conftest import REPO, make_image_folder

    monkeypatch.setenv("CRLF_CACHE", str(tmp_path / "cache"))
    data = make_image_folder(tmp_path / "images", train_per_class=6, test_per_class=1)
    run = tmp_path / "run"
    flags = ["--batch-size", "8", "--device", "cpu", "--threads", "1", "--precision", "fp32", "--quiet"]
    assert main(["pretrain", "--config", str(REPO / "configs" / "fast-cpu.yaml"), "--data", str(data), "--out",
                 str(run), "--epochs", "1", "--set", "train.low_res_epochs=1", *flags]) == 0
    assert main(["pretrain", "--out", str(run), "--resume", "--epochs", "2", "--set", "train.low_res_epochs=2",
                 *flags]) == 0
    saved = (run / "config.yaml").read_text()
    assert "low_res_epochs: 2" in saved and "low_res_size: 16" in saved and "epochs: 2" in saved
