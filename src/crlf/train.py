"""The pretraining loop, one for every method: seeded, resumable at any step, with progress, metrics and
atomic checkpoints.

Per step: index a batch of uint8 images (``randperm``), build the views on the device (``augment.crops``:
two by default, or multi-crop), and hand them to :func:`crlf.step.train_step`, which runs the method
(backbone once per view size, its heads and loss in fp32), the backward pass, the optimiser and the
method's per-step hooks. No DataLoader: the decoded dataset is a single uint8 tensor, and on 2 CPU cores
worker processes would only fight the model for the cores.

Under torchrun (or ``crlf pretrain --nproc N``) the same loop runs in every process: each rank takes its slice
of the global batch, the step runs through DDP, and rank 0 alone writes files (:mod:`crlf.distributed`).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from crlf import distributed, faults
from crlf.checkpoint import (
    LATEST,
    PREVIOUS,
    find_resumable,
    load_checkpoint_file,
    remove_partial_writes,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from crlf.config import Config, apply_overrides, save_config, to_dict
from crlf.data.augment import build_augment, normalize, view_specs
from crlf.data.mapped import MappedImages, training_images
from crlf.data.sources import Dataset, load_dataset, pretraining_split
from crlf.errors import Interrupted, TrainingStopped, UsageError
from crlf.export import export_encoder, save_array
from crlf.io import atomic_write_text
from crlf.methods.base import Method, StepClock
from crlf.model_card import evaluation_gap, record_command, write_model_card
from crlf.models.encoder import ResNetEncoder
from crlf.online_probe import OnlineProbe, build_online_probe
from crlf.optim import learning_rate, set_learning_rate
from crlf.run_plan import BudgetKeeper, low_res_fraction, resolve_run_precision, start_budget_plan
from crlf.runtime import environment_record, flush_denormals, resolve_device
from crlf.step import build_training_modules, train_step  # noqa: F401 (the benchmarks' import)
from crlf.tensorboard import training_board

# The loop's time source (step times, the budget's accounting); tests replace it to inject step times.
wall_clock = time.perf_counter
# The online probe's epoch sums (Progress.epoch_log_sums, so a resumed epoch keeps them): accuracy, steps scored.
PROBE_SUMS = ("online_probe_correct_sum", "online_probe_steps")
COLLAPSE_STD_FRACTION = 0.1  # warn when the embedding spread falls below 10 % of a uniform spread (1/sqrt(D))


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
    epoch_log_sums: dict[str, float] = field(default_factory=dict)  # the method's logs, summed over the epoch
    epoch_time_s: float = 0.0
    precision: dict | None = None  # the precision probe's record (crlf.probe): resumed runs keep its choice
    budget_plan: dict | None = None  # the budget plan in force (crlf.budget), with --budget
    budget_spent_s: float = 0.0  # wall time counted against the budget: probe, steps, checkpoints

    def counters(self) -> dict[str, Any]:
        """Plain data for the checkpoint (the permutation and losses are stored as tensors beside it)."""
        return {k: v for k, v in asdict(self).items() if k not in ("perm", "step_losses")}

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> Progress:
        p = checkpoint["progress"]
        return cls(p["epoch"], p["step"], p["global_step"], checkpoint["perm"], list(p["history"]),
                   checkpoint["step_losses"].tolist(), p["train_time_s"], p["epoch_loss_sum"],
                   dict(p["epoch_log_sums"]), p["epoch_time_s"], p.get("precision"), p.get("budget_plan"),
                   p.get("budget_spent_s", 0.0))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast for ``bf16``, and for ``auto`` on a CUDA GPU that has it; fp32 (None) otherwise. The loop
    resolves ``auto`` on a CPU by measuring first (:func:`resolve_run_precision`); what is left here is the
    unmeasured rule, for the benchmarks that call it directly."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return None


def view_size(cfg: Config, epoch: int) -> int:
    """Side of the global views in ``epoch`` (0-based): low resolution first if progressive resizing is on."""
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
    if resume and distributed.is_main():
        remove_partial_writes(run_dir)  # temp files of a process killed mid-write


def load_training_data(cfg: Config, progress: bool = True
                       ) -> tuple[Dataset, torch.Tensor | MappedImages, np.ndarray]:
    """The dataset, the pretraining images (train, then any unlabeled split) and their labels (-1: none).
    The images are one uint8 tensor, or with ``data.storage`` memmap (or auto, for large data) a
    :class:`MappedImages` that reads each batch from the cache file: ``images[idx]`` works on both."""
    dataset = load_dataset(cfg.data.source, cfg.data.image_size, cfg.data.on_bad_image, progress=progress)
    train = pretraining_split(dataset, cfg.data.limit, seed=cfg.train.seed)
    if len(train) < cfg.train.batch_size:
        raise UsageError(
            f"the training split has {len(train)} images, fewer than train.batch_size={cfg.train.batch_size}; "
            f"lower --batch-size or raise --limit."
        )
    return dataset, training_images(train.images, cfg.data.storage), train.labels  # (N, 3, H, W) uint8, (N,)


def fill_cache(cfg: Config, progress: bool) -> None:
    """Decode ``data.source`` into the cache if it is not there yet (a cached source only opens its file)."""
    load_dataset(cfg.data.source, cfg.data.image_size, cfg.data.on_bad_image, progress=progress)


def pretrain(cfg: Config, run_dir: Path, resume: bool | Path = False, progress: bool = True,
             cli_overrides: dict | None = None, command: str | None = None) -> Path:
    """Pretrain an encoder into ``run_dir``; returns ``run_dir``. ``resume`` is True or a checkpoint path.
    ``command``: the command line that started (or resumed) it, for the model card."""
    run_dir = Path(run_dir)
    distributed.init_from_env()  # under torchrun: join the process group; nothing in a single process
    progress = progress and distributed.is_main()  # rank 0 alone shows progress and writes files
    prepare_run_dir(run_dir, bool(resume))
    checkpoint = None
    if resume:
        checkpoint, checkpoint_path = resumable_checkpoint(run_dir, resume)
        # The run's own config, then any new flags (e.g. --epochs).
        cfg = apply_overrides(Config(), checkpoint["config"], origin=f"'{checkpoint_path}'")
        if cli_overrides:
            cfg = apply_overrides(cfg, cli_overrides, origin="the command line")
    flush_denormals()  # no-op if the CLI already did it; from Python, best called before any torch work
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    distributed.check_batch_size(cfg.train.batch_size)  # the global batch, split evenly over the processes
    device = distributed.rank_device(resolve_device(cfg.train.device), cfg.train.threads)  # cuda -> cuda:LOCAL_RANK
    perm_gen = seed_everything(cfg.train.seed)
    aug_gen = distributed.augmentation_generator(perm_gen, cfg.train.seed)  # perm_gen itself in one process
    if distributed.is_distributed():  # rank 0 decodes and caches a new source once; the others then read the cache
        distributed.decided_on_main(lambda: fill_cache(cfg, progress))
    dataset, images, labels = load_training_data(cfg, progress)
    if dataset.skipped and distributed.is_main():
        atomic_write_text(run_dir / "skipped_images.txt", "".join(f"{p}\t{why}\n" for p, why in dataset.skipped))
    if distributed.is_main():
        save_config(cfg, run_dir / "config.yaml")

    state = Progress() if checkpoint is None else Progress.from_checkpoint(checkpoint)
    run_cfg, precision = resolve_run_precision(cfg, device, state, len(images), progress)  # auto resolved
    method, optimizer = build_training_modules(run_cfg, device, len(images))
    if checkpoint is not None:
        method.load_state_dict(checkpoint["method"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        restore_rng_state(checkpoint["rng"], perm_gen)
        distributed.restore_rank_rng(checkpoint, aug_gen, cfg.train.seed, device)  # each rank's own stream
    plan = start_budget_plan(cfg, state, precision, len(images) // cfg.train.batch_size)
    if distributed.is_main():
        record_command(run_dir, command, None if checkpoint is None else f"global step {state.global_step} "
                       f"(epoch {state.epoch + 1}, step {state.step})")
    probe = build_online_probe(cfg.train.online_probe, method.backbone.feature_dim, labels, device)
    if probe is not None and checkpoint is not None and "probe" in checkpoint:  # older checkpoints: a fresh probe
        probe.restore(checkpoint["probe"])
    if cfg.train.compile:
        method.compile_backbone()
    trainer = Trainer(run_cfg, run_dir, method, optimizer, images.to(device), labels, aug_gen, state, progress,
                      perm_gen=perm_gen, saved_cfg=cfg, plan=plan, probe=probe)
    where = lambda: f"epoch {state.epoch + 1} step {state.step + 1}"  # noqa: E731
    with trainer.board, _StopSignals() as stop, distributed.stop_on_lost_rank(where, trainer.resume_hint):
        while not trainer.finished():
            trainer.train_epoch(stop)
    if distributed.is_main():
        world = {"world_size": distributed.world_size()} if distributed.is_distributed() else {}
        budget = {}
        if trainer.budget is not None:  # the final time spent, checkpoints included
            trainer.budget.save()
            budget = {"budget": trainer.budget.record()}
        probed = {"precision_probe": state.precision} if state.precision is not None else {}
        export_encoder(method.backbone, cfg, run_dir,
                       extra={"data": dataset.description, "epochs": state.epoch,
                              "train_time_s": round(state.train_time_s, 1), **probed, **budget, **world,
                              **environment_record(device)})
        write_model_card(run_dir, evaluation_gap(dataset))  # RUN/README.md; crlf evaluate adds the figures
    distributed.shutdown()
    return run_dir


def resumable_checkpoint(run_dir: Path, resume: bool | Path) -> tuple[dict[str, Any], Path]:
    """The checkpoint to resume from (``resume``: True or a path). With several processes rank 0 alone picks
    it (and moves a corrupt one aside), then every rank loads the file it picked."""
    explicit = resume if isinstance(resume, Path) else None
    if not distributed.is_distributed():
        return find_resumable(run_dir, explicit)
    path = distributed.decided_on_main(lambda: find_resumable(run_dir, explicit)[1])
    return load_checkpoint_file(path), path


class Trainer:
    """One run's loop: epochs of steps, metrics, checkpoints, and the ways a run stops (signal, non-finite
    loss or weights, out of memory)."""

    def __init__(self, cfg: Config, run_dir: Path, method: Method, optimizer: torch.optim.Optimizer,
                 images: torch.Tensor, labels: np.ndarray, aug_gen: torch.Generator, state: Progress,
                 progress: bool, perm_gen: torch.Generator | None = None, saved_cfg: Config | None = None,
                 plan=None, probe: OnlineProbe | None = None):
        # cfg: what the run trains with (precision auto resolved); saved_cfg: what its checkpoints record
        self.cfg, self.run_dir, self.method, self.optimizer = cfg, run_dir, method, optimizer
        self.saved_cfg = saved_cfg or cfg
        self.probe = probe  # the online linear probe (train.online_probe), None without labels
        self.label_tensor = torch.as_tensor(labels, dtype=torch.long, device=images.device)  # (N,) -1: none
        self.images, self.labels, self.aug_gen, self.state, self.progress = images, labels, aug_gen, state, progress
        self.perm_gen = perm_gen or aug_gen  # one stream in one process; common to every rank with several
        self.model = distributed.wrap(method, cfg.train.sync_batchnorm, images.device)  # DDP with several processes
        self.augment = build_augment(cfg.augment, cfg.data.image_size)
        self.batch = cfg.train.batch_size
        self.steps_per_epoch = len(images) // self.batch  # drop the last partial batch: equal steps
        self.autocast_dtype = autocast_dtype(cfg.train.precision, images.device)
        self.resume_hint = distributed.resume_command(run_dir)
        self.lr = learning_rate(cfg, state.global_step, self.steps_per_epoch)
        # TensorBoard (rank 0, train.tensorboard): it only reads numbers the loop already has
        self.board = training_board(run_dir, cfg.train.tensorboard and distributed.is_main(), state.global_step)
        # with --budget: the plan in force (crlf.run_plan), which decides steps, view sizes and schedules
        self.budget = None if plan is None else BudgetKeeper(
            plan, state, run_dir, low_res_fraction(cfg), self.steps_per_epoch, progress, clock=wall_clock)

    def finished(self) -> bool:
        if self.budget is not None:
            return self.budget.finished()
        return self.state.epoch >= self.cfg.train.epochs

    def epoch_view_size(self) -> int:
        return self.budget.view_size() if self.budget is not None else view_size(self.cfg, self.state.epoch)

    def train_epoch(self, stop: _StopSignals) -> None:
        state, cfg = self.state, self.cfg
        if self.budget is not None:
            self.budget.epoch_started()
        if state.step == 0:
            state.perm = torch.randperm(len(self.images), generator=self.perm_gen)
        size = self.epoch_view_size()
        specs = view_specs(cfg.augment, cfg.data.image_size, size)
        steps = self.steps_per_epoch if self.budget is None else self.budget.epoch_steps()
        epochs = cfg.train.epochs if self.budget is None else math.ceil(self.budget.plan.epochs)
        bar = tqdm(total=steps, initial=state.step, desc=f"epoch {state.epoch + 1}/{epochs}",
                   unit="step", disable=not self.progress, dynamic_ncols=True)
        self.model.train()
        while state.step < steps:
            if self.budget is not None and self.budget.stop_before_step():
                steps = state.step
                break
            loss_value, dt = self.step(specs)
            bar.set_postfix(loss=f"{loss_value:.3f}", img_s=f"{self.batch / dt:.0f}", refresh=False)
            bar.update(1)
            faults.maybe_kill(state.global_step)
            if state.step < steps:
                every = cfg.train.checkpoint_every_steps
                signum = distributed.agreed_signal(stop.received)  # every rank stops after the same step
                if (every and state.global_step % every == 0) or signum:
                    self.write_checkpoint()
                if signum:
                    bar.close()
                    _raise_interrupted(signum, state, self.resume_hint)
        bar.close()
        if steps == 0:  # the budget ran out before this epoch's first step: nothing to record
            return
        record = self.finish_epoch(steps)
        checkpoint_start = wall_clock()
        self.write_checkpoint()
        if self.budget is not None:
            self.budget.count(wall_clock() - checkpoint_start)
        faults.maybe_kill_after_checkpoint(state.epoch)
        if self.progress:
            knn = f", kNN monitor {record['knn_top1']:.1%}" if "knn_top1" in record else ""
            budget = f"; {self.budget.summary()}" if self.budget is not None else ""
            tqdm.write(f"epoch {record['epoch']}: loss {record['loss']:.4f}, {record['images_per_s']:.0f} img/s, "
                       f"{record['epoch_time_s']:.0f} s{knn}{budget}")
        signum = distributed.agreed_signal(stop.received)
        if signum:
            _raise_interrupted(signum, state, self.resume_hint)

    def step(self, specs) -> tuple[float, float]:
        """One optimisation step; returns its loss and wall time."""
        state, batch = self.state, self.batch
        t0 = wall_clock()
        if self.budget is None:
            clock = StepClock(state.epoch + state.step / self.steps_per_epoch, self.cfg.train.epochs)
            self.lr = learning_rate(self.cfg, state.global_step, self.steps_per_epoch)
        else:  # the plan's progress in planned time
            clock, self.lr = self.budget.schedule_clock(), self.budget.learning_rate(self.cfg)
        set_learning_rate(self.optimizer, self.lr)
        idx = state.perm[state.step * batch:(state.step + 1) * batch]  # (B,) the global batch
        idx = distributed.shard(idx).to(self.images.device)  # (B / W,) this rank's part: all of it in one process
        with _stop_on_out_of_memory(state, batch, self.images.device, self.run_dir, self.resume_hint):
            faults.maybe_oom(state.global_step, self.images.device)
            views = self.augment(self.images[idx], self.aug_gen, specs)  # [(B, 3, S, S)], global views first
            loss_value, logs = train_step(self.model, self.optimizer, views, clock, self.autocast_dtype,
                                          check_loss=self.check_loss)
            if self.probe is not None:  # after the method's step, on its detached features: it changes none of it
                accuracy = self.probe.step(self.method.last_features, self.label_tensor[idx])
                if accuracy is not None:
                    logs = {**logs, PROBE_SUMS[0]: accuracy, PROBE_SUMS[1]: 1.0}
        dt = wall_clock() - t0
        state.step += 1
        state.global_step += 1
        state.step_losses.append(loss_value)
        state.epoch_loss_sum += loss_value
        for key, value in logs.items():
            state.epoch_log_sums[key] = state.epoch_log_sums.get(key, 0.0) + value
        state.epoch_time_s += dt
        state.train_time_s += dt
        if self.budget is not None:
            self.budget.count(dt)
        self.board.step(state.global_step, loss_value, self.lr)
        return loss_value, dt

    def check_loss(self, loss_value: float) -> float:
        """After the forward pass, before any update: stop on a non-finite loss with the weights untouched."""
        state = self.state
        loss_value = faults.maybe_poison_loss(loss_value, state.global_step)
        if not math.isfinite(loss_value):
            raise TrainingStopped(
                f"loss became {loss_value} at epoch {state.epoch + 1} step {state.step + 1} "
                f"(global step {state.global_step + 1}, lr {self.lr:g}); training stopped before the update. "
                f"The last good checkpoint in '{self.run_dir}' is kept. {self.method.divergence_advice}, "
                f"then resume with: {self.resume_hint}"
            )
        faults.maybe_signal(state.global_step)  # tests: a signal arriving mid-step
        return loss_value

    def finish_epoch(self, steps: int | None = None) -> dict[str, Any]:
        """The epoch's record (metrics.jsonl); ``steps``: how many it ran (fewer for a budget's cut last epoch)."""
        state, cfg = self.state, self.cfg
        steps = steps or self.steps_per_epoch
        logs = {k: v / steps for k, v in state.epoch_log_sums.items() if k not in PROBE_SUMS}
        spread = logs.pop("embedding_std", float("nan"))
        probe_sum, probe_steps = (state.epoch_log_sums.get(k, 0.0) for k in PROBE_SUMS)
        if probe_steps:  # the mean over the steps that had labels
            logs["online_probe_top1"] = probe_sum / probe_steps
        if distributed.is_main():  # the logs are means over the ranks: one warning is enough
            warn_if_collapsed(spread, self.method.embedding_dim, state.epoch + 1,
                              with_temperature=hasattr(cfg.method, "temperature"))
        record = {"epoch": state.epoch + 1, "loss": state.epoch_loss_sum / steps, "lr": self.lr,
                  "epoch_time_s": round(state.epoch_time_s, 3),
                  "images_per_s": round(steps * self.batch / state.epoch_time_s, 1),
                  "embedding_std": round(spread, 5), "steps": steps, "view_size": self.epoch_view_size(),
                  **{k: round(v, 6) for k, v in logs.items()}}
        if (cfg.train.eval_every and (state.epoch + 1) % cfg.train.eval_every == 0 and self.labels.max() >= 0
                and distributed.is_main()):  # rank 0's record is the one written
            t0 = wall_clock()
            record["knn_top1"] = round(knn_monitor(self.method.backbone, self.images, self.labels, cfg), 4)
            monitor_s = wall_clock() - t0
        else:
            monitor_s = 0.0
        if self.budget is not None:
            self.budget.end_epoch(record, steps, monitor_s)
        state.history.append(record)
        self.board.epoch(state.global_step, record)
        state.epoch += 1
        state.step, state.epoch_loss_sum, state.epoch_log_sums, state.epoch_time_s = 0, 0.0, {}, 0.0
        if distributed.is_main():
            write_training_metrics(self.run_dir, state)
        return record

    def write_checkpoint(self) -> None:
        state = self.checkpoint_state()  # on every rank: it gathers every rank's random state
        if distributed.is_main():
            self.board.flush()  # the event file holds at least what the checkpoint holds
            save_checkpoint(self.run_dir, state)

    def checkpoint_state(self) -> dict[str, Any]:
        method_state = self.method.state_dict()
        self.stop_if_not_finite(method_state)
        probe = {"probe": self.probe.checkpoint()} if self.probe is not None else {}
        return {"config": to_dict(self.saved_cfg), "method": method_state, "optimizer": self.optimizer.state_dict(),
                **probe,
                "rng": rng_state(self.perm_gen), "perm": self.state.perm,
                "step_losses": torch.tensor(self.state.step_losses, dtype=torch.float64),
                "progress": self.state.counters(),
                **distributed.rank_rng_record(self.aug_gen, self.images.device)}  # world size, per-rank streams

    def stop_if_not_finite(self, method_state: dict[str, torch.Tensor]) -> None:
        """Never checkpoint inf/nan weights: a loss can stay finite for a step after the weights overflow
        (e.g. a BatchNorm running variance), and that checkpoint would replace the last good one."""
        for name, tensor in method_state.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                loss = self.state.step_losses[-1] if self.state.step_losses else float("nan")
                raise TrainingStopped(
                    f"the weights became non-finite by global step {self.state.global_step} ('{name}' holds "
                    f"inf/nan; last loss {loss:.4g}, lr {self.lr:g}); training stopped without saving them. The "
                    f"last good checkpoint in '{self.run_dir}' is kept. {self.method.divergence_advice}, then "
                    f"resume with: {self.resume_hint}"
                )


def write_training_metrics(run_dir: Path, state: Progress) -> None:
    """``metrics.jsonl`` and ``step_losses.npy``, rewritten whole (atomically) from the checkpointed history:
    a resumed run never holds duplicate lines."""
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in state.history))
    save_array(run_dir / "step_losses.npy", np.asarray(state.step_losses, dtype=np.float64))


def warn_if_collapsed(spread: float, dim: int, epoch: int, with_temperature: bool = True) -> None:
    """Warn when the embeddings' spread (``methods.base.embedding_spread``, an epoch's mean) is below 10 % of
    what ``dim``-dimensional unit vectors spread uniformly over the sphere give (1/sqrt(dim)).
    ``with_temperature``: the method has a temperature to check (its settings declare one)."""
    uniform = 1 / math.sqrt(dim)
    if spread < COLLAPSE_STD_FRACTION * uniform:
        check = "the learning rate and temperature" if with_temperature else "the learning rate"
        warnings.warn(
            f"possible collapse at epoch {epoch}: the spread of the L2-normalised embeddings is {spread:.4f} "
            f"(a uniform spread gives {uniform:.3f}). Check {check}.", stacklevel=3)


# The online kNN monitor: a fixed draw of training images, labels used for this number only.
MONITOR_BANK = 5000  # images whose features vote (the "training set" of the monitor's kNN)
MONITOR_QUERIES = 1000  # images classified by them; at most a fifth of a small training set
MONITOR_SEED = 12345  # its own fixed draw: independent of the run's seed, so runs compare on the same images
MONITOR_BATCH = 512  # feature extraction batch


def knn_monitor(encoder: ResNetEncoder, images: torch.Tensor, labels: np.ndarray, cfg: Config) -> float:
    """A cheap kNN top-1 while pretraining, to see learning (or collapse) early.

    Both the bank and the queries are fixed, disjoint parts of the labelled *training* images (STL-10's
    unlabeled rows, label -1, are left out): the test split stays unseen until ``crlf evaluate``. It draws no
    random numbers from the run's generators, so runs with and without the monitor train identically.
    """
    from crlf.evaluate import knn_predict

    labelled = np.flatnonzero(labels >= 0)  # (L,) all rows when every image has a label
    order = labelled[np.random.default_rng(MONITOR_SEED).permutation(len(labelled))]
    n_query = min(MONITOR_QUERIES, len(order) // 5)
    query_idx, bank_idx = order[:n_query], order[n_query:n_query + MONITOR_BANK]
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            def features(idx):  # (n, D)
                out = [encoder(normalize(images[torch.from_numpy(idx[i:i + MONITOR_BATCH]).to(images.device)],
                                         cfg.augment.mean, cfg.augment.std)).float().cpu()
                       for i in range(0, len(idx), MONITOR_BATCH)]
                return torch.cat(out).numpy()

            bank, queries = features(bank_idx), features(query_idx)
    finally:
        encoder.train(was_training)
    num_classes = int(labels.max()) + 1
    preds = knn_predict(bank, labels[bank_idx], queries, num_classes, ks=(min(cfg.eval.knn_k, len(bank_idx)),),
                        temperature=cfg.eval.knn_temperature)
    return float((next(iter(preds.values())) == labels[query_idx]).mean())


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
