"""``crlf pretrain``: assemble a run (its folder, data, seeds, precision, modules, schedule) and train it with
the loop (:mod:`crlf.training.loop`): seeded, resumable at any step, with progress, metrics and atomic
checkpoints; then export the encoder and write the model card.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from crlf.config import Config, apply_overrides, save_config
from crlf.data.mapped import MappedImages, training_images
from crlf.data.sources import Dataset, load_dataset, pretraining_split
from crlf.errors import UsageError
from crlf.io import atomic_write_text
from crlf.publish.export import export_encoder
from crlf.publish.model_card import evaluation_gap, record_command, write_model_card
from crlf.runtime import environment_record, flush_denormals, resolve_device
from crlf.training import distributed
from crlf.training.checkpoint import (
    LATEST,
    PREVIOUS,
    find_resumable,
    load_checkpoint_file,
    remove_partial_writes,
    restore_rng_state,
)
from crlf.training.hooks import TrainingHooks
from crlf.training.loop import RunOutput, Trainer, TrainingData, TrainingModules
from crlf.training.monitors.online_probe import build_online_probe
from crlf.training.precision import adopt_precision, resolve_run_precision
from crlf.training.progress import Progress
from crlf.training.resolution import resolve_image_size
from crlf.training.schedule import build_schedule, run_view_sizes
from crlf.training.step import build_training_modules


def pretrain(cfg: Config, run_dir: Path, resume: bool | Path = False, progress: bool = True,
             cli_overrides: dict | None = None, command: str | None = None,
             hooks: TrainingHooks | None = None) -> Path:
    """Pretrain an encoder into ``run_dir``; returns ``run_dir``. ``resume`` is True or a checkpoint path.
    ``command``: the command line that started (or resumed) it, for the model card. ``hooks``: the clock and
    injected faults (tests); by default the real clock and the faults ``CRLF_FAULT_*`` variables ask for."""
    run_dir = Path(run_dir)
    distributed.init_from_env()  # under torchrun: join the process group; nothing in a single process
    hooks = hooks or TrainingHooks.from_env()  # after init: a fault may be aimed at one rank
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
    state = Progress() if checkpoint is None else Progress.from_checkpoint(checkpoint)
    resolved = None
    if checkpoint is None:  # a resumed run keeps the side it chose (its config holds it)
        resolved = resolve_image_size(cfg, device, state, num_images=lambda found: planned_images(cfg, found),
                                      log=tqdm.write if progress else None)
        cfg = resolved.cfg
    if distributed.is_distributed():  # rank 0 decodes and caches a new source once; the others then read the cache
        distributed.decided_on_main(lambda: fill_cache(cfg, progress))
    dataset, images, labels = load_training_data(cfg, progress)
    if dataset.skipped and distributed.is_main():
        atomic_write_text(run_dir / "skipped_images.txt", "".join(f"{p}\t{why}\n" for p, why in dataset.skipped))
    if distributed.is_main():
        save_config(cfg, run_dir / "config.yaml")

    if resolved is not None and resolved.probe is not None:  # a budget's side was chosen on measured steps
        run_cfg, precision = adopt_precision(cfg, state, resolved.probe)
    else:
        run_cfg, precision = resolve_run_precision(cfg, device, state, len(images), run_view_sizes(cfg), progress)
    method, optimizer = build_training_modules(run_cfg, device, len(images))
    if checkpoint is not None:
        method.load_state_dict(checkpoint["method"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        restore_rng_state(checkpoint["rng"], perm_gen)
        distributed.restore_rank_rng(checkpoint, aug_gen, cfg.train.seed, device)  # each rank's own stream
    steps_per_epoch = len(images) // cfg.train.batch_size  # drop the last partial batch: equal steps
    schedule = build_schedule(cfg, state, precision, steps_per_epoch, run_dir, announce=progress, clock=hooks.clock)
    if distributed.is_main():
        record_command(run_dir, command, None if checkpoint is None else f"global step {state.global_step} "
                       f"(epoch {state.epoch + 1}, step {state.step})")
    probe = build_online_probe(cfg.train.online_probe, method.backbone.feature_dim, labels, device)
    if probe is not None and checkpoint is not None and "probe" in checkpoint:  # older checkpoints: a fresh probe
        probe.restore(checkpoint["probe"])
    if cfg.train.compile:
        method.compile_backbone()
    trainer = Trainer(run_cfg, TrainingModules(method, optimizer, probe),
                      TrainingData(images.to(device), labels, augment=aug_gen, order=perm_gen), state, schedule,
                      RunOutput(run_dir, saved_cfg=cfg, show_progress=progress), hooks)
    trainer.run()
    if distributed.is_main():
        world = {"world_size": distributed.world_size()} if distributed.is_distributed() else {}
        scheduled = schedule.finish()  # with a budget: its record, the final time spent included
        probed = {"precision_probe": state.precision} if state.precision is not None else {}
        if state.resolution is not None:
            probed["resolution"] = state.resolution
        export_encoder(method.backbone, cfg, run_dir,
                       extra={"data": dataset.description, "epochs": state.epoch,
                              "train_time_s": round(state.train_time_s, 1), **probed, **scheduled, **world,
                              **environment_record(device)})
        write_model_card(run_dir, evaluation_gap(dataset))  # RUN/README.md; crlf evaluate adds the figures
    distributed.shutdown()
    return run_dir


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed + 1)  # the augmentation / permutation stream


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


def planned_images(cfg: Config, found) -> int:
    """The training images a run on the surveyed source will have, before decoding: the image files listed
    (a test split included: an over-estimate, so a budget's epochs are under-estimated, never over), at most
    ``data.limit``."""
    files = found.files or {"cifar10": 50_000, "cifar100": 50_000, "stl10": 105_000,
                            "tinyimagenet": 100_000}.get(cfg.data.source, 50_000)
    return min(files, cfg.data.limit) if cfg.data.limit else files


def fill_cache(cfg: Config, progress: bool) -> None:
    """Decode ``data.source`` into the cache if it is not there yet (a cached source only opens its file)."""
    load_dataset(cfg.data.source, cfg.data.image_size, cfg.data.on_bad_image, progress=progress)


def resumable_checkpoint(run_dir: Path, resume: bool | Path) -> tuple[dict[str, Any], Path]:
    """The checkpoint to resume from (``resume``: True or a path). With several processes rank 0 alone picks
    it (and moves a corrupt one aside), then every rank loads the file it picked."""
    explicit = resume if isinstance(resume, Path) else None
    if not distributed.is_distributed():
        return find_resumable(run_dir, explicit)
    path = distributed.decided_on_main(lambda: find_resumable(run_dir, explicit)[1])
    return load_checkpoint_file(path), path
