"""Shared fixtures: tiny synthetic image folders and archives, an isolated cache, a tiny finished run."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SEED_CONFIG = REPO / "configs" / "seed.yaml"
# The shared trained fixtures on one thread: torch's default is the runner's core count, and another thread
# count splits the sums (and so rounds) differently: their models would differ from one runner to the next.
ONE_THREAD = ["--threads", "1"]
CLASSES = ("cat", "dog", "frog")
COLOUR_CLASSES = ("brick", "grass", "sea")  # reddish, greenish, bluish images: easy to tell apart
COLOURS = ((200, 40, 40), (40, 190, 60), (40, 60, 210))


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own decode cache: tests never read ~/.cache or each other's arrays."""
    monkeypatch.setenv("CRLF_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("CRLF_CACHE_DIR", raising=False)  # the precision probe's cache then follows CRLF_CACHE


def make_image_folder(root: Path, train_per_class: int = 12, test_per_class: int = 4, size: int = 32,
                      classes=CLASSES, ext: str = ".png", seed: int = 0, colours=None, noise: float = 30,
                      digits: int = 4) -> Path:
    """ROOT/{train,test}/<class>/NNNN.png with a distinct base colour per class plus noise."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            if colours is not None:
                base = np.array(colours[c])
            else:
                base = np.array([(80 * c + 40) % 256, (150 * c + 90) % 256, (200 - 60 * c) % 256])
            for i in range(count):
                pixels = np.clip(base + rng.normal(0, noise, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:0{digits}d}{ext}")
    return root


def make_colour_run(base: Path) -> Path:
    """A finished 1-epoch `crlf run` on 3 x 16 coloured images (brick, grass, sea): a few seconds."""
    import pytest

    from crlf.cli import main

    data = make_image_folder(base / "images", 16, 6, classes=COLOUR_CLASSES, colours=COLOURS, noise=25, digits=2)
    run = base / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CRLF_CACHE", str(base / "cache"))
        mp.chdir(REPO)
        code = main(["run", "--config", "configs/seed.yaml", "--data", str(data), "--out", str(run),
                     "--epochs", "1", "--batch-size", "8", "--quiet", "--device", "cpu", *ONE_THREAD])
    assert code == 0
    return run


def make_archive(folder: Path, archive: Path, top: str = "tiny") -> Path:
    """Pack ``folder`` as .tar/.tar.gz/.zip with one top-level folder inside (like the CIFAR-10 JPEG copy)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive, "w") as z:
            for p in files:
                z.write(p, f"{top}/{p.relative_to(folder).as_posix()}")
    else:
        with tarfile.open(archive, "w:gz" if archive.name.endswith(".gz") else "w") as t:
            t.add(folder, arcname=top)
    return archive


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One finished `crlf run` on a synthetic archive, shared by the tests that only read artefacts."""
    import os

    from crlf.cli import main

    base = tmp_path_factory.mktemp("tiny_run")
    old = os.environ.get("CRLF_CACHE")
    os.environ["CRLF_CACHE"] = str(base / "cache")
    try:
        archive = make_archive(make_image_folder(base / "images"), base / "tiny.tar.gz")
        run = base / "run"
        code = main(["run", "--config", str(SEED_CONFIG), "--data", str(archive), "--out", str(run),
                     "--epochs", "2", "--batch-size", "8", "--device", "cpu", "--quiet", "--eval-every", "1",
                     *ONE_THREAD])
        assert code == 0
    finally:
        if old is None:
            os.environ.pop("CRLF_CACHE", None)
        else:
            os.environ["CRLF_CACHE"] = old
    return run
