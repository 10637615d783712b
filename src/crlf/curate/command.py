"""``crlf curate RUN --data DIR --out OUT``: embed once, then duplicates, outliers, what to label first and
label issues, as CSV lists and one page. Nothing in DIR is moved, deleted or written: the user acts on
the lists."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import numpy as np

from crlf.curate.duplicates import DUP_THRESHOLD, EDGE_THRESHOLD, PIXEL_THRESHOLD, find_duplicates
from crlf.curate.graph import knn_graph, unit
from crlf.curate.label_issues import find_label_issues, out_of_fold_probabilities
from crlf.curate.outliers import outlier_scores, typicality
from crlf.curate.page import render
from crlf.curate.select import select
from crlf.curate.source import embed_images, load_images, read_labels_csv
from crlf.errors import UsageError
from crlf.io import atomic_write_json, atomic_write_text

GALLERY = {"groups": 30, "outliers": 24, "selection": 100, "issues": 48}  # how many the page shows


def write_csv(path: Path, header: list[str], rows) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())
    return path


def check_out(data: str, out: Path) -> None:
    """OUT may not lie inside DIR: the tool never writes into the folder it curates."""
    root = Path(data).expanduser().resolve()
    if root.is_dir() and (out.resolve() == root or root in out.resolve().parents):
        raise UsageError(f"--out '{out}' is inside --data '{data}'; curation never writes into the data "
                         f"folder. Pass an --out outside it, e.g. --out {root.name}-curation.")


def check_thresholds(dup_threshold: float, pixel_threshold: float, outlier_fraction: float,
                     edge_threshold: float = EDGE_THRESHOLD) -> None:
    if not -1.0 <= dup_threshold <= 1.0:
        raise UsageError(f"--dup-threshold is a cosine similarity in [-1, 1] (got {dup_threshold}); default {DUP_THRESHOLD}.")
    if not -1.0 <= pixel_threshold <= 1.0:
        raise UsageError(f"--pixel-threshold is a correlation in [-1, 1] (got {pixel_threshold}); default {PIXEL_THRESHOLD}.")
    if not -1.0 <= edge_threshold <= 1.0:
        raise UsageError(f"--edge-threshold is a correlation in [-1, 1] (got {edge_threshold}); default {EDGE_THRESHOLD}.")
    if not 0.0 <= outlier_fraction < 1.0:
        raise UsageError(f"--exclude-outliers is a fraction in [0, 1) (got {outlier_fraction}).")


def curate(run_dir: Path, data: str, out: Path, n_select: int | None = None, strategy: str = "typical",
           seed: int = 0, labels_csv: Path | None = None, dup_threshold: float = DUP_THRESHOLD,
           pixel_threshold: float = PIXEL_THRESHOLD, outlier_fraction: float = 0.01, k: int = 20,
           device: str = "auto", progress: bool = True, edge_threshold: float = EDGE_THRESHOLD) -> dict:
    """Everything ``crlf curate`` writes; returns the summary also written to ``OUT/curation.json``."""
    from crlf.config import load_run_config
    from crlf.publish.export import save_array

    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / "encoder.safetensors").is_file():
        raise UsageError(f"'{run_dir}' has no encoder.safetensors; pass a run folder of crlf pretrain or crlf run.")
    check_out(data, out)
    check_thresholds(dup_threshold, pixel_threshold, outlier_fraction, edge_threshold)
    if n_select is not None and n_select < 1:
        raise UsageError(f"--select must be >= 1 (got {n_select}).")
    times, t0 = {}, time.perf_counter()
    cfg = load_run_config(run_dir)
    data_images = load_images(data, cfg.data.image_size, progress)
    labels, classes = data_images.labels, data_images.classes
    if labels_csv is not None:
        labels, classes = read_labels_csv(labels_csv, data_images.files)
    times["decode_s"] = time.perf_counter() - t0
    t = time.perf_counter()
    raw, reused = embed_images(run_dir, data_images, device, progress)
    out.mkdir(parents=True, exist_ok=True)
    save_array(out / "embeddings.npy", unit(raw))  # (N, D) unit rows; read back memory-mapped below
    del raw
    x = np.load(out / "embeddings.npy", mmap_mode="r", allow_pickle=False)
    times["embed_s"] = time.perf_counter() - t
    result = curate_embeddings(x, data_images.images, data_images.files, labels, classes, out, n_select, strategy,
                               seed, dup_threshold, pixel_threshold, outlier_fraction, k, progress, times,
                               edge_threshold)
    gallery = {key: result.pop(key) for key in ("_groups", "_outliers", "_selection", "_issues", "_notes")}
    skipped = data_images.skipped
    write_csv(out / "skipped.csv", ["file", "reason"], skipped)
    summary = {
        "run": str(run_dir), "data": data, "data_copy": data_images.description, "images": len(data_images.files),
        "skipped": [{"file": f, "reason": r} for f, r in skipped], "embeddings_reused_from_run": reused, **result,
    }
    summary["times_s"] = {key: round(v, 2) for key, v in times.items()} | {"total_s": round(time.perf_counter() - t0, 2)}
    page = render(f"{Path(data).name} with {run_dir.name}", _cards(summary), data_images.images, data_images.files,
                  gallery["_groups"], gallery["_outliers"], gallery["_selection"], gallery["_issues"], skipped,
                  gallery["_notes"])
    atomic_write_text(out / "curation.html", page)
    atomic_write_json(out / "curation.json", summary)
    return summary


def curate_embeddings(x: np.ndarray, images, files: list[str], labels: np.ndarray, classes: list[str], out: Path,
                      n_select: int | None, strategy: str, seed: int, dup_threshold: float, pixel_threshold: float,
                      outlier_fraction: float, k: int, progress: bool, times: dict,
                      edge_threshold: float = EDGE_THRESHOLD) -> dict:
    """The steps after embedding, on unit rows ``x`` ``(N, D)`` and images ``(N, 3, S, S)``; writes the CSVs."""
    t = time.perf_counter()
    graph = knn_graph(x, k, seed=seed, progress=progress)
    times["neighbours_s"] = time.perf_counter() - t
    t = time.perf_counter()
    typ = typicality(graph.similarities)  # (N,)
    groups = find_duplicates(x, images, graph.similarities, graph.indices, typ, dup_threshold, pixel_threshold,
                             progress, edge_threshold)
    order = np.lexsort((~groups.keep, groups.group))  # by group, the kept image first
    write_csv(out / "duplicates.csv", ["group", "file", "keep", "similarity"],
              [(int(groups.group[i]), files[groups.members[i]], "true" if groups.keep[i] else "false",
                f"{groups.similarity[i]:.4f}") for i in order])
    times["duplicates_s"] = time.perf_counter() - t
    t = time.perf_counter()
    score = outlier_scores(x, graph.similarities)  # (N,)
    ranked = np.argsort(-score, kind="stable")
    write_csv(out / "outliers.csv", ["file", "score"], [(files[i], f"{score[i]:.4f}") for i in ranked])
    times["outliers_s"] = time.perf_counter() - t
    result = {"neighbours": {"k": graph.k, "exact": graph.exact, "recall_vs_exact": round(graph.recall, 4)},
              "thresholds": {"dup_threshold": dup_threshold, "pixel_threshold": pixel_threshold,
                             "edge_threshold": edge_threshold},
              "duplicate_groups": int(groups.group.max() + 1) if len(groups.group) else 0,
              "duplicates_to_remove": len(groups.dropped())}
    notes = [] if graph.exact else [f"Approximate neighbour search (faiss IVF): recall@{graph.k} "
                                    f"{graph.recall:.3f} against exact search on a sample."]
    selection = None
    if n_select is not None:
        t = time.perf_counter()
        worst = ranked[: int(np.ceil(outlier_fraction * len(x)))]
        exclude = np.union1d(groups.dropped(), worst)
        selection = select(x, n_select, strategy, seed, exclude)
        write_csv(out / "selection.csv", ["rank", "file"], [(r, files[i]) for r, i in enumerate(selection, 1)])
        result["selection"] = {"n": n_select, "strategy": strategy, "seed": seed, "excluded": len(exclude)}
        times["selection_s"] = time.perf_counter() - t
    issues = None
    labelled = np.flatnonzero(labels >= 0)
    if len(classes) >= 2 and len(labelled):
        t = time.perf_counter()
        y = labels[labelled]
        present = np.unique(y)
        if len(present) < 2:
            notes.append("Label issues not checked: the labelled images hold only one class.")
        else:
            remap = np.searchsorted(present, y)  # classes without images out of the probe
            probs = out_of_fold_probabilities(np.asarray(x[labelled]), remap, len(present), seed=seed, progress=progress)
            found = find_label_issues(probs, remap)
            names = [classes[c] for c in present]
            issues = [(int(labelled[r]), names[g], names[s], float(c))
                      for r, g, s, c in zip(found.rows, found.given, found.suggested, found.confidence)]
            write_csv(out / "label_issues.csv", ["file", "given", "suggested", "confidence"],
                      [(files[r], g, s, f"{c:.4f}") for r, g, s, c in issues])
            result["label_issues"] = {"labelled": len(labelled), "flagged": len(issues),
                                      "cross_validated_accuracy": round(float((probs.argmax(1) == remap).mean()), 4)}
            times["label_issues_s"] = time.perf_counter() - t
    elif len(classes) == 1:
        notes.append("Label issues not checked: the data has a single class.")
    group_rows = [[(int(m), bool(kp), float(s)) for m, kp, s in zip(groups.members[groups.group == g],
                                                                   groups.keep[groups.group == g],
                                                                   groups.similarity[groups.group == g])]
                  for g in range(min(result["duplicate_groups"], GALLERY["groups"]))]
    group_rows = [sorted(g, key=lambda r: not r[1]) for g in group_rows]
    result |= {"_groups": group_rows, "_outliers": [(int(i), float(score[i])) for i in ranked[:GALLERY["outliers"]]],
               "_selection": None if selection is None else [int(i) for i in selection[:GALLERY["selection"]]],
               "_issues": None if issues is None else issues[:GALLERY["issues"]], "_notes": notes}
    return result


def _cards(summary: dict) -> list[tuple[str, str]]:
    cards = [("images", f"{summary['images']:,}"), ("skipped (undecodable)", str(len(summary["skipped"]))),
             ("duplicate groups", str(summary["duplicate_groups"])),
             ("duplicates to remove", str(summary["duplicates_to_remove"]))]
    if "selection" in summary:
        cards.append((f"selected ({summary['selection']['strategy']})", str(summary["selection"]["n"])))
    if "label_issues" in summary:
        li = summary["label_issues"]
        cards += [("label issues", str(li["flagged"])), ("probe accuracy (cross-validated)",
                                                         f"{li['cross_validated_accuracy']:.1%}")]
    cards.append(("total time", f"{summary['times_s']['total_s']:.0f} s"))
    return cards


def summary_line(summary: dict, out: Path) -> str:
    parts = [f"{summary['images']:,} images ({len(summary['skipped'])} skipped)",
             f"{summary['duplicate_groups']} duplicate groups ({summary['duplicates_to_remove']} to remove)"]
    if "selection" in summary:
        parts.append(f"{summary['selection']['n']} selected ({summary['selection']['strategy']})")
    if "label_issues" in summary:
        li = summary["label_issues"]
        parts.append(f"{li['flagged']} label issues (probe {li['cross_validated_accuracy']:.1%} cross-validated)")
    return "; ".join(parts) + f"; lists and curation.html in {out}/"

