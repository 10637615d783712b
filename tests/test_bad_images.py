"""Guarantee 6: bad images in a folder or archive. ``--on-bad-image error`` (the default) stops at the first,
naming the file and the reason; ``skip`` carries on and lists every skipped file in RUN/skipped_images.txt.
Unusual but valid images (CMYK, RGBA, palette, 16-bit greyscale, EXIF-rotated) decode correctly. Archive
members with '..' or an absolute path are refused.
"""

from __future__ import annotations

import io
import tarfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from crlf.data.decode import BadImage, decode_image
from crlf.data.sources import load_dataset
from crlf.errors import UsageError

from helpers_faults import drop_large_files, fork_pretrain, write_tiny_folder


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def noise(shape=(32, 32, 3), seed=0) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random(shape) * 255).astype(np.uint8))


JPEG, PNG = encode(noise(), "JPEG", quality=90), encode(noise(seed=1), "PNG")

# name -> (bytes, a word the reason must contain)
BAD = {
    "zero-byte.png": (b"", "empty"),
    "truncated.jpg": (JPEG[: len(JPEG) // 2], "truncated"),
    "truncated.png": (PNG[: len(PNG) // 2], "truncated"),
    "text-file.png": (b"this is a text file, not a picture\n", "not an image"),
}


def _exif_rotated() -> bytes:
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[16:] = 255  # stored: top half black, bottom half white
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    return encode(Image.fromarray(pixels), "JPEG", quality=95, exif=exif.tobytes())


ODD = {
    "cmyk.jpg": encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95),  # pure red
    "rgba.png": encode(Image.new("RGBA", (32, 32), (255, 0, 0, 128)), "PNG"),  # half-transparent red
    "palette.png": encode(Image.new("RGB", (32, 32), (0, 51, 255)).convert("P"), "PNG"),
    "gray16.png": encode(Image.fromarray(np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (32, 1))), "PNG"),
    "exif-rotated.jpg": _exif_rotated(),
}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CRLF_CACHE", str(tmp_path / "cache"))


# ---------------------------------------------------------------------------------------------------
# Unusual but valid images


def test_cmyk_decodes_to_rgb():
    assert np.abs(decode_image(ODD["cmyk.jpg"], 32)[:, 16, 16].astype(int) - [255, 0, 0]).max() <= 3


def test_rgba_is_composited_on_white():
    assert decode_image(ODD["rgba.png"], 32)[:, 16, 16].tolist() == [255, 127, 127]


def test_palette_decodes_to_its_colours():
    with Image.open(io.BytesIO(ODD["palette.png"])) as img:
        assert img.mode == "P"
        expected = np.asarray(img.convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(decode_image(ODD["palette.png"], 32), expected)


def test_16_bit_grayscale_keeps_its_tones():
    with Image.open(io.BytesIO(ODD["gray16.png"])) as img:
        assert img.mode.startswith("I")  # a 16-bit image: Pillow's convert("RGB") would clip it to 0/255
    out = decode_image(ODD["gray16.png"], 32)
    row = out[0, 0]
    assert row[0] == 0 and row[-1] == 255 and np.all(np.diff(row.astype(int)) > 0)  # a smooth ramp
    assert len(np.unique(row)) == 32 and abs(int(row[16]) - 132) <= 2
    assert np.array_equal(out[0], out[1]) and np.array_equal(out[1], out[2])  # grey
    flat = encode(Image.fromarray(np.full((32, 32), 32768, np.uint16)), "PNG")
    assert decode_image(flat, 32)[:, 5, 5].tolist() == [128, 128, 128]


def test_exif_orientation_is_applied():
    out = decode_image(ODD["exif-rotated.jpg"], 32)[0].astype(float)
    # Rotated 90 degrees clockwise: the black top half is now on the right, the white bottom on the left.
    assert out[:, :14].mean() > 240 and out[:, 18:].mean() < 15


# ---------------------------------------------------------------------------------------------------
# Folders and archives with bad files


def make_folder(root: Path, extra: dict[str, bytes]) -> Path:
    write_tiny_folder(root)
    for name, data in extra.items():
        (root / "train" / "a" / name).write_bytes(data)
    return root


@pytest.mark.parametrize("name", list(BAD))
def test_error_mode_stops_at_the_bad_file_naming_path_and_reason(tmp_path, name):
    data, reason = BAD[name]
    root = make_folder(tmp_path / "images", {name: data})
    with pytest.raises(UsageError) as error:
        load_dataset(str(root), 32, "error", progress=False)
    message = str(error.value)
    assert f"bad image '{root / 'train' / 'a' / name}'" in message and reason in message
    assert "--on-bad-image skip" in message


def test_skip_mode_skips_and_lists_every_bad_file_and_keeps_odd_ones(tmp_path):
    root = make_folder(tmp_path / "images", {**{n: d for n, (d, _) in BAD.items()}, **ODD})
    dataset = load_dataset(str(root), 32, "skip", progress=False)
    skipped = dict(dataset.skipped)
    assert sorted(skipped) == sorted(str(root / "train" / "a" / n) for n in BAD)
    for name, (_, reason) in BAD.items():
        assert reason in skipped[str(root / "train" / "a" / name)]
    assert sorted(set(dataset.train.files) & {f"train/a/{n}" for n in ODD}) == sorted(f"train/a/{n}" for n in ODD)
    assert len(dataset.train) == 8 + len(ODD)
    # A second load comes from the cache and still knows what was skipped.
    assert load_dataset(str(root), 32, "skip", progress=False).skipped == dataset.skipped


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_bad_archive_member_is_named_or_skipped(tmp_path, suffix):
    root = make_folder(tmp_path / "images", {"truncated.png": BAD["truncated.png"][0]})
    archive = tmp_path / f"images{suffix}"
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if suffix == ".zip":
        with zipfile.ZipFile(archive, "w") as z:
            for p in files:
                z.write(p, f"images/{p.relative_to(root).as_posix()}")
    else:
        with tarfile.open(archive, "w:gz") as t:
            t.add(root, arcname="images")
    with pytest.raises(UsageError, match=f"bad image '{archive}/train/a/truncated.png': corrupt or truncated"):
        load_dataset(str(archive), 32, "error", progress=False)
    dataset = load_dataset(str(archive), 32, "skip", progress=False)
    assert [p for p, _ in dataset.skipped] == [f"{archive}/train/a/truncated.png"]


def _tar_with(archive: Path, member: str) -> None:
    with tarfile.open(archive, "w") as t:
        for name, data in ((f"train/a/{i}.png", PNG) for i in range(4)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo(member)
        info.size = len(PNG)
        t.addfile(info, io.BytesIO(PNG))


def _zip_with(archive: Path, member: str) -> None:
    with zipfile.ZipFile(archive, "w") as z:
        for i in range(4):
            z.writestr(f"train/a/{i}.png", PNG)
        z.writestr(zipfile.ZipInfo(member), PNG)


@pytest.mark.parametrize("member", ["../evil.png", "train/a/../../../evil.png", "/tmp/evil.png"])
@pytest.mark.parametrize("kind", ["tar", "zip"])
@pytest.mark.parametrize("mode", ["error", "skip"])
def test_archive_member_escaping_the_archive_is_refused(tmp_path, member, kind, mode):
    archive = tmp_path / f"evil.{kind}"
    (_tar_with if kind == "tar" else _zip_with)(archive, member)
    if kind == "tar":
        with tarfile.open(archive) as t:
            names = t.getnames()
    else:
        with zipfile.ZipFile(archive) as z:
            names = z.namelist()
    assert member in names  # the archive really holds the hostile name
    with pytest.raises(UsageError, match=r"unsafe member name .*refusing to read it"):
        load_dataset(str(archive), 32, mode, progress=False)


# ---------------------------------------------------------------------------------------------------
# Through the command line: the run folder lists what was skipped


@pytest.fixture
def work(tmp_path):
    yield tmp_path
    drop_large_files(tmp_path)


def test_cli_error_mode_exits_2_naming_the_file(work):
    root = make_folder(work / "images", {"text-file.png": BAD["text-file.png"][0]})
    result = fork_pretrain(root, work / "run", work / "cache")
    assert result.returncode == 2, result.output
    assert f"crlf: error: bad image '{root / 'train' / 'a' / 'text-file.png'}': not an image" in result.output


def test_cli_skip_mode_trains_and_writes_skipped_images_txt(work):
    root = make_folder(work / "images", {**{n: d for n, (d, _) in BAD.items()}, **ODD})
    run = work / "run"
    result = fork_pretrain(root, run, work / "cache", "--on-bad-image", "skip", "--epochs", "1")
    assert result.returncode == 0, result.output
    lines = (run / "skipped_images.txt").read_text().splitlines()
    listed = dict(line.split("\t", 1) for line in lines)
    assert sorted(listed) == sorted(str(root / "train" / "a" / n) for n in BAD)
    assert all(reason for reason in listed.values())


# ---------------------------------------------------------------------------------------------------
# Whatever the damage, a file decodes or raises BadImage: never another exception


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=st.sampled_from([JPEG, PNG, *ODD.values()]), cut=st.floats(0, 1, allow_subnormal=False),
       flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True, allow_subnormal=False), st.integers(0, 255)), max_size=8))
def test_damaged_bytes_decode_or_raise_bad_image(source, cut, flips):
    data = bytearray(source)
    for where, value in flips:
        data[int(where * len(data))] = value
    data = bytes(data[: max(0, int(cut * len(data)))]) if cut < 0.5 else bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about corrupt EXIF on its way to a clean error
        try:
            out = decode_image(data, 32)
        except BadImage:
            return
    assert out.shape == (3, 32, 32) and out.dtype == np.uint8
