"""data.image_size: auto on folders of several sizes: what it picks and how long the choice takes; and at
equal time, auto against 32 px and the native size on a folder with detail above 32 px (issue 26).

    python bench/resolution.py choice [--out bench/results/resolution_choice_<date>.json]
    python bench/resolution.py mosaics --root runs/mosaics [--count 8000]
    python bench/resolution.py equal-time --root runs/mosaics --budget 4 [--sides auto 32 64]

``choice`` writes folders of 1,000 noise images (28, 32, 64, 160x120, 512 and a mix of 3000x2000 and
640x480 photos' shapes) and runs the survey and the rule as ``crlf pretrain`` does, by epochs on a CPU and on
a GPU (the rule only: no GPU step is timed), and under ``--budget 20`` on this CPU (steps timed here).

``mosaics`` makes a folder whose classes need more than 32 px: each image is a 2x2 mosaic of CIFAR-10
(JPEG copy) training images, 64x64 px, labelled with the class of its top-left tile; the other three
tiles are random images (``--grid 3``: 3x3 tiles, 96 px, the centre tile decides: a second set, to choose
the rule's constant on while the 2x2 set reports). At 32 px the tile that decides is 16 px; at 64 px it is CIFAR's own 32 px. The
folder has no test split, so the runs are evaluated on the seeded 20 % hold-out (``--eval-split``).

``equal-time`` runs ``crlf run --config configs/fast-cpu.yaml --budget B`` on it once per side (``auto``
and explicit sizes), one after the other, and prints each run's linear top-1 on the hold-out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
DATA = str(REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz")

SHAPES = {"28px": [(28, 28)], "32px": [(32, 32)], "64px": [(64, 64)], "160x120": [(160, 120)],
          "512px": [(512, 512)], "photos-mixed": [(3000, 2000), (640, 480), (2000, 3000), (1024, 768)]}


def write_noise_folder(root: Path, shapes: list[tuple[int, int]], count: int = 1_000) -> Path:
    rng = np.random.default_rng(0)
    for i in range(count):
        w, h = shapes[i % len(shapes)]
        folder = root / f"class{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 255, (max(1, h // 8), max(1, w // 8), 3), dtype=np.uint8)  # cheap to write
        Image.fromarray(small).resize((w, h)).save(folder / f"{i:04d}.jpg", quality=80)
    return root


def choice(args) -> None:
    import torch

    from crlf.config import apply_overrides, load_config
    from crlf.runtime import hardware_description
    from crlf.training.progress import Progress
    from crlf.training.resolution import resolve_image_size

    base = load_config(REPO / "configs" / "fast-cpu.yaml")
    rows = []
    for name, shapes in SHAPES.items():
        root = args.root / name
        if not root.exists():
            write_noise_folder(root, shapes)
        for device, budget in (("cpu", None), ("cuda", None), ("cpu", 20.0)):
            cfg = apply_overrides(base, {"data": {"source": str(root)}, "train": {"budget_minutes": budget}})
            lines: list[str] = []
            t0 = time.perf_counter()
            resolved = resolve_image_size(cfg, torch.device(device), Progress(), num_images=lambda s: s.files,
                                          log=lines.append)
            took = time.perf_counter() - t0
            row = {"folder": name, "device rule": device, "budget_min": budget, "side": resolved.cfg.data.image_size,
                   "low_side": resolved.choice.low_side, "seconds": round(took, 2),
                   "probe_s": round(resolved.probe.probe_s, 1) if resolved.probe else 0.0, "line": lines[-1]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = {"hardware": hardware_description(torch.device("cpu")), "date": time.strftime("%Y-%m-%d"), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")


def mosaics(args) -> None:
    from crlf.data.sources import load_dataset

    train = load_dataset(args.data, 32, progress=True).train  # (N, 3, 32, 32) uint8
    rng = np.random.default_rng(args.grid)
    names = sorted(set(train.labels.tolist()))
    g = args.grid
    decides = 0 if g == 2 else (g * g) // 2  # 2x2: the top-left tile; 3x3: the centre one
    for i in range(args.count):
        tiles = rng.choice(len(train), g * g, replace=False)
        pic = np.zeros((3, 32 * g, 32 * g), np.uint8)
        for k, t in enumerate(tiles):
            pic[:, 32 * (k // g): 32 * (k // g + 1), 32 * (k % g): 32 * (k % g + 1)] = train.images[t]
        folder = args.root / f"class{names.index(int(train.labels[tiles[decides]]))}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pic.transpose(1, 2, 0)).save(folder / f"{i:05d}.png")
    print(f"wrote {args.count} mosaics of {32 * g}x{32 * g} px in {args.root}")


def equal_time(args) -> None:
    results = []
    for side in args.sides:
        out = args.runs / f"side-{side}"
        cmd = [sys.executable, "-m", "crlf", "run", "--config", "configs/fast-cpu.yaml", "--data", str(args.root),
               "--budget", str(args.budget), "--out", str(out), "--quiet"]
        if side != "auto":
            cmd += ["--set", f"data.image_size={side}"]
            if args.scaled:  # the recipe as auto would scale it at this side (fast-cpu: low side = half)
                cmd += ["--set", f"train.low_res_size={int(side) // 2}"]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if done.returncode:
            print(done.stdout[-2000:], done.stderr[-2000:])
            raise SystemExit(done.returncode)
        metrics = json.loads((out / "metrics.json").read_text())
        meta = json.loads((out / "config.json").read_text())
        row = {"side": side, "trained_at": meta["image_size"], "linear_top1": metrics.get("linear_top1"),
               "knn_top1": metrics.get("knn_top1"), "budget": meta.get("budget", {}).get("plan", {}).get("description"),
               "wall_s": round(wall, 1), "split": metrics.get("evaluation_split", {}).get("kind")}
        results.append(row)
        print(json.dumps(row), flush=True)
    (args.runs / "equal_time.json").write_text(json.dumps(results, indent=1) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=["choice", "mosaics", "equal-time"])
    p.add_argument("--root", type=Path, default=REPO / "runs" / "resolution")
    p.add_argument("--data", default=DATA)
    p.add_argument("--count", type=int, default=8_000)
    p.add_argument("--grid", type=int, default=2, choices=[2, 3], help="mosaics: 2x2 (64 px) or 3x3 (96 px)")
    p.add_argument("--scaled", action="store_true", help="equal-time: explicit sides with the recipe scaled as auto does")
    p.add_argument("--budget", type=float, default=4.0)
    p.add_argument("--sides", nargs="+", default=["auto", "32", "64"])
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "resolution_runs")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / f"resolution_choice_{time.strftime('%Y-%m-%d')}.json")
    args = p.parse_args(argv)
    {"choice": choice, "mosaics": mosaics, "equal-time": equal_time}[args.step](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
