"""Command line: the commands, each a handler in ``COMMANDS``; the work happens in the modules they call (the
flags: :mod:`crlf.arguments`).

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
import os
import shlex
import sys
import warnings
from pathlib import Path

from crlf.arguments import TRAIN_FLAGS, Parser, build_parser, parse_set, train_overrides
from crlf.errors import Interrupted, TrainingStopped, UsageError

__all__ = ["COMMANDS", "TRAIN_FLAGS", "Parser", "build_parser", "dispatch", "main", "parse_set", "train_overrides"]

COMMAND_ENV = "CRLF_COMMAND"  # the user's command line, handed to the workers of --nproc (their argv differs)


def _pretrain(args: argparse.Namespace) -> Path:
    from crlf.config import Config, load_config
    from crlf.training.pretrain import pretrain

    overrides = train_overrides(args)
    argv = getattr(args, "argv", None)
    command = os.environ.get(COMMAND_ENV) or (f"crlf {shlex.join(argv)}" if argv is not None else None)
    resume = args.resume if args.resume is True or not args.resume else Path(args.resume)
    # A resumed run trains with its own config and these flags on top (checked together in pretrain); checked
    # alone against the defaults they could contradict them (--set train.low_res_epochs=16 with no size).
    cfg = Config() if resume and args.config is None else load_config(args.config, overrides)
    nproc = getattr(args, "nproc", None)
    if nproc is not None and nproc < 1:
        raise UsageError(f"--nproc must be >= 1 (got {nproc}).")
    if nproc and nproc > 1:
        from crlf.training.launch import launch

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


def _pretrain_command(args: argparse.Namespace) -> None:
    run_dir = _pretrain(args)
    if _rank() == 0 and not os.environ.get("CRLF_NPROC"):  # one line per job: rank 0's, or --nproc's launcher
        print(f"pretraining done; weights in {run_dir / 'encoder.safetensors'}")


def _run(args: argparse.Namespace) -> None:
    run_dir = _pretrain(args)
    if _rank() > 0:  # under torchrun: rank 0 evaluates, plots and reports
        return
    from crlf.pipeline import EvaluationSkipped

    try:
        m = _evaluate(run_dir, quiet=args.quiet)
    except EvaluationSkipped as exc:  # unlabeled data: the pretraining result stands (exit 0)
        _pretraining_only(run_dir, exc)
        return
    _plot(run_dir)
    _report(run_dir)
    budget = _budget_line(run_dir)
    print(f"done in {m['pretrain_time_s']:.0f} s pretraining{budget} + {m['eval_time_s']:.0f} s evaluation: "
          f"linear top-1 {m['linear_top1']:.2%} on {m['data']}; artefacts in {run_dir}/")


def _evaluate_command(args: argparse.Namespace) -> None:
    _evaluate(args.run_dir, args.data, args.device, args.quiet, finetune=args.finetune,
              supervised_baseline=args.supervised_baseline, finetune_epochs=args.finetune_epochs, mix=args.mix,
              eval_split=args.eval_split)


def _compare(args: argparse.Namespace) -> None:
    from crlf.reports.compare import compare_runs

    table, png = compare_runs(args.run_dirs, args.out)
    print(table)
    print(f"wrote {png}")


def _embed(args: argparse.Namespace) -> None:
    from crlf.pipeline import embed_source

    info = embed_source(args.run_dir, args.data, args.out, args.device, progress=not args.quiet)
    print(f"wrote {info['count']:,} embeddings of dimension {info['dim']} to {info['embeddings']}")


def _search(args: argparse.Namespace) -> None:
    from crlf.serve.search import search_command

    search_command(args.run_dir, args.image, args.k, args.out, args.data)


def _demo(args: argparse.Namespace) -> None:
    from crlf.serve.demo import serve

    serve(args.run_dir, args.host, args.port, args.data, args.probe)  # returns once stopped and cleaned up
    # The web server's worker threads can still be inside torch while the interpreter finalises, and a
    # C++ thread torn down under them aborts the process ("terminate called without an active
    # exception", exit -6, about one stop in four on this machine). Everything is closed and removed
    # by now: leave without the finalisation.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _curate(args: argparse.Namespace) -> None:
    from crlf.curate.command import CurateOptions, curate, summary_line

    print(summary_line(curate(args.run_dir, args.data, args.out, CurateOptions.from_args(args)), args.out))


def _classify(args: argparse.Namespace) -> None:
    from crlf.classify import classify_command

    classify_command(args.run_dir, args.labelled, args.data, args.out, args.save_probe, args.probe, args.seed,
                     args.device, progress=not args.quiet)


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
    from crlf.publish.formats import export_run

    info = export_run(args.run_dir, args.format, args.out, args.image_size)
    b, c, h, w = info["input_shape"]
    print(f"wrote {info['path']} ({info['format']}, {info['arch']}): input '{info['input']}' ({b}, {c}, {h}, {w}) "
          f"float32 normalised with mean {info['mean']} std {info['std']} -> output '{info['output']}' "
          f"({b}, {info['output_shape'][1]}); matches PyTorch at batch 1 and 3 (largest difference "
          f"{info['max_abs_diff']:.1e})")


# command -> its handler: each returns once its work is done (exit 0) or raises what main() turns into an exit code.
COMMANDS = {
    "pretrain": _pretrain_command,
    "run": _run,
    "evaluate": _evaluate_command,
    "report": lambda args: _report(args.run_dir),
    "sweep": _sweep,
    "compare": _compare,
    "plot": lambda args: _plot(args.run_dir),
    "embed": _embed,
    "search": _search,
    "demo": _demo,
    "export": _export,
    "curate": _curate,
    "classify": _classify,
}


def dispatch(args: argparse.Namespace) -> int:
    from crlf.runtime import flush_denormals

    flush_denormals()  # first thing, before torch's CPU thread pool exists (see its docstring)
    COMMANDS[args.command](args)
    return 0


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
