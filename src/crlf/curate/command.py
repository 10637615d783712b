"""``crlf curate RUN --data DIR --out OUT``: embed once, then duplicates, outliers, what to label first and
label issues, as CSV lists and one page. Nothing in DIR is moved, deleted or written: the user acts on
the lists."""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crlf.curate import COPY_FLAG_Z
from crlf.curate.duplicates import DUP_THRESHOLD, EDGE_THRESHOLD, PIXEL_THRESHOLD, find_duplicates
from crlf.curate.graph import knn_graph, unit
from crlf.curate.label_issues import MAX_SHARE, MIN_ACCURACY, find_label_issues, out_of_fold_probabilities
from crlf.curate.outliers import flagged_outliers, outlier_scores, typicality
from crlf.curate.page import render
from crlf.curate.select import check_budget, select
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


@dataclass(frozen=True)
class CurateOptions:
    """Everything ``crlf curate`` may be told besides the run, the data and the output folder."""

    n_select: int | None = None  # --select: how many images to label first (None: no selection)
    strategy: str = "typical"
    seed: int = 0
    labels_csv: Path | None = None  # --labels; default: the class folders, if any
    dup_threshold: float = DUP_THRESHOLD
    pixel_threshold: float = PIXEL_THRESHOLD
    edge_threshold: float = EDGE_THRESHOLD
    outlier_fraction: float = 0.01  # --exclude-outliers: at least this share of the most unusual is never selected
    k: int = 20  # neighbours of the graph
    device: str = "auto"
    progress: bool = True

    @classmethod
    def from_args(cls, args) -> CurateOptions:
        return cls(args.select, args.strategy, args.seed, args.labels, args.dup_threshold, args.pixel_threshold,
                   args.edge_threshold, args.exclude_outliers, device=args.device, progress=not args.quiet)

    def check(self) -> None:
        """Usage errors, before anything is decoded or embedded."""
        for flag, value, what, default in (("--dup-threshold", self.dup_threshold, "a cosine similarity", DUP_THRESHOLD),
                                           ("--pixel-threshold", self.pixel_threshold, "a correlation", PIXEL_THRESHOLD),
                                           ("--edge-threshold", self.edge_threshold, "a correlation", EDGE_THRESHOLD)):
            if not -1.0 <= value <= 1.0:
                raise UsageError(f"{flag} is {what} in [-1, 1] (got {value}); default {default}.")
        if not 0.0 <= self.outlier_fraction < 1.0:
            raise UsageError(f"--exclude-outliers is a fraction in [0, 1) (got {self.outlier_fraction}).")
        if self.n_select is not None:
            check_budget(self.n_select)


@dataclass
class Curation:
    """What ``crlf curate`` found: ``summary`` is ``OUT/curation.json``; the rest is what the page shows."""

    summary: dict
    groups: list[list[tuple[int, bool, float]]]  # per duplicate group: (row, kept, similarity), the kept first
    outliers: list[tuple[int, float]]  # (row, score), most unusual first
    selection: list[int] | None
    issues: list[tuple[int, str, str, float]] | None  # (row, given, suggested, confidence)
    notes: list[str] = field(default_factory=list)  # said at the top of the page and by the command


def curate(run_dir: Path, data: str, out: Path, options: CurateOptions = CurateOptions()) -> Curation:
    """Everything ``crlf curate`` writes; its summary is also written to ``OUT/curation.json``."""
    from crlf.config import load_run_config
    from crlf.publish.export import save_array

    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / "encoder.safetensors").is_file():
        raise UsageError(f"'{run_dir}' has no encoder.safetensors; pass a run folder of crlf pretrain or crlf run.")
    check_out(data, out)
    options.check()
    times, t0 = {}, time.perf_counter()
    cfg = load_run_config(run_dir)
    data_images = load_images(data, cfg.data.image_size, options.progress)
    labels, classes = data_images.labels, data_images.classes
    if options.labels_csv is not None:
        labels, classes = read_labels_csv(options.labels_csv, data_images.files)
    times["decode_s"] = time.perf_counter() - t0
    t = time.perf_counter()
    raw, reused = embed_images(run_dir, data_images, options.device, options.progress)
    out.mkdir(parents=True, exist_ok=True)
    save_array(out / "embeddings.npy", unit(raw))  # (N, D) unit rows; read back memory-mapped below
    del raw
    x = np.load(out / "embeddings.npy", mmap_mode="r", allow_pickle=False)
    times["embed_s"] = time.perf_counter() - t
    found = curate_embeddings(x, data_images.images, data_images.files, labels, classes, out, options, times)
    skipped = data_images.skipped
    write_csv(out / "skipped.csv", ["file", "reason"], skipped)
    found.summary = {
        "run": str(run_dir), "data": data, "data_copy": data_images.description, "images": len(data_images.files),
        "skipped": [{"file": f, "reason": r} for f, r in skipped], "embeddings_reused_from_run": reused,
        **found.summary,
    }
    found.summary["times_s"] = {key: round(v, 2) for key, v in times.items()} | {
        "total_s": round(time.perf_counter() - t0, 2)}
    page = render(f"{Path(data).name} with {run_dir.name}", _cards(found.summary), data_images.images,
                  data_images.files, found.groups, found.outliers, found.selection, found.issues, skipped, found.notes)
    atomic_write_text(out / "curation.html", page)
    atomic_write_json(out / "curation.json", found.summary)
    return found


def curate_embeddings(x: np.ndarray, images, files: list[str], labels: np.ndarray, classes: list[str], out: Path,
                      options: CurateOptions, times: dict) -> Curation:
    """The steps after embedding, on unit rows ``x`` ``(N, D)`` and images ``(N, 3, S, S)``; writes the CSVs
    and adds each step's seconds to ``times``."""
    t = time.perf_counter()
    graph = knn_graph(x, options.k, seed=options.seed, progress=options.progress)
    times["neighbours_s"] = time.perf_counter() - t
    t = time.perf_counter()
    score = outlier_scores(x, graph.similarities, images)  # (N,)
    ranked = np.argsort(-score, kind="stable")
    unusual = flagged_outliers(score, options.outlier_fraction)  # out of the selection
    never_copies = flagged_outliers(score, options.outlier_fraction, COPY_FLAG_Z)  # exact copies only
    write_csv(out / "outliers.csv", ["file", "score"], [(files[i], f"{score[i]:.4f}") for i in ranked])
    times["outliers_s"] = time.perf_counter() - t
    t = time.perf_counter()
    typ = typicality(graph.similarities)  # (N,)
    groups = find_duplicates(x, images, graph.similarities, graph.indices, typ, options.dup_threshold,
                             options.pixel_threshold, options.progress, options.edge_threshold, never_copies)
    order = np.lexsort((~groups.keep, groups.group))  # by group, the kept image first
    write_csv(out / "duplicates.csv", ["group", "file", "keep", "similarity"],
              [(int(groups.group[i]), files[groups.members[i]], "true" if groups.keep[i] else "false",
                f"{groups.similarity[i]:.4f}") for i in order])
    times["duplicates_s"] = time.perf_counter() - t
    summary = {"neighbours": {"k": graph.k, "exact": graph.exact, "recall_vs_exact": round(graph.recall, 4)},
               "thresholds": {"dup_threshold": options.dup_threshold, "pixel_threshold": options.pixel_threshold,
                              "edge_threshold": options.edge_threshold},
               "duplicate_groups": int(groups.group.max() + 1) if len(groups.group) else 0,
               "duplicates_to_remove": len(groups.dropped()), "outliers_flagged": len(unusual)}
    notes = [] if graph.exact else [f"Approximate neighbour search (faiss IVF): recall@{graph.k} "
                                    f"{graph.recall:.3f} against exact search on a sample."]
    selection = None
    if options.n_select is not None:
        t = time.perf_counter()
        exclude = np.union1d(groups.dropped(), unusual)
        selection = select(x, options.n_select, options.strategy, options.seed, exclude)
        write_csv(out / "selection.csv", ["rank", "file"], [(r, files[i]) for r, i in enumerate(selection, 1)])
        summary["selection"] = {"n": options.n_select, "strategy": options.strategy, "seed": options.seed,
                                "excluded": len(exclude)}
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
            probs = out_of_fold_probabilities(np.asarray(x[labelled]), remap, len(present), seed=options.seed,
                                              progress=options.progress)
            found = find_label_issues(probs, remap)
            names = [classes[c] for c in present]
            issues = [(int(labelled[r]), names[g], names[s], float(c))
                      for r, g, s, c in zip(found.rows, found.given, found.suggested, found.confidence)]
            write_csv(out / "label_issues.csv", ["file", "given", "suggested", "confidence"],
                      [(files[r], g, s, f"{c:.4f}") for r, g, s, c in issues])
            summary["label_issues"] = {"labelled": len(labelled), "flagged": len(issues),
                                       "estimated_wrong": found.estimated, "too_weak_to_tell": found.too_weak,
                                       "estimate_over_cap": found.over_cap,
                                       "cross_validated_accuracy": round(found.accuracy, 4)}
            if found.too_weak:
                notes.append(weak_probe_note(found.accuracy, len(issues)))
            elif found.over_cap:
                notes.append(over_cap_note(found.estimated, len(labelled), len(issues)))
            times["label_issues_s"] = time.perf_counter() - t
    elif len(classes) == 1:
        notes.append("Label issues not checked: the data has a single class.")
    return Curation(summary, gallery_groups(groups, GALLERY["groups"]),
                    [(int(i), float(score[i])) for i in ranked[:GALLERY["outliers"]]],
                    None if selection is None else [int(i) for i in selection[:GALLERY["selection"]]],
                    None if issues is None else issues[:GALLERY["issues"]], notes)


def weak_probe_note(accuracy: float, listed: int) -> str:
    return (f"Label issues: the encoder is too weak to tell wrong labels apart (the probe's cross-validated "
            f"accuracy is {accuracy:.1%}, under {MIN_ACCURACY:.0%}); only the {listed} most confident candidates "
            f"are listed. A better-trained encoder (a longer crlf pretrain) gives a list that means something.")


def over_cap_note(estimated: int, labelled: int, listed: int) -> str:
    return (f"Label issues: the probe doubts {estimated:,} of {labelled:,} labels ({estimated / labelled:.0%}), "
            f"more than the {MAX_SHARE:.0%} it may flag. A probe this unsure counts its own mistakes as wrong "
            f"labels, so that number is not an estimate of them: only the {listed:,} it is surest of are listed, "
            f"the surest first. A better-trained encoder gives a count that means something.")


def gallery_groups(groups, limit: int) -> list[list[tuple[int, bool, float]]]:
    """The first ``limit`` duplicate groups as ``[(row, kept, similarity)]``, the kept image first."""
    out = []
    for g in range(min(int(groups.group.max() + 1) if len(groups.group) else 0, limit)):
        member = groups.group == g
        rows = zip(groups.members[member], groups.keep[member], groups.similarity[member])
        out.append(sorted([(int(m), bool(kp), float(s)) for m, kp, s in rows], key=lambda r: not r[1]))
    return out


def _cards(summary: dict) -> list[tuple[str, str]]:
    cards = [("images", f"{summary['images']:,}"), ("skipped (undecodable)", str(len(summary["skipped"]))),
             ("duplicate groups", str(summary["duplicate_groups"])),
             ("duplicates to remove", str(summary["duplicates_to_remove"])),
             ("unusual images kept out of the selection", str(summary["outliers_flagged"]))]
    if "selection" in summary:
        cards.append((f"selected ({summary['selection']['strategy']})", str(summary["selection"]["n"])))
    if "label_issues" in summary:
        li = summary["label_issues"]
        cards += [("label issues" + (" (encoder too weak to tell: most confident only)" if li["too_weak_to_tell"]
                                     else ""), str(li["flagged"])),
                  ("wrong labels, estimated", f"not estimable (probe doubts {li['estimated_wrong']:,})"
                   if li["estimate_over_cap"] and not li["too_weak_to_tell"] else str(li["estimated_wrong"])),
                  ("probe accuracy (cross-validated)", f"{li['cross_validated_accuracy']:.1%}")]
    cards.append(("total time", f"{summary['times_s']['total_s']:.0f} s"))
    return cards


def summary_line(found: Curation, out: Path) -> str:
    summary = found.summary
    parts = [f"{summary['images']:,} images ({len(summary['skipped'])} skipped)",
             f"{summary['duplicate_groups']} duplicate groups ({summary['duplicates_to_remove']} to remove)"]
    if "selection" in summary:
        parts.append(f"{summary['selection']['n']} selected ({summary['selection']['strategy']})")
    if "label_issues" in summary:
        li = summary["label_issues"]
        parts.append(f"{li['flagged']} label issues (probe {li['cross_validated_accuracy']:.1%} cross-validated"
                     + (", too weak to tell: only the most confident listed)" if li["too_weak_to_tell"] else ")"))
    return "; ".join(parts) + f"; lists and curation.html in {out}/"

