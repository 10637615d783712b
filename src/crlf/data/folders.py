"""Image folders and archives of them (``.tar``, ``.tar.gz``, ``.tgz``, ``.zip``): listing, layout, decoding.

Layouts: ``ROOT/{train,test}/<class>/*``, ``ROOT/<class>/*`` (all training data), a flat folder of images
(no labels), and Tiny-ImageNet's tree (``wnids.txt`` at the top; see :mod:`crlf.data.formats`). One
top-level folder inside an archive is fine. Images are decoded in parallel (:mod:`crlf.data.parallel`)
straight into the cache file, in a fixed order: split, then class, then the listing's order.
"""

from __future__ import annotations

import functools
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import numpy as np

from crlf.data.cache import Decoded, ImageSink
from crlf.data.formats import TINY_IMAGENET_SIDE, is_tiny_imagenet, tiny_imagenet_layout
from crlf.data.parallel import decode_in_order
from crlf.errors import UsageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def safe_member_name(name: str, archive: Path) -> PurePosixPath:
    """Refuse archive members that would escape the archive (absolute paths, '..')."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts or (posix.parts and ":" in posix.parts[0]):
        raise UsageError(f"archive '{archive}' holds an unsafe member name '{name}' (absolute or with '..'); refusing to read it.")
    return posix


def iter_archive(path: Path) -> Iterator[tuple[PurePosixPath, bytes | None]]:
    """Yield (member path, bytes) for files and (path, None) for folders, in archive order."""
    name = path.name.lower()
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    member = safe_member_name(info.filename, path)
                    yield member, None if info.is_dir() else archive.read(info)
        else:
            with tarfile.open(path, "r:*") as archive:
                for info in archive:
                    member = safe_member_name(info.name, path)
                    if info.isdir():
                        yield member, None
                    elif info.isfile():
                        handle = archive.extractfile(info)
                        yield member, handle.read() if handle else b""
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise UsageError(f"could not read archive '{path}': {exc}. Is it complete and a .tar/.tar.gz/.zip?") from None


def iter_folder(path: Path) -> Iterator[tuple[PurePosixPath, Path | None]]:
    for item in sorted(path.rglob("*")):
        rel = PurePosixPath(item.relative_to(path).as_posix())
        if item.is_dir():
            yield rel, None
        elif item.is_file():
            yield rel, item  # read lazily: bytes are loaded at decode time (in the worker process)


def _strip_common_root(entries: list[tuple[PurePosixPath, object]]) -> list[tuple[PurePosixPath, object]]:
    """Drop one top-level folder shared by every entry (``cifar10-jpeg/train/...`` -> ``train/...``)."""
    tops = {p.parts[0] for p, _ in entries if p.parts}
    if len(tops) == 1 and all(len(p.parts) > 1 for p, data in entries if data is not None):
        top = next(iter(tops))
        if top not in ("train", "test"):
            return [(PurePosixPath(*p.parts[1:]), d) for p, d in entries if len(p.parts) > 1]
    return entries


def _layout(entries: list[tuple[PurePosixPath, object]], images: list[tuple[PurePosixPath, object]],
            source: Path) -> dict[str, dict[str, list]]:
    """Group image entries as {split: {class: [(path, data)]}}; class '' means unlabeled."""
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


def _classes(groups: dict[str, dict[str, list]], path: Path) -> list[str]:
    classes = sorted(c for c in groups["train"] if c != "")
    if "" in groups["train"] and classes:
        raise UsageError(f"'{path}' mixes loose images with class folders; put every image in a class folder.")
    unknown = sorted(set(groups.get("test", {})) - set(groups["train"]))
    if unknown:
        raise UsageError(f"'{path}': test classes {unknown} have no training folder; the class folders must match.")
    return classes


def decode_folder(path: Path, image_size: int, on_bad_image: str, progress: bool, sink: ImageSink,
                  decode: Callable[[bytes, int], np.ndarray]) -> Decoded:
    """Every image of a folder or archive, decoded to ``(3, S, S)`` and streamed into ``sink``."""
    entries = list(iter_archive(path) if path.is_file() else iter_folder(path))
    entries = [(p, d) for p, d in entries if not any(part.startswith(".") or part == "__MACOSX" for part in p.parts)]
    entries = _strip_common_root(entries)
    files = [(p, d) for p, d in entries if d is not None]
    images = [(p, d) for p, d in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    if not images:
        raise UsageError(
            f"'{path}' holds no images ({', '.join(IMAGE_EXTENSIONS)}). Expected ROOT/train/<class>/*.jpg "
            f"(and ROOT/test/<class>/*.jpg), ROOT/<class>/*.jpg, a flat folder of images, a Tiny-ImageNet tree, "
            f"an STL-10 binary folder or a CIFAR 'python version' folder."
        )
    texts = {p.as_posix(): d for p, d in files if p.suffix.lower() == ".txt"}
    if is_tiny_imagenet(texts):
        labels_in_order, classes, groups = tiny_imagenet_layout(images, texts, path)
        fmt = "tinyimagenet"
        decode = functools.partial(decode, native_side=TINY_IMAGENET_SIDE)  # mixed sizes: a damaged tree
    else:
        groups = _layout(entries, images, path)
        labels_in_order = classes = _classes(groups, path)
        fmt = "folder"
    index = {c: i for i, c in enumerate(labels_in_order)}
    jobs = [(split, index.get(label, -1), member, data)
            for split in ("train", "test") if split in groups
            for label in sorted(groups[split]) for member, data in groups[split][label]]
    sink.reserve(len(jobs), progress)
    rows: dict[str, int] = {}
    labels, names, skipped = [], [], []
    done = 0
    for chunk, bad in decode_in_order([job[3] for job in jobs], image_size, progress, f"decoding {path.name}",
                                      decode=decode):
        keep = np.ones(len(chunk), bool)
        for i in sorted(bad):
            member = jobs[done + i][2]
            where = f"{path}/{member}" if path.is_file() else str(path / member)
            if on_bad_image == "error":
                raise UsageError(f"bad image '{where}': {bad[i]}. Fix or remove it, or pass --on-bad-image skip.")
            skipped.append((where, bad[i]))
            keep[i] = False
        sink.add(chunk[keep])  # (kept, 3, S, S)
        for i in np.flatnonzero(keep):
            split, label, member, _ = jobs[done + i]
            rows[split] = rows.get(split, 0) + 1
            labels.append(label)
            names.append(member.as_posix())
        done += len(chunk)
    splits, start = {}, 0
    for split in ("train", "test"):
        if split in groups:
            if not rows.get(split):
                raise UsageError(f"no readable images in the {split} split of '{path}'.")
            splits[split] = (start, start + rows[split])
            start += rows[split]
    return Decoded(sink.finish(), np.asarray(labels, dtype=np.int64), names, splits, classes, fmt, skipped)
