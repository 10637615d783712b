"""The pretraining loop: seeded, resumable at any step, with progress, metrics and atomic checkpoints.

Per step: index a batch of uint8 images (``randperm``), build two views on the device, run the encoder
once on both views (BatchNorm sees them together), project, NT-Xent in fp32, optimiser step.
No DataLoader: the decoded dataset is a single uint8 tensor, and on 2 CPU cores worker processes
would only fight the model for the cores.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from crlf import faults
from crlf.checkpoint import (
    LATEST,
    PREVIOUS,
    find_resumable,
    remove_partial_writes,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from crlf.config import Config, apply_overrides, save_config, to_dict
from crlf.data.augment import build_augment, normalize
from crlf.data.sources import Dataset, balanced_subset, load_dataset
from crlf.errors import Interrupted, TrainingStopped, UsageError
from crlf.export import export_encoder, save_array
from crlf.io import atomic_write_text
from crlf.methods.simclr import NTXentLoss
from crlf.models.encoder import ResNetEncoder
from crlf.models.heads import ProjectionHead
from crlf.runtime import environment_record, flush_denormals, resolve_device

COLLAPSE_STD_FRACTION = 0.1  # warn when the embedding std falls below 10 % of a uniform spread (1/sqrt(D))


@dataclass
class Progress:
    """Everything that changes during training, besides module and optimiser state."""

    epoch: int = 0  # epochs finished
    step: int = 0  # steps finished within the current epoch
    global_step: int = 0
    perm: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))  # this epoch's order
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per finished epoch
    step_losses: list[float] = field(default_factory=list)
    train_time_s: float = 0.0
    epoch_loss_sum: float = 0.0
    epoch_std_sum: float = 0.0
    epoch_time_s: float = 0.0


def build_models(cfg: Config) -> tuple[ResNetEncoder, ProjectionHead]:
    encoder = ResNetEncoder(cfg.model.arch, cfg.model.stem)
    head = ProjectionHead(encoder.feature_dim, cfg.model.proj_hidden_dim, cfg.model.proj_out_dim,
                          cfg.model.proj_dropout, cfg.model.proj_batchnorm)
    return encoder, head


def build_training_modules(cfg: Config, device: torch.device | str = "cpu"
                           ) -> tuple[ResNetEncoder, ProjectionHead, torch.optim.Optimizer]:
    """Encoder and head on ``device`` (encoder in the configured memory layout) and their optimiser: the
    training step's modules, shared by the loop and the benchmarks that time it."""
    encoder, head = build_models(cfg)
    encoder.to(device)
    head.to(device)
    if cfg.train.channels_last:
        encoder.to(memory_format=torch.channels_last)
    return encoder, head, build_optimizer(cfg, list(encoder.parameters()) + list(head.parameters()))


def build_optimizer(cfg: Config, params) -> torch.optim.Optimizer:
    """The configured optimiser, in its fused form where torch has one for the device: one kernel over all
    parameters instead of a loop (ResNet-18 Adam step on this 2-core CPU: ~76 ms foreach vs ~18 ms fused)."""
    o = cfg.optim
    params = list(params)
    if o.name == "adam":
        make = lambda **kw: torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay, **kw)  # noqa: E731
    elif o.name == "adamw":
        make = lambda **kw: torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, **kw)  # noqa: E731
    else:
        make = lambda **kw: torch.optim.SGD(params, lr=o.lr, momentum=o.momentum,  # noqa: E731
                                            weight_decay=o.weight_decay, nesterov=True, **kw)
    try:
        return make(fused=True)
    except (RuntimeError, ValueError):  # no fused kernel for this device or dtype: torch's default
        return make()


def learning_rate(cfg: Config, global_step: int, steps_per_epoch: int) -> float:
    """Linear warm-up, then constant or cosine decay to zero, per step."""
    total = cfg.train.epochs * steps_per_epoch
    warmup = int(round(cfg.optim.warmup_epochs * steps_per_epoch))
    if global_step < warmup:
        return cfg.optim.lr * (global_step + 1) / warmup
    if cfg.optim.schedule == "constant":
        return cfg.optim.lr
    progress = (global_step - warmup) / max(1, total - warmup)
    return cfg.optim.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def view_size(cfg: Config, epoch: int) -> int:
    """Side of the views in ``epoch`` (0-based): low resolution first if progressive resizing is on."""
    t = cfg.train
    return t.low_res_size if epoch < t.low_res_epochs else cfg.data.image_size


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed + 1)  # the augmentation / permutation stream


class _StopSignals:
    """SIGINT/SIGTERM only set a flag: the loop finishes its step, checkpoints, then stops."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def prepare_run_dir(run_dir: Path, resume: bool) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    held = [name for name in (LATEST, PREVIOUS) if (run_dir / name).exists()]  # PREVIOUS alone: killed mid-save
    if not resume and held:
        raise UsageError(
            f"'{run_dir}' already holds a run ({held[0]}). Pass --resume to continue it, or choose a new --out; "
            f"nothing was overwritten."
        )
    if resume:
        remove_partial_writes(run_dir)  # temp files of a process killed mid-write


def load_training_data(cfg: Config, progress: bool = True) -> tuple[Dataset, torch.Tensor, np.ndarray]:
    dataset = load_dataset(cfg.data.source, cfg.data.image_size, cfg.data.on_bad_image, progress=progress)
    train = balanced_subset(dataset.train, cfg.data.limit, seed=cfg.train.seed)
    if len(train) < cfg.train.batch_size:
        raise UsageError(
            f"the training split has {len(train)} images, fewer than train.batch_size={cfg.train.batch_size}; "
            f"lower --batch-size or raise --limit."
        )
    return dataset, torch.from_numpy(train.images), train.labels  # (N, 3, H, W) uint8, (N,) int64


def pretrain(cfg: Config, run_dir: Path, resume: bool | Path = False, progress: bool = True,
             cli_overrides: dict | None = None) -> Path:
    """Pretrain an encoder into ``run_dir``; returns ``run_dir``. ``resume`` is True or a checkpoint path."""
    run_dir = Path(run_dir)
    prepare_run_dir(run_dir, bool(resume))
    checkpoint = None
    if resume:
        explicit = resume if isinstance(resume, Path) else None
        checkpoint, checkpoint_path = find_resumable(run_dir, explicit)
        from crlf.config import Config as _Config  # the run's own config, then any new flags (e.g. --epochs)

        cfg = apply_overrides(_Config(), checkpoint["config"], origin=f"'{checkpoint_path}'")
        if cli_overrides:
            cfg = apply_overrides(cfg, cli_overrides, origin="the command line")
    flush_denormals()  # no-op if the CLI already did it; from Python, best called before any torch work
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    aug_gen = seed_everything(cfg.train.seed)
    dataset, images, labels = load_training_data(cfg, progress)
    if dataset.skipped:
        atomic_write_text(run_dir / "skipped_images.txt", "".join(f"{p}\t{why}\n" for p, why in dataset.skipped))
    images = images.to(device)  # resident on the device as uint8: 150 MB for CIFAR-10
    save_config(cfg, run_dir / "config.yaml")

    encoder, head, optimizer = build_training_modules(cfg, device)
    state = Progress()
    if checkpoint is not None:
        encoder.load_state_dict(checkpoint["encoder"])
        head.load_state_dict(checkpoint["head"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        restore_rng_state(checkpoint["rng"], aug_gen)
        p = checkpoint["progress"]
        state = Progress(p["epoch"], p["step"], p["global_step"], checkpoint["perm"], list(p["history"]),
                         checkpoint["step_losses"].tolist(), p["train_time_s"], p["epoch_loss_sum"],
                         p["epoch_std_sum"], p["epoch_time_s"])
    forward_encoder = torch.compile(encoder) if cfg.train.compile else encoder
    augment = build_augment(cfg.augment, cfg.data.image_size)
    loss_fn = NTXentLoss(cfg.method.temperature)
    n, batch = len(images), cfg.train.batch_size
    steps_per_epoch = n // batch  # drop the last partial batch: every step sees the same number of negatives
    autocast_dtype = torch.bfloat16 if cfg.train.precision == "bf16" else None
    env = environment_record(device)

    def checkpoint_state() -> dict[str, Any]:
        _stop_if_not_finite({"encoder": encoder, "head": head}, state, lr, run_dir, resume_hint())
        return {
            "config": to_dict(cfg), "encoder": encoder.state_dict(), "head": head.state_dict(),
            "optimizer": optimizer.state_dict(), "rng": rng_state(aug_gen), "perm": state.perm,
            "step_losses": torch.tensor(state.step_losses, dtype=torch.float64),
            "progress": {"epoch": state.epoch, "step": state.step, "global_step": state.global_step,
                         "history": state.history, "train_time_s": state.train_time_s,
                         "epoch_loss_sum": state.epoch_loss_sum, "epoch_std_sum": state.epoch_std_sum,
                         "epoch_time_s": state.epoch_time_s},
        }

    def resume_hint() -> str:
        return f"crlf pretrain --out {run_dir} --resume"

    encoder.train()
    head.train()
    with _StopSignals() as stop:
        while state.epoch < cfg.train.epochs:
            if state.step == 0:
                state.perm = torch.randperm(n, generator=aug_gen)
            augment.out_size = view_size(cfg, state.epoch)
            bar = tqdm(total=steps_per_epoch, initial=state.step, desc=f"epoch {state.epoch + 1}/{cfg.train.epochs}",
                       unit="step", disable=not progress, dynamic_ncols=True)
            while state.step < steps_per_epoch:
                t0 = time.perf_counter()
                lr = learning_rate(cfg, state.global_step, steps_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                idx = state.perm[state.step * batch:(state.step + 1) * batch].to(images.device)
                with _stop_on_out_of_memory(state, batch, device, run_dir, resume_hint()):
                    faults.maybe_oom(state.global_step, device)
                    v1, v2 = augment(images[idx], aug_gen)  # (B, 3, S, S) twice
                    views = torch.cat([v1, v2])  # (2B, 3, S, S): one forward pass, BatchNorm sees both views
                    if cfg.train.channels_last:
                        views = views.contiguous(memory_format=torch.channels_last)
                    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                        enabled=autocast_dtype is not None):
                        z = head(forward_encoder(views))  # (2B, D)
                    z = z.float()
                    loss = loss_fn(z[:batch], z[batch:])
                    loss_value = faults.maybe_poison_loss(float(loss.detach()), state.global_step)
                    if not math.isfinite(loss_value):
                        raise TrainingStopped(
                            f"loss became {loss_value} at epoch {state.epoch + 1} step {state.step + 1} "
                            f"(global step {state.global_step + 1}, lr {lr:g}); training stopped before the update. "
                            f"The last good checkpoint in '{run_dir}' is kept. Lower --lr or raise --temperature, "
                            f"then resume with: {resume_hint()}"
                        )
                    faults.maybe_signal(state.global_step)  # tests: a signal arriving mid-step
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                emb_std = float(z.detach()[:batch].std(0).mean())
                dt = time.perf_counter() - t0
                state.step += 1
                state.global_step += 1
                state.step_losses.append(loss_value)
                state.epoch_loss_sum += loss_value
                state.epoch_std_sum += emb_std
                state.epoch_time_s += dt
                state.train_time_s += dt
                bar.set_postfix(loss=f"{loss_value:.3f}", img_s=f"{batch / dt:.0f}", refresh=False)
                bar.update(1)
                faults.maybe_kill(state.global_step)
                if state.step < steps_per_epoch:
                    every = cfg.train.checkpoint_every_steps
                    if (every and state.global_step % every == 0) or stop.received:
                        save_checkpoint(run_dir, checkpoint_state())
                    if stop.received:
                        bar.close()
                        _raise_interrupted(stop.received, state, resume_hint())
            bar.close()
            record = _finish_epoch(state, steps_per_epoch, batch, lr, cfg)
            if cfg.train.eval_every and (state.epoch + 1) % cfg.train.eval_every == 0 and labels.min() >= 0:
                record["knn_top1"] = round(knn_monitor(encoder, images, labels, cfg), 4)
            state.history.append(record)
            state.epoch += 1
            state.step, state.epoch_loss_sum, state.epoch_std_sum, state.epoch_time_s = 0, 0.0, 0.0, 0.0
            _write_metrics(run_dir, state)
            save_checkpoint(run_dir, checkpoint_state())
            faults.maybe_kill_after_checkpoint(state.epoch)
            if progress:
                knn = f", kNN monitor {record['knn_top1']:.1%}" if "knn_top1" in record else ""
                tqdm.write(f"epoch {record['epoch']}: loss {record['loss']:.4f}, {record['images_per_s']:.0f} img/s, "
                           f"{record['epoch_time_s']:.0f} s{knn}")
            if stop.received:
                _raise_interrupted(stop.received, state, resume_hint())

    export_encoder(encoder, cfg, run_dir, extra={"data": dataset.description, "epochs": state.epoch,
                                                  "train_time_s": round(state.train_time_s, 1), **env})
    return run_dir


MONITOR_BANK, MONITOR_QUERIES = 5000, 1000


def knn_monitor(encoder: ResNetEncoder, images: torch.Tensor, labels: np.ndarray, cfg: Config) -> float:
    """A cheap kNN top-1 while pretraining, to see learning (or collapse) early.

    Both the bank and the queries are fixed, disjoint parts of the *training* split (labels are used for
    this number only): the test split stays unseen until ``crlf evaluate``. It draws no random numbers,
    so runs with and without the monitor train identically.
    """
    from crlf.evaluate import knn_predict

    order = np.random.default_rng(12345).permutation(len(images))
    n_query = min(MONITOR_QUERIES, len(images) // 5)
    query_idx, bank_idx = order[:n_query], order[n_query:n_query + MONITOR_BANK]
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            def features(idx):  # (n, D)
                out = [encoder(normalize(images[torch.from_numpy(idx[i:i + 512]).to(images.device)],
                                         cfg.augment.mean, cfg.augment.std)).float().cpu()
                       for i in range(0, len(idx), 512)]
                return torch.cat(out).numpy()

            bank, queries = features(bank_idx), features(query_idx)
    finally:
        encoder.train(was_training)
    num_classes = int(labels.max()) + 1
    preds = knn_predict(bank, labels[bank_idx], queries, num_classes, ks=(min(cfg.eval.knn_k, len(bank_idx)),),
                        temperature=cfg.eval.knn_temperature)
    return float((next(iter(preds.values())) == labels[query_idx]).mean())


def _finish_epoch(state: Progress, steps: int, batch: int, lr: float, cfg: Config) -> dict[str, Any]:
    mean_std = state.epoch_std_sum / steps
    uniform_std = 1 / math.sqrt(cfg.model.proj_out_dim)
    if mean_std < COLLAPSE_STD_FRACTION * uniform_std:
        warnings.warn(
            f"possible collapse at epoch {state.epoch + 1}: the std of the L2-normalised embeddings is "
            f"{mean_std:.4f} (a uniform spread gives {uniform_std:.3f}). Check the learning rate and temperature.",
            stacklevel=2,
        )
    return {
        "epoch": state.epoch + 1,
        "loss": state.epoch_loss_sum / steps,
        "lr": lr,
        "epoch_time_s": round(state.epoch_time_s, 3),
        "images_per_s": round(steps * batch / state.epoch_time_s, 1),
        "embedding_std": round(mean_std, 5),
        "steps": steps,
        "view_size": view_size(cfg, state.epoch),
    }


def _write_metrics(run_dir: Path, state: Progress) -> None:
    # Rewritten whole (atomically) from the checkpointed history: a resumed run never holds duplicate lines.
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in state.history))
    save_array(run_dir / "step_losses.npy", np.asarray(state.step_losses, dtype=np.float64))


def _stop_if_not_finite(modules: dict[str, torch.nn.Module], state: Progress, lr: float, run_dir: Path,
                        hint: str) -> None:
    """Never checkpoint inf/nan weights: a loss can stay finite for a step after the weights overflow
    (e.g. a BatchNorm running variance), and that checkpoint would replace the last good one."""
    for part, module in modules.items():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                loss = state.step_losses[-1] if state.step_losses else float("nan")
                raise TrainingStopped(
                    f"the weights became non-finite by global step {state.global_step} ({part} '{name}' holds "
                    f"inf/nan; last loss {loss:.4g}, lr {lr:g}); training stopped without saving them. The last "
                    f"good checkpoint in '{run_dir}' is kept. Lower --lr or raise --temperature, then resume "
                    f"with: {hint}"
                )


@contextlib.contextmanager
def _stop_on_out_of_memory(state: Progress, batch: int, device: torch.device, run_dir: Path, hint: str):
    """Out of memory in a step: stop with the batch size and a fix. The batch is never shrunk silently."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        raise TrainingStopped(
            f"out of memory on {device} at epoch {state.epoch + 1} step {state.step + 1} with batch size {batch} "
            f"({str(exc).splitlines()[0] if str(exc) else 'no details'}). CRLF never shrinks the batch on its own: "
            f"rerun with a smaller batch, e.g. --batch-size {max(2, batch // 2)} (or --precision bf16 on a GPU), "
            f"in a new --out; or free the device memory and resume with: {hint}. The last checkpoint in "
            f"'{run_dir}' is unchanged."
        ) from None


def _raise_interrupted(signum: int, state: Progress, hint: str) -> None:
    name, code = ("SIGINT", 130) if signum == signal.SIGINT else ("SIGTERM", 143)
    raise Interrupted(
        f"{name}: interrupted at epoch {state.epoch + 1} step {state.step}; a checkpoint was written. "
        f"Resume with: {hint}", code)
