"""Methods at the CPU budget: every method on ResNet-18 (ImageNet stem), compared at equal pretraining time.

    python bench/methods.py calibrate [--variants ...]          # ALONE on the machine: seconds per step
    python bench/methods.py run --variants all --seeds 0 [--threads 1 --jobs 2]
    python bench/methods.py table [--variants ...]              # markdown: mean ± std over the seeds run
    python bench/methods.py throughput [--variants ...]         # ALONE: each method's step vs the bare backbone

Proxy: a class-balanced 10,000-image subset of the training split (``--limit 10000``), views of 16 px for all
epochs but the last three (32 px), as ``configs/fast-cpu.yaml`` does on the full set; the probe and kNN are
trained on the subset and scored on the full test split (``bench/ablate.py``'s quick evaluation).

Equal time, not equal epochs: ``calibrate`` times each variant's real step (its augmentation with its crops,
then ``crlf.training.step.train_step``) at 16 and 32 px on this machine, alone, with 2 threads; a method's cost is the
median over its optimiser variants (the optimiser is a few per cent of a step; single timings vary by ~15 %).
The budget is what ``simclr`` (the fast-cpu recipe) spends on 7 + 3 epochs; every variant gets the most
epochs whose calibrated cost fits that budget, in the same shape (30 % of the epochs, at least one, at 32 px,
the rest at 16 px). Because the epochs are fixed before a run starts, runs may then go side by side
(``--jobs 2 --threads 1``) without changing any result: only their wall time, which each row records next to
the calibrated one.

Each variant is ``configs/fast-cpu.yaml`` plus the overrides in ``VARIANTS`` (method, heads sized for a CPU,
optimiser); ``mae-vit_tiny`` and ``ijepa-vit_tiny`` are their own configs on ViT-Tiny, for ``throughput`` only. Results go to runs/methods/results.jsonl (one line per variant and seed; reruns skip what is done).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / "runs" / "methods"
BASE_CONFIG = "configs/fast-cpu.yaml"
LIMIT = 10_000
FULL_RES_SHARE = 0.3  # of the epochs at 32 px (at least one), as fast-cpu's 7 + 3
REFERENCE = "simclr"  # the budget: the fast-cpu recipe's 7 + 3 epochs on the proxy
REFERENCE_EPOCHS = 10

# Optimisers for a 10-epoch run: the published LARS recipes warm up for 10 of 1000 epochs; here 1 of ~10.
ADAM = {"optim": {"name": "adam", "lr": 3e-4, "weight_decay": 1e-4, "schedule": "constant", "warmup_epochs": 0}}
ADAM_COSINE = {"optim": {"name": "adam", "lr": 1e-3, "weight_decay": 1e-5, "schedule": "cosine", "warmup_epochs": 1,
                         "exclude_bias_and_norm": True}}


def lars(lr: float, weight_decay: float = 1e-5) -> dict:
    return {"optim": {"name": "lars", "lr": lr, "weight_decay": weight_decay, "schedule": "cosine",
                      "warmup_epochs": 1, "exclude_bias_and_norm": True, "lars_eta": 0.02, "lars_trust_clip": True}}


# Heads sized for this CPU: the published 2048-8192-wide projectors cost more than the backbone at 16 px.
HEADS = {
    "simclr": {"method": {"name": "simclr", "temperature": 0.07},
               "model": {"proj_hidden_dim": 256, "proj_out_dim": 64}},
    "mocov2": {"method": {"name": "mocov2", "temperature": 0.2, "queue_size": 4096, "momentum": 0.99,
                          "momentum_final": 1.0},
               "model": {"proj_hidden_dim": 1024, "proj_out_dim": 128}},
    "mocov3": {"method": {"name": "mocov3", "temperature": 0.2, "momentum": 0.99, "momentum_final": 1.0},
               "model": {"proj_hidden_dim": 1024, "proj_out_dim": 256, "proj_batchnorm": True,
                         "proj_last_batchnorm": True, "pred_hidden_dim": 1024}},
    "byol": {"method": {"name": "byol", "momentum": 0.99, "momentum_final": 1.0},
             "model": {"proj_hidden_dim": 1024, "proj_out_dim": 256, "proj_batchnorm": True, "pred_hidden_dim": 1024}},
    "simsiam": {"method": {"name": "simsiam"},
                "model": {"proj_layers": 3, "proj_hidden_dim": 1024, "proj_out_dim": 1024, "proj_batchnorm": True,
                          "proj_last_batchnorm": True, "pred_hidden_dim": 256}},
    "swav": {"method": {"name": "swav", "temperature": 0.1, "num_prototypes": 1000, "sinkhorn_epsilon": 0.05,
                        "sinkhorn_iterations": 3, "freeze_prototypes_epochs": 0.5},
             "model": {"proj_hidden_dim": 1024, "proj_out_dim": 128, "proj_batchnorm": True}},
    "vicreg": {"method": {"name": "vicreg", "sim_weight": 25.0, "var_weight": 25.0, "cov_weight": 1.0},
               "model": {"proj_layers": 3, "proj_hidden_dim": 1024, "proj_out_dim": 1024, "proj_batchnorm": True}},
    "barlowtwins": {"method": {"name": "barlowtwins", "redundancy_weight": 0.0051, "loss_scale": 0.1},
                    "model": {"proj_layers": 3, "proj_hidden_dim": 1024, "proj_out_dim": 1024,
                              "proj_batchnorm": True}},
    "dino": {"method": {"name": "dino", "temperature": 0.1, "teacher_temperature": 0.04,
                        "warmup_teacher_temperature": 0.04, "num_prototypes": 4096, "momentum": 0.99,
                        "momentum_final": 1.0, "center_momentum": 0.9, "freeze_prototypes_epochs": 0},
             "model": {"proj_layers": 3, "proj_hidden_dim": 1024, "proj_out_dim": 256}},
    "nnclr": {"method": {"name": "nnclr", "temperature": 0.1, "queue_size": 4096},
              "model": {"proj_hidden_dim": 1024, "proj_out_dim": 256, "proj_batchnorm": True,
                        "proj_last_batchnorm": True, "pred_hidden_dim": 1024}},
    "fastsiam": {"method": {"name": "fastsiam"}, "augment": {"crops": [{"count": 4}]},  # the paper's 4 views
                 "model": {"proj_layers": 3, "proj_hidden_dim": 1024, "proj_out_dim": 1024, "proj_batchnorm": True,
                           "proj_last_batchnorm": True, "pred_hidden_dim": 256}},
}
# The ViT methods train from their own configs (ViT-Tiny, AdamW, 32-px views only): they are timed against
# the bare ViT, and not part of the ResNet-18 equal-time table.
VIT_VARIANTS = {"mae-vit_tiny": ("configs/methods/mae.yaml", {"model": {"arch": "vit_tiny"}}),
                "ijepa-vit_tiny": ("configs/methods/ijepa.yaml", {"model": {"arch": "vit_tiny"}})}
# The LARS learning rates of solo-learn's CIFAR recipes (batch 256).
LARS_LR = {"simclr": 0.4, "mocov2": 0.3, "mocov3": 0.3, "byol": 1.0, "simsiam": 0.5, "swav": 0.6, "vicreg": 0.3,
           "barlowtwins": 0.3, "dino": 0.3, "nnclr": 0.4, "fastsiam": 0.5}
LOCAL_CROPS = {"augment": {"crops": [{"count": 2}, {"size": 16, "count": 4, "scale": [0.1, 0.4]}]}}


def merge(*parts: dict) -> dict:
    out: dict = {}
    for part in parts:
        for section, values in part.items():
            out.setdefault(section, {}).update(values)
    return out


def _variants() -> dict[str, dict]:
    """``<method>-<optimiser>`` for every method and optimiser, and ``...-mc``: the same plus 4 local crops."""
    variants = {}
    for name, heads in HEADS.items():
        variants[name if name == "simclr" else f"{name}-adam"] = merge(heads, ADAM)
        variants[f"{name}-adamcos"] = merge(heads, ADAM_COSINE)
        variants[f"{name}-lars"] = merge(heads, lars(LARS_LR[name]))
    for name in list(variants):
        if "augment" not in HEADS[name.split("-")[0]]:  # FastSiam's 4 views already replace the crops
            variants[f"{name}-mc"] = merge(variants[name], LOCAL_CROPS)
    variants.update({name: overrides for name, (_, overrides) in VIT_VARIANTS.items()})
    return variants


VARIANTS = _variants()


def variant_config(variant: str):
    """The variant's full config: its base config file plus its overrides."""
    from crlf.config import apply_overrides, load_config
    from crlf.training.resolution import fixed_side

    base = VIT_VARIANTS[variant][0] if variant in VIT_VARIANTS else BASE_CONFIG
    return fixed_side(apply_overrides(load_config(base), VARIANTS[variant]))  # CIFAR-10: 32 px


def view_sizes(variant: str) -> tuple[int, ...]:
    """The view sizes a variant trains at: 16 and 32 px for the fast-cpu recipe, 32 px for the ViT configs."""
    return (32,) if variant in VIT_VARIANTS else (16, 32)


# ---------------------------------------------------------------------------------------------------
# Calibration: seconds per step at each view size, alone on the machine


def time_steps(variant: str, data: str, steps: int) -> dict:
    """Child process: seconds per real step (augmentation + train_step) of ``variant`` at 16 and 32 px."""
    import torch

    from crlf.data.augment import build_augment, view_specs
    from crlf.data.sources import balanced_subset, load_dataset
    from crlf.methods.base import StepClock
    from crlf.runtime import flush_denormals
    from crlf.training.step import build_training_modules, train_step

    flush_denormals()
    cfg = variant_config(variant)
    images = torch.from_numpy(balanced_subset(load_dataset(data, 32, "error", progress=False).train, LIMIT, 0).images)
    torch.manual_seed(0)
    method, optimizer = build_training_modules(cfg, num_images=len(images))
    augment = build_augment(cfg.augment, cfg.data.image_size)
    gen = torch.Generator().manual_seed(1)
    out = {}
    for size in view_sizes(variant):
        specs = view_specs(cfg.augment, cfg.data.image_size, size)
        for i in range(2 + steps):  # 2 warm-up steps
            if i == 2:
                t0 = time.perf_counter()
            idx = torch.randint(0, len(images), (cfg.train.batch_size,), generator=gen)
            train_step(method, optimizer, augment(images[idx], gen, specs), StepClock(1.0, REFERENCE_EPOCHS))
        out[f"s{size}"] = (time.perf_counter() - t0) / steps
    return out


def time_bound(variant: str, steps: int) -> dict:
    """Child process: seconds per step of the bare backbone's forward + backward on random views of the
    variant's shapes (no augmentation, heads, loss or optimiser): the compute the method cannot avoid."""
    import torch

    from crlf.data.augment import view_specs
    from crlf.methods.base import forward_backbone
    from crlf.runtime import flush_denormals
    from crlf.training.step import build_training_modules

    flush_denormals()
    cfg = variant_config(variant)
    torch.manual_seed(0)
    backbone = build_training_modules(cfg, num_images=LIMIT)[0].backbone.train()
    out = {}
    for size in view_sizes(variant):
        views = [torch.randn(cfg.train.batch_size, 3, spec.size, spec.size)  # (B, 3, S, S) per view
                 for spec in view_specs(cfg.augment, cfg.data.image_size, size) for _ in range(spec.count)]
        for i in range(2 + steps):
            if i == 2:
                t0 = time.perf_counter()
            features = forward_backbone(backbone, views, cfg.train.channels_last)  # [(B, D)]
            backbone.zero_grad(set_to_none=True)
            sum(f.square().mean() for f in features).backward()
        out[f"s{size}"] = (time.perf_counter() - t0) / steps
    return out


def throughput(variants: list[str], data: str, steps: int) -> str:
    """Markdown: each variant's real step against the bare backbone bound, images/s at 16 and 32 px."""
    lines = ["| variant | views per image | real step, images/s (16 px / 32 px) | bare backbone fwd+bwd, images/s "
             "(16 / 32) | real / bound (16 / 32) |", "|---|---|---|---|---|"]
    for variant in variants:
        timings = []
        for command in ("time-steps", "time-bound"):
            out = subprocess.run([sys.executable, __file__, command, variant, "--data", data, "--steps", str(steps)],
                                 check=True, capture_output=True, text=True, cwd=REPO)
            timings.append(json.loads(out.stdout.strip().splitlines()[-1]))
        real, bound = timings
        rate = {k: 256 / v for k, v in real.items()}
        bound_rate = {k: 256 / v for k, v in bound.items()}
        views = sum(c.get("count", 2) for c in VARIANTS[variant].get("augment", {}).get("crops", [{"count": 2}]))

        def pair(values: dict, fmt: str) -> str:  # "16 px / 32 px"; a dash where the variant has no 16-px views
            return " / ".join(format(values[k], fmt) if k in values else "—" for k in ("s16", "s32"))

        ratio = {k: rate[k] / bound_rate[k] for k in rate}
        lines.append(f"| {variant} | {views} | {pair(rate, '.0f')} | {pair(bound_rate, '.0f')} | {pair(ratio, '.2f')} |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def calibrate(variants: list[str], data: str, steps: int) -> None:
    path = ROOT / "calibration.json"
    table = json.loads(path.read_text()) if path.is_file() else {}
    for variant in variants:
        out = subprocess.run([sys.executable, __file__, "time-steps", variant, "--data", data, "--steps", str(steps)],
                             check=True, capture_output=True, text=True, cwd=REPO)
        table[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{variant}: {table[variant]['s16'] * 1000:.0f} ms per step at 16 px, "
              f"{table[variant]['s32'] * 1000:.0f} ms at 32 px", flush=True)
        ROOT.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(table, indent=1))


def family(variant: str) -> str:
    """The method and its crops, without the optimiser: ``byol-lars-mc`` -> ``byol-mc``."""
    parts = variant.split("-")
    return "-".join([parts[0]] + (["mc"] if parts[-1] == "mc" else []))


def step_cost(variant: str, calibration: dict) -> dict[str, float]:
    """Seconds per step at 16 and 32 px: the median over the calibrated variants of the same family."""
    same = [v for v in calibration if family(v) == family(variant)] or [variant]
    return {k: statistics.median(calibration[v][k] for v in same) for k in ("s16", "s32")}


def split_epochs(epochs: int) -> tuple[int, int]:
    """(epochs at 16 px, epochs at 32 px) in fast-cpu's shape."""
    full = max(1, round(FULL_RES_SHARE * epochs))
    return epochs - full, full


def schedule(variant: str, calibration: dict) -> tuple[int, float]:
    """(epochs, calibrated seconds of training steps): the most epochs within the reference's budget."""
    steps = LIMIT // 256

    def cost(v: str, epochs: int) -> float:
        c, (low, full) = step_cost(v, calibration), split_epochs(epochs)
        return steps * (low * c["s16"] + full * c["s32"])

    budget = cost(REFERENCE, REFERENCE_EPOCHS)
    epochs = 1
    while cost(variant, epochs + 1) <= budget * 1.0001:
        epochs += 1
    return epochs, cost(variant, epochs)


# ---------------------------------------------------------------------------------------------------
# Runs


def set_flags(overrides: dict) -> list[str]:
    flags = []
    for section, values in overrides.items():
        for key, value in values.items():
            flags += ["--set", f"{section}.{key}={json.dumps(value)}"]
    return flags


def run_one(variant: str, seed: int, data: str, threads: int, calibration: dict) -> dict | None:
    results = ROOT / "results.jsonl"
    done = [json.loads(line) for line in results.read_text().splitlines()] if results.is_file() else []
    if any(r["variant"] == variant and r["seed"] == seed for r in done):
        return None
    epochs, calibrated = schedule(variant, calibration)
    run_dir = ROOT / variant / f"seed{seed}"
    cmd = [sys.executable, "-m", "crlf.cli", "pretrain", "--config", BASE_CONFIG, "--data", data, "--out", str(run_dir),
           "--limit", str(LIMIT), "--seed", str(seed), "--epochs", str(epochs), "--quiet",
           "--set", f"train.low_res_epochs={split_epochs(epochs)[0]}", "--set", "train.eval_every=0",
           "--precision", "fp32",  # as calibrated, and as the table's first rows ran (before precision: auto)
           *set_flags(VARIANTS[variant])]
    if threads:
        cmd += ["--threads", str(threads)]
    t0 = time.perf_counter()
    if not (run_dir / "encoder.safetensors").is_file():
        resume = ["--resume"] if (run_dir / "checkpoint.pt").is_file() or (run_dir / "checkpoint.prev.pt").is_file() else []
        done_run = subprocess.run(cmd + resume, cwd=REPO, capture_output=True, text=True)
        if done_run.returncode != 0:
            print(f"{variant} seed {seed}: crlf pretrain exited {done_run.returncode}: {done_run.stderr[-800:]}",
                  flush=True)
            return {"variant": variant, "seed": seed, "failed": done_run.stderr[-300:]}
    wall = time.perf_counter() - t0
    out = subprocess.run([sys.executable, str(REPO / "bench" / "ablate.py"), "--evaluate-only", str(run_dir),
                          "--threads", str(threads or 0)], check=True, capture_output=True, text=True, cwd=REPO)
    metrics = json.loads(out.stdout.strip().splitlines()[-1])
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    row = {"variant": variant, "seed": seed, "epochs": epochs, "calibrated_s": round(calibrated, 1),
           "pretrain_s": round(sum(r["epoch_time_s"] for r in history), 1), "wall_s": round(wall, 1),
           "threads": threads or "default", "linear_top1": metrics["linear_top1"], "knn_top1": metrics["knn_top1"],
           "knn_top1_k20": metrics["knn_top1_k20"], "final_loss": round(history[-1]["loss"], 4),
           "embedding_std": history[-1]["embedding_std"]}
    with open(results, "a") as handle:  # one short line per finished run; a benchmark log, not an artefact
        handle.write(json.dumps(row) + "\n")
    print(f"{variant} seed {seed}: {epochs} epochs ({calibrated:.0f} s calibrated, {row['pretrain_s']:.0f} s here): "
          f"linear {row['linear_top1']:.2%}, kNN {row['knn_top1']:.2%}", flush=True)
    return row


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def _pm(mean_std: tuple[float, float]) -> str:
    mean, std = mean_std
    return f"{mean:.2%}" if std != std else f"{mean:.2%} ± {std:.2%}"  # one seed: no spread to show


def table(variants: list[str]) -> str:
    rows = [json.loads(line) for line in (ROOT / "results.jsonl").read_text().splitlines()]
    calibration = json.loads((ROOT / "calibration.json").read_text())
    lines = ["| variant | epochs (16 px + 32 px) | calibrated pretraining | seeds | linear top-1 | kNN top-1 (k=200) |",
             "|---|---|---|---|---|---|"]
    scored = []
    for variant in variants:
        mine = [r for r in rows if r["variant"] == variant and "failed" not in r]
        if not mine:
            continue
        lin, knn = _mean_std([r["linear_top1"] for r in mine]), _mean_std([r["knn_top1"] for r in mine])
        epochs, seconds = schedule(variant, calibration)
        low, full = split_epochs(epochs)
        scored.append((lin[0], f"| {variant} | {low} + {full} | {seconds:.0f} s | {len(mine)} | {_pm(lin)} | {_pm(knn)} |"))
    return "\n".join(lines + [line for _, line in sorted(scored, reverse=True)])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["calibrate", "run", "table", "throughput", "time-steps", "time-bound", "list"])
    p.add_argument("variant", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--variants", nargs="+", default=["all"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1, help="runs side by side (use --threads 1 with --jobs 2)")
    p.add_argument("--steps", type=int, default=8, help="timed steps per view size when calibrating")
    args = p.parse_args(argv)
    timed_only = args.command in ("throughput", "time-steps", "time-bound", "list")
    variants = [v for v in VARIANTS if timed_only or v not in VIT_VARIANTS] if args.variants == ["all"] else args.variants
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    if not timed_only and set(variants) & set(VIT_VARIANTS):
        raise SystemExit(f"{sorted(set(variants) & set(VIT_VARIANTS))} are timed only (`throughput`): the "
                         "equal-time table is the ResNet-18 fast-cpu recipe's")
    if args.command == "list":
        for name, overrides in VARIANTS.items():
            print(name, " ".join(set_flags(overrides)))
    elif args.command == "time-steps":
        print(json.dumps(time_steps(args.variant, args.data, args.steps)))
    elif args.command == "time-bound":
        print(json.dumps(time_bound(args.variant, args.steps)))
    elif args.command == "throughput":
        print(throughput(variants, args.data, args.steps))
    elif args.command == "calibrate":
        calibrate(variants, args.data, args.steps)
    elif args.command == "run":
        calibration = json.loads((ROOT / "calibration.json").read_text())
        jobs = [(v, s) for s in args.seeds for v in variants]
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda job: run_one(*job, args.data, args.threads, calibration), jobs))
    else:
        print(table(variants))
    return 0


if __name__ == "__main__":
    sys.exit(main())
