"""report.html: every section, every plot inlined, and it renders in headless Chromium with all images loaded."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from crlf.cli import main
from crlf.plots import umap_available
from crlf.reports.report import PLOTS, SECTIONS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Written into the DOM on load: one character per <img>, "1" when it decoded (naturalWidth > 0).
PROBE = ("<script>window.addEventListener('load',()=>{document.body.setAttribute('data-images',"
         "[...document.images].map(i=>i.complete&&i.naturalWidth>0?'1':'0').join(''));});</script>")


def test_run_writes_a_self_contained_report(tiny_run):
    page = (tiny_run / "report.html").read_text()
    for section in SECTIONS:
        assert f'id="{section}"' in page, section
    images = re.findall(r'<img src="([^"]+)"', page)
    # loss, label efficiency, PCA, t-SNE, confusion matrix, neighbours; UMAP where umap-learn is installed
    assert len(images) == len(PLOTS) - (not umap_available())
    assert (tiny_run / "plots" / "umap_embedding.png").is_file() == umap_available()
    assert "online linear probe, last epoch" in page  # the tiny run's images have labels: the probe ran
    assert all(src.startswith("data:image/png;base64,") for src in images)  # nothing to fetch
    assert not re.search(r'(src|href)="(?!data:)', page)  # no external file, script or style
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["data"] in page and metrics["hardware"] in page  # data copy, hardware
    for text in ("pretraining wall time", "recall@1", "5way_1shot", "nmi", "train_test_overlap", "temperature"):
        assert text in page, text
    assert (tiny_run / "plots" / "label_efficiency.png").is_file()
    assert (tiny_run / "plots" / "neighbours.png").is_file()


def test_report_command_rebuilds_and_notes_moved_data(tiny_run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    (copy / "report.html").unlink()
    shutil.rmtree(copy / "plots")
    metrics = json.loads((copy / "metrics.json").read_text())
    metrics["data_source"] = str(tmp_path / "moved.tar.gz")  # the data is gone: the page says so
    (copy / "metrics.json").write_text(json.dumps(metrics))
    assert main(["report", str(copy)]) == 0
    page = (copy / "report.html").read_text()
    assert "Nearest-neighbour grid not drawn" in page
    assert len(re.findall(r"<img ", page)) == len(PLOTS) - 1  # every plot but the neighbour grid
    assert "report.html" in capsys.readouterr().out
    assert (copy / "plots" / "label_efficiency.png").is_file()  # missing plots are drawn first


def test_report_needs_an_evaluated_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "crlf evaluate" in capsys.readouterr().err


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(tiny_run, tmp_path):
    page = (tiny_run / "report.html").read_text().replace("</body>", PROBE + "</body>")
    probe = tmp_path / "probe.html"
    probe.write_text(page)
    result = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                             "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
                            capture_output=True, text=True, timeout=120)
    dom = result.stdout
    assert "<h2" in dom, result.stderr[-2000:]
    loaded = re.search(r'data-images="([01]*)"', dom)
    assert loaded, "the page's load handler did not run"
    assert loaded.group(1) == "1" * len(PLOTS), f"images that did not decode: {loaded.group(1)}"
