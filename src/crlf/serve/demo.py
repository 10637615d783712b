"""Web demo of a finished run (Gradio), for a person or a script:

    pip install -e '.[demo]'
    crlf demo runs/r1                      # -> http://127.0.0.1:7860 (this machine only)

Tab 1: upload an image (or click a test image) -> the linear probe's top-5 classes, the 8 nearest
training images with their cosine similarity, and the image's place on a PCA map of the test set.
Tab 2: pick a class -> its most and least typical training images (similarity to the class centre).

The upload's endpoint is ``/predict`` and returns the top-5 labels and probabilities::

    from gradio_client import Client, handle_file
    Client("http://127.0.0.1:7860/").predict(handle_file("cat.jpg"), api_name="/predict")
    # {'label': 'cat', 'confidences': [{'label': 'cat', 'confidence': 0.62}, ...]}

Uploads are read by this module, never by Gradio's image preprocessing: capped at 10 MB and 40 MP
before decoding, decoded in memory with EXIF orientation applied, and a bad file becomes a message.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from crlf.errors import UsageError
from crlf.serve.backend import NEIGHBOURS, TYPICAL, DemoBackend

INSTALL_HINT = "the demo needs Gradio: pip install -e '.[demo]'  (or: pip install 'gradio>=4.0' 'gradio_client>=1.0')"
LOOPBACK_HOSTS = {"localhost"}
GALLERY_HEIGHT = 180  # one row of 8 thumbnails at the default page width, without empty space below
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "DejaVu Sans", "sans-serif"]  # no web fonts: no network


def require_gradio():
    # Gradio phones home (analytics, version check) unless told not to; the demo must work offline.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # Gradio's analytics go through huggingface_hub
    try:
        import gradio
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return gradio


class _UploadNaming:
    """Stands in for ``gradio_client.utils`` inside ``gradio.route_utils`` only. Gradio's upload handler
    stores each upload as ``<content hash>/<the upload's own file name, sanitised>``; through this, every
    upload is stored as ``upload`` + an image suffix instead, whatever name it came with."""

    SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):  # everything else is the real module
        return getattr(self._real, name)

    @classmethod
    def strip_invalid_filename_characters(cls, filename: str, max_bytes: int = 200) -> str:
        suffix = Path(str(filename)).suffix.lower()
        return "upload" + (suffix if suffix in cls.SUFFIXES else ".bin")  # the suffix gives the served MIME type


def _name_uploads_ourselves() -> bool:
    from gradio import route_utils

    current = getattr(route_utils, "client_utils", None)
    if isinstance(current, _UploadNaming):
        return True
    if current is None or not hasattr(current, "strip_invalid_filename_characters"):
        return False  # a Gradio whose upload code differs: say so rather than pretend
    route_utils.client_utils = _UploadNaming(current)
    return True


def host_warning(host: str) -> str | None:
    import ipaddress

    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host.strip("[]")).is_loopback:  # all of 127.0.0.0/8 and ::1
            return None
    if host in LOOPBACK_HOSTS:
        return None
    return (f"--host {host} makes the demo reachable from other machines: it has no login, and anyone who "
            f"can reach it can upload images. Leave out --host (127.0.0.1, this machine only) unless you mean it.")


def _private(gr) -> dict:
    """Keyword that keeps a helper event out of the API page, for Gradio 4/5 and 6 alike."""
    if "api_visibility" in inspect.signature(gr.Blocks.load).parameters:
        return {"api_visibility": "private"}
    return {"api_name": False}


def build_app(backend: DemoBackend):
    gr = require_gradio()
    run = backend.run
    m = run.metrics
    scores = ""
    if run.probe_path is not None:  # crlf demo --probe: the classes of a probe made by crlf classify
        cv = run.probe_info.get("cross_validated_accuracy")
        scores = (f" Classes served: the probe `{run.probe_path.name}` ({len(run.probe_classes)} classes: "
                  f"{', '.join(run.probe_classes)}"
                  + (f"; cross-validated accuracy **{cv:.1%}** on its {run.probe_info.get('num_labelled')} labelled "
                     f"images" if isinstance(cv, (int, float)) else "") + ").")
    elif "linear_top1" in m:
        scores = f" Test accuracy: linear probe **{m['linear_top1']:.1%}**, kNN **{m.get('knn_top1', 0):.1%}**."
    header = (f"## CRLF demo: run `{run.run_dir.name}`\n{run.encoder.arch} encoder ({run.cfg.method.name}) on "
              f"{m.get('data', run.cfg.data.source)}, "
              + (f"{len(run.index):,} training images, {len(run.classes)} classes." if run.index is not None
                 else "not evaluated (no training images to show as neighbours).") + scores)
    theme = gr.themes.Default(font=SYSTEM_FONTS, font_mono=["ui-monospace", "DejaVu Sans Mono", "monospace"])
    blocks_kwargs = {"title": f"CRLF demo: {run.run_dir.name}", "analytics_enabled": False}
    if "theme" in inspect.signature(gr.Blocks.__init__).parameters and "theme" not in inspect.signature(gr.Blocks.launch).parameters:
        blocks_kwargs["theme"] = theme  # Gradio < 6 takes the theme here, 6 in launch()
    with gr.Blocks(**blocks_kwargs) as app:
        app._crlf_theme = theme
        gr.Markdown(header)
        with gr.Tab("Classify and search"):
            with gr.Row():
                with gr.Column(scale=1):
                    image = gr.Image(type="filepath", label="Image (max 10 MB)", sources=["upload", "clipboard"],
                                     height=280, elem_id="crlf-image")
                    if backend.examples:
                        gr.Examples(backend.examples, inputs=image, label="Test images: click one",
                                    cache_examples=False, examples_per_page=12)
                    status = gr.Markdown(elem_id="crlf-status")
                with gr.Column(scale=1):
                    top5 = gr.Label(num_top_classes=5, label="Linear probe: top-5 classes", elem_id="crlf-top5")
                    where = gr.Image(label="Where it falls on the test set", type="pil", format="png",
                                     interactive=False, elem_id="crlf-map")
            gallery = gr.Gallery(label=f"{NEIGHBOURS} nearest training images (cosine similarity)",
                                 columns=NEIGHBOURS, height=GALLERY_HEIGHT, format="png", elem_id="crlf-neighbours")
        with gr.Tab("Typical and hard images"):
            gr.Markdown("Training images of a class ranked by cosine similarity to the class centre: the least "
                        "typical are the ones the encoder places far from the rest of their class. Captions: the "
                        "image's index in the training set and its cosine similarity to the centre.")
            chosen = gr.Dropdown(choices=run.classes, value=run.classes[0] if run.classes else None, label="Class")
            typical = gr.Gallery(label="Most typical", columns=TYPICAL, height=GALLERY_HEIGHT, format="png",
                                 elem_id="crlf-typical")
            hard = gr.Gallery(label="Least typical", columns=TYPICAL, height=GALLERY_HEIGHT, format="png",
                              elem_id="crlf-hard")
        # preprocess=False: the handlers get the stored file's path and read it themselves (size cap, safe
        # decoding); Gradio's own preprocessing would open it with Pillow first and fail without a message.
        image.change(backend.predict, image, top5, api_name="predict", preprocess=False).then(
            backend.details, image, [gallery, where, status], preprocess=False, **_private(gr))
        chosen.change(backend.typical, chosen, [typical, hard], api_name="typical")
        app.load(backend.typical, chosen, [typical, hard], **_private(gr))
        app.load(backend.base_map, None, where, **_private(gr))
    return app


class Demo:
    """A running demo: ``url``, the Gradio ``app`` and ``close()`` (server and private folder)."""

    def __init__(self, app, backend: DemoBackend, url: str, workdir: Path, own_env: bool, ready_s: float):
        self.app, self.backend, self.url, self.workdir, self.ready_s = app, backend, url, workdir, ready_s
        self._own_env = own_env

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.app.close()
        if self._own_env:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start(run_dir: str | Path, host: str = "127.0.0.1", port: int = 7860, data: str | None = None,
          probe: str | Path | None = None) -> Demo:
    """Load the run and start serving in a background thread; returns once the page answers."""
    t0 = time.perf_counter()
    require_gradio()
    from crlf.serve.search import MAX_UPLOAD_BYTES, RunSearch

    if not _name_uploads_ourselves():
        print("crlf: warning: this Gradio version keeps uploads under their own (sanitised) file names, "
              "in the demo's private temporary folder.", file=sys.stderr)
    run = RunSearch(run_dir, data=data, probe=probe)
    workdir = Path(tempfile.mkdtemp(prefix="crlf-demo-"))  # private (0700), removed on close
    # Gradio keeps each upload in its cache folder; unless the user chose one, that is our private folder.
    own_env = "GRADIO_TEMP_DIR" not in os.environ
    if own_env:
        os.environ["GRADIO_TEMP_DIR"] = str(workdir / "uploads")
    try:
        backend = DemoBackend(run, workdir)
        app = build_app(backend)
        launch = inspect.signature(app.launch).parameters
        kwargs = {"server_name": host, "server_port": port, "prevent_thread_lock": True, "quiet": True,
                  "max_file_size": MAX_UPLOAD_BYTES, "allowed_paths": [str(workdir / "examples")],
                  "ssr_mode": False, "theme": app._crlf_theme}
        try:
            app.launch(**{k: v for k, v in kwargs.items() if k in launch})
        except OSError as exc:
            raise UsageError(f"cannot serve on {host}:{port} ({exc}); pass another --port.") from None
        # Draw the empty map now, off the start-up path, so that the first page finds it ready.
        threading.Thread(target=backend.base_map, name="crlf-demo-warm-up", daemon=True).start()
    except BaseException:
        if own_env:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    shown = f"[{host}]" if ":" in host else host
    return Demo(app, backend, f"http://{shown}:{port}/", workdir, own_env, time.perf_counter() - t0)


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 7860, data: str | None = None,
          probe: str | Path | None = None) -> None:
    """``crlf demo``: start, say where, and serve until Ctrl-C."""
    require_gradio()  # before any loading: a missing extra is said at once
    warning = host_warning(host)
    if warning:
        print(f"crlf: warning: {warning}", file=sys.stderr)
    demo = start(run_dir, host, port, data, probe)
    print(f"demo of {run_dir} ready in {demo.ready_s:.1f} s at {demo.url}  (Ctrl-C to stop)", flush=True)

    def stop(signum, frame):  # SIGTERM (kill, systemd, docker stop) ends like Ctrl-C: cleanly
        raise KeyboardInterrupt

    with contextlib.suppress(ValueError):  # only the main thread may set handlers
        signal.signal(signal.SIGTERM, stop)
    try:
        demo.app.block_thread()  # returns on Ctrl-C
    finally:
        demo.close()
