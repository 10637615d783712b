"""Run-folder level jobs: evaluate a finished run, embed any images, and the end-to-end ``run``."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from crlf.config import apply_overrides, load_run_config, to_dict
from crlf.data.holdout import evaluation_splits
from crlf.data.sources import load_dataset
from crlf.downstream.finetune import finetune_metrics
from crlf.downstream.metrics import default_extra_metrics
from crlf.downstream.protocol import protocol_record
from crlf.errors import UsageError
from crlf.evaluate import evaluate_features, extract_features, freeze
from crlf.io import atomic_write_json
from crlf.models.backbones import load_encoder
from crlf.probe_file import save_probe
from crlf.publish.export import save_array
from crlf.publish.model_card import write_model_card
from crlf.run_files import read_history
from crlf.runtime import environment_record, resolve_device
from crlf.training.monitors.tensorboard import write_projector

run_config = load_run_config  # kept under this name for callers of crlf.pipeline


class EvaluationSkipped(UsageError):
    """The data have no labels: nothing label-based can be measured (labels without a test split get a
    hold-out, crlf.data.holdout). ``crlf evaluate`` exits 2 with the message; ``crlf run`` prints it and keeps
    the pretraining result (exit 0)."""


def check_labelled(dataset, source: str, run_dir: Path) -> None:
    """Raise :class:`EvaluationSkipped` saying why and what to pass, if ``dataset`` cannot be evaluated."""
    fix = (f"To evaluate, pass a labelled copy: crlf evaluate {run_dir} --data ROOT (ROOT/<class>/*.jpg, or "
           f"ROOT/train/<class>/*.jpg and ROOT/test/<class>/*.jpg).")
    kept = f"The pretrained encoder is in {run_dir / 'encoder.safetensors'}; crlf embed works on it."
    if not dataset.classes:
        raise EvaluationSkipped(f"'{source}' has no labels (a flat folder of images, no class folders), so "
                                f"label-based evaluation (linear probe, kNN) was skipped. {kept} {fix}")


def plot_pretraining(run_dir: Path) -> list[Path]:
    """The one figure a run without evaluation has: its loss curve (``crlf plot`` needs metrics.json)."""
    from crlf.plots import loss_curve
    from crlf.publish.export import load_array

    losses = run_dir / "step_losses.npy"
    return [loss_curve(read_history(run_dir), load_array(losses) if losses.exists() else None,
                       run_dir / "plots" / "loss_curve.png")]


def evaluate_run(run_dir: Path, data: str | None = None, device: str | None = None, progress: bool = True,
                 finetune: bool = False, supervised_baseline: bool = False, finetune_epochs: int = 5,
                 mix: str = "both", eval_split: float | None = None) -> dict:
    """Features of un-augmented train/test images -> metrics.json, embeddings .npy, linear probe weights.

    Always: linear probe, kNN, protocol guards, label efficiency, few-shot, retrieval, clustering.
    Opt-in (expensive on a CPU): ``finetune`` and ``supervised_baseline`` train whole networks.
    Data without a test split are measured on a stratified hold-out of ``eval_split`` (``eval.split``)."""
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    if data is not None:
        cfg = apply_overrides(cfg, {"data": {"source": data}}, origin="--data")
    if eval_split is not None:
        cfg = apply_overrides(cfg, {"eval": {"split": eval_split}}, origin="--eval-split")
    dev = resolve_device(device or cfg.train.device)
    t0 = time.perf_counter()
    encoder = freeze(load_encoder(run_dir).to(dev))
    dataset = load_dataset(cfg.data.source, cfg.data.image_size, cfg.data.on_bad_image, progress=progress)
    check_labelled(dataset, cfg.data.source, run_dir)
    # The same class-balanced subset that pretraining saw; the test split (or the hold-out) always in full.
    splits = evaluation_splits(dataset, cfg.data.limit, cfg.train.seed, cfg.eval.split)
    train, test = splits.train, splits.test
    mean, std = cfg.augment.mean, cfg.augment.std
    train_x = extract_features(encoder, train.images, mean, std, dev, progress=progress, desc="train features")
    test_x = extract_features(encoder, test.images, mean, std, dev, progress=progress, desc="test features")
    t_features = time.perf_counter() - t0
    # Protocol guards: raise before any metric is computed if the test split leaked or features are random.
    protocol = protocol_record(encoder, train.images, test.images, test_x, mean, std, dev, cfg.train.seed)
    metrics, probe = evaluate_features(train_x, train.labels, test_x, test.labels, dataset.classes,
                                       cfg.eval.knn_k, cfg.eval.knn_temperature, cfg.eval.linear_max_iter,
                                       cfg.train.seed)
    metrics["protocol"] = protocol
    metrics["evaluation_split"] = splits.record
    if splits.record["kind"] == "held-out":
        protocol["pretraining_data"] = "every image of the folder, the held-out ones included, without labels"
    metrics |= default_extra_metrics(train_x, train.labels, test_x, test.labels, len(dataset.classes),
                                     metrics, cfg.train.seed, cfg.eval.linear_max_iter)
    if finetune or supervised_baseline:
        metrics |= finetune_metrics(run_dir, cfg, train, test, len(dataset.classes), dev, finetune,
                                    supervised_baseline, finetune_epochs, mix)
    for name, array in (("train_embeddings", train_x), ("test_embeddings", test_x),
                        ("train_labels", train.labels), ("test_labels", test.labels)):
        save_array(run_dir / f"{name}.npy", array)
    save_probe(run_dir / "linear_probe.safetensors", probe, list(dataset.classes), {"made_by": "crlf evaluate"})
    history = read_history(run_dir)
    metrics |= {
        "data": dataset.description,
        "data_source": cfg.data.source,
        "data_checksum": dataset.checksum,
        "seed": cfg.train.seed,
        "epochs": len(history),
        "pretrain_time_s": round(sum(r["epoch_time_s"] for r in history), 1),
        "eval_features_s": round(t_features, 2),
        "eval_time_s": round(time.perf_counter() - t0, 2),
        **environment_record(dev),
        "config": to_dict(cfg),
    }
    atomic_write_json(run_dir / "metrics.json", metrics)
    if cfg.train.tensorboard:  # the embedding projector: test embeddings, class names, a sprite of the images
        write_projector(run_dir, test_x, test.labels, dataset.classes, test.images)
    write_model_card(run_dir)  # RUN/README.md, now with the linear and kNN figures
    return metrics


def embed_source(run_dir: Path, data: str, out: Path, device: str = "auto", progress: bool = True) -> dict:
    """Frozen-encoder features of every image in ``data`` -> ``out`` (.npy), plus labels and file names."""
    run_dir, out = Path(run_dir), Path(out)
    if out.suffix != ".npy":
        raise UsageError(f"--out must end in .npy (got '{out}').")
    cfg = run_config(run_dir)
    dev = resolve_device(device)
    encoder = freeze(load_encoder(run_dir).to(dev))
    dataset = load_dataset(data, cfg.data.image_size, cfg.data.on_bad_image, progress=progress)
    from crlf.curate.source import dataset_splits, relative_files

    splits = dataset_splits(dataset)
    features, labels = [], []
    for name, split in splits:
        features.append(extract_features(encoder, split.images, cfg.augment.mean, cfg.augment.std, dev,
                                         progress=progress, desc=f"embedding {name}"))
        labels.append(split.labels)
    files = relative_files(data, splits)  # relative to --data, as crlf curate names them
    stem = out.with_suffix("")
    save_array(out, np.concatenate(features))
    save_array(Path(f"{stem}_labels.npy"), np.concatenate(labels))
    atomic_write_json(Path(f"{stem}_files.json"), {"classes": dataset.classes, "files": files})
    return {"embeddings": str(out), "count": len(files), "dim": int(features[0].shape[1])}
