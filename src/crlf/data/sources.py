"""Data sources -> uint8 arrays ``(N, 3, H, W)`` with integer labels, decoded once and cached.

Supported ``--data`` values:

* ``cifar10`` / ``cifar100``: torchvision's download of the canonical release (checked by MD5) into the
  cache folder. Offline, a clear error says how to point ``--data`` at a local copy.
* an image folder ``ROOT/{train,test}/<class>/*.{jpg,jpeg,png,bmp,webp}``, or a ``.tar``, ``.tar.gz``,
  ``.tgz`` or ``.zip`` archive holding one (one top-level folder inside is fine). ``ROOT/<class>/*`` and
  a flat folder of images also work (everything is then the training split; a flat folder has no labels).

Decoded arrays are cached under ``$CRLF_CACHE`` (default ``~/.cache/crlf``) keyed by a checksum of the
source, so a second run loads CIFAR-10's 60,000 images in well under two seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from tqdm.auto import tqdm

from crlf.data.decode import BadImage, decode_image
from crlf.errors import UsageError
from crlf.io import atomic_save_with

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
CACHE_VERSION = 1
OFFLINE_HINT = "point --data at a local copy, e.g. --data ../shared/data/cifar10-jpeg.tar.gz (an image-folder archive)"


@dataclass
class Split:
    images: np.ndarray  # (N, 3, H, W) uint8
    labels: np.ndarray  # (N,) int64; -1 where the source has no labels
    files: list[str] = field(default_factory=list)  # where each image came from (empty for cifar10)

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


def cache_dir() -> Path:
    return Path(os.environ.get("CRLF_CACHE", Path.home() / ".cache" / "crlf"))


def describe_source(source: str) -> str:
    name = Path(source).name.lower()
    if source == "cifar10":
        return "CIFAR-10 (canonical release)"
    if source == "cifar100":
        return "CIFAR-100 (canonical release)"
    if "cifar10-jpeg" in name or "cifar-10-jpeg" in name:
        return "CIFAR-10 (JPEG copy)"
    return f"image folder {Path(source).name}"


def load_dataset(source: str, image_size: int = 32, on_bad_image: str = "error", progress: bool = True) -> Dataset:
    """Load (from cache when possible) every split of ``source``."""
    if source in ("cifar10", "cifar100"):
        return _load_torchvision_cifar(source, image_size)
    path = Path(source).expanduser()
    if not path.exists():
        raise UsageError(
            f"data source '{source}' does not exist. Pass 'cifar10', an image folder "
            f"(ROOT/train/<class>/*.jpg) or a .tar/.tar.gz/.zip archive of one."
        )
    if path.is_file() and not path.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise UsageError(f"'{source}' is a file but not an archive; use a .tar, .tar.gz, .tgz or .zip, or a folder.")
    checksum = _source_checksum(path)
    key = hashlib.sha256(f"{checksum}|{image_size}|{on_bad_image}|v{CACHE_VERSION}".encode()).hexdigest()[:24]
    cached = cache_dir() / f"{key}.npz"
    description = describe_source(source)
    if cached.exists():
        try:
            return _read_cache(cached, description, source, checksum)
        except Exception:  # a damaged cache is rebuilt, never trusted
            cached.unlink(missing_ok=True)
    dataset = _decode_source(path, image_size, on_bad_image, progress)
    dataset.description, dataset.source, dataset.checksum = description, source, checksum
    _write_cache(cached, dataset)
    return dataset


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


# ---------------------------------------------------------------------------------------------------
# torchvision CIFAR


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


# ---------------------------------------------------------------------------------------------------
# Image folders and archives


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


def _safe_member_name(name: str, archive: Path) -> PurePosixPath:
    """Refuse archive members that would escape the archive (absolute paths, '..')."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts or (posix.parts and ":" in posix.parts[0]):
        raise UsageError(f"archive '{archive}' holds an unsafe member name '{name}' (absolute or with '..'); refusing to read it.")
    return posix


def _iter_archive(path: Path) -> Iterator[tuple[PurePosixPath, bytes | None]]:
    """Yield (member path, bytes) for files and (path, None) for folders, in archive order."""
    name = path.name.lower()
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    member = _safe_member_name(info.filename, path)
                    yield member, None if info.is_dir() else archive.read(info)
        else:
            with tarfile.open(path, "r:*") as archive:
                for info in archive:
                    member = _safe_member_name(info.name, path)
                    if info.isdir():
                        yield member, None
                    elif info.isfile():
                        handle = archive.extractfile(info)
                        yield member, handle.read() if handle else b""
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise UsageError(f"could not read archive '{path}': {exc}. Is it complete and a .tar/.tar.gz/.zip?") from None


def _iter_folder(path: Path) -> Iterator[tuple[PurePosixPath, bytes | None]]:
    for item in sorted(path.rglob("*")):
        rel = PurePosixPath(item.relative_to(path).as_posix())
        if item.is_dir():
            yield rel, None
        elif item.is_file():
            yield rel, item  # read lazily: bytes are loaded at decode time

def _strip_common_root(entries: list[tuple[PurePosixPath, object]]) -> list[tuple[PurePosixPath, object]]:
    """Drop one top-level folder shared by every entry (``cifar10-jpeg/train/...`` -> ``train/...``)."""
    tops = {p.parts[0] for p, _ in entries if p.parts}
    if len(tops) == 1 and all(len(p.parts) > 1 for p, data in entries if data is not None):
        top = next(iter(tops))
        if top not in ("train", "test"):
            return [(PurePosixPath(*p.parts[1:]), d) for p, d in entries if len(p.parts) > 1]
    return entries


def _layout(entries: list[tuple[PurePosixPath, object]], source: Path) -> dict[str, dict[str, list]]:
    """Group image entries as {split: {class: [(path, data)]}}; class '' means unlabeled."""
    entries = [(p, d) for p, d in entries if not any(part.startswith(".") or part == "__MACOSX" for part in p.parts)]
    entries = _strip_common_root(entries)
    files = [(p, d) for p, d in entries if d is not None]
    images = [(p, d) for p, d in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    if not images:
        raise UsageError(
            f"'{source}' holds no images ({', '.join(IMAGE_EXTENSIONS)}). Expected ROOT/train/<class>/*.jpg "
            f"(and ROOT/test/<class>/*.jpg), ROOT/<class>/*.jpg or a flat folder of images."
        )
    tops = {p.parts[0] for p, _ in images}
    split_layout = "train" in tops or "test" in tops
    groups: dict[str, dict[str, list]] = {}
    for p, d in images:
        parts = p.parts
        if split_layout:
            if parts[0] not in ("train", "test"):
                continue  # stray files beside train/ and test/
            if len(parts) != 3:
                raise UsageError(f"'{source}': image '{p}' is not at {parts[0]}/<class>/<file>; move it into a class folder.")
            split, label = parts[0], parts[1]
        elif len(parts) == 2:
            split, label = "train", parts[0]
        elif len(parts) == 1:
            split, label = "train", ""
        else:
            raise UsageError(f"'{source}': image '{p}' is nested too deep; expected <class>/<file> or train/<class>/<file>.")
        groups.setdefault(split, {}).setdefault(label, []).append((p, d))
    if "train" not in groups:
        raise UsageError(f"'{source}' has a test/ folder but no train/ folder with images.")
    # Class folders that exist but hold no image are a mistake worth stopping for.
    for p, d in entries:
        if d is None and len(p.parts) == (2 if split_layout else 1) and (not split_layout or p.parts[0] in groups):
            split, label = (p.parts[0], p.parts[1]) if split_layout else ("train", p.parts[0])
            if label not in groups.get(split, {}):
                raise UsageError(f"class folder '{p}' in '{source}' holds no images; add images or remove the folder.")
    return groups


def _decode_source(path: Path, image_size: int, on_bad_image: str, progress: bool) -> Dataset:
    entries = list(_iter_archive(path) if path.is_file() else _iter_folder(path))
    groups = _layout(entries, path)
    classes = sorted(c for c in groups["train"] if c != "")
    if "" in groups["train"] and classes:
        raise UsageError(f"'{path}' mixes loose images with class folders; put every image in a class folder.")
    unknown = sorted(set(groups.get("test", {})) - set(groups["train"]))
    if unknown:
        raise UsageError(f"'{path}': test classes {unknown} have no training folder; the class folders must match.")
    index = {c: i for i, c in enumerate(classes)}
    skipped: list[tuple[str, str]] = []
    total = sum(len(v) for g in groups.values() for v in g.values())
    bar = tqdm(total=total, desc=f"decoding {path.name}", unit="img", disable=not progress, leave=False)
    splits = {}
    for split_name in ("train", "test"):
        if split_name not in groups:
            continue
        images, labels, files = [], [], []
        for label in sorted(groups[split_name]):
            for member, data in groups[split_name][label]:
                where = f"{path}/{member}" if path.is_file() else str(path / member)
                raw = data.read_bytes() if isinstance(data, Path) else data
                try:
                    images.append(decode_image(raw, image_size))
                except BadImage as exc:
                    if on_bad_image == "error":
                        raise UsageError(
                            f"bad image '{where}': {exc}. Fix or remove it, or pass --on-bad-image skip."
                        ) from None
                    skipped.append((where, str(exc)))
                    continue
                finally:
                    bar.update(1)
                labels.append(index.get(label, -1))
                files.append(member.as_posix())
        if not images:
            raise UsageError(f"no readable images in the {split_name} split of '{path}'.")
        splits[split_name] = Split(np.stack(images), np.asarray(labels, dtype=np.int64), files)
    bar.close()
    return Dataset("", str(path), "", classes, splits["train"], splits.get("test"), skipped)


# ---------------------------------------------------------------------------------------------------
# Cache


def _write_cache(path: Path, ds: Dataset) -> None:
    arrays = {
        "train_images": ds.train.images,
        "train_labels": ds.train.labels,
        "train_files": np.asarray(ds.train.files, dtype=str),
        "meta": np.asarray(json.dumps({"classes": ds.classes, "skipped": ds.skipped})),
    }
    if ds.test is not None:
        arrays |= {
            "test_images": ds.test.images,
            "test_labels": ds.test.labels,
            "test_files": np.asarray(ds.test.files, dtype=str),
        }
    try:  # uncompressed: loading is a memcpy, which is the point of the cache
        atomic_save_with(path, lambda buf: np.savez(buf, **arrays))
    except OSError:
        pass  # a cache that cannot be written only costs time on the next run


def _read_cache(path: Path, description: str, source: str, checksum: str) -> Dataset:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        train = Split(z["train_images"], z["train_labels"], z["train_files"].tolist())
        test = Split(z["test_images"], z["test_labels"], z["test_files"].tolist()) if "test_images" in z else None
    skipped = [tuple(s) for s in meta["skipped"]]
    return Dataset(description, source, checksum, meta["classes"], train, test, skipped)
