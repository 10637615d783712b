"""Before a decode, the cache's size and place are said, and a disk that cannot hold it is a usage error."""

from __future__ import annotations

from collections import namedtuple

import pytest

import crlf.data.cache
from crlf.cli import main
from crlf.data.sources import load_dataset
from crlf.errors import UsageError

from conftest import SEED_CONFIG, make_image_folder

Usage = namedtuple("Usage", "total used free")


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("CRLF_CACHE", str(tmp_path / "cache"))
    return make_image_folder(tmp_path / "images", train_per_class=10, test_per_class=2)  # 36 images, 32 px


def test_decode_says_the_cache_size_and_where(folder, tmp_path, capsys):
    load_dataset(str(folder), 32, progress=True)
    expected = f"decode cache: 36 images at 32 px: {(128 + 36 * 3 * 32 * 32) / 2**20:.1f} MB in {tmp_path / 'cache'}"
    assert expected in capsys.readouterr().err


def test_a_full_disk_is_refused_before_decoding_with_the_numbers(folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(crlf.data.cache.shutil, "disk_usage", lambda path: Usage(2**40, 2**40 - 2**20, 2**20))
    with pytest.raises(UsageError, match=r"not enough disk for the decode cache: 36 images at 32 px: 0\.1 MB in .*"
                                         r"which has 1\.0 MB free \(and 256\.0 MB should stay free\)"):
        load_dataset(str(folder), 32, progress=False)
    assert not any((tmp_path / "cache").iterdir())  # no half-written cache left behind
    run = tmp_path / "run"
    assert main(["pretrain", "--config", str(SEED_CONFIG), "--data", str(folder), "--out", str(run), "--quiet"]) == 2
    assert "CRLF_CACHE" in capsys.readouterr().err
    assert not (run / "checkpoint.pt").exists()
