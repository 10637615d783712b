"""The images of ``--data`` with their run-encoder embeddings, file names relative to the folder, labels
(class folders or a ``file,label`` CSV) and the list of files that could not be decoded."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crlf.errors import UsageError


class Rows:
    """Several ``(n_i, ...)`` arrays (memory maps of the decode cache) read as one ``(N, ...)`` array,
    without copying them: a 224-px data set does not fit in memory twice."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = [p for p in parts if len(p)]
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            part = int(np.searchsorted(self.starts, index, side="right")) - 1
            return self.parts[part][index - self.starts[part]]
        index = np.asarray(index)
        out = np.empty((len(index), *self.parts[0].shape[1:]), dtype=self.parts[0].dtype)
        part = np.searchsorted(self.starts, index, side="right") - 1
        for p in np.unique(part):
            sel = part == p
            local = index[sel] - self.starts[p]
            order = np.argsort(local)  # memory maps read fastest in file order
            block = self.parts[p][local[order]]
            out[np.flatnonzero(sel)[order]] = block
        return out


@dataclass
class Images:
    source: str
    description: str
    images: Rows  # (N, 3, S, S) uint8
    files: list[str]  # relative to the folder (or archive), as crlf embed writes them
    labels: np.ndarray  # (N,) int64, -1 where unlabelled
    classes: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    splits: list[tuple[str, np.ndarray]] = field(default_factory=list)  # the dataset's splits: (name, images)
    checksum: str = ""


def _relative(name: str, top: str | None) -> str:
    """A decoded member name relative to ``root``: the loader strips one folder that holds everything
    (``cifar10-jpeg/train/...``); a user acting on the lists needs it back."""
    return f"{top}/{name}" if top else name


def single_top(root: Path) -> str | None:
    """The one folder that holds everything in ``root`` (which the loader strips from names), if any."""
    if not root.is_dir():
        return None
    entries = [p for p in root.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
    if len(entries) == 1 and entries[0].is_dir() and entries[0].name not in ("train", "test"):
        return entries[0].name
    return None


def dataset_splits(dataset) -> list[tuple[str, object]]:
    """The loaded dataset's splits that exist, in the order every list of files follows: train, test,
    unlabeled."""
    return [(name, s) for name, s in (("train", dataset.train), ("test", dataset.test),
                                      ("unlabeled", dataset.unlabeled)) if s is not None]


def relative_files(data: str, splits: list[tuple[str, object]]) -> list[str]:
    """Each image's file name relative to ``data``, split after split; ``<split>/<row>`` for a dataset that
    has no files (CIFAR's binary batches). ``crlf embed`` and ``crlf curate`` both name images so."""
    top = single_top(Path(data).expanduser())
    files = []
    for name, s in splits:
        files += [_relative(f, top) for f in s.files] if s.files else [f"{name}/{i}" for i in range(len(s))]
    return files


def load_images(data: str, image_size: int, progress: bool = True) -> Images:
    """Every image of ``data`` (train, test and unlabelled splits together), bad images skipped and listed."""
    from crlf.data.sources import load_dataset

    dataset = load_dataset(data, image_size, on_bad_image="skip", progress=progress)
    root = Path(data).expanduser()
    splits = dataset_splits(dataset)
    files = relative_files(data, splits)
    skipped = []
    for where, reason in dataset.skipped:  # the loader names them by full path: make them relative too
        rel = where[len(str(root)):].lstrip("/\\") if where.startswith(str(root)) else where
        skipped.append((rel, reason))
    labels = np.concatenate([s.labels for _, s in splits]).astype(np.int64)
    return Images(data, dataset.description, Rows([s.images for _, s in splits]), files, labels,
                  list(dataset.classes), skipped, [(n, s.images) for n, s in splits], dataset.checksum)


def read_labels_csv(path: Path, files: list[str]) -> tuple[np.ndarray, list[str]]:
    """``file,label`` rows -> labels ``(N,)`` aligned with ``files`` (-1 where the CSV has no row) and the
    sorted class names. A file the CSV names that is not in the data is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"labels file '{path}' does not exist; pass a CSV with a header 'file,label'.")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"file", "label"} <= set(reader.fieldnames):
            raise UsageError(f"'{path}' must have a header with columns 'file' and 'label' (got "
                             f"{reader.fieldnames}).")
        given = {row["file"].strip(): row["label"].strip() for row in reader}
    index = {f: i for i, f in enumerate(files)}
    unknown = [f for f in given if f not in index]
    if unknown:
        raise UsageError(f"'{path}' names {len(unknown)} file(s) that are not images of the data, e.g. "
                         f"'{unknown[0]}'; file names are relative to the data folder, e.g. '{files[0]}'.")
    classes = sorted(set(given.values()) - {""})
    labels = np.full(len(files), -1, dtype=np.int64)
    for f, label in given.items():
        if label:
            labels[index[f]] = classes.index(label)
    return labels, classes


def embed_images(run_dir: Path, images: Images, device: str = "auto", progress: bool = True) -> tuple[np.ndarray, bool]:
    """Run-encoder features ``(N, D)`` float32 of ``images``; the run's own evaluation embeddings when the
    data is the run's (same checksum, every training image), which saves the whole forward pass."""
    from crlf.config import load_run_config
    from crlf.evaluate import extract_features, freeze
    from crlf.models.backbones import load_encoder
    from crlf.publish.export import load_array
    from crlf.runtime import resolve_device

    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    cfg = load_run_config(run_dir)
    names = [n for n, _ in images.splits]
    saved = [run_dir / f"{n}_embeddings.npy" for n in names]
    if (metrics.get("data_checksum") == images.checksum and not images.skipped and cfg.data.limit is None
            and names in (["train"], ["train", "test"]) and all(p.is_file() for p in saved)):
        arrays = [load_array(p) for p in saved]
        if [len(a) for a in arrays] == [len(s) for _, s in images.splits]:
            return np.concatenate(arrays).astype(np.float32, copy=False), True
    dev = resolve_device(device)
    encoder = freeze(load_encoder(run_dir).to(dev))
    parts = [extract_features(encoder, split, cfg.augment.mean, cfg.augment.std, dev, progress=progress,
                              desc=f"embedding {name}") for name, split in images.splits]
    return np.concatenate(parts), False
