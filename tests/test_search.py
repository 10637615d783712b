"""`crlf search` and the neighbour index: exact answers, safe decoding of uploads, the command line."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crlf.cli import main
from crlf.data.decode import BadImage
from crlf.serve.search import MAX_UPLOAD_BYTES, NeighbourIndex, RunSearch, decode_upload, read_upload

from conftest import COLOUR_CLASSES as CLASSES
from conftest import COLOURS, make_colour_run

REPO = Path(__file__).resolve().parents[1]


def png_bytes(colour=(200, 40, 40), size=(48, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch, tmp_path):
    """Decoded images never land in the user's ~/.cache/crlf."""
    monkeypatch.setenv("CRLF_CACHE", str(tmp_path / "crlf-cache"))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return make_colour_run(tmp_path_factory.mktemp("search_run"))


@pytest.fixture(scope="module")
def loaded(tiny_run) -> RunSearch:
    with pytest.MonkeyPatch.context() as mp:  # module scope: set up before any per-test environment
        mp.setenv("CRLF_CACHE", str(tiny_run.parent / "cache"))
        return RunSearch(tiny_run)


# --- the index -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,d,k", [(50, 8, 1), (300, 32, 8), (7, 4, 10)])
def test_index_matches_brute_force(n, d, k):
    rng = np.random.default_rng(n)
    x, q = rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(3, d)).astype(np.float32)
    sims, idx = NeighbourIndex(x, np.zeros(n)).query(q, k)
    xn, qn = x / np.linalg.norm(x, axis=1, keepdims=True), q / np.linalg.norm(q, axis=1, keepdims=True)
    ref = qn @ xn.T  # (3, n) the obviously-correct cosine similarity
    expected = np.argsort(-ref, axis=1)[:, : min(k, n)]
    assert sims.shape == idx.shape == (3, min(k, n))
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_allclose(sims, np.take_along_axis(ref, expected, 1), atol=1e-5)


def test_class_ranking_orders_by_similarity_to_centre():
    # class 0: four points near +x and one outlier near +y; class 1 elsewhere
    x = np.array([[1, 0.05], [1, -0.05], [1, 0.1], [1, 0], [0.2, 1], [-1, 0], [-1, 0.1]], dtype=np.float32)
    idx, sims = NeighbourIndex(x, np.array([0, 0, 0, 0, 0, 1, 1])).class_ranking(0)
    assert sorted(idx.tolist()) == [0, 1, 2, 3, 4]
    assert idx[-1] == 4  # the outlier is the least typical
    assert np.all(np.diff(sims) <= 1e-7)


# --- untrusted images ------------------------------------------------------------------------------


def test_decode_upload_caps_bytes_and_pixels():
    with pytest.raises(BadImage, match="limit is 10 MB"):
        decode_upload(b"\0" * (MAX_UPLOAD_BYTES + 1), 32)
    buf = io.BytesIO()
    Image.new("1", (10_000, 5_000)).save(buf, format="PNG")  # 50 MP in a few kB: a small bomb
    assert len(buf.getvalue()) < 100_000
    with pytest.raises(BadImage, match="too large"):
        decode_upload(buf.getvalue(), 32)


@pytest.mark.parametrize("data,message", [
    (b"", "empty"),
    (b"this is not an image at all", "not an image"),
    (png_bytes()[:60], "truncated"),
])
def test_decode_upload_bad_files_have_a_message(data, message):
    with pytest.raises(BadImage, match=message):
        decode_upload(data, 32)


def test_decode_upload_applies_exif_orientation():
    img = Image.new("RGB", (64, 32), (220, 20, 20))
    img.paste((20, 20, 220), (32, 0, 64, 32))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": red ends up on top
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    out = decode_upload(buf.getvalue(), 32).astype(int)  # (3, 32, 32)
    assert out.shape == (3, 32, 32)
    assert out[0, 0].mean() > 150 and out[2, 0].mean() < 80  # top row red
    assert out[2, -1].mean() > 150 and out[0, -1].mean() < 80  # bottom row blue


def test_read_upload_reads_no_more_than_the_cap(tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(png_bytes() + b"\0" * 2048)
    with pytest.raises(BadImage, match="larger than"):
        read_upload(big, 32, max_bytes=1024)
    with pytest.raises(BadImage, match="cannot read"):
        read_upload(tmp_path / "missing.png", 32)


# --- a real run --------------------------------------------------------------------------------------


def test_training_image_finds_itself(tiny_run, loaded):
    train = np.load(tiny_run / "train_embeddings.npy")
    for i in (0, 17, len(train) - 1):
        features = loaded.embed(loaded.train_image(i))
        np.testing.assert_allclose(features, train[i], rtol=1e-3, atol=1e-3)  # same preprocessing as evaluation
        top = loaded.neighbours(features, k=3)
        assert top[0].index == i and top[0].similarity == pytest.approx(1.0, abs=1e-4)
        assert [n.rank for n in top] == [1, 2, 3]


def test_predict_is_the_saved_probe(loaded):
    from safetensors.torch import load_file

    probe = load_file(str(loaded.run_dir / "linear_probe.safetensors"))
    features = loaded.embed(loaded.train_image(5))
    logits = ((features - probe["mean"].numpy()) / probe["std"].numpy()) @ probe["weight"].numpy().T + probe["bias"].numpy()
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    top = loaded.predict(features)
    assert len(top) == len(CLASSES)  # top-5 of 3 classes
    assert sum(p for _, p in top) == pytest.approx(1.0, abs=1e-6)
    assert loaded.classes == sorted(CLASSES)
    assert top[0] == (loaded.classes[int(np.argmax(probs))], pytest.approx(float(probs.max()), abs=1e-5))


def test_class_extremes(loaded):
    typical, hard = loaded.class_extremes("grass", n=4)
    assert len(typical) == len(hard) == 4
    assert all(n.label == "grass" for n in typical + hard)
    assert typical[0].similarity >= typical[-1].similarity >= hard[-1].similarity >= hard[0].similarity
    with pytest.raises(Exception, match="unknown class"):
        loaded.class_extremes("purple")


def test_search_command(tiny_run, tmp_path, capsys):
    query = tmp_path / "query.png"
    query.write_bytes(png_bytes(COLOURS[2], (80, 60)))
    out = tmp_path / "grid.png"
    assert main(["search", str(tiny_run), str(query), "--k", "5", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].startswith("linear probe: ")
    rows = [line for line in lines if line.strip()[:1].isdigit()]
    assert len(rows) == 5 and lines[1].split()[:3] == ["rank", "cosine", "label"]
    assert all(row.split()[2] in CLASSES for row in rows)
    assert "train/" in rows[0]  # the neighbour's own file inside the data source
    with Image.open(out) as grid:
        assert grid.format == "PNG" and grid.width > grid.height
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.mark.parametrize("make,args,message", [
    (lambda d: d / "nope.png", [], "does not exist"),
    (lambda d: (d / "bad.png").write_text("not a png") and d / "bad.png", [], "cannot be used: not an image"),
    (lambda d: d / "q.png", ["--k", "0"], "--k must be at least 1"),
    (lambda d: d / "q.png", ["--out", "grid.jpg"], "must end in .png"),
])
def test_search_errors_exit_2(tiny_run, tmp_path, capsys, make, args, message):
    (tmp_path / "q.png").write_bytes(png_bytes())
    image = make(tmp_path)
    assert main(["search", str(tiny_run), str(image), *args]) == 2
    assert message in capsys.readouterr().err


def test_search_needs_a_run(tmp_path, capsys):
    (tmp_path / "q.png").write_bytes(png_bytes())
    assert main(["search", str(tmp_path), str(tmp_path / "q.png"), "--out", str(tmp_path / "g.png")]) == 2
    assert "not a CRLF run folder" in capsys.readouterr().err


def test_search_refuses_to_overwrite_its_query(tiny_run, tmp_path, capsys):
    query = tmp_path / "grid.png"
    query.write_bytes(png_bytes())
    cwd = os.getcwd()
    assert main(["search", str(tiny_run), str(query), "--out", str(query)]) == 2
    assert "overwrite" in capsys.readouterr().err
    assert os.getcwd() == cwd
