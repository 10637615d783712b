"""The flags of ``crlf curate`` and ``crlf classify`` (kept here so that ``crlf.cli`` stays short); parsing
only: this module imports nothing heavy, since every ``crlf`` command builds the whole parser."""

from __future__ import annotations

from pathlib import Path

from crlf.curate import DUP_THRESHOLD, EDGE_THRESHOLD, FLAG_Z, PIXEL_THRESHOLD


def add_curate(sub) -> None:
    p = sub.add_parser(
        "curate", help="duplicates, outliers, what to label first, label issues of a folder -> CSVs + curation.html",
        description="Embeds DIR with the run's encoder and writes OUT/duplicates.csv, outliers.csv, "
                    "selection.csv (--select), label_issues.csv (class folders or --labels), skipped.csv and "
                    "curation.html. Nothing in DIR is moved, deleted or written.")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--data", required=True, help="image folder or archive (file names are relative to it)")
    p.add_argument("--out", type=Path, required=True, help="output folder (outside --data)")
    p.add_argument("--select", type=int, metavar="N", help="choose N images to label first -> selection.csv")
    p.add_argument("--strategy", choices=["typical", "diverse", "random"], default="typical",
                   help="typical: TypiClust (default, best with few labels); diverse: greedy k-center; random")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--labels", type=Path, metavar="CSV", help="labels as a CSV with columns file,label (file "
                   "relative to --data); default: the class folders, if any")
    p.add_argument("--dup-threshold", type=float, default=DUP_THRESHOLD,
                   help=f"cosine similarity from which neighbours are duplicate candidates (default {DUP_THRESHOLD})")
    p.add_argument("--pixel-threshold", type=float, default=PIXEL_THRESHOLD,
                   help=f"correlation of aligned thumbnails that confirms a candidate (default {PIXEL_THRESHOLD})")
    p.add_argument("--edge-threshold", type=float, default=EDGE_THRESHOLD,
                   help="correlation of the aligned thumbnails' edges that also must confirm it: tells two "
                        f"different objects on one plain background apart (default {EDGE_THRESHOLD})")
    p.add_argument("--exclude-outliers", type=float, default=0.01, metavar="FRACTION",
                   help="share of the most unusual images never selected, besides every image whose outlier "
                        f"score reaches {FLAG_Z} robust z-units (default 0.01)")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(_parser=p)


def add_classify(sub) -> None:
    p = sub.add_parser(
        "classify", help="a linear probe from a few labelled images, applied to a folder -> predictions.csv",
        description="Fits the evaluation's linear probe on the run's frozen features of the labelled images, "
                    "prints its cross-validated accuracy, and writes file,label,confidence plus the 2nd and "
                    "3rd labels for every image of --data.")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--labelled", help="class folders (<class>/*.jpg) or a CSV file,label with files relative "
                                      "to --data (not needed with --probe)")
    p.add_argument("--data", required=True, help="images to classify (folder or archive)")
    p.add_argument("--out", type=Path, required=True, help="predictions .csv")
    p.add_argument("--save-probe", type=Path, metavar="FILE", help="keep the probe (.safetensors + class names)")
    p.add_argument("--probe", type=Path, metavar="FILE", help="reuse a probe saved with --save-probe")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(_parser=p)
