"""Curation measured on CIFAR-10 (JPEG copy) with injected faults whose truth is known (issue 19); for the
planted sets of several sizes and kinds of junk scored leave-one-set-out (issue 27) see curate_sets.py and
curate_loso.py.

    python bench/curate.py --run runs/budget20 [--data ../shared/data/cifar10-jpeg.tar.gz] [--base 50000]
        [--synthetic 1000000] [--out bench/results/curate_<date>.json]
    python bench/curate.py --judge bench/results/curate_<date>.json --same-picture 0 2 3 ...

1. Builds a folder from the archive's training split (``--base`` images, class-balanced) and plants faults:
   near-copies (crop of >= 80 % of the area, horizontal flip, JPEG re-encoding at quality 60-90) and exact
   copies of some images, out-of-distribution images made here (lone ones of several kinds, and a cluster of
   60 "screenshots" of one kind), and 5 % of the other images' labels flipped (moved to another class folder).
2. Runs ``crlf curate RUN --data FOLDER --out ...`` as a subprocess (wall time, peak memory, the step times
   it records) and scores its lists against the truth: duplicate precision and recall (near and exact),
   outlier AUROC (all, lone, clustered; global and local scores alone for comparison), label-issue precision
   and recall (and a plain 20-neighbour vote for comparison), and a threshold grid for the duplicate defaults.
   CIFAR-10 has near-copies of its own, which no truth file lists: a seeded sample of the removals in groups
   without a planted image is drawn into ``<out>.unplanted.png``; ``--judge`` folds the numbers judged by eye
   to be one photograph into an estimated precision.
3. Selection: linear-probe top-1 on the CIFAR-10 test split when only the selected training images are
   labelled, 10 / 100 / 1,000 labels, typical vs diverse vs random, 5 seeds (mean +- std).
4. Scale: the neighbour graph (IVF, with its recall), outlier scores and a 1,000-image typical selection on
   ``--synthetic`` clustered 512-d embeddings, in a subprocess (time and peak memory).

Expect about 15-25 minutes on 2 CPU cores for --base 50000 (embedding 51,000 images is ~2 of them).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

NEAR, EXACT, LONE, CLUSTER, FLIP = 100, 50, 20, 60, 0.05
UNPLANTED_SAMPLE = 48  # removals in groups with no planted image, sampled for judging by eye
BUDGETS, SEEDS, STRATEGIES = (10, 100, 1000), (0, 1, 2, 3, 4), ("typical", "diverse", "random")
GRID_EMB = (0.8, 0.85, 0.9, 0.93, 0.95)  # embedding thresholds of the calibration grid (482k candidate pairs at 0.8)
GRID_PIX = (0.85, 0.9, 0.95)
GRID_EDGE = (None, 0.75, 0.8, 0.85)
PROBE_WD = 1e-3  # fixed for the selection probe: 10 labels leave nothing to choose a weight decay on


def near_copy(img: np.ndarray, rng: np.random.Generator) -> bytes:
    """HWC uint8 -> JPEG bytes of a crop of 80-100 % of the area, maybe mirrored, resized back."""
    pil = Image.fromarray(img)
    side = pil.width * np.sqrt(rng.uniform(0.8, 1.0))
    x0, y0 = rng.uniform(0, pil.width - side), rng.uniform(0, pil.height - side)
    pil = pil.crop((x0, y0, x0 + side, y0 + side)).resize(pil.size, Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        pil = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    buffer = io.BytesIO()
    pil.save(buffer, "JPEG", quality=int(rng.integers(60, 91)))
    return buffer.getvalue()


def lone_outlier(i: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """One of several kinds of junk, each different: noise, a flat frame, a gradient, a checkerboard, text."""
    kind = i % 5
    if kind == 0:
        return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    if kind == 1:
        return np.clip(rng.integers(0, 256, 3) + rng.normal(0, 3, (size, size, 3)), 0, 255).astype(np.uint8)
    if kind == 2:
        ramp = np.linspace(0, 255, size)[None, :, None] * rng.uniform(0.3, 1, 3)
        return np.broadcast_to(ramp, (size, size, 3)).astype(np.uint8)
    if kind == 3:
        cell = int(rng.integers(2, 8))
        board = (np.indices((size, size)).sum(0) // cell % 2 * 255).astype(np.uint8)
        return np.stack([board] * 3, -1)
    pil = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    ImageDraw.Draw(pil).text((1, 10), "".join(rng.choice(list("ABCXYZ0123"), 4)), fill=(0, 0, 0))
    return np.asarray(pil)


def screenshot(rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """The clustered junk, one kind: a light window with a coloured title bar and lines of dark "text",
    each with its own tint, bar colour, margins and line lengths."""
    pil = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(215, 256, 3)))
    draw = ImageDraw.Draw(pil)
    bar = int(rng.integers(3, 7))
    draw.rectangle((0, 0, size, bar), fill=tuple(int(v) for v in rng.integers(0, 200, 3)))
    left = int(rng.integers(1, 6))
    for y in range(bar + int(rng.integers(2, 5)), size - 2, int(rng.integers(3, 6))):
        draw.line((left, y, int(rng.integers(left + 4, size - 1)), y), fill=tuple(int(v) for v in rng.integers(0, 80, 3)))
    return np.asarray(pil)


def build_faulted(images: np.ndarray, labels: np.ndarray, classes: list[str], root: Path, seed: int = 0) -> dict:
    """Write the faulted folder ``root/<class>/*``; return the truth keyed by file name."""
    rng = np.random.default_rng(seed)
    n = len(images)
    hwc = images.transpose(0, 2, 3, 1)  # (N, S, S, 3)
    order = rng.permutation(n)
    near_src, exact_src = order[:NEAR], order[NEAR:NEAR + EXACT]
    flip = order[NEAR + EXACT:][: int(FLIP * (n - NEAR - EXACT))]
    given = labels.copy()
    given[flip] = (labels[flip] + rng.integers(1, len(classes), len(flip))) % len(classes)
    truth = {"family": {}, "near": [], "exact": [], "lone": [], "cluster": [], "flipped": [], "true_label": {}}
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
    flipped = set(flip.tolist())
    for i in range(n):
        name = f"{classes[given[i]]}/{i:05d}.png"
        Image.fromarray(hwc[i]).save(root / name)
        truth["true_label"][name] = classes[labels[i]]
        if i in flipped:
            truth["flipped"].append(name)
    for j, i in enumerate(near_src):
        name = f"{classes[given[i]]}/near_{j:03d}.jpg"
        (root / name).write_bytes(near_copy(hwc[i], rng))
        truth["near"].append(name)
        truth["family"][name] = truth["family"][f"{classes[given[i]]}/{i:05d}.png"] = f"f{i}"
    for j, i in enumerate(exact_src):
        name = f"{classes[given[i]]}/exact_{j:03d}.png"
        Image.fromarray(hwc[i]).save(root / name)
        truth["exact"].append(name)
        truth["family"][name] = truth["family"][f"{classes[given[i]]}/{i:05d}.png"] = f"f{i}"
    for kind, count, make in (("lone", LONE, lambda j: lone_outlier(j, rng)), ("cluster", CLUSTER, lambda j: screenshot(rng))):
        for j in range(count):
            name = f"{classes[int(rng.integers(len(classes)))]}/{kind}_{j:03d}.png"
            Image.fromarray(make(j)).save(root / name)
            truth[kind].append(name)
    truth["flipped"] = sorted(set(truth["flipped"]))
    return truth


def run_measured(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; (wall seconds, peak resident memory in GiB of the child)."""
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    wall = time.perf_counter() - t0
    return wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def score_duplicates(out: Path, truth: dict) -> dict:
    rows = read_csv(out / "duplicates.csv")
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    fam = truth["family"]
    group_of = {r["file"]: r["group"] for r in rows}
    removals = correct = 0
    unplanted, unplanted_removals = [], []
    for members in groups.values():
        kept = next(r["file"] for r in members if r["keep"] == "true")
        planted = any(m["file"] in fam for m in members)
        for r in members:
            if r["keep"] == "false":
                removals += 1
                correct += fam.get(r["file"]) is not None and fam.get(r["file"]) == fam.get(kept)
                if not planted:
                    unplanted_removals.append([kept, r["file"]])
        if not planted:
            unplanted.append([m["file"] for m in members])
    # CIFAR-10's training split has near-copies of its own (the same photo re-cropped, mirrored or
    # re-toned): a removal in a group with no planted image is not known to be wrong. A seeded sample of them
    # goes into the result and a picture, to be judged by eye (--judge).
    rng = np.random.default_rng(0)
    sample = [unplanted_removals[i] for i in sorted(rng.choice(len(unplanted_removals), min(UNPLANTED_SAMPLE,
                                                                   len(unplanted_removals)), replace=False))]

    def recall(copies):
        found = sum(1 for c in copies if c in group_of and any(
            group_of.get(f) == group_of[c] for f, v in fam.items() if v == fam[c] and f != c))
        return found / len(copies)

    return {"groups": len(groups), "removals": removals, "precision": correct / max(removals, 1),
            "recall_near": recall(truth["near"]), "recall_exact": recall(truth["exact"]),
            "unplanted_groups": len(unplanted), "unplanted_removals": len(unplanted_removals),
            "correct_planted_removals": correct, "unplanted_sample": sample}


def sample_picture(folder: Path, pairs: list[list[str]], path: Path, side: int = 64) -> None:
    """The sampled (kept, removed) pairs side by side, numbered, 8 to a row, for judging by eye."""
    cell_w, cell_h = 2 * side + 12, side + 16
    sheet = Image.new("RGB", (8 * cell_w, -(-len(pairs) // 8) * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, pair in enumerate(pairs):
        x0, y0 = (i % 8) * cell_w, (i // 8) * cell_h
        for j, name in enumerate(pair):
            image = Image.open(folder / name).convert("RGB").resize((side, side), Image.Resampling.NEAREST)
            sheet.paste(image, (x0 + j * side, y0))
        draw.text((x0, y0 + side + 2), str(i), fill="black")
    sheet.save(path)


def judge(result_path: Path, same_picture: list[int]) -> dict:
    """Fold a by-eye judgement of the unplanted sample into the result: ``same_picture`` lists the sample's
    numbers (as in its picture) whose two images are one photograph (cropped, mirrored, re-toned or
    re-encoded). Estimated precision: planted removals as the truth scores them, unplanted ones at the
    judged rate."""
    result = json.loads(result_path.read_text())
    dup = result["duplicates"]
    n = len(dup["unplanted_sample"])
    rate = len(set(same_picture)) / n
    planted_removals = dup["removals"] - dup["unplanted_removals"]
    estimate = (dup["correct_planted_removals"] + rate * dup["unplanted_removals"]) / max(dup["removals"], 1)
    dup["judged"] = {"sample": n, "same_picture": sorted(set(same_picture)), "same_picture_rate": rate,
                     "planted_group_removals": planted_removals, "estimated_precision": estimate}
    result_path.write_text(json.dumps(result, indent=1))
    return dup["judged"]


# Issue 19's robust Mahalanobis distance of the embeddings: no longer part of crlf's outlier score (issue 27:
# leave-one-set-out chose the score without it), kept here as the benchmarks' point of comparison.
TRIM = 0.10  # share of the most distant images left out of each refit of the mean and covariance
TRIM_ROUNDS = 3
EIGEN_FLOOR = 0.1  # covariance eigenvalues are floored at this share of their mean
FIT_SAMPLE = 100_000  # rows the mean and covariance are fitted on (a seeded sample of a larger set)


def _fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and whitening matrix ``(D, D)`` (eigenvectors over the square roots of the floored
    eigenvalues) of the rows ``x`` ``(n, D)``."""
    mean = x.mean(0)
    cov = np.atleast_2d(np.cov(x - mean, rowvar=False))  # (D, D)
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    eigenvalues = np.maximum(eigenvalues, EIGEN_FLOOR * max(eigenvalues.mean(), 1e-12))
    return mean, eigenvectors / np.sqrt(eigenvalues)


def _distance(x: np.ndarray, mean: np.ndarray, whiten: np.ndarray) -> np.ndarray:
    """Mahalanobis distance ``(n,)`` of rows ``x`` ``(n, D)``."""
    return np.linalg.norm((np.asarray(x, dtype=np.float64) - mean) @ whiten, axis=1)


def mahalanobis_score(embeddings: np.ndarray, seed: int = 0, chunk: int = 65_536) -> np.ndarray:
    """Robust Mahalanobis distance ``(N,)`` of each row of ``embeddings`` ``(N, D)`` (memory-mapped is fine:
    read in chunks) from the main mass of the data."""
    n = len(embeddings)
    if n < 3:  # no spread to measure against
        return np.zeros(n, dtype=np.float32)
    rows = np.arange(n) if n <= FIT_SAMPLE else np.sort(np.random.default_rng(seed).choice(n, FIT_SAMPLE, replace=False))
    sample = np.asarray(embeddings[rows], dtype=np.float64)  # (n_fit, D)
    inliers = np.ones(len(sample), dtype=bool)
    for _ in range(TRIM_ROUNDS + 1):
        mean, whiten = _fit(sample[inliers])
        distance = _distance(sample, mean, whiten)
        inliers = distance <= np.quantile(distance, 1.0 - TRIM)
    return np.concatenate([_distance(embeddings[s:s + chunk], mean, whiten)
                           for s in range(0, n, chunk)]).astype(np.float32)


def auroc(files: list[str], score: dict[str, float], positives: set[str], negatives: set[str]) -> float:
    from sklearn.metrics import roc_auc_score

    keep = [f for f in files if f in positives or f in negatives]
    return float(roc_auc_score([f in positives for f in keep], [score[f] for f in keep]))


def score_outliers(out: Path, files: list[str], x: np.ndarray, g, truth: dict) -> dict:
    from crlf.curate.outliers import angle_score, local_score, robust_z

    score = {r["file"]: float(r["score"]) for r in read_csv(out / "outliers.csv")}
    lone, cluster = set(truth["lone"]), set(truth["cluster"])
    normal = set(files) - lone - cluster
    global_score = robust_z(mahalanobis_score(x)) + robust_z(angle_score(x))  # issue 19's global score
    alone = {"global": dict(zip(files, global_score)), "local_k20": dict(zip(files, local_score(g.similarities))),
             "mahalanobis": dict(zip(files, mahalanobis_score(x))), "angle": dict(zip(files, angle_score(x)))}
    res = {"auroc_all": auroc(files, score, lone | cluster, normal), "auroc_lone": auroc(files, score, lone, normal),
           "auroc_cluster": auroc(files, score, cluster, normal)}
    for name, s in alone.items():
        res[f"auroc_all_{name}_only"] = auroc(files, s, lone | cluster, normal)
        res[f"auroc_cluster_{name}_only"] = auroc(files, s, cluster, normal)
    top = [r["file"] for r in read_csv(out / "outliers.csv")[: LONE + CLUSTER]]
    res["planted_in_top_80"] = sum(f in lone | cluster for f in top)
    return res


def score_label_issues(out: Path, files: list[str], g, given: np.ndarray, truth: dict) -> dict:
    rows = read_csv(out / "label_issues.csv")
    flipped = set(truth["flipped"])
    base = set(truth["true_label"])  # planted copies and junk are not label-issue candidates here
    flagged = {r["file"] for r in rows}
    hit = len(flagged & flipped)
    res = {"flagged": len(flagged), "flagged_base": len(flagged & base), "flipped": len(flipped),
           "precision": hit / max(len(flagged & base), 1), "recall": hit / len(flipped),
           "flagged_junk_or_copies": len(flagged - base)}
    res["suggestion_right"] = sum(truth["true_label"][r["file"]] == r["suggested"] for r in rows
                                  if r["file"] in flipped) / max(hit, 1)
    # The baseline of the issue: a plain 20-neighbour majority vote on the same embeddings.
    votes = np.apply_along_axis(lambda r: np.bincount(r, minlength=given.max() + 1).argmax(), 1, given[g.indices])
    vote_flag = {f for f, v, y in zip(files, votes, given) if v != y and f in base}
    res["knn_vote"] = {"flagged": len(vote_flag), "precision": len(vote_flag & flipped) / max(len(vote_flag), 1),
                       "recall": len(vote_flag & flipped) / len(flipped)}
    return res


def threshold_grid(files: list[str], x: np.ndarray, g, images, truth: dict) -> list[dict]:
    """Edge-level precision / recall of near-copy pairs over a grid of (embedding, pixel) thresholds."""
    from crlf.curate.duplicates import candidate_pairs, exact_pairs, pixel_similarity, structure_similarity
    pairs = candidate_pairs(g.similarities, g.indices, GRID_EMB[0])
    exact = {tuple(p) for p in exact_pairs(images).tolist()}
    pairs = np.array([p for p in pairs.tolist() if tuple(p) not in exact]).reshape(-1, 2)
    emb = np.einsum("pd,pd->p", x[pairs[:, 0]], x[pairs[:, 1]])
    pix = pixel_similarity(images, pairs, progress=True)
    fine_ncc, edge = np.full(len(pairs), -1.0), np.full(len(pairs), -1.0)
    coarse_pass = pix >= min(GRID_PIX)
    fine_ncc[coarse_pass], edge[coarse_pass] = structure_similarity(images, pairs[coarse_pass], progress=True)
    fam = truth["family"]
    true = np.array([fam.get(files[a]) is not None and fam.get(files[a]) == fam.get(files[b]) for a, b in pairs])
    planted = len(truth["near"])
    grid = []
    for t_emb in GRID_EMB:
        for t_pix in GRID_PIX:
            for t_edge in GRID_EDGE:  # None: the colour pass alone, as before the edge check
                hit = (emb >= t_emb) & (pix >= t_pix)
                if t_edge is not None:
                    hit &= (fine_ncc >= t_pix) & (edge >= t_edge)
                grid.append({"dup_threshold": t_emb, "pixel_threshold": t_pix, "edge_threshold": t_edge,
                             "pairs": int(hit.sum()), "precision_vs_planted": float(true[hit].mean()) if hit.any() else 1.0,
                             "recall_near": float(true[hit].sum() / planted)})
    grid.append({"embedding_only_quantiles_of_planted": np.quantile(emb[true], [0.1, 0.5]).round(4).tolist(),
                 "candidates_at_lowest": len(pairs)})
    return grid


def selection(train_x, train_y, test_x, test_y) -> dict:
    from crlf.curate.graph import unit
    from crlf.curate.select import select
    from crlf.evaluate import train_linear_probe

    u = unit(train_x)
    res = {}
    for budget in BUDGETS:
        for strategy in STRATEGIES:
            accs, secs = [], []
            for seed in SEEDS:
                t0 = time.perf_counter()
                picks = select(u, budget, strategy, seed)
                secs.append(time.perf_counter() - t0)
                probe = train_linear_probe(train_x[picks], train_y[picks], 10, seed=seed, weight_decays=(PROBE_WD,))
                accs.append(float((probe.logits(test_x).argmax(1).numpy() == test_y).mean()))
            res[f"{budget}/{strategy}"] = {"top1": accs, "mean": float(np.mean(accs)), "std": float(np.std(accs)),
                                           "select_s": float(np.mean(secs))}
            print(f"selection {budget:>5} labels {strategy:>8}: {np.mean(accs):.2%} ± {np.std(accs):.2%}", flush=True)
    return res


SYNTHETIC = r"""
import json, sys, time, resource
import numpy as np
sys.path.insert(0, sys.argv[3])
from crlf.curate.graph import knn_graph, unit
from crlf.curate.outliers import outlier_scores
from crlf.curate.select import select
n, out = int(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(0)
centres = unit(rng.normal(size=(100, 512)))
x = np.empty((n, 512), np.float32)
for s in range(0, n, 100_000):  # (c, 512) clustered rows, built in blocks
    c = min(100_000, n - s)
    x[s:s + c] = centres[rng.integers(100, size=c)] + 0.08 * rng.normal(size=(c, 512)).astype(np.float32)
x = unit(x)
t = {}
t0 = time.perf_counter(); g = knn_graph(x, 20, progress=False); t["neighbours_s"] = time.perf_counter() - t0
t0 = time.perf_counter(); s = outlier_scores(x, g.similarities); t["outliers_s"] = time.perf_counter() - t0
t0 = time.perf_counter(); p = select(x, 1000, "typical", 0); t["select_typical_1000_s"] = time.perf_counter() - t0
t["exact"], t["recall_at_20"] = g.exact, g.recall
t["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
json.dump(t, open(out, "w"))
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, help="a fast-cpu run folder (encoder.safetensors)")
    p.add_argument("--judge", type=Path, metavar="RESULT", help="fold a by-eye judgement into RESULT and exit")
    p.add_argument("--same-picture", type=int, nargs="*", default=[], metavar="I",
                   help="with --judge: the sample's numbers that are one photograph")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))
    p.add_argument("--base", type=int, default=50_000, help="clean training images in the faulted set")
    p.add_argument("--synthetic", type=int, default=1_000_000, help="rows of the scale test (0: skip)")
    p.add_argument("--skip-selection", action="store_true")
    p.add_argument("--selection-only", action="store_true", help="only section 3 (from the run's embeddings)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / f"curate_{time.strftime('%Y-%m-%d')}.json")
    args = p.parse_args(argv)
    if args.judge:
        print(json.dumps(judge(args.judge, args.same_picture)))
        return 0
    if args.run is None:
        p.error("--run is required (or --judge RESULT)")
    from crlf.config import load_run_config
    from crlf.curate.source import embed_images, load_images
    from crlf.data.sources import balanced_subset, load_dataset

    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save():  # after every section: a long run that is cut short keeps what it measured
        args.out.write_text(json.dumps(result, indent=1))

    cfg = load_run_config(args.run)
    ds = load_dataset(args.data, cfg.data.image_size, progress=True)
    result = {"run": str(args.run), "data": ds.description, "base": args.base, "command": " ".join(sys.argv),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if args.selection_only:
        full = load_images(args.data, cfg.data.image_size, progress=False)
        emb, reused = embed_images(args.run, full, "cpu", progress=True)
        n_train = len(full.splits[0][1])
        result["embeddings_reused_from_run"] = reused
        result["selection"] = selection(emb[:n_train], full.labels[:n_train], emb[n_train:], full.labels[n_train:])
        save()
        return 0
    work = Path(tempfile.mkdtemp(prefix="crlf-bench-curate-"))
    base = balanced_subset(ds.train, args.base, seed=0)
    folder = work / "faulted"
    t0 = time.perf_counter()
    truth = build_faulted(np.asarray(base.images), base.labels, ds.classes, folder)
    print(f"faulted folder: {sum(1 for _ in folder.rglob('*.*')):,} files in {time.perf_counter() - t0:.0f} s", flush=True)
    out = work / "curation"
    cmd = [sys.executable, "-m", "crlf", "curate", str(args.run), "--data", str(folder), "--out", str(out),
           "--select", "100", "--device", "cpu", "--quiet"]
    print(" ".join(cmd), flush=True)
    wall, peak = run_measured(cmd)
    summary = json.loads((out / "curation.json").read_text())
    result["curate"] = {"wall_s": wall, "peak_rss_gib": peak, "times_s": summary["times_s"],
                        "images": summary["images"], "label_issues": summary.get("label_issues")}
    print(f"crlf curate: {wall:.0f} s wall, peak {peak:.2f} GiB, steps {summary['times_s']}", flush=True)
    images = load_images(str(folder), cfg.data.image_size, progress=False)  # the decode cache curate filled
    x = np.load(out / "embeddings.npy", allow_pickle=False)
    files = images.files
    given = images.labels
    from crlf.curate.graph import knn_graph

    g = knn_graph(x, 20)
    result["duplicates"] = score_duplicates(out, truth)
    picture = args.out.with_suffix(".unplanted.png")
    sample_picture(folder, result["duplicates"]["unplanted_sample"], picture)
    print(f"judge the {len(result['duplicates']['unplanted_sample'])} unplanted removals in {picture}, then: "
          f"python bench/curate.py --judge {args.out} --same-picture <numbers>", flush=True)
    result["outliers"] = score_outliers(out, files, x, g, truth)
    result["label_issues"] = score_label_issues(out, files, g, given, truth)
    save()
    result["threshold_grid"] = threshold_grid(files, x, g, images.images, truth)
    for key in ("duplicates", "outliers", "label_issues"):
        print(key, json.dumps({k: v for k, v in result[key].items() if k != "unplanted_sample"}), flush=True)
    save()
    if not args.skip_selection:
        # Clean training embeddings of the whole split (the run's own, or computed) and the test split.
        full = load_images(args.data, cfg.data.image_size, progress=False)
        emb, _ = embed_images(args.run, full, "cpu", progress=True)
        n_train = len(full.splits[0][1])
        labels = full.labels
        result["selection"] = selection(emb[:n_train], labels[:n_train], emb[n_train:], labels[n_train:])
        save()
    if args.synthetic:
        script = work / "synthetic.py"
        script.write_text(SYNTHETIC)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(script), str(args.synthetic), str(work / "synthetic.json"), str(REPO / "src")],
                       check=True)
        result["synthetic"] = json.loads((work / "synthetic.json").read_text()) | {
            "rows": args.synthetic, "dim": 512, "wall_s": time.perf_counter() - t0}
        print("synthetic", result["synthetic"], flush=True)
    save()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
