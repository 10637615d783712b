"""Guarantee 7: files from elsewhere never run code. Checkpoints load with ``torch.load(weights_only=True)``,
weights from safetensors only, ``.npy``/``.npz`` with ``allow_pickle=False``. A checkpoint whose unpickling
would run code is refused with a clear message, and the code never runs (a sentinel file never appears).
"""

from __future__ import annotations

import ast
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crlf.cli import main
from crlf.data.sources import load_dataset
from crlf.errors import UsageError
from crlf.models.encoder import ResNetEncoder
from crlf.publish.export import load_array
from crlf.training.checkpoint import LATEST, PREVIOUS, load_checkpoint_file

from helpers_faults import SEED_CONFIG, write_tiny_folder

SRC = Path(__file__).resolve().parents[1] / "src" / "crlf"


class Payload:
    """Unpickling this creates ``sentinel``: what a hostile checkpoint would do, harmlessly."""

    def __init__(self, sentinel: Path):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (exec, (f"open({self.sentinel!r}, 'w').close()",))


def hostile_checkpoint(path: Path, sentinel: Path, kind: str) -> Path:
    state = {"format": 1, "encoder": {"conv1.weight": Payload(sentinel)}, "progress": {}}
    if kind == "torch.save":  # the zip format torch.save writes
        torch.save(state, path)
    else:  # a bare pickle, as an old-style checkpoint would be
        path.write_bytes(pickle.dumps(state, protocol=2))
    return path


def test_the_payload_is_live(tmp_path):
    """Control: unpickled without protection, the payload does create its file."""
    sentinel = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(sentinel)))
    assert sentinel.exists()


@pytest.mark.parametrize("kind", ["torch.save", "pickle"])
def test_hostile_checkpoint_is_refused_and_runs_nothing(tmp_path, kind):
    sentinel = tmp_path / "ran"
    path = hostile_checkpoint(tmp_path / "evil.pt", sentinel, kind)
    with pytest.raises(UsageError) as error:
        load_checkpoint_file(path)
    message = str(error.value)
    assert f"checkpoint '{path}' was refused" in message and "'exec'" in message and "nothing in it was run" in message
    assert "weights_only=False" not in message  # never advise the unsafe way
    assert not sentinel.exists()


def test_cli_resume_from_a_hostile_checkpoint_exits_2_and_runs_nothing(tmp_path, capsys):
    sentinel = tmp_path / "ran"
    path = hostile_checkpoint(tmp_path / "evil.pt", sentinel, "torch.save")
    run = tmp_path / "run"
    code = main(["pretrain", "--config", str(SEED_CONFIG), "--out", str(run), "--resume", str(path), "--quiet",
                 "--device", "cpu"])
    assert code == 2
    assert f"crlf: error: checkpoint '{path}' was refused" in capsys.readouterr().err
    assert not sentinel.exists()
    assert not (run / LATEST).exists()  # and no fresh run started in its place


def test_cli_resume_with_hostile_checkpoints_in_the_run_folder_exits_2(tmp_path, capsys):
    sentinel = tmp_path / "ran"
    run = tmp_path / "run"
    run.mkdir()
    hostile_checkpoint(run / LATEST, sentinel, "torch.save")
    hostile_checkpoint(run / PREVIOUS, sentinel, "pickle")
    code = main(["pretrain", "--config", str(SEED_CONFIG), "--out", str(run), "--resume", "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "no usable checkpoint" in err and str(run / LATEST) in err and str(run / PREVIOUS) in err
    assert not sentinel.exists()


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=2048))
def test_any_bytes_as_a_checkpoint_give_a_usage_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("bytes") / "checkpoint.pt"
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch may warn about the "pickle protocol" of random bytes
        with pytest.raises(UsageError, match="checkpoint '.*checkpoint.pt'"):
            load_checkpoint_file(path)


def test_weights_load_from_safetensors_only(tmp_path):
    """``from_pretrained`` reads encoder.safetensors; a pickle in its place is an error, never unpickled."""
    sentinel = tmp_path / "ran"
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"arch": "resnet18", "stem": "imagenet"}')
    (run / "encoder.safetensors").write_bytes(pickle.dumps(Payload(sentinel)))
    torch.save({"x": Payload(sentinel)}, run / "encoder_resnet18_simclr.pth")  # never read by CRLF
    with pytest.raises(UsageError, match="could not read .*encoder.safetensors"):
        ResNetEncoder.from_pretrained(run)
    assert not sentinel.exists()


def test_npy_with_objects_is_refused(tmp_path):
    sentinel = tmp_path / "ran"
    path = tmp_path / "train_embeddings.npy"
    np.save(path, np.array([Payload(sentinel)], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        load_array(path)
    assert not sentinel.exists()


def test_hostile_decode_cache_is_rebuilt_not_trusted(tmp_path, monkeypatch):
    monkeypatch.setenv("CRLF_CACHE", str(tmp_path / "cache"))
    root = write_tiny_folder(tmp_path / "images", train_per_class=2, test_per_class=1)
    first = load_dataset(str(root), 32, progress=False)
    (cached,) = (tmp_path / "cache").glob("*.npz")
    sentinel = tmp_path / "ran"
    np.savez(cached, meta=np.array([Payload(sentinel)], dtype=object), train_images=first.train.images)
    again = load_dataset(str(root), 32, progress=False)
    assert not sentinel.exists()
    assert np.array_equal(again.train.images, first.train.images)


def _calls(tree: ast.AST, attr: str, owner: str):
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attr
                and isinstance(node.func.value, ast.Name) and node.func.value.id == owner):
            yield node


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return None


def test_every_loader_in_the_source_is_safe():
    """Audit of src/crlf: torch.load only with weights_only=True, np.load only with allow_pickle=False,
    no pickle.load(s), no torch.hub/unsafe yaml."""
    problems, seen = [], {"torch.load": 0, "np.load": 0}
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        where = path.relative_to(SRC.parent)
        for call in _calls(tree, "load", "torch"):
            seen["torch.load"] += 1
            if _keyword(call, "weights_only") is not True:
                problems.append(f"{where}:{call.lineno}: torch.load without weights_only=True")
        for call in _calls(tree, "load", "np"):
            seen["np.load"] += 1
            if _keyword(call, "allow_pickle") is not False:
                problems.append(f"{where}:{call.lineno}: np.load without allow_pickle=False")
        for name in ("load", "loads"):
            for call in _calls(tree, name, "pickle"):
                problems.append(f"{where}:{call.lineno}: pickle.{name}")
        for call in _calls(tree, "load", "yaml"):
            problems.append(f"{where}:{call.lineno}: yaml.load (use yaml.safe_load)")
        for call in _calls(tree, "load", "hub"):
            problems.append(f"{where}:{call.lineno}: torch.hub.load")
    assert not problems, "\n".join(problems)
    assert seen["torch.load"] >= 1 and seen["np.load"] >= 1  # the audit does see the loaders
