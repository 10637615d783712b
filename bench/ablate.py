"""Recipe ablation: one `crlf pretrain` per lever, then the headline evaluation (linear probe + kNN) only.

    python bench/ablate.py --name NAME [--threads 1] -- [crlf pretrain flags...]
    e.g. python bench/ablate.py --name bs128 -- --config configs/fast-cpu.yaml --limit 10000 --batch-size 128

Writes the run to runs/ablate/NAME and appends one JSON line (flags, pretraining seconds, linear and kNN
top-1) to runs/ablate/results.jsonl; prints one markdown row. The evaluation is the same linear probe and
kNN as `crlf evaluate` (probe trained on the run's training subset, scored on the full test split), without
the slower extras, so one ablation costs its pretraining plus ~15 s. Two ablations may run side by side with
`--threads 1` each (the machine then does ~8 % more work in total than one 2-thread run; the wall times of
such rows are ~2x, marked in the row): never mix a 2-thread run with anything else.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def quick_evaluate(run_dir: Path) -> dict:
    from crlf.config import load_run_config
    from crlf.data.sources import balanced_subset, load_dataset
    from crlf.evaluate import evaluate_features, extract_features, freeze
    from crlf.models.backbones import load_encoder

    cfg = load_run_config(run_dir)
    encoder = freeze(load_encoder(run_dir))
    dataset = load_dataset(cfg.data.source, cfg.data.image_size, cfg.data.on_bad_image, progress=False)
    train = balanced_subset(dataset.train, cfg.data.limit, seed=cfg.train.seed)
    mean, std = cfg.augment.mean, cfg.augment.std
    device = next(encoder.parameters()).device
    train_x = extract_features(encoder, train.images, mean, std, device, progress=False)
    test_x = extract_features(encoder, dataset.test.images, mean, std, device, progress=False)
    metrics, _ = evaluate_features(train_x, train.labels, test_x, dataset.test.labels, dataset.classes,
                                   cfg.eval.knn_k, cfg.eval.knn_temperature, cfg.eval.linear_max_iter, cfg.train.seed)
    return metrics


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name")
    p.add_argument("--evaluate-only", type=Path, metavar="RUN",
                   help="only the quick evaluation of RUN, printed as one JSON line (bench/methods.py uses it)")
    p.add_argument("--threads", type=int, default=0, help="torch threads for this ablation (0: default)")
    p.add_argument("--root", type=Path, default=REPO / "runs" / "ablate")
    p.add_argument("--runner", type=Path, help="a script that runs the crlf CLI with a lever patched in "
                                              "(e.g. bench/stem_lever.py); default: crlf itself")
    p.add_argument("flags", nargs=argparse.REMAINDER, help="-- then crlf pretrain flags")
    args = p.parse_args(argv)
    if args.evaluate_only:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        m = quick_evaluate(args.evaluate_only)
        print(json.dumps({k: round(m[k], 4) for k in ("linear_top1", "knn_top1", "knn_top1_k20")}))
        return 0
    if not args.name:
        p.error("--name is required")
    flags = [f for f in args.flags if f != "--"] if args.flags[:1] == ["--"] else args.flags
    run_dir = args.root / args.name
    runner = [str(args.runner)] if args.runner else ["-m", "crlf.cli"]
    cmd = [sys.executable, *runner, "pretrain", *flags, "--out", str(run_dir), "--quiet"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    t0 = time.perf_counter()
    if not (run_dir / "encoder.safetensors").is_file():
        subprocess.run(cmd, check=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    metrics = quick_evaluate(run_dir)
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    row = {"name": args.name, "flags": shlex.join(flags), "runner": str(args.runner or "crlf"),
           "threads": args.threads or "default",
           "pretrain_s": round(sum(r["epoch_time_s"] for r in history), 1), "wall_s": round(wall, 1),
           "linear_top1": round(metrics["linear_top1"], 4), "knn_top1": round(metrics["knn_top1"], 4),
           "knn_top1_k20": round(metrics["knn_top1_k20"], 4), "final_loss": round(history[-1]["loss"], 4)}
    args.root.mkdir(parents=True, exist_ok=True)
    with open(args.root / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(f"| {row['name']} | `{row['flags']}` | {row['pretrain_s']:.0f} s | {row['linear_top1']:.2%} | "
          f"{row['knn_top1']:.2%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
