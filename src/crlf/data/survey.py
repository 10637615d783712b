"""How large a source's images are, read from the headers of a seeded sample: nothing is decoded.

``data.image_size: auto`` chooses the training resolution from the images' native size
(:mod:`crlf.training.resolution`); this module only measures that size. The published datasets have one
size each and are not read at all. For a folder or an archive, a seeded sample of at most
:data:`SAMPLE` image files is opened with Pillow, which reads the header (width and height) and stops
there. The sample is the files whose seeded hash of the path is smallest (a bottom-k sample), so a
``.tar.gz`` is read in one pass, in its own order, holding at most ``SAMPLE`` headers.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import statistics
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from crlf.data.folders import IMAGE_EXTENSIONS
from crlf.data.formats import STL10_SIDE, TINY_IMAGENET_SIDE, cifar_pickle_kind, is_stl10_folder

SAMPLE = 256  # headers read: the median of 256 sizes is within a few % of the folder's on any mix we tried
# The published datasets: one size each, known without reading anything.
PUBLISHED_SIDES = {"cifar10": 32, "cifar100": 32, "stl10": STL10_SIDE, "tinyimagenet": TINY_IMAGENET_SIDE}


@dataclass(frozen=True)
class ImageSurvey:
    """The images' sizes: ``files`` image files listed, ``sampled`` headers read (0 for a published set),
    the median width and height of the sample, and ``native_side``: the median of each image's shorter
    side, the most detail a square training view can hold without upsampling."""

    name: str
    files: int
    sampled: int
    median_width: int
    median_height: int
    native_side: int
    unreadable: int = 0  # sampled files whose header Pillow could not read (the decode reports them)

    def describe(self) -> str:
        """e.g. ``photos: median 160x120 (256 of 600 headers)``."""
        if not self.sampled:
            return f"{self.name}: {self.median_width}x{self.median_height}"
        return (f"{self.name}: median {self.median_width}x{self.median_height} ({self.sampled} of {self.files:,} "
                f"headers)")

    def record(self) -> dict:
        return {"name": self.name, "files": self.files, "sampled": self.sampled,
                "median_width": self.median_width, "median_height": self.median_height,
                "native_side": self.native_side, "unreadable": self.unreadable}


def survey_source(source: str, sample: int = SAMPLE, seed: int = 0) -> ImageSurvey | None:
    """The survey of ``data.source``; None when the source cannot be surveyed here (a path that does not
    exist: loading it gives the error that names the fix)."""
    if source in PUBLISHED_SIDES:
        side = PUBLISHED_SIDES[source]
        return ImageSurvey(source, 0, 0, side, side, side)
    path = Path(source).expanduser()
    if not path.exists():
        return None
    if path.is_dir() and is_stl10_folder(path):
        return ImageSurvey(path.name, 0, 0, STL10_SIDE, STL10_SIDE, STL10_SIDE)
    if path.is_dir() and cifar_pickle_kind(path) is not None:
        return ImageSurvey(path.name, 0, 0, 32, 32, 32)
    sizes, files, unreadable = _sample_sizes(path, sample, seed)
    if not sizes:
        return None  # no readable image header: the decode says what is wrong with the source
    widths, heights = [w for w, _ in sizes], [h for _, h in sizes]
    return ImageSurvey(path.name, files, len(sizes) + unreadable, round(statistics.median(widths)),
                       round(statistics.median(heights)), round(statistics.median(min(w, h) for w, h in sizes)),
                       unreadable)


def _rank(name: str, seed: int) -> int:
    """A seeded hash of a file's path: the sample is the ``sample`` smallest."""
    return int.from_bytes(hashlib.blake2b(f"{seed}|{name}".encode(), digest_size=8).digest(), "big")


def _is_image(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    hidden = any(p.startswith(".") or p == "__MACOSX" for p in parts if p)
    return not hidden and name.lower().endswith(IMAGE_EXTENSIONS)


def _header_size(data: bytes | Path) -> tuple[int, int] | None:
    """(width, height) from the header alone (Pillow opens lazily); None if it cannot be read."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def _sample_sizes(path: Path, sample: int, seed: int) -> tuple[list[tuple[int, int]], int, int]:
    """(sizes of the sample's readable headers, image files listed, unreadable headers in the sample)."""
    if path.is_dir():
        names = [p for p in path.rglob("*") if p.is_file() and _is_image(p.relative_to(path).as_posix())]
        chosen = heapq.nsmallest(sample, names, key=lambda p: _rank(p.relative_to(path).as_posix(), seed))
        read = [_header_size(p) for p in chosen]
        return [s for s in read if s], len(names), sum(s is None for s in read)
    if path.name.lower().endswith(".zip"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = [i for i in archive.infolist() if not i.is_dir() and _is_image(i.filename)]
                chosen = heapq.nsmallest(sample, names, key=lambda i: _rank(i.filename, seed))
                read = [_header_size(archive.read(i)) for i in chosen]
        except (zipfile.BadZipFile, OSError):
            return [], 0, 0
        return [s for s in read if s], len(names), sum(s is None for s in read)
    # A tar (maybe compressed): one pass in the archive's order, keeping the bottom-k sample as it goes.
    kept: list[tuple[int, tuple[int, int] | None]] = []  # a max-heap by rank: (-rank, size)
    files = 0
    try:
        with tarfile.open(path, "r:*") as archive:
            for info in archive:
                if not (info.isfile() and _is_image(info.name)):
                    continue
                files += 1
                rank = _rank(info.name, seed)
                if len(kept) == sample and -kept[0][0] <= rank:
                    continue  # not in the sample: its bytes are never read
                handle = archive.extractfile(info)
                entry = (-rank, _header_size(handle.read() if handle else b""))
                if len(kept) < sample:
                    heapq.heappush(kept, entry)
                else:
                    heapq.heapreplace(kept, entry)
    except (tarfile.TarError, EOFError, OSError):
        return [], 0, 0
    read = [size for _, size in kept]
    return [s for s in read if s], files, sum(s is None for s in read)
