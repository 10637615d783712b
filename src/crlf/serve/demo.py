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

import numpy as np

from crlf.errors import UsageError

INSTALL_HINT = "the demo needs Gradio: pip install -e '.[demo]'  (or: pip install 'gradio>=4.0' 'gradio_client>=1.0')"
LOOPBACK_HOSTS = {"localhost"}
NEIGHBOURS = 8
TYPICAL = 8
MAP_POINTS = 2000  # test points drawn on the map: enough to show the clusters, fast to draw
THUMB_SIDE = 128  # gallery thumbnails are enlarged to at least this many pixels, with visible pixels
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


class Pca2:
    """The two principal axes of ``(N, D)`` features, by an eigendecomposition of the D x D covariance
    (milliseconds for 10,000 x 512, and no scikit-learn import, which costs seconds at start-up)."""

    def __init__(self, x: np.ndarray, max_fit: int = 5000):
        # 5,000 points pin down two axes of a 512-d cloud well; float32 products keep this ~50 ms.
        x = np.asarray(x, dtype=np.float32)
        if len(x) > max_fit:
            x = x[np.random.default_rng(0).choice(len(x), max_fit, replace=False)]
        self.mean = x.mean(0)  # (D,)
        xc = x - self.mean  # (N, D)
        _, vectors = np.linalg.eigh(xc.T @ xc)  # ascending eigenvalues; unit columns
        self.axes = vectors[:, ::-1][:, :2].T  # (2, D) the two largest
        # eigh's signs are arbitrary: fix them so the map does not flip between runs of the same data
        self.axes *= np.sign(self.axes[np.arange(2), np.abs(self.axes).argmax(1)])[:, None]

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float32).reshape(-1, self.mean.shape[0]) - self.mean) @ self.axes.T  # (B, 2)


class DemoBackend:
    """Everything the page's events call; plain Python, so it is testable without a server."""

    def __init__(self, run, workdir: Path):
        from crlf.publish.export import load_array

        self.run, self.workdir = run, workdir
        self._lock = threading.Lock()
        self._cache: dict[tuple, tuple] = {}  # upload key -> (image, features) | (None, message)
        self._base_map, self._map_lock = None, threading.Lock()
        test_path = run.run_dir / "test_embeddings.npy"
        self.pca = self.map_points = self.map_labels = None
        if test_path.is_file():
            emb, labels = load_array(test_path), load_array(run.run_dir / "test_labels.npy")
            pick = np.random.default_rng(0).permutation(len(emb))[:MAP_POINTS]
            # PCA (not t-SNE): it maps a new image onto the same axes exactly, without refitting.
            self.pca = Pca2(emb)
            self.map_points = self.pca.transform(emb[pick])  # (M, 2)
            self.map_labels = labels[pick]
        self.examples = self._write_examples()

    def _write_examples(self, per_class: int = 1, limit: int = 12) -> list[str]:
        """The first test image of each class as a PNG in the demo's private folder (our own file names)."""
        from PIL import Image

        test = self.run.dataset.test if self.run.dataset is not None else None
        if test is None:
            return []
        folder = self.workdir / "examples"
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for c in range(len(self.run.classes)):
            for k, i in enumerate(np.flatnonzero(test.labels == c)[:per_class]):
                path = folder / f"test-{c:03d}-{k}.png"
                Image.fromarray(np.ascontiguousarray(test.images[i].transpose(1, 2, 0))).save(path)
                paths.append(str(path))
        return paths[:limit]

    # -- uploads -----------------------------------------------------------------------------------

    def _load(self, payload) -> tuple[np.ndarray | None, np.ndarray | str | None]:
        """Gradio's file payload -> (image (3,S,S), features (D,)), or (None, message), or (None, None)."""
        from crlf.data.decode import BadImage
        from crlf.serve.search import read_upload

        path = payload.get("path") if isinstance(payload, dict) else payload
        if not path:
            return None, None
        # Gradio stores each upload under a folder named by its content hash: path + size + mtime is a key.
        try:
            st = os.stat(path)
            key = (str(path), st.st_size, st.st_mtime_ns)
        except OSError:
            key = None
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        try:
            image = read_upload(path, self.run.image_size)
            result = (image, self.run.embed(image))
        except BadImage as exc:
            result = (None, f"This file cannot be used: {exc}.")
        with self._lock:
            if key is not None:
                if len(self._cache) > 32:
                    self._cache.clear()
                self._cache[key] = result
        return result

    def predict(self, payload) -> dict[str, float] | None:
        """``/predict``: top-5 classes -> probabilities; a bad upload raises ``gr.Error`` with the reason."""
        import gradio as gr

        image, features = self._load(payload)
        if image is None:
            if features is None:  # cleared input
                return None
            kwargs = {"duration": None, "print_exception": False}  # an expected refusal, not a server fault
            params = inspect.signature(gr.Error.__init__).parameters
            raise gr.Error(features, **{k: v for k, v in kwargs.items() if k in params})
        return dict(self.run.predict(features))

    def details(self, payload):
        """Neighbours gallery, map and a status line for the page."""
        from crlf.serve.search import to_pil

        image, features = self._load(payload)
        if image is None:
            status = f"⚠️ **{features}**" if features else ""
            return [], self.base_map(), status
        neighbours = self.run.neighbours(features, NEIGHBOURS)
        gallery = [(to_pil(self.run.train_image(n.index), THUMB_SIDE), f"{n.label} {n.similarity:.2f}")
                   for n in neighbours]
        top_label, top_p = self.run.predict(features, top=1)[0]
        nearest = (f"Nearest training image: **{neighbours[0].label}** (cosine {neighbours[0].similarity:.3f}). "
                   if neighbours else "")
        status = (f"Linear probe: **{top_label}** ({top_p:.1%}). {nearest}The encoder saw the image centre-cropped "
                  f"to {self.run.image_size}×{self.run.image_size}.")
        point = self.pca.transform(features[None])[0] if self.pca is not None else None
        return gallery, self.render_map(point, top_label), status

    def typical(self, class_name: str):
        from crlf.serve.search import to_pil

        if not class_name:
            return [], []
        typical, hard = self.run.class_extremes(class_name, TYPICAL)

        def item(n):
            return to_pil(self.run.train_image(n.index), THUMB_SIDE), f"#{n.index} {n.similarity:.2f}"

        return [item(n) for n in typical], [item(n) for n in hard]

    def base_map(self):
        """The map without a query: drawn once (matplotlib's import is ~1 s, so not before the server is up)."""
        with self._map_lock:  # its own lock: uploads need not wait for the drawing
            if self._base_map is None:
                self._base_map = self.render_map()
            return self._base_map

    def render_map(self, point: np.ndarray | None = None, label: str = ""):
        """The test set's PCA map coloured by class, with the query as a star; a PIL image."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from PIL import Image

        if self.map_points is None:
            return None

        fig = Figure(figsize=(6.4, 4.2), dpi=100)  # the OO API: safe from Gradio's worker threads
        canvas = FigureCanvasAgg(fig)
        ax = fig.add_axes((0.02, 0.07, 0.68, 0.84))  # room on the right for the legend, on top for the label
        classes = self.run.classes
        cmap = matplotlib_cmap(len(classes))
        handles = []
        for c, name in enumerate(classes):
            sel = self.map_labels == c
            ax.scatter(*self.map_points[sel].T, s=6, alpha=0.6, color=cmap(c % cmap.N), linewidths=0)
            handles.append(Line2D([], [], marker="o", linestyle="", color=cmap(c % cmap.N), markersize=6,
                                  label=name.replace("$", r"\$")))
        if point is not None:
            star = {"marker": "*", "color": "gold", "markeredgecolor": "black"}
            ax.plot([point[0]], [point[1]], markersize=24, markeredgewidth=1.5, zorder=5, linestyle="", **star)
            name = f"your image ({label})" if label else "your image"
            handles.append(Line2D([], [], markersize=13, linestyle="", label=name.replace("$", r"\$"), **star))
        ax.legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"PCA of {len(self.map_points):,} test images, coloured by class", fontsize=8)
        canvas.draw()
        return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())


def matplotlib_cmap(n: int):
    from matplotlib import colormaps

    return colormaps["tab10" if n <= 10 else "tab20"]


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
