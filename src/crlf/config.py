"""The one place defaults live, except each method's own: those are in its file (``crlf/methods/``).

A config is a tree of frozen dataclasses. YAML files override the defaults, command-line flags override
the YAML, and every override goes through :func:`apply_overrides`, which rejects unknown keys (with a
"did you mean") and impossible values. Defaults here are the reference recipe (``configs/seed.yaml``
spells them out too, so the file documents the recipe on its own).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from crlf.errors import UsageError
from crlf.methods.settings import MethodSettings

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DataConfig:
    # "cifar10", "cifar100", "stl10", "tinyimagenet", an image folder or a .tar/.tar.gz/.zip of one, or an
    # extracted stl10_binary/, cifar-100-python/, cifar-10-batches-py/ or tiny-imagenet-200/ folder
    source: str = "cifar10"
    limit: int | None = None  # class-balanced subset of the training split (and as many unlabeled images)
    image_size: int = 32
    on_bad_image: str = "error"  # "error" | "skip"
    # Training images: "memory" (one tensor, on the device), "memmap" (batches read from the cache file),
    # "auto" (memory up to 2 GiB of images, memmap above: data larger than memory never load whole)
    storage: str = "auto"


@dataclass(frozen=True)
class CropSpec:
    """``count`` views per image, each a random resized crop of ``scale`` of the image shown at ``size`` px.

    The first crop spec of ``augment.crops`` gives the *global* views (the ones a momentum teacher or a
    Sinkhorn assignment sees); later specs add cheaper local views (multi-crop, Caron et al., 2020)."""

    size: int | None = None  # None: data.image_size (scaled down with it during low-resolution epochs)
    count: int = 2
    scale: tuple[float, float] | None = None  # None: augment.crop_scale


@dataclass(frozen=True)
class AugmentConfig:
    backend: str = "tensor"  # "tensor" (batched, per-sample parameters) | "pil" (per-image torchvision)
    crops: tuple[CropSpec, ...] = (CropSpec(),)  # default: two views at data.image_size (SimCLR's pair)
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 1.0  # the reference applies GaussianBlur(3) to every view
    blur_kernel: int = 3
    # > 0: the kernel is this fraction of each view's side instead, odd as SimCLR makes it (radius =
    # int(fraction * side) // 2): 0.1 gives 3 px at 32, 7 at 64, 9 at 96, 23 at 224. 0: blur_kernel pixels.
    blur_kernel_fraction: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "resnet18"  # resnet18 | resnet34 | resnet50 | vit_tiny | vit_small | timm:<any timm model name>
    # ResNets only (other archs ignore it): "imagenet" (7x7/2 conv + maxpool) | "cifar" (3x3/1 conv, no maxpool)
    stem: str = "imagenet"
    # ViTs: pixels per patch side; 0 = data.image_size // 8 (an 8x8 grid: 4 px at 32 px). timm:<name>: 0 = its own.
    patch_size: int = 0
    drop_path_rate: float = 0.0  # ViTs and timm models: stochastic depth (0 = off)
    # The method's projector: proj_layers linear layers (hidden width proj_hidden_dim) -> proj_out_dim.
    proj_hidden_dim: int = 256
    proj_out_dim: int = 64
    proj_layers: int = 2
    proj_dropout: float = 0.0
    proj_batchnorm: bool = False  # BatchNorm after each hidden linear layer
    proj_last_batchnorm: bool = False  # BatchNorm (no affine) on the output too (SimSiam, MoCo v3)
    # The predictor of BYOL, SimSiam and MoCo v3: proj_out_dim -> pred_hidden_dim -> proj_out_dim.
    pred_hidden_dim: int = 512


def _default_method() -> MethodSettings:
    """SimCLR's settings, the reference recipe's method (imported on first use: method files import torch)."""
    from crlf.methods import method_class

    return method_class("simclr").settings_type()


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adam"  # adam | adamw | sgd | lars
    lr: float = 3e-4
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd, lars
    schedule: str = "constant"  # constant | cosine
    warmup_epochs: float = 0.0
    # No weight decay (and, for LARS, no trust-ratio scaling) on biases and normalisation weights, as most
    # self-supervised papers do; the reference recipe decays every parameter.
    exclude_bias_and_norm: bool = False
    lars_eta: float = 0.02  # LARS trust coefficient (You et al., 2017; 0.02 as in solo-learn's CIFAR recipes)
    lars_trust_clip: bool = False  # LARC: trust ratio clipped to min(trust / lr, 1) (solo-learn's clip_lr)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 256
    seed: int = 0
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps
    # fp32 | bf16 (autocast; losses and norms stay fp32) | auto: on a CPU, measured (crlf.training.precision: fp32 or bf16,
    # with or without channels_last, whichever trains fastest here; it then sets the layout too), on a GPU
    # bf16 where it has it
    precision: str = "fp32"
    channels_last: bool = False
    # Wall-clock budget of pretraining in minutes (crlf.training.budget_planner): the epochs, the low/full-resolution split and
    # every schedule are planned to end within it. None: train.epochs epochs, as without a budget.
    budget_minutes: float | None = None
    compile: bool = False
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    checkpoint_every_steps: int = 0  # 0 = only at the end of each epoch
    eval_every: int = 0  # online kNN monitor every N epochs; 0 = off
    # Progressive resizing: the first ``low_res_epochs`` epochs crop views to ``low_res_size`` pixels
    # (cheaper steps: ~2.9x at 16 px vs 32 px with the ImageNet stem on a CPU), the rest to data.image_size.
    low_res_size: int = 0  # 0 = off
    low_res_epochs: int = 0
    # Several processes (torchrun): BatchNorm statistics over the global batch. None: the method's default.
    sync_batchnorm: bool | None = None
    # TensorBoard event files in RUN/tensorboard/ (rank 0): step loss and lr, epoch figures, the kNN monitor;
    # after `crlf evaluate`, the embedding projector. Logging draws no random numbers: runs train identically.
    tensorboard: bool = True
    # A linear classifier on the detached backbone features, trained beside the method where the training images
    # have labels; its accuracy per epoch is online_probe_top1 (crlf.training.monitors.online_probe). It never changes the encoder.
    online_probe: bool = True


@dataclass(frozen=True)
class EvalConfig:
    knn_k: int = 200
    knn_temperature: float = 0.1
    linear_max_iter: int = 200
    tsne_points: int = 2000


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    # The method's own settings dataclass (crlf.methods.<file>), chosen by method.name: see _parse_method.
    method: MethodSettings = field(default_factory=_default_method)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) for YAML, JSON and checkpoints."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return value

    return {
        section.name: {f.name: plain(getattr(getattr(cfg, section.name), f.name))
                       for f in dataclasses.fields(getattr(cfg, section.name))}
        for section in dataclasses.fields(cfg)
    }


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else f" Known keys: {', '.join(sorted(choices))}."


def _coerce_crops(value: Any) -> tuple[CropSpec, ...]:
    example = "e.g. [{size: 32, count: 2}, {size: 16, count: 4, scale: [0.1, 0.4]}]"
    if not isinstance(value, (list, tuple)) or not value:
        raise UsageError(f"augment.crops must be a non-empty list of {{size, count, scale}}, {example}; got {value!r}.")
    known = [f.name for f in dataclasses.fields(CropSpec)]
    crops = []
    for i, item in enumerate(value):
        if isinstance(item, CropSpec):
            crops.append(item)
            continue
        if not isinstance(item, dict):
            raise UsageError(f"augment.crops[{i}] must be a mapping like {{size: 32, count: 2}}, got {item!r}.")
        for key in item:
            if key not in known:
                raise UsageError(f"unknown key '{key}' in augment.crops[{i}].{_suggest(str(key), known)}")
        size, count, scale = item.get("size"), item.get("count", 2), item.get("scale")
        for key, v in (("size", size), ("count", count)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v):
                raise UsageError(f"augment.crops[{i}].{key} must be an integer, got {v!r}.")
        if scale is not None and (not isinstance(scale, (list, tuple)) or len(scale) != 2):
            raise UsageError(f"augment.crops[{i}].scale must be a list of 2 numbers, got {scale!r}.")
        crops.append(CropSpec(None if size is None else int(size), int(count),
                              None if scale is None else (float(scale[0]), float(scale[1]))))
    return tuple(crops)


def _coerce(section: str, f: dataclasses.Field, value: Any) -> Any:
    default = f.default
    where = f"{section}.{f.name}"
    if f.name == "crops":
        return _coerce_crops(value)
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or len(value) != len(default):
            raise UsageError(f"config key '{where}' must be a list of {len(default)} numbers, got {value!r}.")
        return tuple(float(v) for v in value)
    if isinstance(default, bool) or (default is None and f.name == "sync_batchnorm"):
        if not isinstance(value, bool) and not (default is None and value is None):
            raise UsageError(f"config key '{where}' must be true or false{' or null' if default is None else ''}, "
                             f"got {value!r}.")
        return value
    if f.name == "budget_minutes" and value is None:
        return None
    if f.name == "budget_minutes":
        default = 0.0  # a number when set
    if isinstance(default, int) or f.name == "limit":
        if value is None and f.name == "limit":
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise UsageError(f"config key '{where}' must be an integer, got {value!r}.")
        return int(value)
    if isinstance(default, float):
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string: accept what float() reads
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"config key '{where}' must be a number, got {value!r}.")
        return float(value)
    if isinstance(default, str):
        return str(value)
    return value


def apply_overrides(cfg: Config, overrides: dict[str, Any], origin: str = "config") -> Config:
    """Return a new config with ``overrides`` ({section: {key: value}}) applied; reject unknown keys."""
    if not isinstance(overrides, dict):
        raise UsageError(f"{origin} must be a mapping of sections, got {type(overrides).__name__}.")
    sections = {f.name: f for f in dataclasses.fields(cfg)}
    changes = {}
    for section_name, values in overrides.items():
        if section_name not in sections:
            raise UsageError(f"unknown section '{section_name}' in {origin}.{_suggest(section_name, list(sections))}")
        section = getattr(cfg, section_name)
        if not isinstance(values, dict):
            raise UsageError(f"section '{section_name}' in {origin} must be a mapping of keys to values.")
        if section_name == "method":
            changes[section_name] = _parse_method(section, values, origin)
            continue
        fields_by_name = {f.name: f for f in dataclasses.fields(section)}
        updates = {}
        for key, value in values.items():
            if key not in fields_by_name:
                raise UsageError(
                    f"unknown key '{section_name}.{key}' in {origin}.{_suggest(key, list(fields_by_name))}"
                )
            updates[key] = _coerce(section_name, fields_by_name[key], value)
        changes[section_name] = dataclasses.replace(section, **updates)
    new = dataclasses.replace(cfg, **changes)
    validate(new)
    return new


# The keys of the one flat method section before each method declared its own settings: a run folder's
# config.yaml or a checkpoint written then holds all of them, so such a section is read by dropping the keys its
# method did not read (that run ignored them too). A section written by hand never holds all eighteen.
LEGACY_METHOD_KEYS = frozenset((
    "temperature", "momentum", "momentum_final", "queue_size", "queue_start_epoch", "num_prototypes",
    "sinkhorn_epsilon", "sinkhorn_iterations", "freeze_prototypes_epochs", "sim_weight", "var_weight", "cov_weight",
    "redundancy_weight", "loss_scale", "teacher_temperature", "warmup_teacher_temperature", "warmup_teacher_epochs",
    "center_momentum"))


def _parse_method(current: MethodSettings, values: dict[str, Any], origin: str) -> MethodSettings:
    """The ``method:`` section parsed by the settings class of the method it names (or, without a name, of the
    current method): keys are checked against that method's own keys. Naming another method starts from its
    defaults: what an earlier file set for the previous method does not carry over."""
    from crlf.methods import METHOD_NAMES, method_class

    name = str(values.get("name", current.name))
    _check_choice(name, METHOD_NAMES, "method.name")
    settings_type = method_class(name).settings_type
    base = current if name == current.name else settings_type()
    known = settings_type.keys()
    legacy = LEGACY_METHOD_KEYS <= values.keys()
    fields_by_name = {f.name: f for f in dataclasses.fields(settings_type)}
    updates = {}
    for key, value in values.items():
        if key == "name":
            continue
        if key not in known:
            if (legacy and key in LEGACY_METHOD_KEYS) or settings_type.off_values.get(key, object()) == value:
                continue
            having = [n for n in METHOD_NAMES if key in method_class(n).settings_type.keys()]
            where = f" (a setting of {', '.join(having)})" if having else ""
            listed = ", ".join(known) if known else "none"
            hint = f" Did you mean '{close}'?" if (close := _close(key, known)) else ""
            raise UsageError(f"unknown key 'method.{key}' in {origin}: method '{name}' has no setting '{key}'"
                             f"{where}. Its settings: {listed}.{hint}")
        updates[key] = _coerce("method", fields_by_name[key], value)
    return dataclasses.replace(base, **updates)


def _close(word: str, choices: list[str]) -> str | None:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return close[0] if close else None


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the YAML file at ``path`` (if any), then ``overrides``."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"config file '{path}' does not exist. Pick one from configs/ (e.g. configs/seed.yaml).")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UsageError(f"config file '{path}' is not valid YAML: {exc}") from None
        cfg = apply_overrides(cfg, loaded, origin=f"'{path}'")
    if overrides:
        cfg = apply_overrides(cfg, overrides, origin="the command line")
    validate(cfg)
    return cfg


def load_run_config(run_dir: str | Path) -> Config:
    """The resolved config of a run folder (``RUN/config.yaml``); light to import, unlike the pipeline."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UsageError(f"'{run_dir}' is not a CRLF run folder (no config.yaml). Run crlf pretrain --out {run_dir} first.")
    return load_config(path)


def save_config(cfg: Config, path: Path) -> None:
    from crlf.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise UsageError(message)


def _check_choice(value: str, choices: tuple[str, ...], key: str) -> None:
    if value not in choices:
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UsageError(f"{key} must be one of {', '.join(choices)}; got '{value}'.{hint}")


def validate(cfg: Config) -> None:
    """Reject impossible hyper-parameters with a message that names the fix."""
    t, o, m, a, d = cfg.train, cfg.optim, cfg.model, cfg.augment, cfg.data
    _check(o.lr > 0, f"optim.lr must be > 0 (got {o.lr}); try 3e-4 for Adam or 0.3-1.0 for SGD/LARS.")
    _check(o.weight_decay >= 0, f"optim.weight_decay must be >= 0 (got {o.weight_decay}).")
    _check(0 <= o.momentum < 1, f"optim.momentum must be in [0, 1) (got {o.momentum}).")
    _check(o.warmup_epochs >= 0, f"optim.warmup_epochs must be >= 0 (got {o.warmup_epochs}).")
    _check(t.batch_size >= 2, f"train.batch_size must be >= 2 (got {t.batch_size}): every method uses batch "
                              f"statistics or negatives.")
    _check(t.epochs >= 1, f"train.epochs must be >= 1 (got {t.epochs}).")
    _check(t.threads >= 0, f"train.threads must be >= 0 (got {t.threads}).")
    _check(t.checkpoint_every_steps >= 0, "train.checkpoint_every_steps must be >= 0.")
    _check(t.eval_every >= 0, "train.eval_every must be >= 0.")
    _check(t.budget_minutes is None or t.budget_minutes > 0,
           f"train.budget_minutes (--budget) must be > 0 minutes (got {t.budget_minutes}); e.g. --budget 20.")
    _check(t.low_res_epochs >= 0, f"train.low_res_epochs must be >= 0 (got {t.low_res_epochs}).")
    if t.low_res_epochs:
        _check(8 <= t.low_res_size <= d.image_size,
               f"train.low_res_size must be between 8 and data.image_size={d.image_size} when train.low_res_epochs "
               f"is set (got {t.low_res_size}).")
    _check(d.limit is None or d.limit >= 2, f"data.limit must be >= 2 images (got {d.limit}).")
    _check(d.image_size >= 8, f"data.image_size must be >= 8 pixels (got {d.image_size}).")
    _check_choice(d.on_bad_image, ("error", "skip"), "data.on_bad_image")
    _check_choice(d.storage, ("auto", "memory", "memmap"), "data.storage")
    _check_choice(a.backend, ("tensor", "pil"), "augment.backend")
    _validate_model(cfg)
    _check_choice(o.name, ("adam", "adamw", "sgd", "lars"), "optim.name")
    _check_choice(o.schedule, ("constant", "cosine"), "optim.schedule")
    _check_choice(t.precision, ("fp32", "bf16", "auto"), "train.precision")
    _check(0 < a.crop_scale[0] <= a.crop_scale[1] <= 1, f"augment.crop_scale must satisfy 0 < min <= max <= 1 (got {list(a.crop_scale)}).")
    _check(0 < a.crop_ratio[0] <= a.crop_ratio[1], f"augment.crop_ratio must satisfy 0 < min <= max (got {list(a.crop_ratio)}).")
    for key in ("flip_p", "jitter_p", "grayscale_p", "blur_p"):
        value = getattr(a, key)
        _check(0 <= value <= 1, f"augment.{key} must be a probability in [0, 1] (got {value}).")
    for key in ("brightness", "contrast", "saturation"):
        _check(getattr(a, key) >= 0, f"augment.{key} must be >= 0.")
    _check(0 <= a.hue <= 0.5, f"augment.hue must be in [0, 0.5] (got {a.hue}).")
    _check(a.blur_kernel >= 1 and a.blur_kernel % 2 == 1, f"augment.blur_kernel must be odd and >= 1 (got {a.blur_kernel}).")
    _check(0 <= a.blur_kernel_fraction <= 0.5, f"augment.blur_kernel_fraction must be in [0, 0.5] (got "
                                               f"{a.blur_kernel_fraction}); 0.1 is SimCLR's, 0 means blur_kernel pixels.")
    _check(0 < a.blur_sigma[0] <= a.blur_sigma[1], "augment.blur_sigma must satisfy 0 < min <= max.")
    _check(all(s > 0 for s in a.std), "augment.std must be > 0.")
    _check(0 <= m.proj_dropout < 1, f"model.proj_dropout must be in [0, 1) (got {m.proj_dropout}).")
    _check(m.proj_hidden_dim >= 1 and m.proj_out_dim >= 1, "model.proj_hidden_dim and proj_out_dim must be >= 1.")
    _check(m.proj_layers >= 1, f"model.proj_layers must be >= 1 (got {m.proj_layers}).")
    _check(m.pred_hidden_dim >= 1, f"model.pred_hidden_dim must be >= 1 (got {m.pred_hidden_dim}).")
    _check(o.lars_eta > 0, f"optim.lars_eta must be > 0 (got {o.lars_eta}).")
    _validate_crops(cfg)
    cfg.method.validate()  # the method's own checks, in its file
    _validate_backbone_for_method(cfg)
    _check(cfg.eval.knn_k >= 1, "eval.knn_k must be >= 1.")
    _check(cfg.eval.knn_temperature > 0, "eval.knn_temperature must be > 0.")


def _validate_crops(cfg: Config) -> None:
    for i, crop in enumerate(cfg.augment.crops):
        _check(crop.count >= 1, f"augment.crops[{i}].count must be >= 1 (got {crop.count}).")
        if crop.size is not None:
            _check(8 <= crop.size <= 4 * cfg.data.image_size,
                   f"augment.crops[{i}].size must be between 8 and 4 x data.image_size (got {crop.size}).")
        if crop.scale is not None:
            _check(0 < crop.scale[0] <= crop.scale[1] <= 1,
                   f"augment.crops[{i}].scale must satisfy 0 < min <= max <= 1 (got {list(crop.scale)}).")
    _check(cfg.augment.crops[0].count >= 2,
           f"augment.crops[0] gives the global views and needs count >= 2 (got {cfg.augment.crops[0].count}): "
           f"every method compares at least two views of an image.")
    if cfg.augment.backend == "pil":
        _check(len(cfg.augment.crops) == 1 and cfg.augment.crops[0].count == 2,
               "augment.backend=pil builds the reference's two views only; use the tensor backend for multi-crop.")


ARCHS = ("resnet18", "resnet34", "resnet50", "vit_tiny", "vit_small")  # and timm:<name>


def _validate_backbone_for_method(cfg: Config) -> None:
    """A method that works on patch tokens (MAE) with a ResNet: said now, before any data is decoded. (A timm:<name>
    arch is checked when the backbone is built: only the model itself says whether it is a ViT.)"""
    from crlf.methods import method_class

    if method_class(cfg.method.name).needs_vit and cfg.model.arch.startswith("resnet"):
        raise UsageError(f"{cfg.method.name} works on the patches of a Vision Transformer; model.arch="
                         f"{cfg.model.arch} is not one. Use model.arch=vit_tiny, vit_small or timm:<a ViT> (e.g. "
                         f"timm:vit_tiny_patch16_224), as configs/methods/{cfg.method.name}.yaml does.")


def _validate_model(cfg: Config) -> None:
    m, d = cfg.model, cfg.data
    if m.arch.startswith("timm:"):
        _check_timm_name(m.arch.removeprefix("timm:"))
    elif m.arch not in ARCHS:
        close = [f"timm:{m.arch}"] if _is_timm_model(m.arch) else difflib.get_close_matches(m.arch, ARCHS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UsageError(f"model.arch must be one of {', '.join(ARCHS)} or timm:<name> (any timm model, e.g. "
                         f"timm:resnet10t); got '{m.arch}'.{hint}")
    _check_choice(m.stem, ("imagenet", "cifar"), "model.stem")  # checked for every arch; only ResNets use it
    _check(m.patch_size >= 0, f"model.patch_size must be >= 0 (got {m.patch_size}); 0 = data.image_size // 8.")
    _check(0 <= m.drop_path_rate < 1, f"model.drop_path_rate must be in [0, 1) (got {m.drop_path_rate}).")
    if m.arch.startswith("vit_"):  # every view must hold at least one patch
        sizes = [c.size or d.image_size for c in cfg.augment.crops]
        if cfg.train.low_res_epochs:  # views shrink with the image during the low-resolution epochs
            sizes = [max(4, round(s * cfg.train.low_res_size / d.image_size)) for s in sizes]  # as view_specs
        patch = m.patch_size or max(1, d.image_size // 8)
        _check(patch <= min(sizes), f"model.patch_size {patch} is larger than the smallest view ({min(sizes)} px); "
                                    f"lower model.patch_size (0 = data.image_size // 8).")


def _is_timm_model(name: str) -> bool:
    import timm  # only for timm archs and unknown names: reading other configs never imports torch

    return timm.is_model(name)


def _check_timm_name(name: str) -> None:
    if not _is_timm_model(name):
        import timm

        close = difflib.get_close_matches(name, timm.list_models(), n=1)
        hint = f" Did you mean 'timm:{close[0]}'?" if close else " See timm.list_models() for the names."
        raise UsageError(f"model.arch 'timm:{name}': timm {timm.__version__} has no model '{name}'.{hint}")
