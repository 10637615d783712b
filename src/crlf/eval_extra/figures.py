"""Figures of issue 4: accuracy against the label fraction, and a grid of nearest neighbours."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from crlf.plots import _save, plt


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
