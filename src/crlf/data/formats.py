"""Readers for the published layouts of STL-10, CIFAR-10/100 ("python version") and Tiny-ImageNet.

* STL-10 binary release (``stl10_binary/``): ``{train,test,unlabeled}_X.bin`` are raw uint8 images, each
  3 x 96 x 96 stored channel by channel in *column-major* order; ``{train,test}_y.bin`` one label byte per
  image, 1..10; ``class_names.txt`` one name per line. Read with numpy (memory-mapped, streamed to the
  cache in chunks: the 2.8 GB unlabeled file is never in memory).
* CIFAR "python version" (``cifar-100-python/{train,test,meta}``, ``cifar-10-batches-py/data_batch_N``):
  pickled dicts read by :mod:`crlf.data.safe_pickle`, which runs nothing from the file.
* Tiny-ImageNet (``tiny-imagenet-200/``): ``train/<wnid>/images/*.JPEG``, ``val/images/*.JPEG`` labelled by
  ``val/val_annotations.txt`` (the labelled val split is CRLF's test split; the challenge's unlabelled
  ``test/`` is not used), class names from ``words.txt``. Only the layout lives here: the JPEGs are
  decoded like any image folder.
"""

from __future__ import annotations

import warnings
from pathlib import Path, PurePosixPath

import numpy as np
from tqdm.auto import tqdm

from crlf.data.cache import Decoded, ImageSink
from crlf.data.safe_pickle import NotPlainData, read_plain_pickle
from crlf.errors import UsageError

STL10_SIDE = 96
STL10_IMAGE_BYTES = 3 * STL10_SIDE * STL10_SIDE
STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
STL10_FIX = "re-extract stl10_binary.tar.gz, or pass --data stl10 to download and verify the release"
STL10_CHUNK = 2048  # images per copy into the cache (~57 MB)
CIFAR_FIX = ("re-download the 'python version' from https://www.cs.toronto.edu/~kriz/cifar.html and extract "
             "it, or pass --data {name} to download and verify it")
TINY_IMAGENET_SIDE = 64  # every Tiny-ImageNet image is 64x64
TINY_FIX = "re-extract tiny-imagenet-200.zip, or pass --data tinyimagenet to download and verify it"


# ---------------------------------------------------------------------------------------------------
# STL-10


def is_stl10_folder(path: Path) -> bool:
    return path.is_dir() and any((path / f"{split}_X.bin").is_file() for split in ("train", "test", "unlabeled"))


def _stl10_count(path: Path) -> int:
    size = path.stat().st_size
    if size == 0 or size % STL10_IMAGE_BYTES:
        raise UsageError(f"'{path}' is {size:,} bytes, not a whole number of 96x96 STL-10 images "
                         f"({STL10_IMAGE_BYTES:,} bytes each): it is truncated or not an STL-10 binary; {STL10_FIX}.")
    return size // STL10_IMAGE_BYTES


def _stl10_chunk(path: Path, start: int, count: int) -> np.ndarray:
    # Plain reads, not a memory map of the source: mapped pages would count as this process's resident
    # memory until the whole 2.8 GB file had passed through it.
    raw = np.fromfile(path, dtype=np.uint8, count=count * STL10_IMAGE_BYTES, offset=start * STL10_IMAGE_BYTES)
    raw = raw.reshape(count, 3, STL10_SIDE, STL10_SIDE)  # (n, 3, W, H): each channel column-major
    return np.ascontiguousarray(raw.transpose(0, 1, 3, 2))  # (n, 3, H, W)


def _stl10_labels(path: Path, count: int, num_classes: int) -> np.ndarray:
    if not path.is_file():
        raise UsageError(f"'{path}' is missing: the labels of {path.name.replace('_y', '_X')}; {STL10_FIX}.")
    labels = np.fromfile(path, dtype=np.uint8).astype(np.int64)
    if len(labels) != count:
        raise UsageError(f"'{path}' holds {len(labels):,} labels for {count:,} images: one of the two files is "
                         f"truncated; {STL10_FIX}.")
    if count and (labels.min() < 1 or labels.max() > num_classes):
        raise UsageError(f"'{path}' has labels outside 1..{num_classes} (STL-10 labels start at 1); {STL10_FIX}.")
    return labels - 1


def check_stl10_size(image_size: int) -> None:
    if image_size != STL10_SIDE:
        raise UsageError(f"STL-10 images are 96x96; set data.image_size to 96 (--set data.image_size=96), "
                         f"got {image_size}.")


def read_stl10(folder: Path, image_size: int, sink: ImageSink, progress: bool = True) -> Decoded:
    """Rows ``train | unlabeled | test`` of an extracted ``stl10_binary/`` folder, streamed into ``sink``."""
    check_stl10_size(image_size)
    names_file = folder / "class_names.txt"
    classes = ([line.strip() for line in names_file.read_text().splitlines() if line.strip()]
               if names_file.is_file() else list(STL10_CLASSES))
    parts = []
    for split in ("train", "unlabeled", "test"):
        x_path = folder / f"{split}_X.bin"
        if not x_path.is_file():
            if split == "unlabeled":
                warnings.warn(f"'{folder}' has no unlabeled_X.bin: pretraining uses the labelled training "
                              f"images only (STL-10's recipe pretrains on the 100,000 unlabeled ones too).",
                              stacklevel=3)
                continue
            raise UsageError(f"'{x_path}' is missing: an STL-10 folder needs train_X.bin, train_y.bin, "
                             f"test_X.bin and test_y.bin; {STL10_FIX}.")
        count = _stl10_count(x_path)
        labels = (np.full(count, -1, np.int64) if split == "unlabeled"
                  else _stl10_labels(folder / f"{split}_y.bin", count, len(classes)))
        parts.append((split, x_path, count, labels))
    sink.reserve(sum(p[2] for p in parts), progress)
    bar = tqdm(total=sum(p[2] for p in parts), desc=f"reading {folder.name}", unit="img",
               disable=not progress, leave=False)
    splits = {}
    for split, x_path, count, _ in parts:
        start = sink.count
        for i in range(0, count, STL10_CHUNK):
            chunk = _stl10_chunk(x_path, i, min(STL10_CHUNK, count - i))  # (n, 3, 96, 96) uint8
            sink.add(chunk)
            bar.update(len(chunk))
        splits[split] = (start, sink.count)
    bar.close()
    labels = np.concatenate([p[3] for p in parts])
    return Decoded(sink.finish(), labels, [], splits, classes, "stl10")


# ---------------------------------------------------------------------------------------------------
# CIFAR "python version"


def cifar_pickle_kind(path: Path) -> str | None:
    """'cifar100' for a cifar-100-python/ folder, 'cifar10' for cifar-10-batches-py/, else None."""
    if not path.is_dir():
        return None
    if (path / "meta").is_file() and (path / "train").is_file():
        return "cifar100"
    if (path / "batches.meta").is_file():
        return "cifar10"
    return None


def _read_pickle_dict(path: Path, name: str, kind: str) -> dict:
    fix = CIFAR_FIX.format(name=kind)
    if not path.is_file():
        raise UsageError(f"'{path}' is missing from the {name} folder; {fix}.")
    try:
        obj = read_plain_pickle(path.read_bytes())
    except NotPlainData as exc:
        raise UsageError(f"'{path}' is not a {name} pickle: {exc}. Nothing in it was run; {fix}.") from None
    if not isinstance(obj, dict):
        raise UsageError(f"'{path}' is not a {name} pickle: it holds a {type(obj).__name__}, not a dict; {fix}.")
    return {k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _names(values, path: Path, name: str) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, (bytes, str)) for v in values):
        raise UsageError(f"'{path}' is not a {name} pickle: its class names are not a list of strings.")
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values]


def read_cifar_pickles(folder: Path, kind: str, image_size: int, sink: ImageSink) -> Decoded:
    """Rows ``train | test`` of an extracted CIFAR-10/100 "python version" folder, written into ``sink``."""
    name = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}[kind]
    if image_size != 32:
        raise UsageError(f"{name} images are 32x32; set data.image_size to 32 (got {image_size}).")
    if kind == "cifar100":
        meta_file, names_key, label_key = folder / "meta", "fine_label_names", "fine_labels"
        files = {"train": [folder / "train"], "test": [folder / "test"]}
    else:
        meta_file, names_key, label_key = folder / "batches.meta", "label_names", "labels"
        batches = sorted(folder.glob("data_batch_*"), key=lambda p: p.name.rsplit("_", 1)[-1].zfill(4))
        files = {"train": batches or [folder / "data_batch_1"], "test": [folder / "test_batch"]}
    meta = _read_pickle_dict(meta_file, name, kind)
    if names_key not in meta:
        raise UsageError(f"'{meta_file}' is not a {name} meta file: it has no '{names_key}'; "
                         f"{CIFAR_FIX.format(name=kind)}.")
    classes = _names(meta[names_key], meta_file, name)
    splits, labels, names = {}, [], []
    for split in ("train", "test"):
        start = sink.count
        for path in files[split]:
            batch = _read_pickle_dict(path, name, kind)
            data, y = batch.get("data"), batch.get(label_key)
            if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
                    or data.shape[1] != 3 * 32 * 32 or not isinstance(y, list) or len(y) != len(data)):
                raise UsageError(f"'{path}' is not a {name} batch: expected 'data' uint8 (N, 3072) and "
                                 f"'{label_key}' with N labels; {CIFAR_FIX.format(name=kind)}.")
            y = np.asarray(y, dtype=np.int64)
            if len(y) and (y.min() < 0 or y.max() >= len(classes)):
                raise UsageError(f"'{path}' has labels outside 0..{len(classes) - 1}; {CIFAR_FIX.format(name=kind)}.")
            sink.add(data.reshape(-1, 3, 32, 32))  # each row is the red, green, blue 32x32 planes
            labels.append(y)
            filenames = batch.get("filenames")
            names += (_names(filenames, path, name) if isinstance(filenames, list) and len(filenames) == len(y)
                      else [f"{i}" for i in range(len(y))])
        splits[split] = (start, sink.count)
    return Decoded(sink.finish(), np.concatenate(labels), names, splits, classes, kind)


# ---------------------------------------------------------------------------------------------------
# Tiny-ImageNet (layout only)


def is_tiny_imagenet(texts: dict[str, object]) -> bool:
    return "wnids.txt" in texts


def _text(data) -> str:
    return (data.read_bytes() if isinstance(data, Path) else data).decode("utf-8", "replace")


def tiny_imagenet_layout(images: list[tuple[PurePosixPath, object]], texts: dict[str, object], source: Path
                         ) -> tuple[list[str], list[str], dict[str, dict[str, list]]]:
    """(wnids in label order, their display names, {split: {wnid: [(path, data)]}}) of a Tiny-ImageNet tree.

    ``texts`` maps the tree's text files (``wnids.txt``, ``words.txt``, ``val/val_annotations.txt``) to their
    data (bytes, or a Path to read)."""
    wnids = sorted({w.strip() for w in _text(texts["wnids.txt"]).split() if w.strip()})
    known = set(wnids)
    groups: dict[str, dict[str, list]] = {"train": {}, "test": {}}
    val = [(p, d) for p, d in images if p.parts[0] == "val"]
    annotations: dict[str, str] = {}
    if val:
        notes = texts.get("val/val_annotations.txt")
        if notes is None:
            raise UsageError(f"'{source}/val/val_annotations.txt' is missing: Tiny-ImageNet's val images get their "
                             f"labels from it; restore it ({TINY_FIX}).")
        for line in _text(notes).splitlines():
            fields = line.split("\t")
            if len(fields) >= 2:
                annotations[fields[0].strip()] = fields[1].strip()
    for p, d in images:
        parts = p.parts
        if parts[0] == "train":
            if len(parts) != 4 or parts[2] != "images":
                raise UsageError(f"'{source}': image '{p}' is not at train/<wnid>/images/<file> (Tiny-ImageNet's layout).")
            wnid = parts[1]
            if wnid not in known:
                raise UsageError(f"'{source}': train/{wnid} is not listed in wnids.txt; {TINY_FIX}.")
            groups["train"].setdefault(wnid, []).append((p, d))
        elif parts[0] == "val":
            wnid = annotations.get(parts[-1])
            if wnid is None:
                raise UsageError(f"'{source}': image '{p}' has no line in val/val_annotations.txt; {TINY_FIX}.")
            if wnid not in known:
                raise UsageError(f"'{source}/val/val_annotations.txt' labels '{parts[-1]}' with '{wnid}', which is not "
                                 f"in wnids.txt; {TINY_FIX}.")
            groups["test"].setdefault(wnid, []).append((p, d))
        # test/: the challenge's unlabelled test images, not used
    if not groups["train"]:
        raise UsageError(f"'{source}' has wnids.txt but no images at train/<wnid>/images/; {TINY_FIX}.")
    if not groups["test"]:
        del groups["test"]
    return wnids, _display_names(wnids, texts.get("words.txt")), groups


def _display_names(wnids: list[str], words) -> list[str]:
    """The first synonym of each wnid in words.txt ('goldfish, Carassius auratus' -> 'goldfish'); the wnid
    itself without words.txt; 'name (wnid)' where two wnids would share a name."""
    lookup = {}
    if words is not None:
        for line in _text(words).splitlines():
            wnid, _, text = line.partition("\t")
            lookup[wnid.strip()] = text.split(",")[0].strip()
    names = [lookup.get(w) or w for w in wnids]
    return [f"{n} ({w})" if names.count(n) > 1 else n for n, w in zip(names, wnids)]
