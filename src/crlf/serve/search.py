"""Nearest-neighbour search over a run's training embeddings: ``crlf search`` and the demo's back end.

    crlf search runs/r1 photo.jpg --k 8 --out grid.png

prints the linear probe's top-5 classes and a table of the ``k`` most similar training images (cosine
similarity of the frozen 512-d backbone features, the same features and metric as the kNN evaluation),
and saves a picture grid: the query on the left, the neighbours with their label and similarity.
On a finished run, a training image's own nearest neighbour is itself at similarity 1.000.
"""

from __future__ import annotations

import io
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from crlf.config import load_run_config  # not crlf.pipeline: it imports scikit-learn (2-3 s)
from crlf.data.augment import normalize
from crlf.data.decode import BadImage, decode_image
from crlf.errors import UsageError
from crlf.neighbours import CosineIndex
from crlf.publish.export import load_array

# Caps on anything a person uploads (the demo) before Pillow decodes it: a 10 MB file and 40 megapixels
# cover any camera photo, and keep a decompression bomb from taking the machine's memory.
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_UPLOAD_PIXELS = 40_000_000
TOP_CLASSES = 5


def decode_upload(data: bytes, size: int, max_bytes: int = MAX_UPLOAD_BYTES,
                  max_pixels: int = MAX_UPLOAD_PIXELS) -> np.ndarray:
    """Bytes of an untrusted image -> ``(3, size, size)`` uint8 (EXIF orientation applied), or :class:`BadImage`."""
    if len(data) > max_bytes:
        raise BadImage(f"the file is {len(data) / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB")
    from PIL import Image

    try:  # the header alone gives the size: refuse huge images before any pixel is decoded
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
    except Exception:  # noqa: BLE001 - not an image, a bomb Pillow refuses, ...: decode_image says which, below
        width = height = 0
    if width * height > max_pixels:
        raise BadImage(f"{width}x{height} pixels is too large (limit {max_pixels / 1e6:.0f} megapixels)")
    return decode_image(data, size)


def read_upload(path: str | Path, size: int, max_bytes: int = MAX_UPLOAD_BYTES) -> np.ndarray:
    """Read an image file with the byte cap checked before reading: never more than ``max_bytes`` + 1 bytes."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise BadImage(f"cannot read the file ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise BadImage(f"the file is larger than the {max_bytes / 2**20:.0f} MB limit")
    return decode_upload(data, size, max_bytes)


class NeighbourIndex(CosineIndex):
    """The training embeddings of a run with their labels: exact cosine search (``crlf.neighbours``) plus
    each class's most and least typical images."""

    def __init__(self, embeddings: np.ndarray, labels: np.ndarray):
        super().__init__(embeddings)  # (N, D), unit rows
        self.labels = np.asarray(labels)
        self._centres: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def query(self, features: np.ndarray | torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(D,)`` or ``(B, D)`` features -> (similarities, indices), each ``(B, k)``, most similar first."""
        sims, idx = self.topk(features, k)
        return sims.numpy(), idx.numpy()

    def class_ranking(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        """Training images of class ``c`` from most to least typical: (indices, cosine similarity to the
        normalised mean of the class's unit embeddings). The least typical are what the encoder finds hard."""
        if c not in self._centres:
            idx = np.flatnonzero(self.labels == c)
            members = self.vectors[torch.from_numpy(idx)]  # (n_c, D)
            centre = F.normalize(members.mean(0), dim=0)  # (D,)
            sims = (members @ centre).numpy()  # (n_c,)
            order = np.argsort(-sims, kind="stable")
            self._centres[c] = (idx[order], sims[order])
        return self._centres[c]


@dataclass
class Neighbour:
    rank: int
    index: int  # row of train_embeddings.npy (and of the run's training subset)
    label: str
    similarity: float
    file: str  # where the training image came from ('' for torchvision CIFAR)


class RunSearch:
    """A finished run, loaded for queries: encoder, linear probe, the neighbour index and the training images."""

    def __init__(self, run_dir: str | Path, data: str | None = None, device: str = "cpu", progress: bool = False,
                 probe: str | Path | None = None):
        from crlf.data.sources import balanced_subset, load_dataset
        from crlf.models.backbones import load_encoder
        from crlf.probe_file import load_probe, read_probe

        self.run_dir = run_dir = Path(run_dir)
        self.cfg = cfg = load_run_config(run_dir)
        bank = ["train_embeddings.npy", "train_labels.npy"]
        # With a probe of crlf classify, a run pretrained on unlabeled images (never evaluated) still classifies;
        # it only has no labelled training images to show as neighbours.
        has_bank = all((run_dir / name).is_file() for name in bank)
        needed = ([] if probe and not has_bank else bank) + ([] if probe else ["linear_probe.safetensors"])
        missing = [name for name in needed if not (run_dir / name).is_file()]
        if missing:
            raise UsageError(f"'{run_dir}' has no {', '.join(missing)}; run crlf evaluate {run_dir} first.")
        self.device = torch.device(device)
        self.encoder = load_encoder(run_dir).to(self.device).eval()  # eval: BatchNorm's running stats
        self.encoder.requires_grad_(False)
        metrics_path = run_dir / "metrics.json"
        self.metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
        self.probe_path = Path(probe) if probe else None
        run_probe = run_dir / "linear_probe.safetensors"
        if self.probe_path is None:
            self.probe, classes, _ = read_probe(run_probe)
            self.classes: list[str] = classes or list(self.metrics.get("classes", []))
            if len(self.classes) != self.probe["weight"].shape[0]:
                raise UsageError(f"'{run_dir}/linear_probe.safetensors' has no class names for its "
                                 f"{self.probe['weight'].shape[0]} outputs; run crlf evaluate {run_dir} again.")
            self.probe_classes, self.probe_info = self.classes, {}
        else:  # crlf classify --save-probe: its classes are served; neighbours keep the run's own labels
            loaded, self.probe_classes, self.probe_info = load_probe(self.probe_path)
            self.probe = {"weight": loaded.weight, "bias": loaded.bias, "mean": loaded.mean, "std": loaded.std}
            self.classes = list(self.metrics.get("classes", []))
            if not self.classes and run_probe.is_file():
                self.classes = read_probe(run_probe)[1]
        if not has_bank:
            self.index = self.dataset = self.train = None
            width = self.embed(np.zeros((3, self.image_size, self.image_size), np.uint8)).shape[0]
            if self.probe["weight"].shape[1] != width:
                raise UsageError(f"probe '{self.probe_path}' takes {self.probe['weight'].shape[1]}-d features but "
                                 f"the encoder of '{run_dir}' gives {width}-d: it was made with another run.")
            return
        self.index = NeighbourIndex(load_array(run_dir / "train_embeddings.npy"), load_array(run_dir / "train_labels.npy"))
        # The images are not in the run folder: the run's own source, cached after its first decode, and
        # the same class-balanced subset (same order) that train_embeddings.npy was computed from.
        source = data or cfg.data.source
        try:
            self.dataset = load_dataset(source, cfg.data.image_size, cfg.data.on_bad_image, progress=progress)
        except UsageError as exc:
            raise UsageError(f"cannot load the run's training images: {exc} Pass --data with a copy of them.") from None
        self.train = balanced_subset(self.dataset.train, cfg.data.limit, seed=cfg.train.seed)
        width = self.probe["weight"].shape[1]
        if width != self.index.vectors.shape[1]:
            raise UsageError(f"probe '{self.probe_path}' takes {width}-d features but the encoder of '{run_dir}' "
                             f"gives {self.index.vectors.shape[1]}-d: it was made with another run.")
        if len(self.train) != len(self.index):
            raise UsageError(f"'{source}' gives {len(self.train):,} training images but the run has "
                             f"{len(self.index):,} embeddings; pass --data with the data the run was evaluated on.")

    @property
    def image_size(self) -> int:
        return self.cfg.data.image_size

    @torch.inference_mode()
    def embed(self, image: np.ndarray) -> np.ndarray:
        """uint8 ``(3, S, S)`` -> backbone features ``(D,)``, preprocessed exactly as in evaluation."""
        batch = torch.from_numpy(np.ascontiguousarray(image))[None].to(self.device)  # (1, 3, S, S)
        x = normalize(batch, self.cfg.augment.mean, self.cfg.augment.std)
        return self.encoder(x)[0].float().cpu().numpy()  # (D,)

    def predict(self, features: np.ndarray, top: int = TOP_CLASSES) -> list[tuple[str, float]]:
        """The linear probe's ``top`` classes and softmax probabilities (over all classes), most likely first."""
        p = self.probe
        x = torch.as_tensor(features, dtype=torch.float32).reshape(1, -1)  # (1, D)
        logits = ((x - p["mean"]) / p["std"]) @ p["weight"].T + p["bias"]  # (1, C)
        probs = logits.softmax(dim=1)[0].double()  # (C,)
        values, idx = probs.topk(min(top, len(self.probe_classes)))
        return [(self.probe_classes[i], float(v)) for v, i in zip(values.tolist(), idx.tolist())]

    def neighbours(self, features: np.ndarray, k: int = 8) -> list[Neighbour]:
        if self.index is None:  # a run that was never evaluated, served with a probe of crlf classify
            return []
        sims, idx = self.index.query(features, k)
        return [self._neighbour(r, int(i), float(s)) for r, (s, i) in enumerate(zip(sims[0], idx[0]), start=1)]

    def _neighbour(self, rank: int, i: int, sim: float) -> Neighbour:
        label = int(self.index.labels[i])
        name = self.classes[label] if 0 <= label < len(self.classes) else "?"
        return Neighbour(rank, i, name, sim, self.train.files[i] if self.train.files else "")

    def class_extremes(self, class_name: str, n: int = 8) -> tuple[list[Neighbour], list[Neighbour]]:
        """The ``n`` most and least typical training images of a class (similarity to the class centre)."""
        if self.index is None:
            return [], []
        if class_name not in self.classes:
            raise UsageError(f"unknown class '{class_name}'; the run's classes are {', '.join(self.classes)}")
        idx, sims = self.index.class_ranking(self.classes.index(class_name))
        n = min(n, len(idx))
        typical = [self._neighbour(r, int(i), float(s)) for r, (i, s) in enumerate(zip(idx[:n], sims[:n]), 1)]
        hard = [self._neighbour(r, int(i), float(s)) for r, (i, s) in enumerate(zip(idx[::-1][:n], sims[::-1][:n]), 1)]
        return typical, hard

    def train_image(self, i: int) -> np.ndarray:
        return self.train.images[i]  # (3, S, S) uint8


def to_pil(image: np.ndarray, min_side: int = 0):
    """uint8 ``(3, H, W)`` -> PIL image, enlarged by a whole factor with nearest-neighbour sampling so that
    tiny CIFAR images show their real pixels instead of a blur."""
    from PIL import Image

    pil = Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)))  # (H, W, 3)
    factor = max(1, -(-min_side // max(1, min(pil.size))))
    return pil.resize((pil.width * factor, pil.height * factor), Image.Resampling.NEAREST) if factor > 1 else pil


def render_grid(query: np.ndarray, neighbours: list[Neighbour], images: list[np.ndarray], path: Path,
                title: str = "") -> Path:
    """A picture: the query, then each neighbour with its label and similarity; written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from crlf.io import atomic_open

    cols = min(len(neighbours), 8) + 1
    rows = max(1, -(-len(neighbours) // 8))
    fig = Figure(figsize=(1.6 * cols, 1.9 * rows + 0.4))  # the OO API: no pyplot global state
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes[0, 0].imshow(query.transpose(1, 2, 0), interpolation="nearest")
    axes[0, 0].set_title("query", fontsize=9, fontweight="bold")
    for n, image in zip(neighbours, images):
        ax = axes[(n.rank - 1) // 8, 1 + (n.rank - 1) % 8]
        ax.imshow(image.transpose(1, 2, 0), interpolation="nearest")
        ax.set_title(_safe_text(f"{n.rank}. {n.label}\ncos {n.similarity:.3f}"), fontsize=8)
    if title:
        fig.suptitle(_safe_text(title), fontsize=9)
    fig.tight_layout()
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    return path


def _fmt_table(neighbours: list[Neighbour]) -> str:
    width = max([5] + [len(n.label) for n in neighbours])
    lines = [f"{'rank':>4}  {'cosine':>6}  {'label':<{width}}  {'index':>6}  file"]
    lines += [f"{n.rank:>4}  {n.similarity:6.3f}  {n.label:<{width}}  {n.index:>6}  {n.file}" for n in neighbours]
    return "\n".join(lines)


def search_command(run_dir: Path, image: Path, k: int = 8, out: Path = Path("grid.png"), data: str | None = None,
                   device: str = "cpu") -> list[Neighbour]:
    """``crlf search``: print the probe's top-5 and the neighbour table; save the picture grid to ``out``."""
    image, out = Path(image), Path(out)
    if k < 1:
        raise UsageError(f"--k must be at least 1 (got {k}).")
    if not image.is_file():
        raise UsageError(f"image '{image}' does not exist.")
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out must end in .png (got '{out}').")
    if out.resolve() == image.resolve():
        raise UsageError(f"--out '{out}' would overwrite the query image; choose another name.")
    try:  # the user's own file: no upload cap, but the same decoding (EXIF, modes, bombs) as everywhere
        query = decode_image(image.read_bytes(), load_run_config(run_dir).data.image_size)
    except BadImage as exc:  # said before the run and its images are loaded
        raise UsageError(f"'{image}' cannot be used: {exc}.") from None
    run = RunSearch(run_dir, data=data, device=device, progress=True)
    features = run.embed(query)
    top = run.predict(features)
    neighbours = run.neighbours(features, k)
    print("linear probe: " + ", ".join(f"{name} {p:.1%}" for name, p in top))
    print(_fmt_table(neighbours))
    title = f"{image.name}: nearest of {len(run.index):,} training images ({run.dataset.description})"
    render_grid(query, neighbours, [run.train_image(n.index) for n in neighbours], out, title)
    print(f"wrote {out}")
    return neighbours


def _safe_text(text: str) -> str:
    """Matplotlib treats '$' as maths; a file name must print as it is."""
    return re.sub(r"([$])", r"\\\1", text)
