"""Publishing an encoder: torch.hub (hubconf.py), the Hugging Face Hub mixin (offline, a local folder), the
model card (RUN/README.md) before and after evaluation, and `crlf export` to ONNX and TorchScript, checked
against PyTorch on the same input at two batch sizes."""

from __future__ import annotations

import ast
import importlib.util
import io
import json
import shutil
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from crlf.cli import main
from crlf.config import Config, apply_overrides, save_config
from crlf.models.backbones import build_backbone, load_encoder
from crlf.publish.export import export_encoder
from crlf.publish.model_card import evaluation_gap, write_model_card

from conftest import REPO

# torch 2.14 deprecates torch.jit; loading TorchScript files is what these tests check.
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:FutureWarning")
SMALL_FILES = ("config.json", "config.yaml", "encoder.safetensors", "metrics.jsonl", "metrics.json",
               "step_losses.npy", "command.json", "README.md")


def copy_run(run: Path, dest: Path) -> Path:
    """The small files of a run (not its 100 MB checkpoints): enough to load, export and describe it."""
    dest.mkdir(parents=True)
    for name in SMALL_FILES:
        if (run / name).is_file():
            shutil.copy2(run / name, dest / name)
    return dest


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: on 2 busy cores a second OpenMP thread makes a ViT forward pass ~30x slower, not faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory) -> Path:
    """A published vit_tiny run folder (config.yaml, config.json, encoder.safetensors), freshly initialised."""
    run = tmp_path_factory.mktemp("vit_run")
    cfg = apply_overrides(Config(), {"data": {"image_size": 32}, "model": {"arch": "vit_tiny"}, "method": {"name": "dino"}})
    torch.manual_seed(0)
    save_config(cfg, run / "config.yaml")
    export_encoder(build_backbone(cfg.model, cfg.data.image_size), cfg, run, extra={"data": "no data"})
    return run


@pytest.fixture(params=["resnet18", "vit_tiny"])
def any_run(request, tiny_run, vit_run) -> Path:
    return tiny_run if request.param == "resnet18" else vit_run


@pytest.fixture
def offline(monkeypatch):
    """No network: huggingface_hub in offline mode, and any connection attempt fails the test."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def refuse(*args, **kwargs):
        raise AssertionError(f"a network connection was attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def features(model, batch: int = 3, size: int = 32) -> torch.Tensor:
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        return model(x)


# --- torch.hub ---------------------------------------------------------------------------------------


def test_torch_hub_load_returns_the_run_encoder_in_eval_mode(tiny_run):
    enc = torch.hub.load(str(REPO), "encoder", run=str(tiny_run), source="local")
    assert not enc.training
    torch.testing.assert_close(features(enc), features(load_encoder(tiny_run)), rtol=0, atol=0)
    spec = importlib.util.spec_from_file_location("crlf_hubconf", REPO / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    assert "metrics.json" in hubconf.encoder.__doc__ and "README.md" in hubconf.encoder.__doc__  # the figures
    assert {"torch", "timm", "safetensors"} <= set(hubconf.dependencies)


# --- Hugging Face Hub --------------------------------------------------------------------------------


def test_hugging_face_round_trip_through_a_local_folder(any_run, tmp_path, offline):
    from crlf import HubEncoder

    model = HubEncoder.from_run(any_run)
    model.save_pretrained(tmp_path / "hf")
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = HubEncoder.from_pretrained(tmp_path / "hf")
    assert not loaded.training and loaded.feature_dim == model.feature_dim
    torch.testing.assert_close(features(loaded), features(load_encoder(any_run)), rtol=0, atol=0)
    # The weights keep torchvision's / timm's names, as encoder.safetensors; the config is the run's config.json.
    published, saved = load_file(any_run / "encoder.safetensors"), load_file(tmp_path / "hf" / "model.safetensors")
    assert published.keys() == saved.keys() and all(torch.equal(published[k], saved[k]) for k in published)
    assert json.loads((tmp_path / "hf" / "config.json").read_text()) == json.loads((any_run / "config.json").read_text())
    assert callable(loaded.push_to_hub)  # huggingface_hub's own upload; not called: no network here


def test_hugging_face_folder_carries_the_run_model_card(tiny_run, tmp_path, offline):
    from crlf import HubEncoder

    HubEncoder.from_run(tiny_run).save_pretrained(tmp_path / "hf")
    card = (tmp_path / "hf" / "README.md").read_text()
    assert card == (tiny_run / "README.md").read_text()
    from huggingface_hub import ModelCard

    data = ModelCard.load(tmp_path / "hf" / "README.md").data
    assert data.library_name == "crlf" and "simclr" in data.tags


def test_hugging_face_folder_without_weights_is_a_clear_error(tiny_run, tmp_path, offline):
    from crlf import HubEncoder
    from crlf.errors import UsageError

    HubEncoder.from_run(tiny_run).save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").unlink()
    with pytest.raises(UsageError, match="model.safetensors' is missing"):
        HubEncoder.from_pretrained(tmp_path / "hf")


# --- the model card ----------------------------------------------------------------------------------


def test_model_card_after_evaluation_has_the_figures_and_the_command(tiny_run):
    card = (tiny_run / "README.md").read_text()
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert card.startswith("---\nlibrary_name: crlf\n")  # Hugging Face metadata
    assert "# resnet18 encoder pretrained with SimCLR on " in card
    for text in ("| method | [SimCLR](https://arxiv.org/abs/2002.05709), temperature 0.07 |",
                 "| backbone | resnet18, imagenet stem, 512-d features |", "2 epochs, batch 8, adam lr 0.0003",
                 f"| {metrics['linear_top1']:.2%} | {metrics['knn_top1']:.2%} | {metrics['knn_top1_k20']:.2%} |",
                 "crlf run --config ", "--eval-every 1", "mean (0.485, 0.456, 0.406)"):
        assert text in card, text
    assert "Not evaluated" not in card


def test_model_card_before_evaluation_stale_and_unlabeled(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    (run / "metrics.json").unlink()
    card = write_model_card(run).read_text()
    assert f"Not evaluated yet: `crlf evaluate {run}`" in card and "linear probe top-1 |" not in card
    assert "metrics:" not in card.split("---")[1]  # no accuracy claimed in the metadata
    unlabeled = SimpleNamespace(classes=[], test=None)
    why = evaluation_gap(unlabeled)
    assert why == "the data have no labels"
    assert evaluation_gap(SimpleNamespace(classes=["a", "b"], test=None)) is None  # evaluated on a hold-out
    card = write_model_card(run, why).read_text()
    assert "Not evaluated: the data have no labels" in card and f"crlf evaluate {run} --data ROOT" in card
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "epochs": 1}))  # measured on an older encoder
    assert "**Stale:** these figures were measured after 1 epochs; the encoder now has 2" in write_model_card(
        run).read_text()


# --- crlf export -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch_with_a_dynamic_batch(any_run, fmt, tmp_path, capsys):
    out = tmp_path / ("encoder.onnx" if fmt == "onnx" else "encoder.pt")
    assert main(["export", str(any_run), "--format", fmt, "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    encoder = load_encoder(any_run)
    meta = json.loads((any_run / "config.json").read_text())
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(10 + batch))
        with torch.no_grad():
            expected = encoder(x).numpy()
        if fmt == "onnx":
            import onnxruntime

            session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            got = session.run(["features"], {"images": x.numpy()})[0]
            props = session.get_modelmeta().custom_metadata_map
            assert json.loads(props["crlf.mean"]) == meta["mean"] and json.loads(props["crlf.image_size"]) == 32
        else:
            extra = {"crlf.json": ""}
            module = torch.jit.load(str(out), _extra_files=extra)
            with torch.no_grad():
                got = module(x).numpy()
            assert json.loads(extra["crlf.json"])["std"] == meta["std"]
        assert got.shape == (batch, encoder.feature_dim)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_export_usage_errors_exit_2(tiny_run, vit_run, tmp_path, capsys):
    out = tmp_path / "x.onnx"
    assert main(["export", str(tiny_run), "--format", "tflite", "--out", str(out)]) == 2
    assert "invalid choice: 'tflite'" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nowhere"), "--format", "onnx", "--out", str(out)]) == 2
    assert "config.json' is missing" in capsys.readouterr().err
    # vit_tiny cuts 32-px images into 4-px patches: 30 px does not divide.
    assert main(["export", str(vit_run), "--format", "torchscript", "--image-size", "30", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "does not take 30x30 images" in err and "Traceback" not in err
    assert main(["export", str(vit_run), "--format", "onnx", "--image-size", "64", "--out", str(out)]) == 2
    assert "exports to ONNX only at the size it was trained at (32 px)" in capsys.readouterr().err
    assert not out.exists()


def test_publishing_modules_write_files_atomically():
    """As test_faults' audit: model cards, exports and Hub weights go through crlf.io (temp file, then rename).
    crlf/training/monitors/tensorboard.py is left out on purpose: event files are append-only logs (its docstring says why)."""
    problems = []
    for name in ("publish/model_card.py", "publish/formats.py", "publish/hub.py"):
        for node in ast.walk(ast.parse((REPO / "src" / "crlf" / name).read_text())):
            if isinstance(node, ast.Call):
                func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if func in ("write_text", "write_bytes", "open", "save_model", "save_file"):
                    problems.append(f"{name}:{node.lineno}: {func}()")
                target = {"save": 1, "export": 2}.get(func)  # torch.jit.save(m, f), torch.onnx.export(m, args, f)
                if target is not None and len(node.args) > target and not (
                        isinstance(node.args[target], ast.Name) and node.args[target].id == "buffer"):
                    problems.append(f"{name}:{node.lineno}: {func}() to a path")
    assert not problems, "\n".join(problems)


def test_exported_torchscript_needs_no_crlf(tiny_run, tmp_path):
    """The file loads with nothing but torch: no CRLF class is referenced by the traced graph."""
    out = tmp_path / "encoder.pt"
    assert main(["export", str(tiny_run), "--format", "torchscript", "--out", str(out)]) == 0
    code = torch.jit.load(str(out)).code
    assert "crlf" not in code.lower()
    buffer = io.BytesIO(out.read_bytes())
    assert torch.jit.load(buffer)(torch.zeros(2, 3, 32, 32)).shape == (2, 512)
