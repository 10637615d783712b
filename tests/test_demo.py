"""`crlf demo`: the Gradio app of a tiny run, called through gradio_client and used in headless Chromium.

Needs the demo extra (pip install -e '.[demo]') and, for the browser test, Playwright's Python package
and Debian's chromium (apt-get install -y chromium); each test skips cleanly without what it needs.
CRLF_SAVE_SCREENSHOT=1 also copies the browser test's screenshot to docs/demo.png.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crlf.cli import main

from conftest import COLOUR_CLASSES as CLASSES
from conftest import make_colour_run

REPO = Path(__file__).resolve().parents[1]
# Without these, Chromium in a closed network waits on connections it will never get.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch, tmp_path):
    """Decoded images never land in the user's ~/.cache/crlf."""
    monkeypatch.setenv("CRLF_CACHE", str(tmp_path / "crlf-cache"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


# --- without Gradio ----------------------------------------------------------------------------------


def test_demo_without_gradio_says_how_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` now raises ImportError
    assert main(["demo", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "pip install -e '.[demo]'" in err and "Traceback" not in err


@pytest.mark.parametrize("host,warns", [("127.0.0.1", False), ("localhost", False), ("::1", False),
                                        ("127.0.0.2", False), ("0.0.0.0", True), ("192.168.1.20", True)])
def test_only_non_loopback_hosts_warn(host, warns):
    from crlf.serve.demo import host_warning

    assert (host_warning(host) is not None) == warns


def test_pca_map_axes_match_scikit_learn():
    from sklearn.decomposition import PCA

    from crlf.serve.backend import Pca2

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(3000, 16)) * np.linspace(4, 0.5, 16)).astype(np.float32)  # clear top-2 axes
    ours = Pca2(x, max_fit=3000).transform(x)  # (N, 2)
    ref = PCA(n_components=2).fit_transform(x)
    for k in range(2):  # the same axes up to sign
        assert abs(np.corrcoef(ours[:, k], ref[:, k])[0, 1]) > 0.999
    assert Pca2(x[:10]).transform(x[0]).shape == (1, 2)


def test_serve_warns_before_binding_elsewhere(monkeypatch, capsys, tmp_path):
    pytest.importorskip("gradio")
    import crlf.serve.demo
    from crlf.errors import UsageError

    def refuse(*args, **kwargs):
        raise UsageError("stopped here")

    monkeypatch.setattr(crlf.serve.demo, "start", refuse)
    assert main(["demo", str(tmp_path), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "warning: --host 0.0.0.0 makes the demo reachable from other machines" in err


# --- a running app -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    pytest.importorskip("gradio")
    pytest.importorskip("gradio_client")
    from crlf.serve.demo import start

    base = tmp_path_factory.mktemp("demo_run")
    run = make_colour_run(base)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CRLF_CACHE", str(base / "cache"))
        mp.delenv("GRADIO_TEMP_DIR", raising=False)  # uploads go to the demo's private folder
        app = start(run, "127.0.0.1", free_port())
        print(f"demo ready in {app.ready_s:.1f} s at {app.url}")
        try:
            yield app
        finally:
            app.close()
    assert not app.workdir.exists()


@pytest.fixture(scope="module")
def client(demo, tmp_path_factory):
    from gradio_client import Client

    return Client(demo.url, verbose=False, analytics_enabled=False,
                  download_files=str(tmp_path_factory.mktemp("downloads")))


def test_predict_returns_top5_probabilities(demo, client, tmp_path):
    from gradio_client import handle_file

    from crlf.serve.search import read_upload

    query = tmp_path / "query.jpg"  # larger than 32x32 and a JPEG: resized and decoded like any photo
    with Image.open(Path(demo.backend.run.cfg.data.source) / "test" / "sea" / "00.png") as img:
        img.resize((120, 96)).save(query, quality=95)
    answer = client.predict(handle_file(str(query)), api_name="/predict")
    confidences = answer["confidences"]
    assert len(confidences) == min(5, len(CLASSES))
    assert {c["label"] for c in confidences} <= set(CLASSES)
    assert sum(c["confidence"] for c in confidences) == pytest.approx(1.0, abs=1e-5)
    assert [c["confidence"] for c in confidences] == sorted((c["confidence"] for c in confidences), reverse=True)
    assert answer["label"] == confidences[0]["label"]
    run = demo.backend.run  # the same answer as the run's probe on the same decoded image
    expected = run.predict(run.embed(read_upload(query, run.image_size)))
    assert [(c["label"], pytest.approx(c["confidence"], abs=1e-5)) for c in confidences] == expected


def _bomb(path: Path) -> Path:
    Image.new("1", (10_000, 5_000)).save(path)  # 50 megapixels in a few kB
    return path


@pytest.mark.parametrize("name,make,message", [
    ("notes.png", lambda p: p.write_text("just text, not pixels") and p, "not an image"),
    ("cut.png", lambda p: p.write_bytes(_png()[:80]) and p, "truncated"),
    ("huge.png", _bomb, "too large"),
    ("empty.jpg", lambda p: p.write_bytes(b"") or p, "empty"),
])
def test_bad_upload_gets_a_clear_message(demo, client, tmp_path, name, make, message):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    path = make(tmp_path / name)
    with pytest.raises(AppError, match=message):
        client.predict(handle_file(str(path)), api_name="/predict")
    # the page's own status line says the same, and the server keeps answering
    gallery, _, status = demo.backend.details({"path": str(path)})
    assert gallery == [] and message in status
    assert client.predict("brick", api_name="/typical")


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 10)).save(buf, format="PNG")
    return buf.getvalue()


def test_oversized_upload_is_refused(demo, client, tmp_path):
    from gradio_client import handle_file

    big = tmp_path / "big.png"
    big.write_bytes(_png() + b"\0" * (11 * 1024 * 1024))
    with pytest.raises(Exception, match="(?i)size|10 MB"):
        client.predict(handle_file(str(big)), api_name="/predict")
    assert "10 MB" in demo.backend.details({"path": str(big)})[2]  # a file that got past Gradio: our own cap


def test_uploads_are_stored_under_our_own_names(demo, client, tmp_path):
    from gradio_client import handle_file

    odd = tmp_path / "My Holiday ..; photo$(x).PNG"
    odd.write_bytes(_png())
    client.predict(handle_file(str(odd)), api_name="/predict")
    stored = [p.name for p in (demo.workdir / "uploads").rglob("*") if p.is_file()]
    assert stored and not [n for n in stored if "Holiday" in n or "photo" in n]
    assert "upload.png" in stored


def test_typical_and_hard_images(demo, client):
    typical, hard = client.predict("grass", api_name="/typical")
    assert len(typical) == len(hard) == 8
    assert all(item["caption"].startswith("#") for item in typical + hard)


def test_details_for_the_page(demo):
    example = demo.backend.examples[0]
    gallery, where, status = demo.backend.details({"path": example})
    assert len(gallery) == 8 and all(caption.split()[0] in CLASSES for _, caption in gallery)
    assert where.size[0] > 200 and "Linear probe" in status


def test_crlf_demo_command_serves_on_loopback(demo, tmp_path):
    """The real command in its own process: it says where it is ready, the page answers, and SIGTERM
    stops it cleanly (exit 0, private folder removed)."""
    import urllib.request

    port = free_port()
    env = {**os.environ, "CRLF_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    env.pop("GRADIO_TEMP_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "crlf.cli", "demo", str(demo.backend.run.run_dir), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline, line = time.monotonic() + 180, ""
        while time.monotonic() < deadline and "ready in" not in line:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "crlf demo exited early"
        assert f"at http://127.0.0.1:{port}/" in line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:
            assert page.status == 200 and b"CRLF demo" in page.read()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out


# --- a real browser ----------------------------------------------------------------------------------


def test_browser_upload_shows_the_result(demo, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = chromium_path()
    if chromium is None:
        pytest.skip("no chromium (apt-get install -y chromium)")
    run = demo.backend.run
    query = tmp_path / "query.png"
    with Image.open(Path(run.cfg.data.source) / "test" / "grass" / "01.png") as img:
        img.resize((128, 128), Image.Resampling.NEAREST).save(query)
    with sync_api.sync_playwright() as pw:
        # launch_persistent_context: Playwright's way to give Chromium a fresh --user-data-dir
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=chromium, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 1000})
        try:
            page = context.new_page()
            page.goto(demo.url, wait_until="domcontentloaded", timeout=90_000)
            page.wait_for_selector("#crlf-image input[type=file]", state="attached", timeout=90_000)
            page.set_input_files("#crlf-image input[type=file]", str(query))
            page.wait_for_function("document.querySelectorAll('#crlf-neighbours img').length >= 8", timeout=90_000)
            page.wait_for_function("document.querySelector('#crlf-status').innerText.includes('Linear probe')",
                                   timeout=30_000)
            top5 = page.inner_text("#crlf-top5")
            assert any(name in top5 for name in CLASSES)
            status = page.inner_text("#crlf-status")
            page.wait_for_timeout(500)  # let the images finish painting before the picture is taken
            shot = tmp_path / "demo.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            context.close()
    assert "Linear probe" in status
    with Image.open(shot) as img:
        assert img.width >= 1000 and img.height >= 600
    if os.environ.get("CRLF_SAVE_SCREENSHOT") == "1":
        (REPO / "docs").mkdir(exist_ok=True)
        shutil.copyfile(shot, REPO / "docs" / "demo.png")
