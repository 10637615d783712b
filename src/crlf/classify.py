"""``crlf classify RUN --labelled L --data DIR --out predictions.csv``: a classifier from a few labels.

The evaluation's linear probe (:func:`crlf.evaluate.train_linear_probe`: standardised frozen features,
L-BFGS, weight decay chosen on held-out labels) fitted on the labelled images, its accuracy estimated by
stratified cross-validation, then applied to every image of DIR. ``--save-probe`` keeps it in the format of
a run's ``linear_probe.safetensors`` (weight, bias, feature mean and std, class names in the metadata), so
``crlf demo RUN --probe FILE`` and ``--probe FILE`` here read it back.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from crlf.curate.command import write_csv
from crlf.curate.label_issues import out_of_fold_probabilities, probe_cross_validated_accuracy
from crlf.curate.source import Images, embed_images, load_images, read_labels_csv, single_top
from crlf.errors import UsageError
from crlf.evaluate import LinearProbe, train_linear_probe
from crlf.probe_file import load_probe, save_probe

TOP = 3


def check_classes(labels: np.ndarray, classes: list[str], where: str) -> None:
    """A probe needs two classes or more and two images or more of each (one to fit, one to check)."""
    counts = np.bincount(labels[labels >= 0], minlength=len(classes))
    used = [c for c, n in zip(classes, counts) if n > 0]
    if len(used) < 2:
        names = f" ('{used[0]}')" if used else ""
        raise UsageError(f"{where} has {len(used)} class{names}; a classifier needs at least two. Add a folder "
                         f"(or CSV rows) of images of another class.")
    single = [c for c, n in zip(classes, counts) if n == 1]
    if single:
        raise UsageError(f"class '{single[0]}' in {where} has a single image; label at least 2 images of every "
                         f"class (cross-validation needs one to fit and one to check).")


def _labelled_features(run_dir: Path, labelled: str, data_images: Images, data_x: np.ndarray, image_size: int,
                       device: str, progress: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Features ``(L, D)``, labels ``(L,)`` and class names of the labelled images: rows of DIR named by a
    CSV, or a separate folder of class folders."""
    if labelled.lower().endswith(".csv"):
        labels, classes = read_labels_csv(Path(labelled), data_images.files)
        rows = np.flatnonzero(labels >= 0)
        return data_x[rows], labels[rows], classes
    if not Path(labelled).expanduser().exists():
        raise UsageError(f"--labelled '{labelled}' does not exist; pass a folder of class folders "
                         f"(<class>/*.jpg) or a CSV with columns file,label.")
    images = load_images(labelled, image_size, progress)
    if not images.classes:
        top = single_top(Path(labelled).expanduser())
        if top:  # one class folder: the loader reads it as a flat folder of unlabelled images
            check_classes(np.zeros(len(images.files), np.int64), [top], f"--labelled '{labelled}'")
        raise UsageError(f"--labelled '{labelled}' has no class folders; put the images in <class>/ folders "
                         f"or pass a CSV with columns file,label.")
    x, _ = embed_images(run_dir, images, device, progress)
    keep = images.labels >= 0
    return x[keep], images.labels[keep], images.classes


def predict_rows(probe: LinearProbe, x: np.ndarray, classes: list[str], files: list[str]) -> list[tuple]:
    """``(file, label, confidence, label_2, confidence_2, label_3, confidence_3)`` per row of ``x`` ``(N, D)``."""
    probs = probe.logits(x).softmax(1)  # (N, C)
    values, idx = probs.topk(min(TOP, len(classes)), dim=1)  # (N, t), most probable first
    rows = []
    for f, v, i in zip(files, values.tolist(), idx.tolist()):
        cells = [f]
        for rank in range(TOP):
            cells += [classes[i[rank]], f"{v[rank]:.4f}"] if rank < len(i) else ["", ""]
        rows.append(tuple(cells))
    return rows


def classify_command(run_dir: Path, labelled: str | None, data: str, out: Path, save_probe_to: Path | None = None,
                     probe_path: Path | None = None, seed: int = 0, device: str = "auto", progress: bool = True) -> dict:
    from crlf.config import load_run_config

    run_dir, out = Path(run_dir), Path(out)
    if out.suffix.lower() != ".csv":
        raise UsageError(f"--out must end in .csv (got '{out}').")
    if (labelled is None) == (probe_path is None):
        raise UsageError("pass either --labelled (class folders or a file,label CSV) to fit a probe, or --probe "
                         "FILE to reuse one saved with --save-probe.")
    if not (run_dir / "encoder.safetensors").is_file():
        raise UsageError(f"'{run_dir}' has no encoder.safetensors; pass a run folder of crlf pretrain or crlf run.")
    cfg = load_run_config(run_dir)
    data_images = load_images(data, cfg.data.image_size, progress)
    data_x, _ = embed_images(run_dir, data_images, device, progress)  # (N, D)
    info: dict = {"images": len(data_images.files), "skipped": len(data_images.skipped)}
    if probe_path is not None:
        probe, classes, meta = load_probe(probe_path)
        if probe.weight.shape[1] != data_x.shape[1]:
            raise UsageError(f"probe '{probe_path}' takes {probe.weight.shape[1]}-d features but the encoder of "
                             f"'{run_dir}' gives {data_x.shape[1]}-d: it was made with another run.")
        info["cross_validated_accuracy"] = meta.get("cross_validated_accuracy")
        print(f"probe {probe_path}: {len(classes)} classes ({', '.join(classes)})")
    else:
        x, y, classes = _labelled_features(run_dir, labelled, data_images, data_x, cfg.data.image_size, device, progress)
        check_classes(y, classes, f"--labelled '{labelled}'")
        present = np.unique(y)
        y, classes = np.searchsorted(present, y), [classes[c] for c in present]
        probs = out_of_fold_probabilities(x, y, len(classes), seed=seed, max_iter=200, progress=progress)
        accuracy = probe_cross_validated_accuracy(probs, y)
        folds = int(min(5, np.bincount(y).min()))
        probe = train_linear_probe(x, y, len(classes), seed=seed)
        info["cross_validated_accuracy"] = accuracy
        print(f"linear probe on {len(y):,} labelled images, {len(classes)} classes: cross-validated accuracy "
              f"{accuracy:.1%} ({folds}-fold, stratified)")
        if save_probe_to is not None:
            save_probe(Path(save_probe_to), probe, classes,
                       {"run": str(run_dir), "labelled": str(labelled), "num_labelled": int(len(y)),
                        "cross_validated_accuracy": round(accuracy, 4), "weight_decay": probe.weight_decay})
            print(f"wrote probe {save_probe_to}")
    with torch.inference_mode():
        rows = predict_rows(probe, data_x, classes, data_images.files)
    header = ["file", "label", "confidence", "label_2", "confidence_2", "label_3", "confidence_3"]
    write_csv(out, header, rows)
    for f, reason in data_images.skipped:
        print(f"crlf: skipped '{f}': {reason}", file=sys.stderr)
    print(f"wrote {len(rows):,} predictions to {out}" + (f" ({len(data_images.skipped)} undecodable images "
                                                          f"skipped, listed above)" if data_images.skipped else ""))
    return info
