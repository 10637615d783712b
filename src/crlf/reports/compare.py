"""``crlf compare DIR1 DIR2 ...``: the runs' headline metrics side by side, and their curves overlaid."""

from __future__ import annotations

import json
from pathlib import Path

from crlf.errors import UsageError
from crlf.reports.sweep import scalar_metrics

HEADLINE = ["linear_top1", "knn_top1", "knn_top1_k20", "label_efficiency.fractions.1%.linear_top1",
            "label_efficiency.fractions.10%.linear_top1", "few_shot.5way_1shot.accuracy",
            "few_shot.5way_5shot.accuracy", "retrieval.recall@1", "retrieval.mAP", "clustering.nmi",
            "clustering.ari", "finetune.fractions.1%.top1", "finetune.fractions.10%.top1",
            "finetune.fractions.100%.top1", "supervised_baseline.fractions.1%.top1",
            "supervised_baseline.fractions.100%.top1", "epochs", "pretrain_time_s", "eval_time_s"]


def run_labels(run_dirs: list[Path]) -> list[str]:
    """Folder names, or parent/name where two runs share a name (e.g. sweepA/seed0 and sweepB/seed0)."""
    names = [d.name for d in run_dirs]
    return [f"{d.parent.name}/{d.name}" if names.count(d.name) > 1 else d.name for d in run_dirs]


def load_runs(run_dirs: list[Path]) -> list[tuple[dict, list[dict]]]:
    from crlf.run_files import read_history

    runs = []
    for d in run_dirs:
        path = Path(d) / "metrics.json"
        history = read_history(d)
        if not path.is_file() and not history:
            raise UsageError(f"'{d}' is not a finished CRLF run (no metrics.json or metrics.jsonl).")
        runs.append((json.loads(path.read_text()) if path.is_file() else {}, history))
    return runs


def compare_table(run_dirs: list[Path], runs: list[tuple[dict, list[dict]]]) -> str:
    labels = run_labels(run_dirs)
    scalars = [scalar_metrics(m) for m, _ in runs]
    rows = [name for name in HEADLINE if any(name in s for s in scalars)]
    lines = ["| metric | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels),
             "| data | " + " | ".join(str(m.get("data", "?")) for m, _ in runs) + " |"]
    for name in rows:
        cells = []
        for s in scalars:
            v = s.get(name)
            cells.append("—" if v is None else (f"{v:.1f}" if name.endswith(("_s", "epochs")) else f"{v:.4f}"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_plot(run_dirs: list[Path], runs: list[tuple[dict, list[dict]]], out: Path) -> Path:
    """Left: NT-Xent loss per epoch; right: the online kNN monitor's top-1 (where it ran)."""
    from crlf.plots import _save, plt

    fig, (ax_loss, ax_knn) = plt.subplots(1, 2, figsize=(12, 4.2))
    any_knn = False
    for label, (_, history) in zip(run_labels(run_dirs), runs):
        if history:
            line, = ax_loss.plot([r["epoch"] for r in history], [r["loss"] for r in history], "o-", ms=3, label=label)
            knn = [(r["epoch"], r["knn_top1"]) for r in history if r.get("knn_top1") is not None]
            if knn:
                any_knn = True
                ax_knn.plot(*zip(*knn), "s--", ms=3, color=line.get_color(), label=label)
    ax_loss.set(xlabel="epoch", ylabel="NT-Xent loss", title="Pretraining loss")
    ax_knn.set(xlabel="epoch", ylabel="kNN top-1", title="Online kNN monitor", ylim=(0, 1))
    if not any_knn:
        ax_knn.text(0.5, 0.5, "no run had the online kNN monitor\n(crlf run --eval-every N)", ha="center",
                    va="center", transform=ax_knn.transAxes, color="#777")
    for ax in (ax_loss, ax_knn):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return _save(fig, Path(out))


def compare_runs(run_dirs: list[Path], out: Path = Path("compare.png")) -> tuple[str, Path]:
    run_dirs = [Path(d) for d in run_dirs]
    runs = load_runs(run_dirs)
    return compare_table(run_dirs, runs), compare_plot(run_dirs, runs, out)
