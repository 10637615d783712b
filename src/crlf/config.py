"""The one place defaults live.

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

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DataConfig:
    source: str = "cifar10"  # "cifar10", "cifar100", an image folder, or a .tar/.tar.gz/.zip of one
    limit: int | None = None  # class-balanced subset of the training split
    image_size: int = 32
    on_bad_image: str = "error"  # "error" | "skip"


@dataclass(frozen=True)
class AugmentConfig:
    backend: str = "tensor"  # "tensor" (batched, per-sample parameters) | "pil" (per-image torchvision)
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
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "resnet18"  # resnet18 | resnet34 | resnet50
    stem: str = "imagenet"  # "imagenet" (7x7/2 conv + maxpool) | "cifar" (3x3/1 conv, no maxpool)
    proj_hidden_dim: int = 256
    proj_out_dim: int = 64
    proj_dropout: float = 0.0
    proj_batchnorm: bool = False


@dataclass(frozen=True)
class MethodConfig:
    name: str = "simclr"
    temperature: float = 0.07


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adam"  # adam | adamw | sgd
    lr: float = 3e-4
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str = "constant"  # constant | cosine
    warmup_epochs: float = 0.0


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 256
    seed: int = 0
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps
    precision: str = "fp32"  # fp32 | bf16 (autocast; the loss stays fp32)
    channels_last: bool = False
    compile: bool = False
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    checkpoint_every_steps: int = 0  # 0 = only at the end of each epoch
    eval_every: int = 0  # online kNN monitor every N epochs; 0 = off
    # Progressive resizing: the first ``low_res_epochs`` epochs crop views to ``low_res_size`` pixels
    # (cheaper steps: ~2.9x at 16 px vs 32 px with the ImageNet stem on a CPU), the rest to data.image_size.
    low_res_size: int = 0  # 0 = off
    low_res_epochs: int = 0


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
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) for YAML, JSON and checkpoints."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value

    return {
        section.name: {f.name: plain(getattr(getattr(cfg, section.name), f.name))
                       for f in dataclasses.fields(getattr(cfg, section.name))}
        for section in dataclasses.fields(cfg)
    }


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else f" Known keys: {', '.join(sorted(choices))}."


def _coerce(section: str, f: dataclasses.Field, value: Any) -> Any:
    default = f.default
    where = f"{section}.{f.name}"
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or len(value) != len(default):
            raise UsageError(f"config key '{where}' must be a list of {len(default)} numbers, got {value!r}.")
        return tuple(float(v) for v in value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise UsageError(f"config key '{where}' must be true or false, got {value!r}.")
        return value
    if isinstance(default, int) or f.name == "limit":
        if value is None and f.name == "limit":
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise UsageError(f"config key '{where}' must be an integer, got {value!r}.")
        return int(value)
    if isinstance(default, float):
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
    _check(cfg.method.temperature > 0, f"method.temperature must be > 0 (got {cfg.method.temperature}); try 0.07-0.5.")
    _check(t.batch_size >= 2, f"train.batch_size must be >= 2 (got {t.batch_size}): NT-Xent needs negatives.")
    _check(t.epochs >= 1, f"train.epochs must be >= 1 (got {t.epochs}).")
    _check(t.threads >= 0, f"train.threads must be >= 0 (got {t.threads}).")
    _check(t.checkpoint_every_steps >= 0, "train.checkpoint_every_steps must be >= 0.")
    _check(t.eval_every >= 0, "train.eval_every must be >= 0.")
    _check(t.low_res_epochs >= 0, f"train.low_res_epochs must be >= 0 (got {t.low_res_epochs}).")
    if t.low_res_epochs:
        _check(8 <= t.low_res_size <= d.image_size,
               f"train.low_res_size must be between 8 and data.image_size={d.image_size} when train.low_res_epochs "
               f"is set (got {t.low_res_size}).")
    _check(d.limit is None or d.limit >= 2, f"data.limit must be >= 2 images (got {d.limit}).")
    _check(d.image_size >= 8, f"data.image_size must be >= 8 pixels (got {d.image_size}).")
    _check_choice(d.on_bad_image, ("error", "skip"), "data.on_bad_image")
    _check_choice(a.backend, ("tensor", "pil"), "augment.backend")
    _check_choice(m.arch, ("resnet18", "resnet34", "resnet50"), "model.arch")
    _check_choice(m.stem, ("imagenet", "cifar"), "model.stem")
    _check_choice(cfg.method.name, ("simclr",), "method.name")
    _check_choice(o.name, ("adam", "adamw", "sgd"), "optim.name")
    _check_choice(o.schedule, ("constant", "cosine"), "optim.schedule")
    _check_choice(t.precision, ("fp32", "bf16"), "train.precision")
    _check(0 < a.crop_scale[0] <= a.crop_scale[1] <= 1, f"augment.crop_scale must satisfy 0 < min <= max <= 1 (got {list(a.crop_scale)}).")
    _check(0 < a.crop_ratio[0] <= a.crop_ratio[1], f"augment.crop_ratio must satisfy 0 < min <= max (got {list(a.crop_ratio)}).")
    for key in ("flip_p", "jitter_p", "grayscale_p", "blur_p"):
        value = getattr(a, key)
        _check(0 <= value <= 1, f"augment.{key} must be a probability in [0, 1] (got {value}).")
    for key in ("brightness", "contrast", "saturation"):
        _check(getattr(a, key) >= 0, f"augment.{key} must be >= 0.")
    _check(0 <= a.hue <= 0.5, f"augment.hue must be in [0, 0.5] (got {a.hue}).")
    _check(a.blur_kernel >= 1 and a.blur_kernel % 2 == 1, f"augment.blur_kernel must be odd and >= 1 (got {a.blur_kernel}).")
    _check(0 < a.blur_sigma[0] <= a.blur_sigma[1], "augment.blur_sigma must satisfy 0 < min <= max.")
    _check(all(s > 0 for s in a.std), "augment.std must be > 0.")
    _check(0 <= m.proj_dropout < 1, f"model.proj_dropout must be in [0, 1) (got {m.proj_dropout}).")
    _check(m.proj_hidden_dim >= 1 and m.proj_out_dim >= 1, "model.proj_hidden_dim and proj_out_dim must be >= 1.")
    _check(cfg.eval.knn_k >= 1, "eval.knn_k must be >= 1.")
    _check(cfg.eval.knn_temperature > 0, "eval.knn_temperature must be > 0.")
