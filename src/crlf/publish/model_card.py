"""The model card of a run, ``RUN/README.md``: what the encoder is, how it was made, how well it does.

Written (atomically) by ``crlf pretrain`` when the encoder is published, and again by ``crlf evaluate`` with
the linear-probe and kNN figures; before that it says the run is not evaluated yet, and for data without labels
or a test split it says why it cannot be. It is a pure function of the run folder's files (``config.json``,
``config.yaml``, ``metrics.jsonl``, ``metrics.json``, ``command.json``), so rewriting it is always safe.
The YAML front matter is the Hugging Face Hub's model-card metadata: the same file serves ``push_to_hub``.

``command.json`` keeps the command line that started the run, and each one that resumed it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from crlf.config import Config, load_run_config
from crlf.io import atomic_write_json, atomic_write_text
from crlf.methods import method_class
from crlf.run_files import read_history

CARD = "README.md"
COMMAND = "command.json"
HUB_DATASETS = {"cifar10": "cifar10", "cifar100": "cifar100"}  # data.source -> a dataset id on the Hub


def record_command(run_dir: Path, command: str | None, resumed_at: str | None = None) -> None:
    """Keep the command that started the run (``resumed_at`` None) or append one that resumed it (e.g.
    ``"epoch 2 step 0"``). ``command`` None: started from Python, nothing to record."""
    path = Path(run_dir) / COMMAND
    if resumed_at is None:
        record: dict[str, Any] = {"command": command, "resumed": []}
    else:
        record = _read_json(path) or {"command": None, "resumed": []}  # a run from before command.json
        record.setdefault("resumed", []).append({"command": command, "at": resumed_at})
    atomic_write_json(path, record)


def evaluation_gap(dataset) -> str | None:
    """Why the run's data cannot be evaluated (no labels), or None if it can (labels without a test split
    are evaluated on a hold-out: crlf.data.holdout)."""
    if not dataset.classes:
        return "the data have no labels"
    return None


def write_model_card(run_dir: Path, not_evaluable: str | None = None) -> Path:
    """``RUN/README.md`` from the run folder's files. ``not_evaluable``: why evaluation cannot run on this data
    (from :func:`evaluation_gap`), said on the card in place of the figures until an evaluation exists."""
    run_dir = Path(run_dir)
    path = run_dir / CARD
    atomic_write_text(path, model_card(run_dir, not_evaluable))
    return path


def model_card(run_dir: Path, not_evaluable: str | None = None) -> str:
    run_dir = Path(run_dir)
    meta = _read_json(run_dir / "config.json") or {}
    cfg = load_run_config(run_dir)
    metrics = _read_json(run_dir / "metrics.json")
    history = read_history(run_dir)
    command = _read_json(run_dir / COMMAND)
    method_type = method_class(cfg.method.name)  # its paper and the settings its row shows
    method, paper = method_type.title, method_type.paper
    arch = meta.get("arch", cfg.model.arch)
    data = meta.get("data") or cfg.data.source
    title = f"{arch} encoder pretrained with {method} on {data}"
    sections = [_front_matter(cfg, arch, metrics), f"# {title}\n",
                f"A self-supervised image encoder trained with CRLF (no labels): "
                f"images `(B, 3, {meta.get('image_size', cfg.data.image_size)}, "
                f"{meta.get('image_size', cfg.data.image_size)})` -> features "
                f"`(B, {meta.get('feature_dim', '?')})`.\n",
                _summary_table(cfg, meta, history, method, paper, method_type.card_settings), _evaluation(run_dir, metrics, history, not_evaluable),
                _how_made(command), _use_it(run_dir, cfg, meta), _files()]
    return "\n".join(s for s in sections if s)


def _front_matter(cfg: Config, arch: str, metrics: dict | None) -> str:
    tags = ["crlf", "self-supervised-learning", cfg.method.name, arch.replace(":", "-"), "image-feature-extraction"]
    lines = ["---", "library_name: crlf", "pipeline_tag: image-feature-extraction", "tags:"]
    lines += [f"- {t}" for t in dict.fromkeys(tags)]
    if cfg.data.source in HUB_DATASETS:
        lines += ["datasets:", f"- {HUB_DATASETS[cfg.data.source]}"]
    if metrics:
        lines += ["metrics:", "- accuracy"]
    return "\n".join(lines + ["---", ""])


def precision_and_budget_rows(meta: dict) -> list[tuple[str, str]]:
    """The training side auto chose, what the precision probe chose (and from which timings) and the budget
    plan, where the run had them."""
    rows = []
    chosen_side = meta.get("resolution")
    if chosen_side:
        rows.append(("image size", chosen_side["description"].removeprefix("image size auto: ")
                     + " (data.image_size: auto)"))
    probe = meta.get("precision_probe")
    if probe:
        chosen = probe["precision"] + (" + channels_last" if probe["channels_last"] else "")
        times = "; ".join(f"{name}: " + ", ".join(f"{size} px {t:.3f} s" for size, t in sizes.items())
                          for name, sizes in probe.get("seconds_per_step", {}).items())
        rows.append(("precision", f"{chosen} ({probe['rule']}" + (f"; seconds per step: {times}" if times else "")
                     + ")"))
    budget = meta.get("budget")
    if budget:
        rows.append(("budget", f"{budget['budget_minutes']:g} min of pretraining, {budget['spent_s'] / 60:.1f} min "
                               f"spent; planned at the start as \"{budget['first_plan']}\", ran as "
                               f"\"{budget['plan']['description']}\""))
    return rows


def _summary_table(cfg: Config, meta: dict, history: list[dict], method: str, paper: str | None,
                   card_settings: tuple[str, ...] = ()) -> str:
    t, o, m = cfg.train, cfg.optim, cfg.model
    method_cell = f"[{method}]({paper})" if paper else method
    method_cell += "".join(f", {key.replace('_', ' ')} {getattr(cfg.method, key):g}" for key in card_settings)
    backbone = meta.get("arch", m.arch)
    if "stem" in meta:
        backbone += f", {meta['stem']} stem"
    if "timm_name" in meta:
        backbone += f" (timm `{meta['timm_name']}`)"
    backbone += f", {meta.get('feature_dim', '?')}-d features"
    limit = f", a class-balanced subset of {cfg.data.limit:,} training images" if cfg.data.limit else ""
    views = " + ".join(f"{c.count} views at {c.size or cfg.data.image_size} px" for c in cfg.augment.crops)
    schedule = o.schedule + (f" after {o.warmup_epochs:g} warm-up epochs" if o.warmup_epochs else "")
    recipe = (f"{t.epochs} epochs, batch {t.batch_size}, {o.name} lr {o.lr:g} ({schedule}), weight decay "
              f"{o.weight_decay:g}; {views}, crop scale {cfg.augment.crop_scale[0]:g}-{cfg.augment.crop_scale[1]:g}; "
              f"seed {t.seed}")
    rows = [("method", method_cell), ("backbone", backbone),
            ("data", f"{meta.get('data') or cfg.data.source} (`{cfg.data.source}`){limit}, {cfg.data.image_size} px"),
            ("recipe", recipe + " (all of it in `config.yaml`)")]
    if history:
        done = len(history)
        time_s = meta.get("train_time_s", round(sum(r.get("epoch_time_s", 0) for r in history), 1))
        where = ", ".join(str(meta[k]) for k in ("device", "hardware") if meta.get(k))
        rows.append(("training", f"{done} epochs in {time_s:,.0f} s" + (f" on {where}" if where else "")
                     + (f", {meta['world_size']} processes" if meta.get("world_size") else "")))
        rows.append(("final loss", f"{history[-1]['loss']:.4f} (epoch {done})"))
    rows += precision_and_budget_rows(meta)
    if meta.get("git_commit"):
        rows.append(("code", f"CRLF commit `{meta['git_commit']}`, torch {meta.get('torch', '?')}"))
    return "| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)


def _evaluation(run_dir: Path, metrics: dict | None, history: list[dict], not_evaluable: str | None) -> str:
    head = "## Evaluation\n\n"
    if not metrics:
        if not_evaluable:
            return (head + f"Not evaluated: {not_evaluable}, and the linear probe and kNN need both. Evaluate on a "
                    f"labelled copy with `crlf evaluate {run_dir} --data ROOT` (ROOT/train/<class>/*.jpg and "
                    f"ROOT/test/<class>/*.jpg).\n")
        return head + f"Not evaluated yet: `crlf evaluate {run_dir}` measures the linear probe and kNN figures.\n"
    knn = metrics.get("knn", {})
    text = (head + f"Frozen features of un-augmented images, encoder in eval mode; trained on "
            f"{metrics.get('num_train', 0):,} training images, measured on {metrics.get('num_test', 0):,} test images "
            f"of {metrics.get('data', '?')}.\n\n"
            "| linear probe top-1 | kNN top-1 (k={k}) | kNN top-1 (k=20) |\n|---|---|---|\n"
            "| {lin:.2%} | {knn:.2%} | {k20:.2%} |\n").format(
        k=knn.get("k", 200), lin=metrics["linear_top1"], knn=metrics["knn_top1"], k20=metrics["knn_top1_k20"])
    text += (f"\nkNN: {knn.get('metric', 'cosine')} similarity, temperature {knn.get('temperature', 0.1):g}. "
             "Everything else (per-class accuracy, label efficiency, few-shot, retrieval, clustering) is in "
             "`metrics.json`.\n")
    if history and metrics.get("epochs") not in (None, len(history)):
        text += (f"\n**Stale:** these figures were measured after {metrics['epochs']} epochs; the encoder now has "
                 f"{len(history)}. Run `crlf evaluate {run_dir}` again.\n")
    return text


def _how_made(command: dict | None) -> str:
    if not command or not command.get("command"):
        return "## How it was made\n\nStarted from Python (`crlf.training.pretrain.pretrain`); the resolved config is " \
               "`config.yaml`.\n"
    text = f"## How it was made\n\n```bash\n{command['command']}\n```\n"
    for resume in command.get("resumed", []):
        text += f"\nResumed at {resume['at']} with `{resume['command'] or '(from Python)'}`."
    return text + ("\n" if command.get("resumed") else "")


def _use_it(run_dir: Path, cfg: Config, meta: dict) -> str:
    size = meta.get("image_size", cfg.data.image_size)
    mean = ", ".join(f"{v:g}" for v in meta.get("mean", cfg.augment.mean))
    std = ", ".join(f"{v:g}" for v in meta.get("std", cfg.augment.std))
    return (f"## Use it\n\nInput: RGB images resized to {size}x{size}, scaled to [0, 1], normalised with mean "
            f"({mean}) and std ({std}); output: one {meta.get('feature_dim', '?')}-d feature vector per image.\n\n"
            "```python\n"
            "import crlf, torch\n"
            f"enc = crlf.load_encoder(\"{run_dir}\")          # eval mode\n"
            f"enc = torch.hub.load(\"PATH/TO/CRLF\", \"encoder\", run=\"{run_dir}\", source=\"local\")\n"
            f"enc = crlf.HubEncoder.from_run(\"{run_dir}\")   # then .save_pretrained(DIR) or .push_to_hub(REPO)\n"
            "enc = crlf.HubEncoder.from_pretrained(DIR_OR_REPO)\n"
            "```\n\n"
            f"`crlf export {run_dir} --format onnx|torchscript --out FILE` writes a file that needs no CRLF.\n")


def _files() -> str:
    return ("## Files\n\n`encoder.safetensors` + `config.json` (weights with torchvision's or timm's names, and how to "
            "rebuild the model), `config.yaml` (the resolved config), `metrics.jsonl` (per epoch), `metrics.json` "
            "(after evaluation), `tensorboard/` (`tensorboard --logdir` it), `command.json`.\n")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
