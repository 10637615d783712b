"""Dataset formats (CIFAR "python version" pickles, STL-10 binaries, Tiny-ImageNet trees), each written here in
its published layout; the memory-mapped cache and the batches gathered from it; parallel decoding; an unlabeled
folder through pretrain, embed, evaluate and run; 64-px images; the blur kernel in proportion to the view.
Nothing is downloaded."""

from __future__ import annotations

import json
import pickle
import struct
import urllib.error
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crlf.cli import main
from crlf.config import AugmentConfig, load_config
from crlf.data import parallel, sources
from crlf.data.augment import PILAugment, TensorAugment, blur_kernel_size
from crlf.data.mapped import MappedImages, training_images
from crlf.data.sources import load_dataset, pretraining_split
from crlf.errors import UsageError

from conftest import SEED_CONFIG, make_image_folder

QUICK = ["--epochs", "1", "--batch-size", "8", "--device", "cpu", "--threads", "1", "--quiet"]


# ---------------------------------------------------------------------------------------------------
# Writers of the published formats


def _py2_str(b: bytes) -> bytes:
    return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<I", len(b)) + b


def _py2_int(n: int) -> bytes:
    return b"K" + bytes([n]) if 0 <= n < 256 else b"M" + struct.pack("<H", n) if 0 <= n < 65536 else b"J" + struct.pack("<i", n)


def _py2_obj(v) -> bytes:
    if isinstance(v, bytes):
        return _py2_str(v)
    if isinstance(v, int):
        return _py2_int(v)
    if isinstance(v, list):
        return b"]" + (b"(" + b"".join(_py2_obj(x) for x in v) + b"e" if v else b"")
    assert isinstance(v, np.ndarray) and v.dtype == np.uint8
    shape = b"(" + b"".join(_py2_int(s) for s in v.shape) + b"t"
    dtype = (b"cnumpy\ndtype\n" + _py2_str(b"u1") + _py2_int(0) + _py2_int(1) + b"\x87R"
             + b"(" + _py2_int(3) + _py2_str(b"|") + b"NNN" + b"J\xff\xff\xff\xff" * 2 + _py2_int(0) + b"tb")
    return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _py2_int(0) + b"\x85" + _py2_str(b"b")
            + b"\x87R(" + _py2_int(1) + shape + dtype + b"\x89" + _py2_str(v.tobytes()) + b"tb")


def py2_pickle(d: dict) -> bytes:
    """What Python 2's cPickle (protocol 2) wrote for the published CIFAR files: str keys and strings as
    BINSTRING, the image array through numpy.core.multiarray._reconstruct."""
    return b"\x80\x02}(" + b"".join(_py2_str(k) + _py2_obj(v) for k, v in d.items()) + b"u."


def make_cifar100(root: Path, classes=("apple", "bear", "castle"), train=6, test=3, dumps=py2_pickle, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    expected = {}
    for split, n in (("train", train), ("test", test)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [i % len(classes) for i in range(n)]
        (root / split).write_bytes(dumps({b"filenames": [f"img_{i}.png".encode() for i in range(n)],
                                          b"batch_label": f"{split} batch 1 of 1".encode(),
                                          b"fine_labels": labels, b"coarse_labels": [0] * n, b"data": data}))
        expected[split] = (data.reshape(n, 3, 32, 32), np.array(labels))
    (root / "meta").write_bytes(dumps({b"fine_label_names": [c.encode() for c in classes],
                                       b"coarse_label_names": [b"all"]}))
    return expected


def make_stl10(root: Path, train=6, test=4, unlabeled=10, seed=0) -> dict:
    """An STL-10 binary folder: images stored channel by channel, each channel column-major, labels 1..10."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    expected = {}
    for split, n in (("train", train), ("test", test), ("unlabeled", unlabeled)):
        images = rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)  # (N, 3, H, W)
        (root / f"{split}_X.bin").write_bytes(images.transpose(0, 1, 3, 2).tobytes())  # column-major
        labels = np.arange(n) % 10
        if split != "unlabeled":
            (root / f"{split}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())
        expected[split] = (images, labels)
    (root / "class_names.txt").write_text("\n".join(["airplane", "bird", "car", "cat", "deer", "dog", "horse",
                                                     "monkey", "ship", "truck"]) + "\n")
    return expected


WNIDS = {"n01443537": "goldfish, Carassius auratus", "n01629819": "European fire salamander, Salamandra salamandra",
         "n01641577": "bullfrog, Rana catesbeiana"}


def make_tiny_imagenet(root: Path, train=4, val=2) -> Path:
    """tiny-imagenet-200/: wnids.txt (unsorted), words.txt, train/<wnid>/images/*.JPEG + boxes, val/images +
    val_annotations.txt, and the unlabelled test/images."""
    rng = np.random.default_rng(0)
    wnids = list(WNIDS)[::-1]
    (root / "val" / "images").mkdir(parents=True)
    (root / "test" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("n00001740\tentity\n" + "".join(f"{w}\t{t}\n" for w, t in WNIDS.items()))

    def jpeg(path: Path, c: int) -> None:
        base = np.array([(90 * c + 30) % 256, (140 * c + 60) % 256, (200 - 70 * c) % 256])
        Image.fromarray(np.clip(base + rng.normal(0, 20, (64, 64, 3)), 0, 255).astype(np.uint8)).save(path, "JPEG")

    notes = []
    for c, wnid in enumerate(sorted(wnids)):
        (root / "train" / wnid / "images").mkdir(parents=True)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(train):
            jpeg(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", c)
        for i in range(val):
            name = f"val_{c * val + i}.JPEG"
            jpeg(root / "val" / "images" / name, c)
            notes.append(f"{name}\t{wnid}\t0\t0\t63\t63\n")
    (root / "val" / "val_annotations.txt").write_text("".join(notes))
    jpeg(root / "test" / "images" / "test_0.JPEG", 0)
    return root


# ---------------------------------------------------------------------------------------------------
# CIFAR "python version"


def test_cifar100_python_folder_as_python2_wrote_it(tmp_path):
    expected = make_cifar100(tmp_path / "cifar-100-python")
    with warnings.catch_warnings():  # the writer is right: the stdlib unpickler reads it (numpy.core is deprecated)
        warnings.simplefilter("ignore")
        assert pickle.loads((tmp_path / "cifar-100-python" / "train").read_bytes(), encoding="bytes")[b"fine_labels"]
    ds = load_dataset(str(tmp_path / "cifar-100-python"), progress=False)
    assert ds.description == "CIFAR-100 (cifar-100-python)" and ds.classes == ["apple", "bear", "castle"]
    for split in ("train", "test"):
        images, labels = expected[split]
        assert np.array_equal(getattr(ds, split).images, images) and np.array_equal(getattr(ds, split).labels, labels)
    assert ds.train.files[:2] == ["img_0.png", "img_1.png"] and ds.unlabeled is None


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_pickles_written_by_python3(tmp_path, protocol):
    expected = make_cifar100(tmp_path / "c100", dumps=lambda d: pickle.dumps(d, protocol=protocol))
    ds = load_dataset(str(tmp_path / "c100"), progress=False)
    assert np.array_equal(ds.train.images, expected["train"][0])
    # CIFAR-10's folder: data_batch_1..N, test_batch, batches.meta
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    batches = [np.random.default_rng(i).integers(0, 256, (4, 3072), dtype=np.uint8) for i in range(3)]
    for i, data in enumerate(batches[:2], start=1):
        (root / f"data_batch_{i}").write_bytes(pickle.dumps({b"data": data, b"labels": [0, 1, 0, 1]}, protocol))
    (root / "test_batch").write_bytes(pickle.dumps({b"data": batches[2], b"labels": [1, 1, 0, 0]}, protocol))
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"cat", b"dog"]}, protocol))
    ds = load_dataset(str(root), progress=False)
    assert ds.classes == ["cat", "dog"] and ds.description == "CIFAR-10 (cifar-10-batches-py)"
    assert np.array_equal(ds.train.images, np.concatenate(batches[:2]).reshape(8, 3, 32, 32))
    assert ds.test.labels.tolist() == [1, 1, 0, 0]


class Payload:
    def __init__(self, sentinel: Path):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (exec, (f"open({self.sentinel!r}, 'w').close()",))


def test_hostile_or_broken_cifar_pickle_is_named_and_runs_nothing(tmp_path):
    make_cifar100(tmp_path / "c100")
    sentinel = tmp_path / "ran"
    (tmp_path / "c100" / "train").write_bytes(pickle.dumps({b"data": Payload(sentinel)}, protocol=2))
    with pytest.raises(UsageError, match=r"c100/train' is not a CIFAR-100 pickle: it refers to '(__builtin__|builtins).exec'.*"
                                         r"Nothing in it was run"):
        load_dataset(str(tmp_path / "c100"), progress=False)
    assert not sentinel.exists()
    (tmp_path / "c100" / "train").write_bytes(b"these bytes are not a pickle at all")
    with pytest.raises(UsageError, match=r"c100/train' is not a CIFAR-100 pickle: it is not a readable pickle"):
        load_dataset(str(tmp_path / "c100"), progress=False)
    (tmp_path / "c100" / "train").write_bytes(py2_pickle({b"data": np.zeros((2, 3072), np.uint8)})[:-300])
    with pytest.raises(UsageError, match=r"c100/train' is not a CIFAR-100 pickle"):
        load_dataset(str(tmp_path / "c100"), progress=False)


# ---------------------------------------------------------------------------------------------------
# STL-10


def test_stl10_binary_folder(tmp_path):
    expected = make_stl10(tmp_path / "stl10_binary")
    ds = load_dataset(str(tmp_path / "stl10_binary"), image_size=96, progress=False)
    assert ds.description == "STL-10 (stl10_binary)" and ds.classes[:3] == ["airplane", "bird", "car"]
    for split in ("train", "test", "unlabeled"):
        images, labels = expected[split]
        got = getattr(ds, split)
        assert got.images.shape == (len(images), 3, 96, 96) and np.array_equal(got.images, images)
        assert np.array_equal(got.labels, labels if split != "unlabeled" else np.full(len(images), -1))
    # Pretraining reads train then unlabeled: one view of the cache file, no copy.
    pre = pretraining_split(ds)
    assert len(pre) == 16 and np.shares_memory(pre.images, ds.train.images)
    assert np.array_equal(pre.images[6:], expected["unlabeled"][0]) and (pre.labels[6:] == -1).all()
    limited = pretraining_split(ds, limit=3, seed=0)  # 3 class-balanced train images + 3 unlabeled ones
    assert len(limited) == 6 and (limited.labels[:3] >= 0).all() and (limited.labels[3:] == -1).all()


def test_stl10_is_read_column_major(tmp_path):
    """The format's own description: each channel is stored column by column, so the first 96 bytes of an
    image are the red values of its leftmost column."""
    root = tmp_path / "stl"
    root.mkdir()
    raw = np.zeros(3 * 96 * 96, np.uint8)
    raw[:96] = 255
    for split in ("train", "test"):
        (root / f"{split}_X.bin").write_bytes(raw.tobytes())
        (root / f"{split}_y.bin").write_bytes(b"\x01")
    with pytest.warns(UserWarning, match="has no unlabeled_X.bin: pretraining uses the labelled training images only"):
        image = load_dataset(str(root), image_size=96, progress=False).train.images[0]  # (3, H, W)
    assert (image[0, :, 0] == 255).all() and image[0, :, 1:].max() == 0 and image[1:].max() == 0


def test_stl10_bad_input_names_the_file(tmp_path):
    root = tmp_path / "stl10_binary"
    make_stl10(root)
    with pytest.raises(UsageError, match="STL-10 images are 96x96; set data.image_size to 96"):
        load_dataset(str(root), image_size=32, progress=False)
    with open(root / "unlabeled_X.bin", "ab") as handle:
        handle.write(b"\x00" * 100)
    with pytest.raises(UsageError, match=r"unlabeled_X.bin' is 276,580 bytes, not a whole number .* truncated"):
        load_dataset(str(root), image_size=96, progress=False)
    make_stl10(tmp_path / "two")
    (tmp_path / "two" / "train_y.bin").write_bytes(b"\x01\x02")
    with pytest.raises(UsageError, match=r"train_y.bin' holds 2 labels for 6 images"):
        load_dataset(str(tmp_path / "two"), image_size=96, progress=False)
    (tmp_path / "two" / "train_y.bin").unlink()
    with pytest.raises(UsageError, match=r"train_y.bin' is missing"):
        load_dataset(str(tmp_path / "two"), image_size=96, progress=False)


def test_named_downloads_offline_give_a_clear_error(monkeypatch):
    from torchvision import datasets
    from torchvision.datasets import utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(datasets.STL10, "download", offline)
    monkeypatch.setattr(utils, "download_and_extract_archive", offline)
    with pytest.raises(UsageError, match="STL-10 images are 96x96"):  # said before any download
        load_dataset("stl10", image_size=32)
    with pytest.raises(UsageError, match=r"stl10.*Offline\? Point --data at an extracted stl10_binary/"):
        load_dataset("stl10", image_size=96)
    with pytest.raises(UsageError, match=r"tinyimagenet.*Offline\? Point --data at an extracted tiny-imagenet-200/"):
        load_dataset("tinyimagenet", image_size=64)
    with pytest.raises(UsageError, match="Did you mean 'stl10'"):
        load_dataset("stl-10")


# ---------------------------------------------------------------------------------------------------
# Tiny-ImageNet


def test_tiny_imagenet_tree_and_its_zip(tmp_path):
    root = make_tiny_imagenet(tmp_path / "tiny-imagenet-200")
    ds = load_dataset(str(root), image_size=64, progress=False)
    assert ds.description == "Tiny-ImageNet (tiny-imagenet-200)"
    assert ds.classes == ["goldfish", "European fire salamander", "bullfrog"]  # wnids sorted, first synonym
    assert ds.train.images.shape == (12, 3, 64, 64) and ds.test.images.shape == (6, 3, 64, 64)
    assert np.bincount(ds.train.labels).tolist() == [4, 4, 4] and np.bincount(ds.test.labels).tolist() == [2, 2, 2]
    assert ds.train.files[0] == "train/n01443537/images/n01443537_0.JPEG"
    assert all(f.startswith("val/images/") for f in ds.test.files)  # the unlabelled test/ is not used
    # A val image's label comes from val_annotations.txt: its colour matches its class's training images.
    for c in range(3):
        train_mean = ds.train.images[ds.train.labels == c].mean(axis=(0, 2, 3))
        assert np.abs(ds.test.images[ds.test.labels == c].mean(axis=(0, 2, 3)) - train_mean).max() < 10
    archive = tmp_path / "tiny-imagenet-200.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                z.write(p, f"tiny-imagenet-200/{p.relative_to(root).as_posix()}")
    zipped = load_dataset(str(archive), image_size=64, progress=False)
    assert np.array_equal(zipped.train.images, ds.train.images) and np.array_equal(zipped.test.labels, ds.test.labels)


def test_tiny_imagenet_bad_annotations_name_the_file(tmp_path):
    root = make_tiny_imagenet(tmp_path / "tiny")
    notes = root / "val" / "val_annotations.txt"
    lines = notes.read_text().splitlines(keepends=True)
    notes.write_text("".join(lines[1:]))
    with pytest.raises(UsageError, match=r"image 'val/images/val_0.JPEG' has no line in val/val_annotations.txt"):
        load_dataset(str(root), image_size=64, progress=False)
    notes.unlink()
    with pytest.raises(UsageError, match=r"tiny/val/val_annotations.txt' is missing: .*labels from it"):
        load_dataset(str(root), image_size=64, progress=False)


def test_tiny_imagenet_image_of_another_size_is_a_bad_image_naming_the_file(tmp_path):
    """Every Tiny-ImageNet image is 64x64: one of another size means a damaged or foreign file, an error
    naming it (a plain folder's mixed sizes are resized instead: the test below)."""
    root = make_tiny_imagenet(tmp_path / "tiny")
    (odd,) = [p for p in root.rglob("*.JPEG") if p.name == "val_1.JPEG"]
    Image.new("RGB", (48, 64), (0, 0, 0)).save(odd, format="JPEG")
    with pytest.raises(UsageError, match=r"bad image '.*tiny/val/images/val_1.JPEG': it is 48x64 pixels, but "
                                         r"every image of this dataset is 64x64"):
        load_dataset(str(root), image_size=64, progress=False)
    skipped = load_dataset(str(root), image_size=64, on_bad_image="skip", progress=False)
    assert skipped.test.images.shape == (5, 3, 64, 64) and len(skipped.skipped) == 1


# ---------------------------------------------------------------------------------------------------
# Cache, parallel decoding, mixed sizes


def test_cache_is_a_memory_map_and_old_or_damaged_caches_are_rebuilt(image_folder):
    first = load_dataset(str(image_folder), progress=False)
    assert isinstance(first.train.images, np.memmap)
    expected = np.array(first.train.images)
    del first  # unmapped before the file is damaged below (a mapped file cut short would crash its reader)
    (images_file,) = sources.cache_dir().glob("*.images.npy")
    # An old (version 1) cache of this folder, holding other pixels, must never be read.
    checksum = sources._source_checksum(image_folder)
    v1_key = sources.hashlib.sha256(f"{checksum}|32|error|v1".encode()).hexdigest()[:24]
    np.savez(sources.cache_dir() / f"{v1_key}.npz", train_images=np.zeros_like(expected))
    with open(images_file, "r+b") as handle:  # a damaged images file (e.g. copied in part): rebuilt
        handle.truncate(1000)
    again = load_dataset(str(image_folder), progress=False)
    assert np.array_equal(again.train.images, expected) and expected.any()


def test_parallel_decode_gives_the_same_arrays_and_errors(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "images", train_per_class=5, test_per_class=2, ext=".jpg")
    (root / "train" / "dog" / "0002.jpg").write_bytes(b"not a picture")
    serial = load_dataset(str(root), 32, "skip", progress=False)
    monkeypatch.setenv("CRLF_CACHE", str(tmp_path / "cache2"))
    monkeypatch.setattr(parallel, "PARALLEL_MIN_IMAGES", 1)
    monkeypatch.setattr(parallel, "CHUNK_IMAGES", 4)  # 21 images: 6 chunks over 2 worker processes
    monkeypatch.setattr(parallel, "default_workers", lambda: 2)
    pooled = load_dataset(str(root), 32, "skip", progress=False)
    assert np.array_equal(pooled.train.images, serial.train.images) and pooled.train.files == serial.train.files
    assert pooled.skipped == serial.skipped == [(str(root / "train" / "dog" / "0002.jpg"),
                                                 "not an image Pillow can identify (wrong extension or not an image)")]
    with pytest.raises(UsageError, match=r"bad image '.*train/dog/0002.jpg': not an image"):
        load_dataset(str(root), 32, "error", progress=False)


def test_images_of_mixed_sizes_are_resized_to_image_size(tmp_path):
    """Mixed sizes are not an error in an image folder: each image is resized (shorter side) and
    centre-cropped to data.image_size, as the README says."""
    folder = tmp_path / "mixed" / "a"
    folder.mkdir(parents=True)
    for i, size in enumerate([(64, 64), (100, 40), (20, 30)]):
        Image.new("RGB", size, (10 * i, 200, 30)).save(folder / f"{i}.png")
    assert load_dataset(str(tmp_path / "mixed"), image_size=48, progress=False).train.images.shape == (3, 3, 48, 48)


# ---------------------------------------------------------------------------------------------------
# Memory-mapped training batches


def test_mapped_images_index_like_the_tensor(image_folder):
    array = load_dataset(str(image_folder), progress=False).train.images  # (36, 3, 32, 32) memmap
    tensor, mapped = training_images(array, "memory"), training_images(array, "memmap")
    assert isinstance(tensor, torch.Tensor) and not np.shares_memory(tensor.numpy(), array)  # read into memory
    assert isinstance(mapped, MappedImages) and len(mapped) == 36 and mapped.shape == tensor.shape
    assert mapped.file is not None  # rows are read from the cache file, not through the map
    idx = torch.tensor([5, 0, 35, 5, 17])  # unsorted, with a repeat
    assert torch.equal(mapped.to("cpu")[idx], tensor[idx]) and torch.equal(mapped[2:7], tensor[2:7])
    assert mapped.to("cpu").device == torch.device("cpu") and torch.equal(mapped[-1], tensor[-1])
    with pytest.raises(IndexError):
        mapped[torch.tensor([36])]
    subset = MappedImages(np.array(array[:5]))  # an array in memory (a --limit subset) is indexed directly
    assert subset.file is None and torch.equal(subset[idx[:2] % 5], tensor[idx[:2] % 5])


def test_memmap_storage_trains_to_the_same_losses(tmp_path, image_folder):
    losses = {}
    for storage in ("memory", "memmap"):
        run = tmp_path / storage
        assert main(["pretrain", "--config", str(SEED_CONFIG), "--data", str(image_folder), "--out", str(run),
                     *QUICK, "--set", f"data.storage={storage}"]) == 0
        losses[storage] = np.load(run / "step_losses.npy")
    assert len(losses["memory"]) == 4 and np.array_equal(losses["memory"], losses["memmap"])


# ---------------------------------------------------------------------------------------------------
# An unlabeled folder; 64-px images


def test_unlabeled_folder_pretrains_embeds_and_skips_evaluation(tmp_path, capsys):
    flat = tmp_path / "photos"
    flat.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(flat / f"{i:02d}.png")
    run = tmp_path / "run"
    assert main(["run", "--config", str(SEED_CONFIG), "--data", str(flat), "--out", str(run), *QUICK]) == 0
    out = capsys.readouterr()
    assert "evaluation skipped: " in out.err and "has no labels (a flat folder of images" in out.err
    assert f"crlf evaluate {run} --data ROOT" in out.err
    assert (run / "encoder.safetensors").is_file() and (run / "plots" / "loss_curve.png").is_file()
    assert not (run / "metrics.json").exists()
    assert main(["evaluate", str(run), "--quiet"]) == 2
    assert "has no labels" in capsys.readouterr().err
    emb = tmp_path / "emb.npy"
    assert main(["embed", str(run), "--data", str(flat), "--out", str(emb), "--device", "cpu", "--quiet"]) == 0
    assert np.load(emb).shape == (16, 512) and (np.load(tmp_path / "emb_labels.npy") == -1).all()


def test_image_folder_at_64_px_pretrains_with_a_proportional_blur(tmp_path):
    data = make_image_folder(tmp_path / "images", train_per_class=3, test_per_class=0, size=80) / "train"
    run = tmp_path / "run"
    assert main(["pretrain", "--config", str(SEED_CONFIG), "--data", str(data), "--out", str(run), *QUICK,
                 "--set", "data.image_size=64", "--set", "augment.blur_kernel_fraction=0.1"]) == 0
    assert len(np.load(run / "step_losses.npy")) == 1


# ---------------------------------------------------------------------------------------------------
# The blur kernel in proportion to the view


def test_blur_kernel_fraction_follows_simclr():
    cfg = AugmentConfig(blur_kernel_fraction=0.1)
    assert [blur_kernel_size(cfg, s) for s in (16, 32, 64, 70, 96, 224)] == [1, 3, 7, 7, 9, 23]
    assert blur_kernel_size(AugmentConfig(), 96) == 3  # the default stays 3 pixels at every size
    with pytest.raises(UsageError, match="augment.blur_kernel_fraction must be in"):
        load_config(None, {"augment": {"blur_kernel_fraction": 0.7}})


def test_fraction_at_32_px_gives_the_views_of_kernel_3(monkeypatch):
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (6, 3, 32, 32), dtype=np.uint8))
    fixed = TensorAugment(AugmentConfig(), 32)(images, torch.Generator().manual_seed(1))
    proportional = TensorAugment(AugmentConfig(blur_kernel_fraction=0.1), 32)(images, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(fixed, proportional))
    seen = []
    real = TensorAugment._gaussian_blur
    monkeypatch.setattr(TensorAugment, "_gaussian_blur", lambda self, x, p, k=None: seen.append(k) or real(self, x, p, k))
    big = torch.zeros(2, 3, 96, 96, dtype=torch.uint8)
    TensorAugment(AugmentConfig(blur_kernel_fraction=0.1), 96)(big, torch.Generator().manual_seed(0))
    assert seen == [9, 9]
    pil = PILAugment(AugmentConfig(blur_kernel_fraction=0.1), 64).transform(64)
    assert [t.kernel_size for t in pil.transforms if type(t).__name__ == "GaussianBlur"] == [(7, 7)]


def test_cifar100_by_name_keeps_its_class_names(monkeypatch):
    """`--data cifar100` goes through torchvision (download + MD5); faked here: nothing is downloaded."""
    from torchvision import datasets

    class FakeCIFAR100:
        tgz_md5 = datasets.CIFAR100.tgz_md5

        def __init__(self, root, train, download):
            n = 6 if train else 3
            self.data = np.full((n, 32, 32, 3), 7, np.uint8)  # torchvision's (N, H, W, 3)
            self.targets = [i % 100 for i in range(n)]
            self.classes = [f"fine_{i}" for i in range(100)]

    monkeypatch.setattr(datasets, "CIFAR100", FakeCIFAR100)
    ds = load_dataset("cifar100")
    assert ds.description == "CIFAR-100 (canonical release)" and ds.classes == [f"fine_{i}" for i in range(100)]
    assert ds.train.images.shape == (6, 3, 32, 32) and ds.test.labels.tolist() == [0, 1, 2]


@pytest.mark.slow
def test_cifar100_folder_end_to_end_with_its_class_names(tmp_path):
    """`crlf run` on a cifar-100-python folder: 100 classes through evaluation, plots and report (~2 min)."""
    classes = [f"class_{i:02d}" for i in range(100)]
    make_cifar100(tmp_path / "cifar-100-python", classes=classes, train=400, test=200)
    run = tmp_path / "run"
    assert main(["run", "--config", str(SEED_CONFIG), "--data", str(tmp_path / "cifar-100-python"), "--out", str(run),
                 "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--quiet"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["classes"] == classes and metrics["data"] == "CIFAR-100 (cifar-100-python)"
    assert (run / "report.html").is_file() and (run / "plots" / "confusion_matrix.png").is_file()
