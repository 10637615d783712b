"""``crlf export RUN --format onnx|torchscript --out FILE``: a run's encoder as one file that needs no CRLF.

The exported model is the encoder in eval mode: input ``images`` ``(B, 3, S, S)`` float32, RGB scaled to [0, 1]
then normalised with the run's mean and std (``config.json``, the model card, and the file's own metadata:
ONNX ``metadata_props``, TorchScript extra file ``crlf.json``); output ``features`` ``(B, D)``. The batch axis
is dynamic; the image side ``S`` is fixed at export (the run's ``data.image_size`` unless ``--image-size``):
tracing bakes in shape-dependent choices (the ResNet's trimmed 3x3 taps on 1x1 maps, a ViT's patch grid).

Before anything is written, the exported model is run at batch sizes 1 and 3 and compared with PyTorch on the
same input (onnxruntime for ONNX, ``torch.jit.load`` for TorchScript); a mismatch is an error. The file is then
written atomically.

ONNX uses torch's TorchScript-based exporter (``dynamo=False``): in torch 2.14 it exports ResNets and timm ViTs
in about a second, with the same outputs as the newer ``torch.export``-based exporter (which also works for
these models, but takes 5-10 s each and needs onnxscript). ONNX needs ``pip install -e '.[export]'`` (onnx,
onnxruntime); TorchScript nothing beyond torch.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch

from crlf.errors import UsageError
from crlf.io import atomic_write_bytes
from crlf.models.backbones import load_encoder

FORMATS = ("onnx", "torchscript")
DEFAULT_NAMES = {"onnx": "encoder.onnx", "torchscript": "encoder.torchscript.pt"}
CHECK_BATCHES = (1, 3)
OPSET = 17  # LayerNormalization is an ONNX op from 17 on: ViTs export as one node per LayerNorm
TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}


def export_run(run_dir: Path, fmt: str, out: Path | None = None, image_size: int | None = None) -> dict:
    """Export ``run_dir``'s encoder to ``out`` (default ``RUN/encoder.onnx`` or ``RUN/encoder.torchscript.pt``);
    returns what was written (path, input and output shapes, normalisation, largest difference to PyTorch)."""
    run_dir = Path(run_dir)
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got '{fmt}'.")
    encoder = load_encoder(run_dir).eval()  # UsageError if the run has no published encoder
    meta = json.loads((run_dir / "config.json").read_text())
    size = image_size or int(meta["image_size"])
    if size < 1:
        raise UsageError(f"--image-size must be a positive number of pixels, got {size}.")
    info = {"format": fmt, "arch": meta["arch"], "input": "images", "input_shape": ["batch", 3, size, size],
            "output": "features", "output_shape": ["batch", encoder.feature_dim], "dtype": "float32",
            "image_size": size, "mean": meta["mean"], "std": meta["std"],
            "preprocessing": "RGB resized to image_size x image_size, scaled to [0, 1], (x - mean) / std per channel"}
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            encoder(example)
    except Exception as exc:  # e.g. a ViT whose patch does not divide the side
        raise UsageError(f"the {meta['arch']} encoder does not take {size}x{size} images: {exc}") from None
    if fmt == "onnx" and size != int(meta["image_size"]) and (meta.get("timm_kwargs") or {}).get("dynamic_img_size"):
        # At another size a ViT resamples its position embeddings with an antialiased bicubic interpolation, an
        # operator ONNX does not have (and torch's exporter then dumps the whole graph on stderr).
        raise UsageError(f"a {meta['arch']} encoder exports to ONNX only at the size it was trained at "
                         f"({meta['image_size']} px): leave out --image-size, or use --format torchscript.")
    data = _to_onnx(encoder, example, info) if fmt == "onnx" else _to_torchscript(encoder, example, info)
    run = _onnx_runner(data) if fmt == "onnx" else _torchscript_runner(data)
    info["max_abs_diff"] = _check(encoder, run, size, fmt, meta["arch"])
    out = Path(out) if out is not None else run_dir / DEFAULT_NAMES[fmt]
    atomic_write_bytes(out, data)
    return {"path": str(out), **info}


def _to_torchscript(encoder: torch.nn.Module, example: torch.Tensor, info: dict) -> bytes:
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about shape-dependent branches: see the docstring
            traced = torch.jit.trace(encoder, example, check_trace=False)
    except Exception as exc:
        raise UsageError(f"the {info['arch']} encoder cannot be traced to TorchScript: {exc}") from None
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(traced, buffer, _extra_files={"crlf.json": json.dumps(info)})
    return buffer.getvalue()


def _to_onnx(encoder: torch.nn.Module, example: torch.Tensor, info: dict) -> bytes:
    try:
        import onnx
        import onnxruntime  # noqa: F401 - checked here: the export is verified with it
    except ImportError as exc:
        raise UsageError(f"ONNX export needs onnx and onnxruntime ({exc}): pip install -e '.[export]'") from None
    buffer = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy-exporter notice and tracer warnings
            torch.onnx.export(encoder, (example,), buffer, dynamo=False, opset_version=OPSET, verbose=False,
                              input_names=["images"], output_names=["features"],
                              dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}})
    except Exception as exc:
        raise UsageError(f"the {info['arch']} encoder cannot be exported to ONNX: {exc}") from None
    model = onnx.load_from_string(buffer.getvalue())
    for key, value in info.items():  # the input spec travels with the file
        entry = model.metadata_props.add()
        entry.key, entry.value = f"crlf.{key}", json.dumps(value)
    model.doc_string = f"CRLF {info['arch']} encoder: {info['preprocessing']}; output (batch, D) features."
    return model.SerializeToString()


def _onnx_runner(data: bytes):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no busy-wait on shared cores
    session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"images": x.numpy()})[0]


def _torchscript_runner(data: bytes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates torch.jit; the format is the point
        module = torch.jit.load(io.BytesIO(data), map_location="cpu")

    def run(x):
        # Plain execution: the profiling executor's graph optimisation on the first calls costs seconds for a
        # ViT, and two calls would not amortise it; the numbers are the same either way.
        with torch.no_grad(), torch.jit.optimized_execution(False):
            return module(x).numpy()

    return run


def _check(encoder: torch.nn.Module, run, size: int, fmt: str, arch: str) -> float:
    """The exported model against PyTorch on the same inputs, at batch sizes other than the traced one."""
    gen = torch.Generator().manual_seed(1)
    worst = 0.0
    for batch in CHECK_BATCHES:
        x = torch.randn(batch, 3, size, size, generator=gen)
        with torch.no_grad():
            expected = encoder(x).numpy()
        got = run(x)
        if got.shape != expected.shape or not np.allclose(got, expected, **TOLERANCE):
            diff = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
            raise UsageError(f"the {fmt} export of the {arch} encoder does not match PyTorch at batch {batch} "
                             f"(shape {tuple(got.shape)} vs {tuple(expected.shape)}, largest difference {diff:.3g}); "
                             f"nothing was written. This backbone cannot be exported to {fmt} as it is.")
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst
