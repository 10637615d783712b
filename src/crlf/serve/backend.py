"""What the web demo (:mod:`crlf.serve.demo`) computes, as plain Python that tests call without a server: the
probe's classes, the nearest training images, the PCA map of the test set, each class's typical images."""

from __future__ import annotations

import inspect
import os
import threading
from pathlib import Path

import numpy as np

NEIGHBOURS = 8
TYPICAL = 8
MAP_POINTS = 2000  # test points drawn on the map: enough to show the clusters, fast to draw
THUMB_SIDE = 128  # gallery thumbnails are enlarged to at least this many pixels, with visible pixels


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
