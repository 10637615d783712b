"""``DIR/report.html``: one self-contained page per run (images inlined as base64 data URIs).

Written at the end of ``crlf run`` and by ``crlf report DIR``. It reads only the run folder, except for the
nearest-neighbour grid, which needs the pictures themselves: they come from the run's data source, the same
class-balanced training subset pretraining used (``balanced_subset`` with the run's seed and limit). If the
data has moved, the page says so instead of failing.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np
import yaml

from crlf.errors import UsageError
from crlf.io import atomic_write_text

PLOTS = [  # (file in plots/, caption)
    ("loss_curve.png", "Pretraining loss per step and epoch; the online linear probe and the kNN monitor when they "
                       "ran"),
    ("label_efficiency.png", "Test top-1 against the share of training labels (log scale)"),
    ("pca_embedding.png", "PCA of the test embeddings"),
    ("tsne_embedding.png", "t-SNE of the test embeddings"),
    ("umap_embedding.png", "UMAP of the test embeddings (with the plots extra: umap-learn)"),
    ("confusion_matrix.png", "Linear probe confusion matrix on the test split"),
    ("neighbours.png", "Nearest training images of a few test images"),
]
SECTIONS = ["summary", "plots", "label-efficiency", "few-shot", "retrieval", "per-class", "protocol", "data",
            "hardware", "metrics", "config"]  # in page order: pictures and headline numbers first

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;
padding:0 1em}h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;flex-wrap:wrap;gap:1em}.card{border:1px solid #ddd;border-radius:8px;padding:.6em 1em;min-width:9em}
.card .v{font-size:1.6em;font-weight:600}.card .k{color:#666;font-size:.85em}
.figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:1em;align-items:start}
.figs figure.wide{grid-column:1/-1}figure{margin:0}figure img{max-width:100%;border:1px solid #eee}figcaption{color:#555;font-size:.9em}
pre{background:#f7f7f7;padding:1em;overflow-x:auto;font-size:.85em}.note{color:#a15c00}
"""


def flatten(obj, prefix: str = "") -> dict:
    """Nested dicts -> {"a.b.c": leaf}; lists and strings are kept as leaves."""
    out = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flatten(value, f"{name}.")
        else:
            out[name] = value
    return out


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        text = json.dumps(value)
        return text if len(text) < 120 else text[:117] + "..."
    return str(value)


def _table(rows, header=None) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(
        f'<td class="num">{html.escape(_fmt(c))}</td>' if isinstance(c, (int, float)) and not isinstance(c, bool)
        else f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _img(path: Path, caption: str, wide: bool = False) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    cls = ' class="wide"' if wide else ""
    return (f'<figure{cls}><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _pct(v) -> str:
    return f"{v:.1%}" if isinstance(v, (int, float)) else "n/a"


def make_neighbours_plot(run_dir: Path, metrics: dict, queries: int = 6, k: int = 8) -> Path:
    """plots/neighbours.png: the top-``k`` train neighbours (cosine) of ``queries`` test images."""
    from crlf.config import load_run_config
    from crlf.data.holdout import evaluation_splits
    from crlf.data.sources import load_dataset
    from crlf.neighbours import CosineIndex
    from crlf.plots import neighbours_grid
    from crlf.publish.export import load_array

    cfg = load_run_config(run_dir)
    train_x, test_x = load_array(run_dir / "train_embeddings.npy"), load_array(run_dir / "test_embeddings.npy")
    train_y, test_y = load_array(run_dir / "train_labels.npy"), load_array(run_dir / "test_labels.npy")
    source = metrics.get("data_source", cfg.data.source)
    dataset = load_dataset(source, cfg.data.image_size, cfg.data.on_bad_image, progress=False)
    split = metrics.get("evaluation_split", {}).get("fraction", cfg.eval.split)
    splits = evaluation_splits(dataset, cfg.data.limit, cfg.train.seed, split)
    train, test = splits.train, splits.test
    if len(train) != len(train_x) or len(test) != len(test_x):
        raise UsageError(f"'{source}' no longer matches the run's embeddings")
    # One query per class for the first few classes (a fixed, readable choice), then nearest by cosine.
    rng = np.random.default_rng(0)
    picks = [int(rng.choice(np.flatnonzero(test_y == c))) for c in np.unique(test_y)[:queries]]
    sims, top = CosineIndex(train_x).topk(test_x[picks], k)  # (Q, k) each
    top = top.numpy()
    return neighbours_grid(test.images[picks], test_y[picks], train.images[top], train_y[top],
                           sims.numpy(), metrics["classes"], run_dir / "plots" / "neighbours.png")


def write_report(run_dir: Path) -> Path:
    """Build ``run_dir/report.html`` from the run folder (making any missing plot first)."""
    from crlf.plots import plot_run
    from crlf.run_files import read_history

    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise UsageError(f"'{run_dir}' has no metrics.json; run crlf evaluate {run_dir} first.")
    metrics = json.loads(metrics_path.read_text())
    plots = run_dir / "plots"
    if any(not (plots / name).is_file() for name, _ in PLOTS if name != "neighbours.png"):
        plot_run(run_dir)
    notes = []
    try:
        make_neighbours_plot(run_dir, metrics)
    except (UsageError, OSError, ValueError) as exc:
        notes.append(f"Nearest-neighbour grid not drawn: {exc}.")
    history = read_history(run_dir)
    page = render(metrics, history, run_dir, notes)
    atomic_write_text(run_dir / "report.html", page)
    return run_dir / "report.html"


def _precision_and_budget(run_dir: Path) -> list[tuple[str, str]]:
    """The precision probe's choice and the budget plan (RUN/config.json), as the model card shows them."""
    from crlf.publish.model_card import precision_and_budget_rows

    try:
        meta = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return []
    return precision_and_budget_rows(meta)


def render(metrics: dict, history: list[dict], run_dir: Path, notes: list[str]) -> str:
    m = metrics
    cfg = m.get("config", {})
    le = m.get("label_efficiency", {}).get("fractions", {})
    fs = m.get("few_shot", {})
    ret, clu = m.get("retrieval", {}), m.get("clustering", {})
    cards = [("linear probe top-1", _pct(m.get("linear_top1"))),
             (f"kNN top-1 (k={m.get('knn', {}).get('k', 200)})", _pct(m.get("knn_top1"))),
             ("kNN top-1 (k=20)", _pct(m.get("knn_top1_k20"))),
             ("1 % labels (linear)", _pct(le.get("1%", {}).get("linear_top1"))),
             ("5-way 1-shot", _pct(fs.get("5way_1shot", {}).get("accuracy"))),
             ("retrieval mAP", _pct(ret.get("mAP"))), ("k-means NMI", _pct(clu.get("nmi")))]
    if history and history[-1].get("online_probe_top1") is not None:  # train.online_probe: the last epoch's
        cards.append(("online linear probe, last epoch (training batches)", _pct(history[-1]["online_probe_top1"])))
    parts = [f"<h1>CRLF run: {html.escape(run_dir.name)}</h1>",
             f"<p>{html.escape(cfg.get('method', {}).get('name', 'simclr'))} · "
             f"{html.escape(cfg.get('model', {}).get('arch', ''))} · {m.get('epochs', len(history))} epochs · "
             f"{html.escape(str(m.get('data', '')))} · pretraining {m.get('pretrain_time_s', '?')} s + "
             f"evaluation {m.get('eval_time_s', '?')} s on {html.escape(str(m.get('hardware', '?')))}</p>"]
    held_out = m.get("evaluation_split", {}).get("note")  # a folder without a test split: a hold-out
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in [*notes, *([held_out] if held_out else [])]]
    parts.append('<h2 id="summary">Summary</h2><div class="cards">' + "".join(
        f'<div class="card"><div class="v">{html.escape(v)}</div><div class="k">{html.escape(k)}</div></div>'
        for k, v in cards) + "</div>")
    figures = [_img(run_dir / "plots" / name, caption, wide=name == "neighbours.png") for name, caption in PLOTS
               if (run_dir / "plots" / name).is_file()]
    parts.append('<h2 id="plots">Plots</h2><div class="figs">' + "".join(figures) + "</div>")
    ft = m.get("finetune", {}).get("fractions", {})
    sb = m.get("supervised_baseline", {}).get("fractions", {})
    rows = [(k, v.get("num_labels"), _pct(v.get("linear_top1")),
             _pct(ft[k]["top1"]) if k in ft else "not run", _pct(sb[k]["top1"]) if k in sb else "not run")
            for k, v in le.items()]
    parts.append('<h2 id="label-efficiency">Label efficiency</h2>'
                 + _table(rows, ["labels", "images", "linear probe", "fine-tuned", "supervised from scratch"])
                 + "<p>Fine-tuning and the supervised baseline are opt-in (slow on a CPU): "
                   "<code>crlf evaluate DIR --finetune --supervised-baseline</code>.</p>")
    fs_rows = [(k, f"skipped: {v['skipped']}", None, None, None, None, None) if "skipped" in v else
               (k, _pct(v["accuracy"]), f"± {v['ci95']:.1%}", v["n_way"], v["k_shot"], v["queries_per_class"],
                v["episodes"]) for k, v in fs.items()]
    parts.append('<h2 id="few-shot">Few-shot (prototype classifier, cosine)</h2>'
                 + _table(fs_rows, ["task", "accuracy", "95 % CI", "ways", "shots", "queries/class", "episodes"]))
    parts.append('<h2 id="retrieval">Retrieval and clustering</h2>' + _table(
        [(k, v) for k, v in ret.items()] + [(f"k-means {k}", v) for k, v in clu.items()], ["metric", "value"]))
    per_class = m.get("per_class_accuracy", {})
    parts.append('<h2 id="per-class">Per-class accuracy (linear probe)</h2>'
                 + _table([(c, _pct(a)) for c, a in per_class.items()], ["class", "top-1"]))
    parts.append('<h2 id="protocol">Evaluation protocol (checked in code)</h2>'
                 + _table(list(flatten(m.get("protocol", {})).items()), ["check", "result"]))
    parts.append('<h2 id="data">Data</h2>' + _table([
        ("data copy", m.get("data")), ("source", m.get("data_source")), ("checksum", m.get("data_checksum")),
        ("train images (pretraining and probe)", m.get("num_train")),
        ("test images" if m.get("evaluation_split", {}).get("kind") != "held-out" else
         "held-out images (seen unlabelled by pretraining; never by the probe or kNN)", m.get("num_test")),
        ("classes", ", ".join(m.get("classes", [])))]))
    times = [("pretraining wall time (s)", m.get("pretrain_time_s")), ("evaluation wall time (s)", m.get("eval_time_s")),
             ("feature extraction (s)", m.get("eval_features_s")), ("linear probe (s)", m.get("eval_linear_s")),
             ("kNN (s)", m.get("eval_knn_s"))] + [(f"{k} (s)", v) for k, v in m.get("eval_extra_s", {}).items()]
    parts.append('<h2 id="hardware">Hardware and wall times</h2>' + _table(
        [("device", m.get("device")), ("hardware", m.get("hardware")), ("torch", m.get("torch")),
         ("python", m.get("python")), ("git commit", m.get("git_commit")), ("seed", m.get("seed"))] + times
        + _precision_and_budget(run_dir)))
    skip = ("config.", "confusion_matrix", "classes", "per_class_accuracy.", "protocol.")
    scalars = [(k, v) for k, v in flatten(m).items() if not k.startswith(skip)]
    parts.append(f'<h2 id="metrics">Every metric</h2><details><summary>all {len(scalars)} values of '
                 f"metrics.json (per-class accuracy, protocol and config are above and below)</summary>"
                 + _table(scalars, ["metric", "value"]) + "</details>")
    parts.append('<h2 id="config">Config</h2><pre>' + html.escape(yaml.safe_dump(cfg, sort_keys=False)) + "</pre>")
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>CRLF report: {html.escape(run_dir.name)}</title><style>{CSS}</style></head>"
            f"<body>\n{body}\n</body></html>\n")
