"""``crlf sweep``: one config, several seeds, mean ± std of every scalar metric.

Each seed is a full ``crlf run`` into ``DIR/seed<N>``; a seed whose folder already has a metrics.json is
not run again, so an interrupted sweep continues where it stopped. The summary (``DIR/sweep.json`` and a
markdown table) uses the sample standard deviation (ddof=1), the usual "± std over seeds" of papers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from crlf.io import atomic_write_json
from crlf.reports.report import flatten

# Settings and bookkeeping, not measurements: left out of the mean ± std table.
NOT_METRICS = ("config.", "seed", "confusion_matrix", "classes", "protocol.", "knn.", "retrieval.num_",
               "retrieval.database_size", "linear_probe.max_iter", "linear_probe.holdout_fraction_of_train")


def scalar_metrics(metrics: dict) -> dict[str, float]:
    """Every numeric leaf of a metrics.json (as "a.b.c"), without settings and counters."""
    out = {}
    for key, value in flatten(metrics).items():
        if key.startswith(NOT_METRICS) or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, int) and not key.endswith(("epochs", "_s")):  # counts: num_train, n_way, ...
            continue
        out[key] = float(value)
    return out


def summarise(run_dirs: list[Path]) -> dict:
    """{"runs": [...], "metrics": {name: {"mean", "std", "n", "values"}}} over the runs that finished."""
    per_run = {str(d): scalar_metrics(json.loads((Path(d) / "metrics.json").read_text())) for d in run_dirs}
    names = sorted(set().union(*per_run.values())) if per_run else []
    table = {}
    for name in names:
        values = [m[name] for m in per_run.values() if name in m]
        table[name] = {"mean": float(np.mean(values)),
                       "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                       "n": len(values), "values": values}
    return {"runs": [str(d) for d in run_dirs], "std": "sample standard deviation (ddof=1)", "metrics": table}


def markdown_table(summary: dict, headline_first: bool = True) -> str:
    """| metric | mean ± std | n | (percentages for accuracies in [0, 1])."""
    first = ("linear_top1", "knn_top1", "knn_top1_k20")
    names = list(summary["metrics"])
    if headline_first:
        names = [n for n in first if n in names] + [n for n in names if n not in first]
    lines = ["| metric | mean ± std | n |", "|---|---|---|"]
    for name in names:
        s = summary["metrics"][name]
        lines.append(f"| {name} | {_pm(name, s['mean'], s['std'])} | {s['n']} |")
    return "\n".join(lines)


def _pm(name: str, mean: float, std: float) -> str:
    if name.endswith("_s") or "time" in name or name.endswith("epochs") or "weight_decay" in name:
        return f"{mean:.4g} ± {std:.2g}"
    return f"{mean:.4f} ± {std:.4f}"


def write_sweep(out_dir: Path, run_dirs: list[Path], seeds: list[int]) -> tuple[Path, str]:
    summary = summarise(run_dirs) | {"seeds": list(seeds)}
    path = Path(out_dir) / "sweep.json"
    atomic_write_json(path, summary)
    return path, markdown_table(summary)
