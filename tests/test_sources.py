import tarfile
import time
import urllib.error

import numpy as np
import pytest

from crlf.data import sources
from crlf.data.sources import Split, balanced_subset, load_dataset
from crlf.errors import UsageError

from conftest import CLASSES, make_archive, make_image_folder


def test_image_folder_layout(image_folder):
    ds = load_dataset(str(image_folder), progress=False)
    assert ds.classes == list(CLASSES)
    assert ds.train.images.shape == (36, 3, 32, 32) and ds.train.images.dtype == np.uint8
    assert ds.test.images.shape == (12, 3, 32, 32)
    assert np.bincount(ds.train.labels).tolist() == [12, 12, 12]
    assert ds.train.files[0] == "train/cat/0000.png"


@pytest.mark.parametrize("name", ["tiny.tar", "tiny.tar.gz", "tiny.zip"])
def test_archives_with_one_top_level_folder(image_folder, tmp_path, name):
    archive = make_archive(image_folder, tmp_path / name)
    ds = load_dataset(str(archive), progress=False)
    reference = load_dataset(str(image_folder), progress=False)
    assert np.array_equal(ds.train.images, reference.train.images)
    assert np.array_equal(ds.test.labels, reference.test.labels)


def test_class_folders_without_split_and_flat_folder(tmp_path):
    make_image_folder(tmp_path / "x", test_per_class=0)
    ds = load_dataset(str(tmp_path / "x" / "train"), progress=False)
    assert ds.classes == list(CLASSES) and ds.test is None
    flat = load_dataset(str(tmp_path / "x" / "train" / "cat"), progress=False)
    assert flat.classes == [] and (flat.train.labels == -1).all()


def test_non_square_images_are_resized_and_centre_cropped(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs" / "a"
    folder.mkdir(parents=True)
    Image.new("RGB", (100, 50), (10, 200, 30)).save(folder / "wide.jpg")
    ds = load_dataset(str(tmp_path / "imgs"), image_size=32, progress=False)
    assert ds.train.images.shape == (1, 3, 32, 32)


def test_second_load_comes_from_the_cache(image_folder, monkeypatch):
    first = load_dataset(str(image_folder), progress=False)
    monkeypatch.setattr(sources, "decode_image", lambda *a: pytest.fail("decoded again instead of using the cache"))
    t0 = time.perf_counter()
    second = load_dataset(str(image_folder), progress=False)
    assert time.perf_counter() - t0 < 2
    assert np.array_equal(first.train.images, second.train.images)
    assert second.train.files == first.train.files


def test_cache_is_invalidated_when_the_folder_changes(image_folder):
    load_dataset(str(image_folder), progress=False)
    make_image_folder(image_folder, train_per_class=13, test_per_class=4)  # adds one image per class
    assert len(load_dataset(str(image_folder), progress=False).train) == 39


def test_balanced_subset():
    labels = np.repeat(np.arange(10), 100)
    split = Split(np.zeros((1000, 3, 4, 4), np.uint8), labels)
    sub = balanced_subset(split, 95, seed=0)
    assert len(sub) == 95
    counts = np.bincount(sub.labels, minlength=10)
    assert counts.max() - counts.min() <= 1
    assert np.array_equal(balanced_subset(split, 95, seed=0).labels, sub.labels)
    assert balanced_subset(split, None) is split


def test_missing_path_and_non_image_folder(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_dataset(str(tmp_path / "nope"))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("hi")
    with pytest.raises(UsageError, match="holds no images"):
        load_dataset(str(tmp_path / "docs"))


def test_empty_class_folder_is_named(image_folder):
    (image_folder / "train" / "empty").mkdir()
    with pytest.raises(UsageError, match="class folder 'train/empty'.*holds no images"):
        load_dataset(str(image_folder), progress=False)


def test_unsafe_archive_member_is_refused(tmp_path, image_folder):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as t:
        t.add(image_folder / "train" / "cat" / "0000.png", arcname="../escape.png")
    with pytest.raises(UsageError, match="unsafe member"):
        load_dataset(str(archive), progress=False)


def test_cifar10_offline_gives_a_clear_error(monkeypatch):
    from torchvision import datasets

    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(datasets.CIFAR10, "download", offline)
    with pytest.raises(UsageError, match=r"cifar10.*Offline\?.*--data"):
        load_dataset("cifar10")
