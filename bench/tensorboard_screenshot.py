"""Screenshot of TensorBoard's embedding projector for a run, taken in headless Chromium (docs/tensorboard_projector.png).

    apt-get install -y chromium                       # Debian's browser; Playwright drives it, downloads nothing
    crlf evaluate RUN                                 # writes RUN/tensorboard/ (scalars) + the projector's files
    python bench/tensorboard_screenshot.py RUN [--out docs/tensorboard_projector.png] [--port 6006]

Starts ``tensorboard --logdir RUN --port PORT`` (this interpreter's tensorboard), opens the PROJECTOR tab,
waits for the points (drawn as the sprite's thumbnails) and the 3-D PCA view to settle, saves a 1400x900
screenshot and stops TensorBoard again. About 30 s. The README's picture: the SimCLR run of BENCHMARKS.md's method comparison (ResNet-18,
10,000 CIFAR-10 training images, 10 epochs), 2,000 of its 10,000 test embeddings.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def wait_for(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def projector_frame(page, timeout_s: float = 60):
    """The projector runs in nested iframes (plugin_entry.html -> projector_binary.html)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for frame in page.frames:
            if "projector_binary" in frame.url:
                return frame
        page.wait_for_timeout(500)
    raise TimeoutError("TensorBoard's projector page did not load")


def screenshot(url: str, out: Path, settle_s: float) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{url}#projector", wait_until="networkidle")
        frame = projector_frame(page)
        frame.get_by_text("Points:", exact=False).first.wait_for(timeout=120_000)  # the tensors are loaded
        page.wait_for_timeout(settle_s * 1000)  # the sprite sheet loads and the PCA view settles
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out))
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logdir", type=Path, help="a run folder (or a folder of runs) after crlf evaluate")
    parser.add_argument("--out", type=Path, default=Path("docs/tensorboard_projector.png"))
    parser.add_argument("--port", type=int, default=6006)
    parser.add_argument("--settle", type=float, default=8.0, help="seconds to let the projector draw")
    args = parser.parse_args()
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(args.logdir),
                               "--port", str(args.port), "--host", "127.0.0.1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{args.port}/"
        wait_for(url)
        screenshot(url, args.out, args.settle)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
