"""Several processes (gloo, 2 ranks on this CPU): every method's distributed step equals the single-process step
on the same global batch and the same views, and `crlf pretrain --nproc 2` resumes, stops and fails as promised.

The equality test runs every registered method in one process group of 2 ranks forked from this process (torch
already imported), each with a small conv net as backbone: the methods' cross-process logic (gathered
negatives with their gradient, Sinkhorn on gathered scores, queues fed from every rank, the DINO centre,
global BatchNorm) is under test, not the ResNet. A deliberately wrong gather (backward: the local slice only)
fails the same comparison, so the test does catch the scaled-gradient bug.

The job tests are real `crlf pretrain --nproc 2` processes (forked, see helpers_faults), on 8 tiny images,
batch 4, 2 epochs, ImageNet stem, small heads.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback

import numpy as np
import pytest
import torch
from torch import nn

from crlf import collectives
from crlf.config import apply_overrides, load_config
from crlf.methods import METHOD_NAMES, method_class
from crlf.methods.base import StepClock
from crlf.models.timm_encoder import vit_encoder
from crlf.training import data_parallel, distributed
from crlf.training.checkpoint import LATEST, load_checkpoint_file
from crlf.training.optim import build_optimizer
from crlf.training.step import train_step
from test_methods import EVERY_3, SMALL

from conftest import REPO
from helpers_faults import (
    SEED_CONFIG,
    TINY_FLAGS,
    ChildResult,
    assert_same_run,
    drop_large_files,
    fault_env,
    fork_cli,
    fork_pretrain,
    load_reference,
    write_tiny_folder,
)

WORLD = 2
BATCH = 8  # the global batch: 4 images per rank
CLOCKS = (StepClock(0.0, 10), StepClock(5.0, 10))  # step 1: prototypes / last layer frozen; step 2: not
MULTI_CROP = ("swav", "dino")  # 2 global views of 16 px and 2 local ones of 8 px; the others: 2 views of 16 px
MANY_VIEWS = ("fastsiam",)  # 3 global views of 16 px (it needs at least 3)


class TinyBackbone(nn.Module):
    """A small conv net with BatchNorm, standing in for the ResNet: ``(B, 3, S, S) -> (B, 16)``."""

    feature_dim = 16

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.net(x)


def tiny_config(name: str):
    crops = ([{"count": 2}, {"size": 8, "count": 2}] if name in MULTI_CROP else
             [{"count": 3}] if name in MANY_VIEWS else [{"count": 2}])
    return apply_overrides(load_config(REPO / "configs" / "methods" / f"{name}.yaml"), {
        "data": {"image_size": 16}, "augment": {"crops": crops},
        "model": {"proj_hidden_dim": 32, "proj_out_dim": 16, "pred_hidden_dim": 16, "proj_batchnorm": True},
        "method": {k: v for k, v in {"num_prototypes": 8, "queue_size": 8, "queue_start_epoch": 0}.items()  # SwAV's
                   if k in method_class(name).settings_type.keys()},  # queue joins at step 2; MoCo v2's: 8 keys
        "train": {"batch_size": BATCH, "channels_last": False, "compile": False, "precision": "fp32",
                  "sync_batchnorm": True}})


def global_views(name: str, step: int) -> list[torch.Tensor]:
    """The views of the global batch at ``step``, the same in every process: ``[(BATCH, 3, S, S)]``."""
    gen = torch.Generator().manual_seed(100 + step)
    sizes = [16, 16, 8, 8] if name in MULTI_CROP else [16, 16, 16] if name in MANY_VIEWS else [16, 16]
    return [torch.randn(BATCH, 3, s, s, generator=gen) for s in sizes]


def run_steps(name: str) -> dict:
    """Two steps of ``name`` through the loop's own step (``train_step``) and optimiser: in one process on the
    whole batch, or, in a process group, DDP on this rank's slice of it."""
    torch.manual_seed(0)
    cfg = tiny_config(name)
    cls = method_class(name)
    # A ViT-Tiny with 4x4 patches of 4 px for the methods that need patch tokens (MAE), the small conv net otherwise.
    backbone = vit_encoder("vit_tiny", 16, 4) if cls.needs_vit else TinyBackbone()
    method = cls(backbone, cfg, 64)
    optimizer = build_optimizer(cfg, method.param_groups(cfg.optim.weight_decay, cfg.optim.exclude_bias_and_norm))
    model = data_parallel.wrap(method, cfg.train.sync_batchnorm, torch.device("cpu"))
    model.train()
    losses, grads = [], []
    for step, clock in enumerate(CLOCKS):
        views = [distributed.shard(v) for v in global_views(name, step)]  # this rank's rows (all in one process)
        loss, _ = train_step(model, optimizer, views, clock)
        losses.append(loss)
        grads.append({n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None})
    return {"losses": losses, "grads": grads, "state": {k: v.clone() for k, v in method.state_dict().items()}}


def differences(got: dict, want: dict, rtol: float = 1e-4) -> list[str]:
    """What differs between two ``run_steps`` results beyond float rounding (empty: equal). A tensor is
    compared by its norm: ``|a - b| <= rtol |b| + floor``, where the floor (a millionth of the step's whole
    gradient) absorbs the rounding noise of gradients that are zero in exact arithmetic (e.g. the last bias
    before VICReg's centred statistics)."""
    def far(a: torch.Tensor, b: torch.Tensor, floor: float = 1e-7) -> bool:
        a, b = a.double(), b.double()
        return bool((a - b).norm() > rtol * b.norm() + floor)

    out = [f"loss of step {i + 1}: {a!r} vs {b!r}" for i, (a, b) in enumerate(zip(got["losses"], want["losses"]))
           if abs(a - b) > rtol * abs(b) + 1e-6]
    for i, (g, w) in enumerate(zip(got["grads"], want["grads"])):
        if g.keys() != w.keys():
            out.append(f"step {i + 1}: gradients of {sorted(g.keys() ^ w.keys())} present in one run only")
        floor = 1e-6 * float(torch.stack([v.double().norm() for v in w.values()]).norm())
        out += [f"step {i + 1}: gradient of {k}" for k in w if k in g and far(g[k], w[k], floor)]
    out += [f"state after 2 steps: {k}" for k, v in want["state"].items()
            if v.is_floating_point() and far(got["state"][k], v)]
    return out


class _WrongGather(torch.autograd.Function):
    """The bug the issue names: an all-gather whose backward returns only this rank's slice of the gradient,
    dropping what the other ranks' losses send to these rows."""

    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(WORLD)]
        torch.distributed.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        return grad.chunk(WORLD)[torch.distributed.get_rank()]


def _rank_main(rank: int, port: int, references: dict, results) -> None:
    """One of the 2 ranks: every method against its single-process reference, then the checks of the gather."""
    report: dict = {}
    try:
        torch.set_num_threads(1)
        os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(WORLD),
                           "RANK": str(rank), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(WORLD),
                           distributed.TIMEOUT_ENV: "60"})
        assert distributed.init_from_env() and distributed.world_size() == WORLD
        for name in METHOD_NAMES:
            report[name] = differences(run_steps(name), references[name])
        # gather_with_grad alone: a loss that every rank computes on the gathered rows sends each rank the sum
        # over ranks of its rows' gradient (DDP then divides by the world size).
        x = torch.full((2, 3), float(rank + 1), requires_grad=True)
        weight = torch.arange(12.0).view(4, 3)
        (distributed.gather_with_grad(x) * weight).sum().backward()
        report["gather_values"] = torch.equal(distributed.gather_with_grad(x.detach()),
                                              torch.tensor([[1.0] * 3] * 2 + [[2.0] * 3] * 2))
        report["gather_grad"] = torch.equal(x.grad, WORLD * weight[2 * rank:2 * rank + 2])
        # The wrong gather in SimCLR's place must make the very same comparison fail.
        collectives._GatherWithGrad = _WrongGather  # where the methods' gather lives
        report["wrong_gather"] = differences(run_steps("simclr"), references["simclr"])
        distributed.shutdown()
    except BaseException:  # noqa: BLE001 - reported to the test, which fails with the traceback
        report["error"] = traceback.format_exc()
    results.put((rank, report))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_method_two_processes_equal_one_process_loss_gradients_and_state():
    """Loss and parameter gradients of each step, and the whole method state after 2 steps (weights, momentum
    targets, queues, centre, BatchNorm statistics), of 2 gloo ranks on 4 images each equal those of one process
    on the 8 images and the same views, for every method (float tolerance: 1e-4 relative)."""
    references = {name: run_steps(name) for name in METHOD_NAMES}  # one process, no process group
    ctx = multiprocessing.get_context("fork")  # the ranks start with torch and the references in memory
    results = ctx.Queue()
    port = _free_port()
    ranks = [ctx.Process(target=_rank_main, args=(r, port, references, results)) for r in range(WORLD)]
    for p in ranks:
        p.start()
    try:
        reports = dict(results.get(timeout=180) for _ in ranks)
    finally:
        for p in ranks:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    for rank, report in sorted(reports.items()):
        assert "error" not in report, f"rank {rank}:\n{report['error']}"
        for name in METHOD_NAMES:
            assert report[name] == [], f"rank {rank}, {name}: {report[name]}"
        assert report["gather_values"] and report["gather_grad"], report
        assert any("gradient of backbone" in d for d in report["wrong_gather"]), report["wrong_gather"]


# ---------------------------------------------------------------------------------------------------------
# `crlf pretrain --nproc 2`: the job around the step


def nproc_pretrain(tiny_data, out, *extra: str, nproc: str = "2", **faults) -> ChildResult:
    args = ["pretrain", "--config", str(SEED_CONFIG), "--data", str(tiny_data["data"]), "--out", str(out),
            *TINY_FLAGS, *SMALL, "--nproc", nproc, *extra]
    signal_when = faults.pop("signal_when", None)
    log = out.parent / f"{out.name}.{time.monotonic_ns()}.log"
    return fork_cli(args, tiny_data["cache"], log, signal_when=signal_when, **faults)


def no_partial_writes(run) -> bool:
    return not [p for p in run.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp")
    yield {"data": write_tiny_folder(base / "data"), "cache": base / "cache", "base": base}
    drop_large_files(base)


def test_a_killed_rank_stops_the_job_naming_it_and_the_run_resumes_exactly(tiny_data, tmp_path):
    """Rank 1 SIGKILLed after step 4 (before that step's checkpoint): rank 0 stops instead of waiting for it, the
    launcher names the rank and the resume command (exit 1), nothing is half-written, and `--resume` with 2
    processes ends exactly like the uninterrupted run; resuming in 1 process carries on and says it is not
    bit-exact."""
    reference = nproc_pretrain(tiny_data, tmp_path / "reference", *EVERY_3)
    assert reference.returncode == 0, reference.output
    assert reference.output.count("pretraining done") == 1, reference.output  # one line per job, not per rank
    assert json.loads((tmp_path / "reference" / "config.json").read_text())["world_size"] == 2
    expected = load_reference(tmp_path / "reference")
    shutil.rmtree(tmp_path / "reference")

    run = tmp_path / "run"
    start = time.monotonic()
    killed = nproc_pretrain(tiny_data, run, *EVERY_3, rank=1, kill_at_step=4)
    assert killed.returncode == 1, killed.output
    assert time.monotonic() - start < 60  # rank 0 did not wait for its collective's timeout
    assert "rank 1 of 2" in killed.output and "was killed by SIGKILL" in killed.output, killed.output
    assert f"Resume with: crlf pretrain --nproc 2 --out {run} --resume" in killed.output
    assert "Traceback" not in killed.output, killed.output
    assert no_partial_writes(run)
    state = load_checkpoint_file(run / LATEST)  # the step-3 one: rank 0 wrote no other after rank 1 died
    assert state["progress"]["global_step"] == 3 and state["world_size"] == 2 and len(state["rank_rng"]) == 2
    other = tmp_path / "other"
    shutil.copytree(run, other)

    resumed = nproc_pretrain(tiny_data, run, *EVERY_3, "--resume")
    assert resumed.returncode == 0, resumed.output
    assert_same_run(run, expected)  # weights, method state and every step's loss: exactly

    # Another world size: the same global batch and data order carry on, and the run says it is not bit-exact.
    single = fork_pretrain(tiny_data["data"], other, tiny_data["cache"], *SMALL, "--resume")
    assert single.returncode == 0, single.output
    assert "checkpointed with 2 process(es) and resumes with 1" in single.output
    assert "no longer bit-exact" in single.output
    history = [json.loads(line) for line in (other / "metrics.jsonl").read_text().splitlines()]
    assert [r["steps"] for r in history] == [2, 2]  # batch 4 of 8 images, as with 2 processes


def test_sigterm_to_the_launcher_checkpoints_and_exits_143(tiny_data, tmp_path):
    run = tmp_path / "run"
    result = nproc_pretrain(tiny_data, run, "--epochs", "40", signal_when=(run / "metrics.jsonl", signal.SIGTERM))
    assert result.returncode == 143, result.output
    assert "a checkpoint was written" in result.output and "--nproc 2" in result.output, result.output
    state = load_checkpoint_file(run / LATEST)
    assert state["world_size"] == 2 and 2 <= state["progress"]["global_step"] < 80
    assert no_partial_writes(run)


def test_nproc_usage_errors_exit_2(tiny_data, tmp_path, capsys):
    from crlf.cli import main

    args = ["pretrain", "--config", str(SEED_CONFIG), "--data", str(tiny_data["data"]), *TINY_FLAGS]
    assert main([*args, "--out", str(tmp_path / "a"), "--nproc", "3"]) == 2
    assert "must divide evenly over --nproc 3" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "b"), "--nproc", "0"]) == 2
    assert "--nproc must be >= 1" in capsys.readouterr().err


def test_worker_argv_drops_nproc_and_keeps_the_rest():
    from crlf.training.launch import worker_argv

    assert worker_argv(["run", "--nproc", "2", "--out", "r", "--nproc=4", "--epochs", "3"]) == [
        "pretrain", "--out", "r", "--epochs", "3"]


@pytest.mark.slow
def test_torchrun_with_fresh_interpreters_equals_crlf_nproc(tiny_data, tmp_path):
    """`torchrun --standalone --nproc-per-node 2 -m crlf pretrain ...` (new interpreters, as a user runs it) ends
    exactly where `crlf pretrain --nproc 2` does: the same world size gives the same run."""
    reference = nproc_pretrain(tiny_data, tmp_path / "reference")
    assert reference.returncode == 0, reference.output
    run = tmp_path / "torchrun"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "crlf",
           "pretrain", "--config", str(SEED_CONFIG), "--data", str(tiny_data["data"]), "--out", str(run),
           *TINY_FLAGS, *SMALL]
    result = subprocess.run(cmd, cwd=REPO, env=fault_env(tiny_data["cache"]), capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_same_run(run, load_reference(tmp_path / "reference"))


def test_a_budget_with_two_processes_ends_with_every_rank_on_the_same_plan(tiny_data, tmp_path):
    """--budget under --nproc 2: rank 0's clock re-plans for both ranks and the out-of-budget check is agreed,
    so both run the same steps and the job ends (a disagreement would hang a collective)."""
    run = tmp_path / "run"
    # 24 s: timing the steps before the plan took 11.5 s and one step 1.84 s on one thread of SSE4.1 kernels
    # on a busy machine; a budget below that is (rightly) refused as too small to train one step.
    result = nproc_pretrain(tiny_data, run, "--budget", "0.4", "--set", "train.epochs=1000")
    assert result.returncode == 0, result.output
    record = json.loads((run / "budget_plan.json").read_text())
    steps = len(np.load(run / "step_losses.npy"))
    assert steps == record["plan"]["total_steps"] > 0
    assert record["spent_s"] > 0 and record["plan"]["budget_s"] == 24.0
