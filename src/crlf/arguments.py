"""The flags of every ``crlf`` command: the parser, and the config overrides the training flags make (``crlf curate``
and ``crlf classify`` add theirs from :mod:`crlf.curate.arguments`). Parsing only: this module imports nothing
heavy, since every ``crlf`` command builds the whole parser (``crlf --help`` never imports torch)."""

from __future__ import annotations

import argparse
from pathlib import Path

from crlf.curate.arguments import add_classify, add_curate
from crlf.errors import UsageError, did_you_mean

EVAL_SPLIT_HELP = ("a labelled folder without a test split: the share of each class held out (seeded, stratified) "
                   "for the linear probe and kNN to be measured on (default 0.2)")

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
    "eval_split": ("eval", "split"),
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
            hint = did_you_mean(flag, options, f" See: crlf {getattr(parsed, 'command', '')} --help")
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
    p.add_argument("--eval-split", type=float, metavar="SHARE", help=EVAL_SPLIT_HELP)
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
    p.add_argument("--eval-split", type=float, metavar="SHARE", help=EVAL_SPLIT_HELP)
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
