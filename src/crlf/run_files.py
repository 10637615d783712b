"""Reading a run folder's artefacts, for every module that shows or compares runs (light: no torch model,
no scikit-learn), so that reports, plots and comparisons do not import the evaluation pipeline."""

from __future__ import annotations

import json
from pathlib import Path


def read_history(run_dir: Path) -> list[dict]:
    """The per-epoch records of ``metrics.jsonl`` (empty if pretraining has not finished an epoch)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
