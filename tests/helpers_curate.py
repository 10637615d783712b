"""Image folders with planted faults for the curation tests: a near-copy (flipped, cropped, re-encoded as
JPEG), an exact copy, a checkerboard outlier, a sea image filed under brick, and a file that is no image."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"brick": (200, 40, 40), "grass": (40, 190, 60), "sea": (40, 60, 210)}


def smooth_image(rng: np.random.Generator, colour, size: int = 32) -> np.ndarray:
    """``(size, size, 3)`` uint8: a smooth random field over a base colour. Unlike i.i.d. noise, a crop or a
    flip of it still matches it pixel by pixel once aligned, as a real photo's copy does."""
    field = rng.normal(0, 1, (4, 4, 3))
    small = ((field - field.min()) / np.ptp(field) * 255).astype(np.uint8)
    up = np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC), dtype=float)
    return np.clip(np.array(colour) * 0.6 + (up - 128) * 0.8, 0, 255).astype(np.uint8)


def near_copy(path: Path) -> bytes:
    """A flipped ~85 %-area crop of the image at ``path``, resized back and saved as JPEG (quality 85)."""
    src = Image.open(path)
    edited = src.transpose(Image.Transpose.FLIP_LEFT_RIGHT).crop((1, 2, 31, 31)).resize(src.size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    edited.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def checkerboard(size: int = 32) -> np.ndarray:
    board = (np.indices((size, size)).sum(0) // 4 % 2 * 255).astype(np.uint8)
    return np.stack([board] * 3, -1)


def make_plain_folder(root: Path, per_class: int = 14, seed: int = 0, classes=tuple(COLOURS)) -> Path:
    """``ROOT/<class>/NN.png``, smooth images of each class's colour."""
    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(smooth_image(rng, COLOURS[name])).save(root / name / f"{i:02d}.png")
    return root


def make_curation_folder(root: Path, per_class: int = 14, seed: int = 0) -> Path:
    """:func:`make_plain_folder` plus the planted faults (see the module docstring)."""
    make_plain_folder(root, per_class, seed)
    rng = np.random.default_rng(seed + 1)
    (root / "grass" / "03_copy.jpg").write_bytes(near_copy(root / "grass" / "03.png"))
    (root / "sea" / "05_exact.png").write_bytes((root / "sea" / "05.png").read_bytes())
    Image.fromarray(checkerboard()).save(root / "brick" / "zz_outlier.png")
    Image.fromarray(smooth_image(rng, COLOURS["sea"])).save(root / "brick" / "zz_flipped.png")  # a sea image
    (root / "brick" / "broken.jpg").write_bytes(b"not a jpeg at all")
    return root


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``root``: modification time and content hash, to prove nothing was touched."""
    return {p.relative_to(root).as_posix(): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}
