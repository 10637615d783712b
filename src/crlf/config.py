"""The config: a tree of frozen dataclasses, one per section (their keys, defaults and own checks in
:mod:`crlf.config_sections`; the method's in its file under ``crlf/methods/``), and how it is read.

YAML files override the defaults, command-line flags override the YAML, and every override goes through
:func:`apply_overrides`, which rejects unknown keys (with a "did you mean"), converts each value to its field's
annotated type (:func:`convert`) and rejects impossible values: each section checks its own keys in its
``validate()``, as each method's settings do, and :meth:`Config.validate` then checks what spans sections.
Defaults are the reference recipe (``configs/seed.yaml`` spells them out too, so the file documents the recipe
on its own).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from crlf.config_sections import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentConfig,
    CropSpec,
    DataConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)
from crlf.errors import UsageError, check, check_choice, did_you_mean
from crlf.methods.settings import MethodSettings

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "AugmentConfig", "Config", "CropSpec", "DataConfig", "EvalConfig",
           "ModelConfig", "OptimConfig", "TrainConfig", "apply_overrides", "convert", "load_config", "load_run_config",
           "save_config", "to_dict"]


def _default_method() -> MethodSettings:
    """SimCLR's settings, the reference recipe's method (imported on first use: method files import torch)."""
    from crlf.methods import method_class

    return method_class("simclr").settings_type()


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

    def validate(self) -> None:
        """Reject impossible hyper-parameters with a message that names the fix: each section's own keys (the
        method's in its file), then what spans sections."""
        for section in dataclasses.fields(self):
            getattr(self, section.name).validate()
        self._check_views_fit()
        self._check_backbone_for_method()

    def _check_views_fit(self) -> None:
        """Views against the image: the low-resolution size, each crop's size, and (ViTs) at least one patch per
        view."""
        t, d, m, crops = self.train, self.data, self.model, self.augment.crops
        if d.image_size == "auto":
            # The recipe's pixel values are written for 32 px and scale with the side auto chooses
            # (crlf.training.resolution): checked at 32 px now, and again at the chosen side.
            d = dataclasses.replace(d, image_size=32)
        if t.low_res_epochs:
            check(8 <= t.low_res_size <= d.image_size,
                  f"train.low_res_size must be between 8 and data.image_size={d.image_size} when "
                  f"train.low_res_epochs is set (got {t.low_res_size}).")
        for i, crop in enumerate(crops):
            if crop.size is not None:
                check(8 <= crop.size <= 4 * d.image_size,
                      f"augment.crops[{i}].size must be between 8 and 4 x data.image_size (got {crop.size}).")
        if m.arch.startswith("vit_"):  # every view must hold at least one patch
            sizes = [c.size or d.image_size for c in crops]
            if t.low_res_epochs:  # views shrink with the image during the low-resolution epochs
                sizes = [max(4, round(s * t.low_res_size / d.image_size)) for s in sizes]  # as view_specs
            patch = m.patch_size or max(1, d.image_size // 8)
            check(patch <= min(sizes), f"model.patch_size {patch} is larger than the smallest view ({min(sizes)} "
                                       f"px); lower model.patch_size (0 = data.image_size // 8).")

    def _check_backbone_for_method(self) -> None:
        """A method that works on patch tokens (MAE) with a ResNet: said now, before any data is decoded. (A
        timm:<name> arch is checked when the backbone is built: only the model itself says whether it is a ViT.)"""
        from crlf.methods import method_class

        name, arch = self.method.name, self.model.arch
        if method_class(name).needs_vit and arch.startswith("resnet"):
            raise UsageError(f"{name} works on the patches of a Vision Transformer; model.arch={arch} is not one. "
                             f"Use model.arch=vit_tiny, vit_small or timm:<a ViT> (e.g. timm:vit_tiny_patch16_224), "
                             f"as configs/methods/{name}.yaml does.")


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


def _known_keys(word: str, choices: list[str]) -> str:
    return did_you_mean(word, choices, f" Known keys: {', '.join(sorted(choices))}.")


@functools.cache
def _annotations(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # the modules use postponed annotations: resolve the strings once per class


def convert(value: Any, annotation: Any, where: str) -> Any:
    """A YAML or ``--set`` value converted to its field's annotated type, or a usage error naming the key
    ``where`` (``section.key``) and what it takes. ``X | None`` also takes null; YAML's strings such as ``1e-5``
    (no dot: not a number to YAML 1.1) become numbers where a float is wanted; a fixed tuple takes a list."""
    optional = False
    if annotation == int | str:  # a size or "auto" (data.image_size)
        if value == "auto":
            return value
        if isinstance(value, str) or isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise UsageError(f"config key '{where}' must be an integer or auto, got {value!r}.")
        return int(value)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        if value is None:
            return None
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = True
    if annotation is bool:
        if not isinstance(value, bool):
            raise UsageError(f"config key '{where}' must be true or false{' or null' if optional else ''}, "
                             f"got {value!r}.")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise UsageError(f"config key '{where}' must be an integer, got {value!r}.")
        return int(value)
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string: accept what float() reads
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"config key '{where}' must be a number, got {value!r}.")
        return float(value)
    if annotation is str:
        return str(value)
    if annotation == tuple[CropSpec, ...]:
        return _convert_crops(value)
    if typing.get_origin(annotation) is tuple:  # a fixed number of numbers: a range, a mean per channel
        length = len(typing.get_args(annotation))
        if not isinstance(value, (list, tuple)) or len(value) != length:
            raise UsageError(f"config key '{where}' must be a list of {length} numbers, got {value!r}.")
        return tuple(float(v) for v in value)
    return value


def _convert_crops(value: Any) -> tuple[CropSpec, ...]:
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
                raise UsageError(f"unknown key '{key}' in augment.crops[{i}].{_known_keys(str(key), known)}")
        size, count, scale = item.get("size"), item.get("count", 2), item.get("scale")
        for key, v in (("size", size), ("count", count)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v):
                raise UsageError(f"augment.crops[{i}].{key} must be an integer, got {v!r}.")
        if scale is not None and (not isinstance(scale, (list, tuple)) or len(scale) != 2):
            raise UsageError(f"augment.crops[{i}].scale must be a list of 2 numbers, got {scale!r}.")
        crops.append(CropSpec(None if size is None else int(size), int(count),
                              None if scale is None else (float(scale[0]), float(scale[1]))))
    return tuple(crops)


def apply_overrides(cfg: Config, overrides: dict[str, Any], origin: str = "config") -> Config:
    """Return a new config with ``overrides`` ({section: {key: value}}) applied; reject unknown keys."""
    if not isinstance(overrides, dict):
        raise UsageError(f"{origin} must be a mapping of sections, got {type(overrides).__name__}.")
    sections = {f.name: f for f in dataclasses.fields(cfg)}
    changes = {}
    for section_name, values in overrides.items():
        if section_name not in sections:
            raise UsageError(f"unknown section '{section_name}' in {origin}.{_known_keys(section_name, list(sections))}")
        section = getattr(cfg, section_name)
        if not isinstance(values, dict):
            raise UsageError(f"section '{section_name}' in {origin} must be a mapping of keys to values.")
        if section_name == "method":
            changes[section_name] = _parse_method(section, values, origin)
            continue
        annotations = _annotations(type(section))
        updates = {}
        for key, value in values.items():
            if key not in annotations:
                raise UsageError(f"unknown key '{section_name}.{key}' in {origin}.{_known_keys(key, list(annotations))}")
            updates[key] = convert(value, annotations[key], f"{section_name}.{key}")
        changes[section_name] = dataclasses.replace(section, **updates)
    new = dataclasses.replace(cfg, **changes)
    new.validate()
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
    check_choice(name, METHOD_NAMES, "method.name")
    settings_type = method_class(name).settings_type
    base = current if name == current.name else settings_type()
    known = settings_type.keys()
    legacy = LEGACY_METHOD_KEYS <= values.keys()
    annotations = _annotations(settings_type)
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
            raise UsageError(f"unknown key 'method.{key}' in {origin}: method '{name}' has no setting '{key}'"
                             f"{where}. Its settings: {listed}.{did_you_mean(key, known)}")
        updates[key] = convert(value, annotations[key], f"method.{key}")
    return dataclasses.replace(base, **updates)


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
    cfg.validate()
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
