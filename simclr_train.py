"""The reference project's documented entry point, kept working on top of CRLF.

    python simclr_train.py --batch_size 256 --epochs 10 --learning_rate 3e-4 --temperature 0.07 --device cpu \
        [--data ../shared/data/cifar10-jpeg.tar.gz] [--out runs/simclr_train]

Runs the reference recipe (configs/seed.yaml) end to end: pretrain, evaluate (linear probe + kNN), plot.
Expect about 57 % linear top-1 on CIFAR-10 (JPEG copy) after 10 epochs; see README.md.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))  # also works without `pip install -e .`

from crlf.cli import main  # noqa: E402


def translate(argv: list[str]) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--learning_rate", type=float, default=3e-4)
    parser.add_argument("--temperature", type=float, default=0.07)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data", default="cifar10")
    parser.add_argument("--out", default="runs/simclr_train")
    parser.add_argument("--limit", type=int)
    args = parser.parse_args(argv)
    config = Path(__file__).resolve().parent / "configs" / "seed.yaml"
    out = ["run", "--config", str(config), "--data", args.data, "--out", args.out,
           "--batch-size", str(args.batch_size), "--epochs", str(args.epochs), "--lr", str(args.learning_rate),
           "--temperature", str(args.temperature), "--device", args.device]
    return out + (["--limit", str(args.limit)] if args.limit else [])


if __name__ == "__main__":
    sys.exit(main(translate(sys.argv[1:])))
