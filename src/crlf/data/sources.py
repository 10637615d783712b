"""Data sources -> uint8 arrays ``(N, 3, H, W)`` with integer labels, decoded once and cached.

Supported ``--data`` values:

* ``cifar10`` / ``cifar100``: torchvision's download of the canonical release (checked by MD5) into the
  cache folder. Offline, a clear error says how to point ``--data`` at a local copy.
* ``stl10``: torchvision's download of the STL-10 binary release (MD5-checked), 96 px; ``tinyimagenet``:
  the Tiny-ImageNet-200 zip from cs231n (MD5-checked), 64 px. Both land in the cache folder.
* an image folder ``ROOT/{train,test}/<class>/*.{jpg,jpeg,png,bmp,webp}``, or a ``.tar``, ``.tar.gz``,
  ``.tgz`` or ``.zip`` archive holding one (one top-level folder inside is fine). ``ROOT/<class>/*`` and
  a flat folder of images also work (everything is then the training split; a flat folder has no labels).
* a published layout, extracted: ``stl10_binary/``, ``cifar-100-python/``, ``cifar-10-batches-py/``, or
  ``tiny-imagenet-200/`` (also as its .zip) — see :mod:`crlf.data.formats`.

Splits: ``train`` and ``test`` serve evaluation; a source may also have an ``unlabeled`` split (STL-10's
100,000 images), which pretraining alone reads (:func:`pretraining_split`: train, then unlabeled).

Decoded arrays are cached under ``$CRLF_CACHE`` (default ``~/.cache/crlf``) keyed by a checksum of the
source, as one memory-mapped file (:mod:`crlf.data.cache`): a second run opens CIFAR-10's 60,000 images
in well under a second, and data larger than memory are never loaded whole.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crlf.data.cache import Decoded, ImageSink, read_cache, write_index
from crlf.data.decode import decode_image
from crlf.data.folders import IMAGE_EXTENSIONS, decode_folder
from crlf.data.formats import (
    check_stl10_size,
    cifar_pickle_kind,
    is_stl10_folder,
    read_cifar_pickles,
    read_stl10,
)
from crlf.errors import UsageError, did_you_mean

__all__ = ["IMAGE_EXTENSIONS", "Dataset", "Split", "balanced_subset", "load_dataset", "pretraining_split"]

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
CACHE_VERSION = 2  # 2: one memory-mapped .images.npy + .npz index (1: one .npz, fully loaded); old keys never match
OFFLINE_HINT = "point --data at a local copy, e.g. --data ../shared/data/cifar10-jpeg.tar.gz (an image-folder archive)"
NAMED = {"cifar10": "CIFAR-10 (canonical release)", "cifar100": "CIFAR-100 (canonical release)",
         "stl10": "STL-10 (canonical release)", "tinyimagenet": "Tiny-ImageNet (canonical release)"}
FORMAT_NAMES = {"stl10": "STL-10", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "tinyimagenet": "Tiny-ImageNet"}
STL10_FILES = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "unlabeled_X.bin")
TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"


@dataclass
class Split:
    images: np.ndarray  # (N, 3, H, W) uint8 (a memory map of the cache file, or in memory)
    labels: np.ndarray  # (N,) int64; -1 where the source has no labels
    files: list[str] = field(default_factory=list)  # where each image came from (empty for binary formats)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: np.ndarray) -> Split:
        files = [self.files[i] for i in index] if self.files else []
        return Split(self.images[index], self.labels[index], files)


@dataclass
class Dataset:
    description: str  # e.g. "CIFAR-10 (JPEG copy)": printed next to every figure
    source: str
    checksum: str
    classes: list[str]
    train: Split
    test: Split | None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) with on_bad_image=skip
    unlabeled: Split | None = None  # extra images for pretraining only (STL-10); never evaluated on


def cache_dir() -> Path:
    return Path(os.environ.get("CRLF_CACHE", Path.home() / ".cache" / "crlf"))


def describe_source(source: str, fmt: str | None = None) -> str:
    name = Path(source).name.lower()
    if source in NAMED:
        return NAMED[source]
    if fmt in FORMAT_NAMES:
        return f"{FORMAT_NAMES[fmt]} ({Path(source).name})"
    if "cifar10-jpeg" in name or "cifar-10-jpeg" in name:
        return "CIFAR-10 (JPEG copy)"
    return f"image folder {Path(source).name}"


def load_dataset(source: str, image_size: int = 32, on_bad_image: str = "error", progress: bool = True) -> Dataset:
    """Load (from cache when possible) every split of ``source``."""
    if source in ("cifar10", "cifar100"):
        return _load_torchvision_cifar(source, image_size)
    if source in DOWNLOADS:
        if source == "stl10":
            check_stl10_size(image_size)  # before a 2.6 GB download, not after
        path = DOWNLOADS[source]()
    else:
        path = Path(source).expanduser()
        if not path.exists():
            hint = did_you_mean(source.lower(), NAMED) if "/" not in source else ""  # a path: no name to guess
            raise UsageError(
                f"data source '{source}' does not exist.{hint} Pass cifar10, cifar100, stl10, tinyimagenet, an image "
                f"folder (ROOT/train/<class>/*.jpg) or a .tar/.tar.gz/.zip archive of one, or an extracted "
                f"stl10_binary/, cifar-100-python/ or tiny-imagenet-200/ folder."
            )
        if path.is_file() and not path.name.lower().endswith(ARCHIVE_SUFFIXES):
            raise UsageError(f"'{source}' is a file but not an archive; use a .tar, .tar.gz, .tgz or .zip, or a folder.")
    checksum = _source_checksum(path)
    key = hashlib.sha256(f"{checksum}|{image_size}|{on_bad_image}|v{CACHE_VERSION}".encode()).hexdigest()[:24]
    index, images = cache_dir() / f"{key}.npz", cache_dir() / f"{key}.images.npy"
    if index.exists():
        try:
            return _dataset(read_cache(index, images), source, checksum)
        except Exception:  # a damaged or unfinished cache is rebuilt, never trusted
            index.unlink(missing_ok=True)
            images.unlink(missing_ok=True)
    with ImageSink(images, image_size) as sink:
        decoded = _decode(path, image_size, on_bad_image, progress, sink)
    if isinstance(decoded.images, np.memmap):  # else the cache folder could not be written: nothing to index
        write_index(index, decoded)
    return _dataset(decoded, source, checksum)


def balanced_subset(split: Split, limit: int | None, seed: int = 0) -> Split:
    """A class-balanced subset of ``limit`` images (all of them when ``limit`` is None or too large)."""
    if limit is None or limit >= len(split):
        return split
    rng = np.random.default_rng(seed)
    classes = np.unique(split.labels)
    per_class = [rng.permutation(np.flatnonzero(split.labels == c)) for c in classes]
    quota = np.full(len(classes), limit // len(classes))
    quota[: limit % len(classes)] += 1
    chosen = np.concatenate([idx[:q] for idx, q in zip(per_class, quota)])
    if len(chosen) < limit:  # some classes are smaller than their quota: top up from the rest
        rest = np.setdiff1d(np.arange(len(split)), chosen)
        chosen = np.concatenate([chosen, rng.permutation(rest)[: limit - len(chosen)]])
    return split.subset(np.sort(chosen))


def pretraining_split(dataset: Dataset, limit: int | None = None, seed: int = 0) -> Split:
    """The images pretraining sees: the training split (``balanced_subset`` of ``limit``), then the unlabeled
    split where the source has one (all of it, or ``limit`` of it drawn at random with ``seed``). Labels
    are -1 on the unlabeled rows. Without ``limit`` this is a view of the cache file, not a copy."""
    train = balanced_subset(dataset.train, limit, seed)
    extra = dataset.unlabeled
    if extra is None:
        return train
    if limit is not None and limit < len(extra):
        extra = extra.subset(np.sort(np.random.default_rng(seed).permutation(len(extra))[:limit]))
    files = train.files + extra.files if train.files and extra.files else []
    return Split(_join_rows(train.images, extra.images), np.concatenate([train.labels, extra.labels]), files)


def _join_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a`` then ``b`` as one array: a view when they are adjacent rows of one array (the cache's
    train | unlabeled rows: STL-10's 105,000 images are not copied), a copy otherwise."""
    base = a.base
    if (isinstance(base, np.ndarray) and b.base is base and base.flags.c_contiguous and a.flags.c_contiguous
            and b.flags.c_contiguous and base.shape[1:] == a.shape[1:] == b.shape[1:]
            and a.ctypes.data + a.nbytes == b.ctypes.data):
        row = a.strides[0]
        start = (a.ctypes.data - base.ctypes.data) // row
        return base[start:start + len(a) + len(b)]
    return np.concatenate([a, b])


# ---------------------------------------------------------------------------------------------------
# Downloads: torchvision CIFAR (read by torchvision), STL-10 and Tiny-ImageNet (read by crlf.data.formats)


def _load_torchvision_cifar(name: str, image_size: int) -> Dataset:
    from torchvision import datasets

    if image_size != 32:
        raise UsageError(f"{name} images are 32x32; set data.image_size to 32 (got {image_size}).")
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    root = cache_dir() / "torchvision"
    try:
        train = cls(str(root), train=True, download=True)
        test = cls(str(root), train=False, download=True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; a failed MD5 check is a RuntimeError
        raise UsageError(f"could not download or verify {name} into '{root}' ({exc}). Offline? {OFFLINE_HINT}.") from None

    def split(ds) -> Split:
        images = np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2))  # (N, 32, 32, 3) -> (N, 3, 32, 32)
        return Split(images, np.asarray(ds.targets, dtype=np.int64))

    return Dataset(describe_source(name), name, cls.tgz_md5, list(train.classes), split(train), split(test))


def _stl10_folder() -> Path:
    """The extracted binary release, downloaded and MD5-checked by torchvision on first use."""
    from torchvision import datasets

    root = cache_dir() / "torchvision"
    folder = root / datasets.STL10.base_folder
    if not all((folder / name).is_file() for name in STL10_FILES):
        try:  # 2.6 GB; torchvision checks the archive's and every file's MD5, then extracts
            datasets.STL10(str(root), split="test", download=True)
        except (OSError, RuntimeError) as exc:
            raise UsageError(f"could not download or verify stl10 into '{root}' ({exc}). Offline? Point --data at an "
                             f"extracted stl10_binary/ folder ({', '.join(STL10_FILES)}).") from None
    return folder


def _tiny_imagenet_folder() -> Path:
    """The extracted Tiny-ImageNet-200 zip, downloaded and MD5-checked on first use."""
    root = cache_dir() / "tinyimagenet"
    folder = root / "tiny-imagenet-200"
    if not (folder / "wnids.txt").is_file() or not (folder / "val" / "val_annotations.txt").is_file():
        from torchvision.datasets.utils import download_and_extract_archive

        try:  # 248 MB; the MD5 is checked before extracting
            download_and_extract_archive(TINY_URL, str(root), md5=TINY_MD5)
        except (OSError, RuntimeError) as exc:
            raise UsageError(f"could not download or verify tinyimagenet into '{root}' ({exc}). Offline? Point --data "
                             f"at an extracted tiny-imagenet-200/ folder or at tiny-imagenet-200.zip.") from None
    return folder


DOWNLOADS = {"stl10": _stl10_folder, "tinyimagenet": _tiny_imagenet_folder}


# ---------------------------------------------------------------------------------------------------
# Local sources


def _source_checksum(path: Path) -> str:
    digest = hashlib.sha256()
    if path.is_file():
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    else:  # a folder: its listing with sizes and modification times stands for its content
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            stat = file.stat()
            digest.update(f"{file.relative_to(path).as_posix()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _decode(path: Path, image_size: int, on_bad_image: str, progress: bool, sink: ImageSink) -> Decoded:
    if is_stl10_folder(path):
        return read_stl10(path, image_size, sink, progress)
    kind = cifar_pickle_kind(path)
    if kind is not None:
        return read_cifar_pickles(path, kind, image_size, sink)
    return decode_folder(path, image_size, on_bad_image, progress, sink, decode_image)


def _dataset(decoded: Decoded, source: str, checksum: str) -> Dataset:
    def split(name: str) -> Split | None:
        if name not in decoded.splits:
            return None
        start, stop = decoded.splits[name]
        files = decoded.files[start:stop] if decoded.files else []
        return Split(decoded.images[start:stop], decoded.labels[start:stop], files)  # views, not copies

    return Dataset(describe_source(source, decoded.format), source, checksum, decoded.classes, split("train"),
                   split("test"), decoded.skipped, split("unlabeled"))
