"""Every curation method and constant chosen leave-one-set-out on the planted sets of bench/curate_sets.py.

    python bench/curate_loso.py [--encoders weak strong] [--cache runs/curate_sets] [--out bench/results/...json]

For each planted set and encoder, the cached embeddings and out-of-fold probe probabilities are scored with
every candidate (outlier scores, label-issue rules, flag thresholds for the selection and the duplicate
check). Then, for each set in turn, the candidate with the best mean objective over the *other* sets (both
encoders) is chosen and reported on the held-out set: no figure is measured on a set its method was chosen
on. Sets are printed worst first.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from curate_sets import CACHE, SETS, load_set, true_labels  # noqa: E402

# ---------------------------------------------------------------------------------------------------
# Outliers


def mean_direction(x: np.ndarray, trim: float = 0.0, rounds: int = 3) -> np.ndarray:
    """Cosine distance ``(N,)`` from the mean direction, refitted without the ``trim`` share farthest."""
    keep = np.ones(len(x), bool)
    for _ in range(rounds if trim else 1):
        centre = x[keep].sum(0, dtype=np.float64)
        centre /= np.linalg.norm(centre)
        d = 1.0 - x @ centre.astype(np.float32)
        keep = d <= np.quantile(d, 1 - trim)
    return d


def shrunk_mahalanobis(x: np.ndarray, estimator: str, trim: float = 0.0) -> np.ndarray:
    from sklearn.covariance import OAS, LedoitWolf

    keep = np.ones(len(x), bool)
    for _ in range(3 if trim else 1):
        model = (LedoitWolf if estimator == "lw" else OAS)(assume_centered=False).fit(x[keep])
        d = model.mahalanobis(x)
        keep = d <= np.quantile(d, 1 - trim)
    return np.sqrt(d)


def pixel_variants(images) -> dict[str, np.ndarray]:
    """The pixel-statistics scores ``(N,)`` in robust z-units: ``pixel`` as shipped before the third session
    (the five statistics' robust distance), ``pixel_log`` (its logarithm), ``pixel_blur`` (the shipped
    :func:`crlf.curate.outliers.pixel_score`: the larger of that and the blur ratio), ``pixel_blur_grey``
    (also the lack of colour, log saturation, one-sided), ``pixel_blur_noise-m`` (also the blur ratio's low
    side, less m: fourth session, designed on 5k-noisy, tested on 5k-speckle and 3k-grain)."""
    from crlf.curate.outliers import BLUR, image_statistics, pixel_score, robust_z, statistics_distance

    stats = image_statistics(images)
    distance = statistics_distance(stats[:, :BLUR])
    shipped = pixel_score(images)
    noise = -robust_z(stats[:, BLUR])  # the blur ratio's other side: near 1 for noise, ~1.6 for a photograph
    return {"pixel": robust_z(distance), "pixel_log": robust_z(np.log(distance + 1e-6)), "pixel_blur": shipped,
            "pixel_blur_grey": np.maximum(shipped, robust_z(-np.log1p(stats[:, 0]))),
            **{f"pixel_blur_noise-{m}": np.maximum(shipped, noise - m) for m in (0, 1, 2)}}


def outlier_candidates(x: np.ndarray, sims: np.ndarray, pixels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every candidate score ``(N,)``; ``sims`` ``(N, 20)``: neighbour similarities, most similar first;
    ``pixels``: :func:`pixel_variants`. (A wide neighbourhood, the mean similarity to the nearest 1-5 % of
    the folder, scored no better than 20 neighbours on batches: dropped.)"""
    from curate import mahalanobis_score

    from crlf.curate.outliers import angle_score, local_score, robust_z

    mahal = robust_z(mahalanobis_score(x))  # the robust fit of issue 19 (trimmed, eigenvalues floored)
    global_before = robust_z(mahal + robust_z(angle_score(x)))
    c = {"shipped_before": np.maximum(global_before, robust_z(local_score(sims)) - 3.0)}
    for trim in (0.0, 0.1):
        c[f"angle_trim{trim}"] = mean_direction(x, trim)
    for k in (5, 20):
        c[f"knn{k}"] = 1.0 - sims[:, :k].mean(1)
    c["lw"] = shrunk_mahalanobis(x, "lw")  # OAS scored the same as Ledoit-Wolf to the third decimal: dropped
    angle = robust_z(c["angle_trim0.0"])
    c["angle+lw"] = angle + robust_z(c["lw"])
    c["max(angle,knn20-3)"] = np.maximum(angle, robust_z(c["knn20"]) - 3)
    # Two-sided: a batch of one plain kind of junk is a cluster far tighter than any natural class, so its
    # neighbours are abnormally *close*; a lone oddity's are abnormally far.
    for k in (5, 20):
        z = robust_z(c[f"knn{k}"])
        c[f"|knn{k}|"] = np.abs(z)
        for margin in (0.0, 1.0, 2.0):
            c[f"max(angle,|knn{k}|-{margin})"] = np.maximum(angle, np.abs(z) - margin)
    # Pixel statistics, alone and with the embedding scores.
    far20 = robust_z(c["knn20"])
    for name, p in pixels.items():
        c[name] = p
        for margin in (0.0, 2.0, 4.0, 8.0):
            c[f"max(angle,{name}-{margin})"] = np.maximum(angle, p - margin)
            c[f"max(angle,knn20-3,{name}-{margin})"] = np.maximum.reduce([angle, far20 - 3, p - margin])
        c[f"angle+{name}"] = angle + p
        for margin in (0.0, 2.0, 4.0):
            c[f"max(angle,knn20-3,{name},mahal-{margin})"] = np.maximum.reduce([angle, far20 - 3, p, mahal - margin])
    return c


def outlier_metrics(score: np.ndarray, truth: dict) -> dict:
    from sklearn.metrics import roc_auc_score

    planted = np.zeros(len(score), bool)
    planted[truth["batch"] + truth["lone"]] = True
    page = np.argsort(-score, kind="stable")[: 2 * planted.sum()]
    batch = np.zeros(len(score), bool)
    batch[truth["batch"]] = True
    out = {"auroc": float(roc_auc_score(planted, score)), "page_share": float(planted[page].mean() * 2),
           "planted": int(planted.sum())}
    if batch.any():
        out["auroc_batch"] = float(roc_auc_score(batch[~planted | batch], score[~planted | batch]))
    return out


def outlier_objective(m: dict) -> float:
    return (m["auroc"] + m["page_share"]) / 2


# ---------------------------------------------------------------------------------------------------
# Label issues


def label_truth(truth: dict, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scored rows: clean images and copies, junk left out; wrong: the given label is not the true one)."""
    true = true_labels(truth, len(labels))
    scored = true >= 0
    return scored, scored & (labels != true)


def label_candidates(probs: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    from curate_labels import margin_order

    from crlf.curate.label_issues import class_thresholds, estimated_issue_count, find_label_issues

    above = probs >= class_thresholds(probs, y)[None, :]  # the rule before issue 27: confidently of another class
    confident = np.where(above, probs, -1.0).argmax(1)
    out = {"before": np.flatnonzero(above.any(1) & (confident != y))}
    count, ranked = estimated_issue_count(probs, y), margin_order(probs, y)
    out["count_uncapped"] = ranked[:count]
    for cap in (0.05, 0.1, 0.2):
        out[f"count_cap{cap}"] = ranked[: min(count, int(cap * len(y)))]
    for share in (0.005, 0.01, 0.02):
        out[f"top{share}"] = ranked[: min(count, int(share * len(y)))]
    out["shipped"] = find_label_issues(probs, y).rows
    return out


def label_objective(m: dict) -> float:
    """F1 of the flags against the wrong labels."""
    return 2 * m["precision"] * m["recall"] / max(m["precision"] + m["recall"], 1e-9)


def label_metrics(flagged: np.ndarray, scored: np.ndarray, wrong: np.ndarray) -> dict:
    f = np.zeros(len(scored), bool)
    f[flagged] = True
    hits = int((f & wrong).sum())
    return {"flagged": int(f.sum()), "flagged_junk": int((f & ~scored).sum()), "wrong": int(wrong.sum()),
            "precision": hits / max(int((f & scored).sum()), 1), "recall": hits / max(int(wrong.sum()), 1),
            "planted_rate": float(wrong.sum() / scored.sum())}


# ---------------------------------------------------------------------------------------------------
# Duplicates: the pixel checks once per candidate pair, then every rule on the stored values


def flat_share(images: np.ndarray) -> np.ndarray:
    """Share ``(N,)`` of each image's pixels within 8 grey levels of its commonest grey level: near 1 for a
    blank frame, 0.5-0.9 for a shape on a plain ground or a document, rarely over 0.5 for a photograph."""
    grey = np.asarray(images, dtype=np.float32).mean(1).reshape(len(images), -1)  # (N, S*S)
    bins = np.clip((grey // 16).astype(np.int64), 0, 15)
    mode = np.array([np.bincount(b, minlength=16).argmax() for b in bins]) * 16 + 8
    return (np.abs(grey - mode[:, None]) <= 8).mean(1)


def duplicate_pairs(images: np.ndarray, x: np.ndarray, g, truth: dict) -> dict:
    from crlf.curate import DUP_THRESHOLD
    from crlf.curate.duplicates import candidate_pairs, exact_pairs, pixel_similarity, structure_similarity

    pairs = candidate_pairs(g.similarities, g.indices, DUP_THRESHOLD)
    exact = {tuple(p) for p in exact_pairs(images).tolist()}
    pairs = np.array([p for p in pairs.tolist() if tuple(p) not in exact], dtype=np.int64).reshape(-1, 2)
    pix = pixel_similarity(images, pairs)
    ncc, edge = np.full(len(pairs), -1.0), np.full(len(pairs), -1.0)
    passed = pix >= 0.85
    if passed.any():
        ncc[passed], edge[passed] = structure_similarity(images, pairs[passed])
    copy_pairs = {tuple(sorted(p)) for p in truth["copies"]}
    junk = np.zeros(len(x), bool)
    junk[truth["batch"] + truth["lone"]] = True
    return {"pairs": pairs, "pix": pix, "ncc": ncc, "edge": edge,
            "true": np.array([tuple(p) in copy_pairs for p in pairs.tolist()], bool),
            "junk": junk[pairs].all(1), "flat": flat_share(images)[pairs].min(1),
            "near_planted": len(truth["near"])}


def duplicate_groups(images: np.ndarray, x: np.ndarray, g, flagged: np.ndarray, truth: dict) -> dict:
    """What a user of ``crlf curate`` would remove: the shipped grouping (:func:`find_duplicates` with the
    shipped outlier flags, ``flagged``), each removal judged against the truth. A removal is *correct* when it and its
    group's kept image are a planted copy pair or copies of one source; a *junk* removal is in a group made
    only of planted junk (different images of one plain kind called copies; ``junk_identical`` of them are
    pixel for pixel the image kept, such as two blank frames of one colour: true copies); a removal in a group with no
    planted image at all is *unplanted*: CIFAR-10 has near-copies of its own that no truth lists, so those
    are not known to be wrong and count in neither direction of the upper figure."""
    from crlf.curate.duplicates import find_duplicates
    from crlf.curate.outliers import typicality

    groups = find_duplicates(x, images, g.similarities, g.indices, typicality(g.similarities), unusual=flagged)
    family = {}
    for src, copy in truth["copies"]:
        family[src] = family[copy] = src
    junk = set(truth["batch"] + truth["lone"])
    counts = {"groups": int(groups.group.max(initial=-1) + 1), "removals": 0, "correct": 0, "junk": 0,
              "junk_identical": 0, "unplanted": 0}
    for gid in np.unique(groups.group):
        rows = groups.members[groups.group == gid]
        kept = int(groups.members[(groups.group == gid) & groups.keep][0])
        planted = any(int(r) in family for r in rows)
        all_junk = all(int(r) in junk for r in rows)
        for r in rows.tolist():
            if r == kept:
                continue
            counts["removals"] += 1
            if family.get(r) is not None and family.get(r) == family.get(kept):
                counts["correct"] += 1
            elif all_junk:
                counts["junk"] += 1
                counts["junk_identical"] += int(np.array_equal(images[r], images[kept]))
            elif not planted:
                counts["unplanted"] += 1
    removals = max(counts["removals"], 1)
    counts["precision"] = counts["correct"] / removals  # every unplanted removal counted wrong: a lower bound
    counts["precision_known"] = counts["correct"] / max(counts["removals"] - counts["unplanted"], 1)
    counts["junk_groups"] = int(sum(all(int(r) in junk for r in groups.members[groups.group == gid])
                                    for gid in np.unique(groups.group)))
    return counts


MAX_PAIRS = 60_000  # candidate pairs the pixel checks are run on here (a weak encoder proposes far more on 50k)
FLAG_ZS = (2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0)


def dup_rules(d: dict, flagged: np.ndarray) -> dict[str, dict]:
    """Pair-level results of each rule: planted near pairs confirmed (recall), pairs of two different junk
    images confirmed, pairs confirmed that no truth lists (CIFAR-10's own near-copies, or mistakes)."""
    from crlf.curate import EDGE_THRESHOLD, PIXEL_THRESHOLD

    base = (d["pix"] >= PIXEL_THRESHOLD) & (d["ncc"] >= PIXEL_THRESHOLD) & (d["edge"] >= EDGE_THRESHOLD)
    is_flagged = np.zeros(int(d["pairs"].max(initial=0)) + 1, bool)
    is_flagged[flagged[flagged < len(is_flagged)]] = True
    either = is_flagged[d["pairs"]].any(1) if len(d["pairs"]) else np.zeros(0, bool)
    both = is_flagged[d["pairs"]].all(1) if len(d["pairs"]) else np.zeros(0, bool)
    rules = {"before": base, "no_flagged": base & ~either, "not_both_flagged": base & ~both}
    plain_flagged = d["flat"] >= 0.5
    if len(d["pairs"]):
        plain_flagged &= both
    rules["plain0.5_flagged_pix0.97_edge0.95"] = base & (~plain_flagged | ((d["pix"] >= 0.97) & (d["edge"] >= 0.95)))
    for flat in (0.5, 0.6, 0.7):
        for pix, edge in ((0.95, 0.9), (0.97, 0.95)):
            plain = d["flat"] >= flat
            rules[f"plain{flat}_pix{pix}_edge{edge}"] = base & (~plain | ((d["pix"] >= pix) & (d["edge"] >= edge)))
    return {name: {"near_recall": float((hit & d["true"]).sum() / max(d["near_planted"], 1)),
                   "junk_pairs": int((hit & d["junk"]).sum()), "unlisted_pairs": int((hit & ~d["true"] & ~d["junk"]).sum())}
            for name, hit in rules.items()}


def flags_and_selection(x: np.ndarray, score: np.ndarray, truth: dict, budget: int = 100) -> dict:
    from crlf.curate.outliers import flagged_outliers
    from crlf.curate.select import select

    planted = np.zeros(len(x), bool)
    planted[truth["batch"] + truth["lone"]] = True
    out = {}
    for z in FLAG_ZS:
        flags = flagged_outliers(score, 0.01, z)
        picks = select(x, budget, "typical", 0, flags)
        out[str(z)] = {"flagged": len(flags), "planted_flagged": float(planted[flags].mean() if len(flags) else 0),
                       "recall": float(planted[flags].sum() / planted.sum()),
                       "normal_flagged_share": float((~planted[flags]).sum() / (~planted).sum()),
                       "planted_in_selection": int(planted[picks].sum())}
    return out


# ---------------------------------------------------------------------------------------------------


def score_set(name: str, encoder: str, cache: Path, phase2: bool = False) -> dict:
    from crlf.curate.graph import knn_graph

    s = load_set(cache, name, encoder)
    x, truth, y = s["x"], s["truth"], s["labels"]
    t0 = time.perf_counter()
    g = knn_graph(x, 20, progress=False)
    res = {"n": len(x), "graph_s": time.perf_counter() - t0, "outliers": {}, "labels": {}}
    for cname, score in outlier_candidates(x, g.similarities, pixel_variants(s["images"])).items():
        res["outliers"][cname] = outlier_metrics(np.asarray(score, np.float64), truth)
    if phase2:
        from crlf.curate import COPY_FLAG_Z
        from crlf.curate.outliers import flagged_outliers, outlier_scores

        score = outlier_scores(x, g.similarities, s["images"])
        res["flags"] = flags_and_selection(x, score, truth)
        from crlf.curate import DUP_THRESHOLD
        from crlf.curate.duplicates import candidate_pairs

        res["duplicate_candidates"] = len(candidate_pairs(g.similarities, g.indices, DUP_THRESHOLD))
        if res["duplicate_candidates"] <= MAX_PAIRS:
            d = duplicate_pairs(np.asarray(s["images"]), x, g, truth)
            res["duplicates"] = {f"flag{z}|{rule}": m for z in FLAG_ZS
                                 for rule, m in dup_rules(d, flagged_outliers(score, 0.01, z)).items()}
        never_copies = flagged_outliers(score, 0.01, COPY_FLAG_Z)
        res["duplicate_groups"] = duplicate_groups(np.asarray(s["images"]), x, g, never_copies, truth)
    if s["probs"] is None:
        return res
    from crlf.curate.label_issues import estimated_issue_count

    scored, wrong = label_truth(truth, y)
    res["probe_accuracy"] = float((s["probs"].argmax(1) == y).mean())
    res["estimated_wrong"] = estimated_issue_count(s["probs"], y)
    for cname, rows in label_candidates(s["probs"], y).items():
        res["labels"][cname] = label_metrics(rows, scored, wrong)
    return res


def leave_one_set_out(results: dict, section: str, objective) -> dict:
    """Per held-out set: the candidate with the best mean objective over the other sets (every encoder)."""
    chosen = {}
    for held in sorted({s for s, _ in results}):
        others = [r[section] for (s, _), r in results.items() if s != held and section in r]
        means = {c: np.mean([objective(o[c]) for o in others]) for c in others[0]}
        chosen[held] = max(means, key=means.get)
    return chosen


def flag_objective(m: dict) -> float:
    """No planted image in the selection first; then as few ordinary images kept out as possible (a share
    under 1 weighs less than one planted image)."""
    return -m["planted_in_selection"] - m["normal_flagged_share"]


def duplicate_objective(m: dict) -> float:
    """Near-copy recall, less a heavy price for every pair of two different junk images called copies."""
    return m["near_recall"] - 0.05 * m["junk_pairs"]


SECTIONS = {"outliers": (outlier_objective, "AUROC {auroc:.3f}  first page {page_share:.2f} of {planted}"),
            "labels": (label_objective, "flagged {flagged} (junk {flagged_junk}) of {wrong} wrong: precision "
                                        "{precision:.3f} recall {recall:.3f}"),
            "flags": (flag_objective, "flagged {flagged}: recall {recall:.2f}, ordinary flagged "
                                      "{normal_flagged_share:.3f}, planted in the selection {planted_in_selection}"),
            "duplicates": (duplicate_objective, "near recall {near_recall:.3f}, junk pairs {junk_pairs}, "
                                                "unlisted pairs {unlisted_pairs}")}


def report(results: dict) -> dict:
    """Leave-one-set-out choice per section; each set's figures under the choice made without it, worst first."""
    out = {}
    for section, (objective, line) in SECTIONS.items():
        have = {k: r for k, r in results.items() if r.get(section)}
        # duplicates: the rule and its flag level chosen together ("flag3.5|no_flagged" ships as
        # crlf.curate.COPY_FLAG_Z and crlf.curate.duplicates.confirmed_pairs)
        if not have:
            continue
        chosen = leave_one_set_out(have, section, objective)
        rows = sorted(((objective(r[section][chosen[s]]), s, e, chosen[s], r[section][chosen[s]])
                       for (s, e), r in have.items()), key=lambda t: t[0])
        print(f"\n{section}, leave-one-set-out (worst first)")
        for _, s, e, c, m in rows:
            extra = f" (probe {have[(s, e)]['probe_accuracy']:.2f})" if section == "labels" else ""
            print(f"{s:>16} {e:>6}{extra} {c:>36}  " + line.format(**m))
        out[section] = [{"set": s, "encoder": e, "chosen": c, **m} for _, s, e, c, m in rows]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=["score", "report"])
    p.add_argument("--encoders", nargs="+", default=["weak", "strong"])
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--sets", nargs="*", default=[])
    p.add_argument("--phase2", action="store_true", help="also score the shipped outlier score's flags (the "
                   "selection) and the duplicate rules; run after the outlier score is chosen")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "curate_loso_2026-12-07.json")
    args = p.parse_args(argv)
    name = "phase2" if args.phase2 else "scores"
    if args.step == "score":
        for enc in args.encoders:
            path = args.cache / f"{name}_{enc}.json"
            done = json.loads(path.read_text()) if path.is_file() else {}
            for spec in SETS:
                if (args.sets and spec.name not in args.sets) or not (args.cache / spec.name / f"{enc}.npy").is_file():
                    continue
                t0 = time.perf_counter()
                done[spec.name] = score_set(spec.name, enc, args.cache, args.phase2)
                path.write_text(json.dumps(done))
                print(f"scored {spec.name} {enc} in {time.perf_counter() - t0:.0f} s", flush=True)
        return 0
    results = {}
    for path in sorted(args.cache.glob("scores_*.json")):
        enc = path.stem.split("_", 1)[1]
        phase2 = args.cache / f"phase2_{enc}.json"
        extra = json.loads(phase2.read_text()) if phase2.is_file() else {}
        for set_name, r in json.loads(path.read_text()).items():
            r |= {k: v for k, v in extra.get(set_name, {}).items() if k in ("flags", "duplicates", "duplicate_groups")}
            results[(set_name, enc)] = r
    out = {"per_set": {f"{s}/{e}": r for (s, e), r in results.items()}, "leave_one_set_out": report(results)}
    print("\nduplicate groups as shipped (removals: correct / junk / CIFAR-10's own, unlisted)")
    for (s, e), r in sorted(results.items()):
        if "duplicate_groups" in r:
            m = r["duplicate_groups"]
            print(f"{s:>16} {e:>8} {m['groups']} groups, {m['removals']} removals: {m['correct']} correct, {m['junk']} "
                  f"junk ({m['junk_groups']} junk groups, {m['junk_identical']} identical), {m['unplanted']} unlisted; precision {m['precision']:.3f} "
                  f"(known {m['precision_known']:.3f})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
