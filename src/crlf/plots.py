"""Figures of a run (matplotlib, headless): loss curve, PCA, t-SNE and (with the ``plots`` extra) UMAP of the test
embeddings, confusion matrix, label efficiency, and a grid of nearest neighbours."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

from crlf.errors import UsageError  # noqa: E402
from crlf.io import atomic_open  # noqa: E402
from crlf.publish.export import load_array  # noqa: E402


def _save(fig, path: Path) -> Path:
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def loss_curve(history: list[dict], step_losses: np.ndarray | None, path: Path, title: str = "") -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    if step_losses is not None and len(step_losses):
        steps_per_epoch = history[0].get("steps", len(step_losses) / max(1, len(history))) if history else 1
        x = np.arange(1, len(step_losses) + 1) / steps_per_epoch
        ax.plot(x, step_losses, color="tab:blue", alpha=0.3, lw=0.8, label="per step")
    if history:
        ax.plot([r["epoch"] for r in history], [r["loss"] for r in history], "o-", color="tab:blue", label="epoch mean")
    ax.set_xlabel("epoch")
    ax.set_ylabel("NT-Xent loss")
    ax.grid(alpha=0.3)
    knn = [(r["epoch"], r["knn_top1"]) for r in history if r.get("knn_top1") is not None]
    probe = [(r["epoch"], r["online_probe_top1"]) for r in history if r.get("online_probe_top1") is not None]
    if knn or probe:  # the online kNN monitor and the online linear probe, on a second axis
        ax2 = ax.twinx()
        if knn:
            ax2.plot(*zip(*knn), "s--", color="tab:orange", label="kNN top-1 (monitor)")
        if probe:
            ax2.plot(*zip(*probe), "^:", color="tab:green", label="online linear probe top-1 (training batches)")
        ax2.set_ylabel("top-1")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left" if knn or probe else "best")
    ax.set_title(title or "Pretraining loss")
    return _save(fig, path)


LEGEND_MAX_CLASSES = 20  # beyond this a legend (and per-cell numbers) are unreadable: colours/shades only


def _scatter(points: np.ndarray, labels: np.ndarray, classes: list[str], title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 6))
    if len(classes) <= LEGEND_MAX_CLASSES:
        cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        for c, name in enumerate(classes):
            sel = labels == c
            ax.scatter(points[sel, 0], points[sel, 1], s=4, alpha=0.6, color=cmap(c % cmap.N), label=name)
        ax.legend(markerscale=4, fontsize=8, loc="center left", bbox_to_anchor=(1, 0.5))
    else:  # many classes: one continuous colour map over the class index, no legend
        ax.scatter(points[:, 0], points[:, 1], s=4, alpha=0.6, c=labels, cmap="nipy_spectral")
        title += f"\ncolour = class index (0-{len(classes) - 1})"
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    return _save(fig, path)


def pca_embedding(emb: np.ndarray, labels: np.ndarray, classes: list[str], path: Path, data: str = "") -> Path:
    points = PCA(n_components=2, random_state=0).fit_transform(emb)
    return _scatter(points, labels, classes, f"PCA of {len(emb):,} test embeddings\n{data}", path)


def tsne_embedding(emb: np.ndarray, labels: np.ndarray, classes: list[str], path: Path, data: str = "",
                   max_points: int = 2000, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(emb), size=min(max_points, len(emb)), replace=False))
    perplexity = min(30.0, max(2.0, (len(idx) - 1) / 3))
    points = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(emb[idx])
    note = f"random subsample of {len(idx):,} of {len(emb):,} test embeddings" if len(idx) < len(emb) else f"{len(idx):,} test embeddings"
    return _scatter(points, labels[idx], classes, f"t-SNE, {note}\n{data}", path)


def umap_available() -> bool:
    """UMAP is an optional extra (``pip install -e '.[plots]'``: umap-learn, which brings numba)."""
    import importlib.util

    return importlib.util.find_spec("umap") is not None


def umap_embedding(emb: np.ndarray, labels: np.ndarray, classes: list[str], path: Path, data: str = "",
                   max_points: int = 2000, seed: int = 0) -> Path:
    """UMAP (McInnes et al., 2018) of a random subsample, like the t-SNE figure: it keeps more of the global
    layout (how far apart the clusters are) than t-SNE does. Cosine distances, as the kNN evaluation uses."""
    import umap  # the optional extra: callers check umap_available() first

    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(emb), size=min(max_points, len(emb)), replace=False))
    neighbours = min(15, len(idx) - 1)  # umap needs fewer neighbours than points
    points = umap.UMAP(n_components=2, n_neighbors=max(2, neighbours), metric="cosine", random_state=seed,
                       n_jobs=1).fit_transform(emb[idx])
    note = f"random subsample of {len(idx):,} of {len(emb):,} test embeddings" if len(idx) < len(emb) else f"{len(idx):,} test embeddings"
    return _scatter(points, labels[idx], classes, f"UMAP, {note}\n{data}", path)


def confusion_matrix_plot(cm: np.ndarray, classes: list[str], path: Path, title: str = "") -> Path:
    fig, ax = plt.subplots(figsize=(7, 6))
    few = len(classes) <= LEGEND_MAX_CLASSES
    ConfusionMatrixDisplay(np.asarray(cm), display_labels=classes if few else None).plot(
        ax=ax, cmap="Blues", xticks_rotation=45, colorbar=not few, values_format="d", include_values=few)
    if not few:  # class names do not fit: index ticks every tenth class
        ticks = np.arange(0, len(classes), 10)
        ax.set_xticks(ticks, ticks)
        ax.set_yticks(ticks, ticks)
    ax.set_title(title or "Linear probe confusion matrix (test)")
    return _save(fig, path)


def plot_run(run_dir: Path) -> list[Path]:
    """Every figure of a run into ``run_dir/plots``; the embedding figures need ``crlf evaluate`` first."""
    from crlf.run_files import read_history

    run_dir = Path(run_dir)
    plots = run_dir / "plots"
    history = read_history(run_dir)
    if not history:
        raise UsageError(f"'{run_dir}' has no metrics.jsonl; run crlf pretrain --out {run_dir} first.")
    losses_path = run_dir / "step_losses.npy"
    step_losses = load_array(losses_path) if losses_path.exists() else None
    written = [loss_curve(history, step_losses, plots / "loss_curve.png")]
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.exists():
        raise UsageError(f"'{run_dir}' has no metrics.json; run crlf evaluate {run_dir} before crlf plot.")
    metrics = json.loads(metrics_path.read_text())
    classes, data = metrics["classes"], metrics.get("data", "")
    emb, labels = load_array(run_dir / "test_embeddings.npy"), load_array(run_dir / "test_labels.npy")
    written.append(pca_embedding(emb, labels, classes, plots / "pca_embedding.png", data))
    written.append(tsne_embedding(emb, labels, classes, plots / "tsne_embedding.png", data))
    if umap_available():  # the optional extra; without it the other figures are written as before
        written.append(umap_embedding(emb, labels, classes, plots / "umap_embedding.png", data))
    title = f"Linear probe on {data}: top-1 {metrics['linear_top1']:.1%}"
    written.append(confusion_matrix_plot(np.asarray(metrics["confusion_matrix"]), classes,
                                         plots / "confusion_matrix.png", title))
    if metrics.get("label_efficiency"):  # accuracy against the label fraction
        written.append(label_efficiency_plot(metrics, plots / "label_efficiency.png"))
    return written


def label_efficiency_plot(metrics: dict, path: Path) -> Path:
    """Test top-1 against the fraction of training labels (log x): linear probe, and fine-tuning and the
    from-scratch supervised baseline when ``crlf evaluate --finetune / --supervised-baseline`` ran."""
    fig, ax = plt.subplots(figsize=(7, 4))
    series = [("linear probe (frozen)", metrics.get("label_efficiency"), "linear_top1", "o-", "tab:blue"),
              ("fine-tuned", metrics.get("finetune"), "top1", "s-", "tab:green"),
              ("supervised from scratch", metrics.get("supervised_baseline"), "top1", "^--", "tab:red")]
    for label, block, key, style, colour in series:
        if not block:
            continue
        points = sorted((v["fraction"], v[key]) for v in block["fractions"].values())
        xs, ys = zip(*points)
        ax.plot(np.array(xs) * 100, ys, style, color=colour, label=label)
        for x, y in points:
            ax.annotate(f"{y:.1%}", (x * 100, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xticks([1, 10, 100], ["1 %", "10 %", "100 %"])
    ax.minorticks_off()
    ax.set_xlabel("training labels used (%)")
    ax.set_ylabel("test top-1")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right")
    ax.set_title(f"Label efficiency on {metrics.get('data', '')}")
    return _save(fig, path)


def neighbours_grid(query_images: np.ndarray, query_labels: np.ndarray, neighbour_images: np.ndarray,
                    neighbour_labels: np.ndarray, similarities: np.ndarray, classes: list[str], path: Path,
                    title: str = "") -> Path:
    """queries (Q, 3, H, W) uint8, neighbours (Q, K, 3, H, W) uint8, labels (Q,) / (Q, K), sims (Q, K)."""
    q, k = neighbour_labels.shape
    fig, axes = plt.subplots(q, k + 1, figsize=(1.2 * (k + 1), 1.35 * q), squeeze=False)
    for i in range(q):
        axes[i, 0].imshow(query_images[i].transpose(1, 2, 0))
        axes[i, 0].set_title(f"query: {classes[query_labels[i]]}", fontsize=7, fontweight="bold")
        for j in range(k):
            same = neighbour_labels[i, j] == query_labels[i]
            axes[i, j + 1].imshow(neighbour_images[i, j].transpose(1, 2, 0))
            axes[i, j + 1].set_title(f"{classes[neighbour_labels[i, j]]} {similarities[i, j]:.2f}", fontsize=6,
                                     color="tab:green" if same else "tab:red")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or "Nearest training images (cosine) of test images; green: same class", fontsize=9)
    return _save(fig, path)
