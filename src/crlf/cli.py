"""Command line: argument parsing only; the work happens in the modules it calls.

    crlf run       --config configs/seed.yaml --data cifar10 --out runs/r1       # pretrain + evaluate + plot + report
    crlf pretrain  --config configs/seed.yaml --data ../shared/data/cifar10-jpeg.tar.gz --out runs/seed
    crlf pretrain  --nproc 4 ...          # 4 processes on this machine (= torchrun --nproc-per-node 4 -m crlf pretrain ...)
    crlf evaluate  runs/r1 [--finetune] [--supervised-baseline]                 # the last two: slow on a CPU
    crlf report    runs/r1                                                      # -> runs/r1/report.html
    crlf sweep     --config configs/seed.yaml --seeds 0 1 2 --out runs/sweep      # mean ± std over seeds
    crlf compare   runs/a runs/b --out compare.png                              # table + overlaid curves
    crlf plot      runs/r1
    crlf embed     runs/r1 --data my_images/ --out emb.npy
    crlf search    runs/r1 photo.jpg --k 8 --out grid.png
    crlf demo      runs/r1 [--host 127.0.0.1] [--port 7860] [--probe FILE]     # needs: pip install -e '.[demo]'
    crlf export    runs/r1 --format onnx|torchscript --out encoder.onnx         # onnx needs: pip install -e '.[export]'
    crlf curate    runs/r1 --data my_images/ --out curation --select 100        # duplicates, outliers, what to label
    crlf classify  runs/r1 --labelled labelled/ --data my_images/ --out predictions.csv

Exit codes: 0 done, 1 training stopped (non-finite loss, out of memory), 2 bad input,
130 / 143 interrupted by SIGINT / SIGTERM after writing a checkpoint.
"""

from __future__ import annotations

import argparse
import difflib
import os
import shlex
import sys
import warnings
from pathlib import Path

from crlf.curate.arguments import add_classify, add_curate
from crlf.errors import Interrupted, TrainingStopped, UsageError

# flag -> (config section, key)
TRAIN_FLAGS = {
    "data": ("data", "source"),
    "limit": ("data", "limit"),
    "on_bad_image": ("data", "on_bad_image"),
    "backend": ("augment", "backend"),
    "epochs": ("train", "epochs"),
    "batch_size": ("train", "batch_size"),
    "lr": ("optim", "lr"),
    "temperature": ("method", "temperature"),
    "device": ("train", "device"),
    "seed": ("train", "seed"),
    "threads": ("train", "threads"),
    "precision": ("train", "precision"),
    "budget": ("train", "budget_minutes"),
    "eval_every": ("train", "eval_every"),
    "checkpoint_every_steps": ("train", "checkpoint_every_steps"),
}


class Parser(argparse.ArgumentParser):
    """argparse that exits 2 with a "did you mean" for unknown flags, and no prefix-guessing of flags."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_args(self, args=None, namespace=None):
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            parser = getattr(parsed, "_parser", self)
            options = [o for action in parser._actions for o in action.option_strings]
            flag = unknown[0].split("=")[0]
            close = difflib.get_close_matches(flag, options, n=1, cutoff=0.6)
            hint = f" Did you mean '{close[0]}'?" if close else f" See: crlf {getattr(parsed, 'command', '')} --help"
            raise UsageError(f"unrecognised argument '{unknown[0]}'.{hint}")
        return parsed


def _add_train_flags(p: argparse.ArgumentParser, with_out: bool = True) -> None:
    p.add_argument("--config", type=Path, help="YAML config, e.g. configs/seed.yaml (the reference recipe)")
    p.add_argument("--data", help="cifar10 | cifar100 | stl10 | tinyimagenet | image folder | .tar/.tar.gz/.zip "
                                  "archive of one | stl10_binary/, cifar-100-python/ or tiny-imagenet-200/ folder")
    if with_out:
        p.add_argument("--out", type=Path, default=Path("runs/latest"), help="run folder (default: runs/latest)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--temperature", type=float,
                   help="method.temperature, for the methods that have one (simclr, mocov2, mocov3, swav, dino, "
                        "nnclr); any other method: an error")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--seed", type=int)
    p.add_argument("--limit", type=int, help="class-balanced subset of N training images")
    p.add_argument("--backend", choices=["tensor", "pil"], help="augmentation backend")
    p.add_argument("--precision", choices=["fp32", "bf16", "auto"],
                   help="auto: on a CPU, time fp32 and bf16 (with and without channels_last) and use the fastest; "
                        "bf16 on a GPU that has it")
    p.add_argument("--budget", type=float, metavar="MINUTES",
                   help="plan pretraining to end within MINUTES of wall time (epochs, resolution split, schedules)")
    p.add_argument("--threads", type=int, help="torch CPU threads (0: torch's default)")
    p.add_argument("--eval-every", type=int, help="online kNN monitor every N epochs (0: off)")
    p.add_argument("--checkpoint-every-steps", type=int, help="also checkpoint every N steps within an epoch")
    p.add_argument("--on-bad-image", choices=["error", "skip"], help="stop at a bad image (default) or skip it")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue the run in --out (or from this checkpoint file)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="set_keys",
                   help="any config key, e.g. --set augment.blur_p=0 --set optim.schedule=cosine (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> Parser:
    parser = Parser(prog="crlf", description="Contrastive Representation Learning Framework (SimCLR).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, help_text in (("pretrain", "pretrain an encoder without labels"),
                            ("run", "pretrain, evaluate and plot: the whole job")):
        p = sub.add_parser(name, help=help_text)
        _add_train_flags(p)
        p.add_argument("--nproc", type=int, metavar="N",
                       help="pretrain in N processes on this machine, one per GPU (DistributedDataParallel through "
                            "torch's elastic launcher, as torchrun); --batch-size stays the global batch")
        p.set_defaults(_parser=p)
    p = sub.add_parser(
        "evaluate", help="linear probe, kNN, label efficiency, few-shot, retrieval, clustering -> metrics.json",
        description="Frozen-feature evaluation of a run. Default (about 3 minutes for CIFAR-10 on 2 CPU cores): "
                    "linear probe, kNN, linear probe on 1/10/100 %% of the labels, 5-way 1/5-shot episodes, "
                    "retrieval recall@k and mAP, k-means NMI/ARI, protocol checks. EXPENSIVE opt-ins (they "
                    "train whole networks, 3 label fractions each; hours on a CPU for CIFAR-10): "
                    "--finetune and --supervised-baseline.")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--data", help="evaluate on another copy of the same data")
    p.add_argument("--device")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--finetune", action="store_true",
                   help="EXPENSIVE: also fine-tune the whole encoder on 1/10/100 %% of the labels")
    p.add_argument("--supervised-baseline", action="store_true",
                   help="EXPENSIVE: also train the same network from scratch on 1/10/100 %% of the labels")
    p.add_argument("--finetune-epochs", type=int, default=5,
                   help="epochs per label fraction for --finetune / --supervised-baseline (default 5)")
    p.add_argument("--mix", choices=["none", "mixup", "cutmix", "both"], default="both",
                   help="MixUp / CutMix for --finetune / --supervised-baseline (default both: one per batch)")
    p.set_defaults(_parser=p)
    p = sub.add_parser("report", help="one self-contained page of a run -> DIR/report.html")
    p.add_argument("run_dir", type=Path)
    p.set_defaults(_parser=p)
    p = sub.add_parser("sweep", help="the same run once per seed, then mean ± std of every metric",
                       description="Runs `crlf run` once per seed into DIR/seed<N> (seeds already done are "
                                   "skipped), then writes DIR/sweep.json and prints a mean ± std table.")
    _add_train_flags(p, with_out=False)
    p.add_argument("--seeds", type=int, nargs="+", required=True, help="e.g. --seeds 0 1 2")
    p.add_argument("--out", type=Path, required=True, help="sweep folder (one sub-folder per seed)")
    p.set_defaults(_parser=p)
    p = sub.add_parser("compare", help="metrics of several runs side by side + overlaid loss / kNN curves")
    p.add_argument("run_dirs", type=Path, nargs="+")
    p.add_argument("--out", type=Path, default=Path("compare.png"), help="curves .png (default compare.png)")
    p.set_defaults(_parser=p)
    p = sub.add_parser("plot", help="loss curve, PCA, t-SNE and confusion matrix PNGs of a run")
    p.add_argument("run_dir", type=Path)
    p.set_defaults(_parser=p)
    p = sub.add_parser("embed", help="frozen-encoder features of any images -> .npy")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--data", required=True, help="image folder or archive, or any --data of crlf pretrain")
    p.add_argument("--out", type=Path, required=True, help="output .npy")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(_parser=p)
    p = sub.add_parser("search", help="the training images nearest to an image (table + picture grid)")
    p.add_argument("run_dir", type=Path)
    p.add_argument("image", type=Path)
    p.add_argument("--k", type=int, default=8, help="how many neighbours (default 8)")
    p.add_argument("--out", type=Path, default=Path("grid.png"), help="picture grid .png (default grid.png)")
    p.add_argument("--data", help="another copy of the run's data, if it has moved")
    p.set_defaults(_parser=p)
    p = sub.add_parser("demo", help="web demo of a finished run (needs: pip install -e '.[demo]')")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--data", help="another copy of the run's data, if it has moved")
    p.add_argument("--probe", type=Path, metavar="FILE",
                   help="serve the classes of a probe saved by crlf classify --save-probe")
    p.set_defaults(_parser=p)
    p = sub.add_parser("export", help="the encoder as one ONNX or TorchScript file (dynamic batch), no CRLF needed",
                       description="Exports the run's encoder in eval mode: input (B, 3, S, S) float32 normalised "
                                   "with the run's mean and std (config.json), output (B, D) features; the batch "
                                   "axis is dynamic. The file is checked against PyTorch at batch 1 and 3 before "
                                   "it is written.")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--format", required=True, choices=["onnx", "torchscript"],
                   help="onnx (needs: pip install -e '.[export]') or torchscript")
    p.add_argument("--out", type=Path, help="output file (default: RUN/encoder.onnx or RUN/encoder.torchscript.pt)")
    p.add_argument("--image-size", type=int, help="input side S in pixels (default: the run's data.image_size)")
    p.set_defaults(_parser=p)
    add_curate(sub)
    add_classify(sub)
    return parser


def train_overrides(args: argparse.Namespace) -> dict:
    """Config overrides from the dedicated flags, then from ``--set`` (which wins)."""
    overrides: dict = {}
    for flag, (section, key) in TRAIN_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides.setdefault(section, {})[key] = value
    for item in getattr(args, "set_keys", None) or []:
        section, key, value = parse_set(item)
        overrides.setdefault(section, {})[key] = value
    return overrides


def parse_set(item: str) -> tuple[str, str, object]:
    """``"augment.crop_scale=[0.3, 1]"`` -> ``("augment", "crop_scale", [0.3, 1])``; the value is read as YAML."""
    import yaml

    name, sep, text = item.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not section or not key:
        raise UsageError(f"--set takes SECTION.KEY=VALUE (e.g. --set optim.lr=0.001), got '{item}'.")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise UsageError(f"--set {name}: '{text}' is not a valid value (YAML: a number, true/false, a word or "
                         f"a list like [0.2, 1.0]).") from None
    return section, key, value


COMMAND_ENV = "CRLF_COMMAND"  # the user's command line, handed to the workers of --nproc (their argv differs)


def _pretrain(args: argparse.Namespace) -> Path:
    from crlf.config import load_config
    from crlf.train import pretrain

    overrides = train_overrides(args)
    argv = getattr(args, "argv", None)
    command = os.environ.get(COMMAND_ENV) or (f"crlf {shlex.join(argv)}" if argv is not None else None)
    resume = args.resume if args.resume is True or not args.resume else Path(args.resume)
    cfg = load_config(args.config, overrides)
    nproc = getattr(args, "nproc", None)
    if nproc is not None and nproc < 1:
        raise UsageError(f"--nproc must be >= 1 (got {nproc}).")
    if nproc and nproc > 1:
        from crlf.launch import launch

        if not args.resume and cfg.train.batch_size % nproc:  # a resumed run's batch size is its checkpoint's
            raise UsageError(f"train.batch_size={cfg.train.batch_size} is the global batch and must divide evenly "
                             f"over --nproc {nproc}; use a multiple of {nproc}.")
        os.environ[COMMAND_ENV] = command or ""
        try:
            launch(main, args.argv, nproc, args.out)
        finally:
            os.environ.pop(COMMAND_ENV, None)
        return args.out
    return pretrain(cfg, args.out, resume=resume, progress=not args.quiet, cli_overrides=overrides, command=command)


def _evaluate(run_dir: Path, data=None, device=None, quiet=False, **opt_in) -> dict:
    from crlf.pipeline import evaluate_run

    m = evaluate_run(run_dir, data=data, device=device, progress=not quiet, **opt_in)
    print(f"linear top-1 {m['linear_top1']:.2%} | kNN top-1 (k={m['knn']['k']}) {m['knn_top1']:.2%} | "
          f"kNN top-1 (k=20) {m['knn_top1_k20']:.2%} on {m['data']} "
          f"({m['num_train']:,} train / {m['num_test']:,} test images); metrics in {run_dir / 'metrics.json'}")
    return m


def _pretraining_only(run_dir: Path, why: Exception) -> None:
    from crlf.pipeline import plot_pretraining

    print(f"crlf: evaluation skipped: {why}", file=sys.stderr)
    for path in plot_pretraining(run_dir):
        print(f"wrote {path}")
    print(f"pretraining done; weights in {run_dir / 'encoder.safetensors'} (no metrics, plots of embeddings or "
          f"report.html: they need labels)")


def _plot(run_dir: Path) -> None:
    from crlf.plots import plot_run

    for path in plot_run(run_dir):
        print(f"wrote {path}")


def _report(run_dir: Path) -> None:
    from crlf.reports.report import write_report

    print(f"wrote {write_report(run_dir)}")


def _sweep(args: argparse.Namespace) -> None:
    from crlf.reports.sweep import write_sweep

    if args.seed is not None:
        raise UsageError("crlf sweep takes --seeds (several), not --seed.")
    if args.resume:
        raise UsageError("crlf sweep resumes by itself: seeds with a metrics.json are skipped; drop --resume.")
    if len(set(args.seeds)) != len(args.seeds):
        raise UsageError(f"--seeds has repeats: {args.seeds}.")
    run_dirs = []
    for seed in args.seeds:
        run_dir = args.out / f"seed{seed}"
        run_dirs.append(run_dir)
        if (run_dir / "metrics.json").is_file():
            print(f"seed {seed}: already done in {run_dir}, skipped")
            continue
        print(f"seed {seed}: crlf run --out {run_dir}")
        dispatch(argparse.Namespace(**{**vars(args), "command": "run", "seed": seed, "out": run_dir}))
    path, table = write_sweep(args.out, run_dirs, args.seeds)
    print(table)
    print(f"wrote {path}")


def dispatch(args: argparse.Namespace) -> int:
    from crlf.runtime import flush_denormals

    flush_denormals()  # first thing, before torch's CPU thread pool exists (see its docstring)
    if args.command == "pretrain":
        run_dir = _pretrain(args)
        if _rank() == 0 and not os.environ.get("CRLF_NPROC"):  # one line per job: rank 0's, or --nproc's launcher
            print(f"pretraining done; weights in {run_dir / 'encoder.safetensors'}")
    elif args.command == "run":
        run_dir = _pretrain(args)
        if _rank() > 0:  # under torchrun: rank 0 evaluates, plots and reports
            return 0
        from crlf.pipeline import EvaluationSkipped

        try:
            m = _evaluate(run_dir, quiet=args.quiet)
        except EvaluationSkipped as exc:  # unlabeled data: the pretraining result stands (exit 0)
            _pretraining_only(run_dir, exc)
            return 0
        _plot(run_dir)
        _report(run_dir)
        budget = _budget_line(run_dir)
        print(f"done in {m['pretrain_time_s']:.0f} s pretraining{budget} + {m['eval_time_s']:.0f} s evaluation: "
              f"linear top-1 {m['linear_top1']:.2%} on {m['data']}; artefacts in {run_dir}/")
    elif args.command == "evaluate":
        _evaluate(args.run_dir, args.data, args.device, args.quiet, finetune=args.finetune,
                  supervised_baseline=args.supervised_baseline, finetune_epochs=args.finetune_epochs, mix=args.mix)
    elif args.command == "report":
        _report(args.run_dir)
    elif args.command == "sweep":
        _sweep(args)
    elif args.command == "compare":
        from crlf.reports.compare import compare_runs

        table, png = compare_runs(args.run_dirs, args.out)
        print(table)
        print(f"wrote {png}")
    elif args.command == "plot":
        _plot(args.run_dir)
    elif args.command == "embed":
        from crlf.pipeline import embed_source

        info = embed_source(args.run_dir, args.data, args.out, args.device, progress=not args.quiet)
        print(f"wrote {info['count']:,} embeddings of dimension {info['dim']} to {info['embeddings']}")
    elif args.command == "search":
        from crlf.search import search_command

        search_command(args.run_dir, args.image, args.k, args.out, args.data)
    elif args.command == "demo":
        from crlf.demo import serve

        serve(args.run_dir, args.host, args.port, args.data, args.probe)  # returns once stopped and cleaned up
        # The web server's worker threads can still be inside torch while the interpreter finalises, and a
        # C++ thread torn down under them aborts the process ("terminate called without an active
        # exception", exit -6, about one stop in four on this machine). Everything is closed and removed
        # by now: leave without the finalisation.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    elif args.command == "export":
        _export(args)
    elif args.command == "curate":
        from crlf.curate.command import CurateOptions, curate, summary_line

        print(summary_line(curate(args.run_dir, args.data, args.out, CurateOptions.from_args(args)), args.out))
    elif args.command == "classify":
        from crlf.classify import classify_command

        classify_command(args.run_dir, args.labelled, args.data, args.out, args.save_probe, args.probe, args.seed,
                         args.device, progress=not args.quiet)
    return 0


def _budget_line(run_dir: Path) -> str:
    """`` (19.8 min of a 20-min budget, probe and checkpoints included)`` for a run with --budget, else ''."""
    import json

    path = run_dir / "budget_plan.json"
    if not path.is_file():
        return ""
    record = json.loads(path.read_text())
    return (f" ({record['spent_s'] / 60:.1f} min of a {record['budget_minutes']:g}-min budget, precision probe and "
            f"checkpoints included)")


def _export(args: argparse.Namespace) -> None:
    from crlf.export_formats import export_run

    info = export_run(args.run_dir, args.format, args.out, args.image_size)
    b, c, h, w = info["input_shape"]
    print(f"wrote {info['path']} ({info['format']}, {info['arch']}): input '{info['input']}' ({b}, {c}, {h}, {w}) "
          f"float32 normalised with mean {info['mean']} std {info['std']} -> output '{info['output']}' "
          f"({b}, {info['output_shape'][1]}); matches PyTorch at batch 1 and 3 (largest difference "
          f"{info['max_abs_diff']:.1e})")


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise)."""
    return int(os.environ.get("RANK") or 0) if int(os.environ.get("WORLD_SIZE") or 1) > 1 else 0


def main(argv: list[str] | None = None) -> int:
    prog = f"crlf (rank {_rank()})" if _rank() else "crlf"  # several processes: say which one speaks
    warnings.formatwarning = lambda msg, cat, *a, **k: f"{prog}: warning: {msg}\n"
    try:
        args = build_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # --nproc starts workers with the same flags
        return dispatch(args)
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except TrainingStopped as exc:
        print(f"{prog}: training stopped: {exc}", file=sys.stderr)
        return 1
    except Interrupted as exc:
        if str(exc):  # empty: the workers of --nproc already said why
            print(f"{prog}: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # a full disk or unwritable folder: the message names the path, nothing was replaced
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("crlf: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:  # argparse's own usage errors (exit 2) and --help (exit 0)
        return exc.code if isinstance(exc.code, int) else 2


if __name__ == "__main__":
    sys.exit(main())
