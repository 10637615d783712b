"""TensorBoard: the scalars a run logs, read back with TensorBoard's own EventAccumulator; no duplicate points
after a kill and resume; ``train.tensorboard: false`` writes nothing and trains identically; the embedding
projector after evaluation (test embeddings, class names, a sprite)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # a dependency of crlf
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from crlf.cli import main
from crlf.training.monitors.tensorboard import (
    LOG_DIR,
    PROJECTOR_POINTS,
    PROJECTOR_TAG,
    projector_subsample,
    write_projector,
)

from helpers_faults import STEPS_PER_EPOCH, drop_large_files, fork_pretrain, step_losses, tiny  # noqa: F401

STEP_TAGS = {"step/loss", "step/lr"}
EPOCH_TAGS = {"epoch/loss", "epoch/pairs_per_s", "epoch/embedding_std", "epoch/view_size"}


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series as TensorBoard shows it (purged points hidden): tag -> [(step, value)]."""
    acc = EventAccumulator(str(run / LOG_DIR), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def raw_points(run: Path, tag: str) -> list[int]:
    """The steps of every ``tag`` event in the files, purged or not."""
    steps = []
    for path in sorted((run / LOG_DIR).glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            steps += [event.step for v in event.summary.value if v.tag == tag]
    return steps


def test_a_run_logs_step_and_epoch_scalars_and_the_knn_monitor(tiny_run):
    series = scalars(tiny_run)  # tiny_run: 2 epochs of 4 steps, --eval-every 1
    assert STEP_TAGS | EPOCH_TAGS | {"epoch/knn_top1"} <= set(series)
    losses = np.load(tiny_run / "step_losses.npy")
    assert [s for s, _ in series["step/loss"]] == list(range(1, len(losses) + 1))
    np.testing.assert_array_equal([v for _, v in series["step/loss"]], losses.astype(np.float32))
    history = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    steps = len(losses) // len(history)
    assert [s for s, _ in series["epoch/loss"]] == [steps * (i + 1) for i in range(len(history))]
    for tag, key in (("epoch/loss", "loss"), ("epoch/pairs_per_s", "images_per_s"), ("epoch/knn_top1", "knn_top1"),
                     ("epoch/embedding_std", "embedding_std")):
        np.testing.assert_allclose([v for _, v in series[tag]], [r[key] for r in history], rtol=1e-6)


def test_projector_holds_the_test_embeddings_their_classes_and_a_sprite(tiny_run):
    log_dir = tiny_run / LOG_DIR
    config = (log_dir / "projector_config.pbtxt").read_text()
    folder = log_dir / "00000" / PROJECTOR_TAG
    for name in ("tensors.tsv", "metadata.tsv", "sprite.png"):
        assert f"00000/{PROJECTOR_TAG}/{name}" in config
        assert (folder / name).is_file(), name
    embeddings = np.load(tiny_run / "test_embeddings.npy")  # 12 test images: all of them, in order
    np.testing.assert_allclose(np.loadtxt(folder / "tensors.tsv", delimiter="\t"), embeddings, rtol=1e-5, atol=1e-6)
    classes = json.loads((tiny_run / "metrics.json").read_text())["classes"]
    labels = np.load(tiny_run / "test_labels.npy")
    assert (folder / "metadata.tsv").read_text().split() == [classes[i] for i in labels]
    assert Image.open(folder / "sprite.png").size == (4 * 32, 4 * 32)  # a 4x4 grid of the 32-px images


def test_projector_shows_a_fixed_subsample_and_a_sprite_tensorboard_accepts(tmp_path, monkeypatch):
    idx = projector_subsample(10_000)
    assert len(idx) == PROJECTOR_POINTS == len(set(idx)) and np.all(np.diff(idx) > 0)
    assert np.array_equal(idx, projector_subsample(10_000))  # the same points at every evaluation
    assert np.array_equal(projector_subsample(12), np.arange(12))
    # Large images are shrunk so that the sprite sheet stays under TensorBoard's limit (8192 px; 64 here).
    monkeypatch.setattr("crlf.training.monitors.tensorboard.SPRITE_MAX_SIDE", 64)
    rng = np.random.default_rng(0)
    folder = write_projector(tmp_path, rng.normal(size=(12, 5)).astype(np.float32), np.arange(12) % 2, ["a", "b"],
                             rng.integers(0, 256, (12, 3, 32, 32), dtype=np.uint8))
    assert Image.open(folder / "sprite.png").size == (64, 64)  # 4x4 thumbnails of 16 px
    assert (folder / "metadata.tsv").read_text().split() == ["a", "b"] * 6


def test_kill_in_a_checkpoint_then_resume_leaves_no_duplicate_points(tiny, tmp_path):
    """Killed while writing the last checkpoint: the event file already holds steps 3-4 and epoch 2, the run
    resumes from step 2 and logs them again. TensorBoard must show each step once, with the resumed values."""
    run = tmp_path / "run"
    last = 2 * STEPS_PER_EPOCH
    killed = fork_pretrain(tiny["data"], run, tiny["cache"], kill_in_checkpoint_write=last)
    assert killed.killed, killed.output
    assert raw_points(run, "step/loss") == list(range(1, last + 1))  # flushed before the checkpoint write
    resumed = fork_pretrain(tiny["data"], run, tiny["cache"], "--resume")
    assert resumed.returncode == 0, resumed.output
    assert raw_points(run, "step/loss").count(last) == 2  # the duplicate is in the files ...
    series = scalars(run)  # ... and TensorBoard hides the one before the resume
    assert [s for s, _ in series["step/loss"]] == list(range(1, last + 1))
    np.testing.assert_array_equal([v for _, v in series["step/loss"]], step_losses(run).astype(np.float32))
    assert [s for s, _ in series["epoch/loss"]] == [STEPS_PER_EPOCH, last]
    assert series == scalars(tiny["base"] / "reference") | {  # as the uninterrupted run, but its own pairs/s
        tag: series[tag] for tag in ("epoch/pairs_per_s",)}
    # The model card of a pretrained run: not evaluated yet, made by the first command, resumed by the second.
    card = (run / "README.md").read_text()
    assert "Not evaluated yet" in card and "crlf pretrain --config" in card
    command = json.loads((run / "command.json").read_text())
    assert command["command"].startswith("crlf pretrain") and "--resume" not in command["command"]
    assert [r["at"] for r in command["resumed"]] == [f"global step {STEPS_PER_EPOCH} (epoch 2, step 0)"]
    assert "Resumed at global step 2" in card
    drop_large_files(tmp_path)


def test_tensorboard_false_writes_no_event_file_and_trains_identically(tiny, tmp_path):
    run = tmp_path / "run"
    result = fork_pretrain(tiny["data"], run, tiny["cache"], "--set", "train.tensorboard=false")
    assert result.returncode == 0, result.output
    assert not (run / LOG_DIR).exists()
    np.testing.assert_array_equal(step_losses(run), tiny["reference"]["losses"])  # logging changes no number
    assert main(["evaluate", str(run), "--quiet"]) == 0  # nor does the projector appear after evaluation
    assert not (run / LOG_DIR).exists()
    drop_large_files(tmp_path)
