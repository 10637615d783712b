"""The sections of a config (``data``, ``augment``, ``model``, ``optim``, ``train``, ``eval``): their keys, defaults
and comments, and each section's ``validate()`` of its own keys, as each method's settings validate theirs (the
``method:`` section: ``crlf/methods/``). The tree, loading and what spans sections: :mod:`crlf.config`.
"""

from __future__ import annotations

from dataclasses import dataclass

from crlf.errors import UsageError, check, check_choice, did_you_mean

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DataConfig:
    # "cifar10", "cifar100", "stl10", "tinyimagenet", an image folder or a .tar/.tar.gz/.zip of one, or an
    # extracted stl10_binary/, cifar-100-python/, cifar-10-batches-py/ or tiny-imagenet-200/ folder
    source: str = "cifar10"
    limit: int | None = None  # class-balanced subset of the training split (and as many unlabeled images)
    # Training side in pixels, or "auto": chosen from the images' size, the device and the budget
    # (crlf.training.resolution); a published dataset keeps its own size (CIFAR 32, STL-10 96).
    image_size: int | str = "auto"
    on_bad_image: str = "error"  # "error" | "skip"
    # Training images: "memory" (one tensor, on the device), "memmap" (batches read from the cache file),
    # "auto" (memory up to 2 GiB of images, memmap above: data larger than memory never load whole)
    storage: str = "auto"

    def validate(self) -> None:
        check(self.limit is None or self.limit >= 2, f"data.limit must be >= 2 images (got {self.limit}).")
        check(self.image_size == "auto" or self.image_size >= 8,
              f"data.image_size must be >= 8 pixels or auto (got {self.image_size}).")
        check_choice(self.on_bad_image, ("error", "skip"), "data.on_bad_image")
        check_choice(self.storage, ("auto", "memory", "memmap"), "data.storage")


@dataclass(frozen=True)
class CropSpec:
    """``count`` views per image, each a random resized crop of ``scale`` of the image shown at ``size`` px.

    The first crop spec of ``augment.crops`` gives the *global* views (the ones a momentum teacher or a
    Sinkhorn assignment sees); later specs add cheaper local views (multi-crop, Caron et al., 2020)."""

    size: int | None = None  # None: data.image_size (scaled down with it during low-resolution epochs)
    count: int = 2
    scale: tuple[float, float] | None = None  # None: augment.crop_scale

    def validate(self, where: str) -> None:
        """Its own keys (its size against the image's is :meth:`Config.validate`'s); ``where``: augment.crops[i]."""
        check(self.count >= 1, f"{where}.count must be >= 1 (got {self.count}).")
        if self.scale is not None:
            check(0 < self.scale[0] <= self.scale[1] <= 1,
                  f"{where}.scale must satisfy 0 < min <= max <= 1 (got {list(self.scale)}).")


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

    def validate(self) -> None:
        check_choice(self.backend, ("tensor", "pil"), "augment.backend")
        check(0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
              f"augment.crop_scale must satisfy 0 < min <= max <= 1 (got {list(self.crop_scale)}).")
        check(0 < self.crop_ratio[0] <= self.crop_ratio[1],
              f"augment.crop_ratio must satisfy 0 < min <= max (got {list(self.crop_ratio)}).")
        for key in ("flip_p", "jitter_p", "grayscale_p", "blur_p"):
            value = getattr(self, key)
            check(0 <= value <= 1, f"augment.{key} must be a probability in [0, 1] (got {value}).")
        for key in ("brightness", "contrast", "saturation"):
            check(getattr(self, key) >= 0, f"augment.{key} must be >= 0.")
        check(0 <= self.hue <= 0.5, f"augment.hue must be in [0, 0.5] (got {self.hue}).")
        check(self.blur_kernel >= 1 and self.blur_kernel % 2 == 1,
              f"augment.blur_kernel must be odd and >= 1 (got {self.blur_kernel}).")
        check(0 <= self.blur_kernel_fraction <= 0.5, f"augment.blur_kernel_fraction must be in [0, 0.5] (got "
                                                     f"{self.blur_kernel_fraction}); 0.1 is SimCLR's, 0 means "
                                                     f"blur_kernel pixels.")
        check(0 < self.blur_sigma[0] <= self.blur_sigma[1], "augment.blur_sigma must satisfy 0 < min <= max.")
        check(all(s > 0 for s in self.std), "augment.std must be > 0.")
        for i, crop in enumerate(self.crops):
            crop.validate(f"augment.crops[{i}]")
        check(self.crops[0].count >= 2,
              f"augment.crops[0] gives the global views and needs count >= 2 (got {self.crops[0].count}): "
              f"every method compares at least two views of an image.")
        if self.backend == "pil":
            check(len(self.crops) == 1 and self.crops[0].count == 2,
                  "augment.backend=pil builds the reference's two views only; use the tensor backend for multi-crop.")


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

    def validate(self) -> None:
        if self.arch.startswith("timm:"):
            _check_timm_name(self.arch.removeprefix("timm:"))
        elif self.arch not in ARCHS:
            # A timm model's name without its prefix: suggest the prefix; else the nearest of ours.
            hint = (did_you_mean(self.arch, [self.arch], prefix="timm:") if _is_timm_model(self.arch)
                    else did_you_mean(self.arch, ARCHS))
            raise UsageError(f"model.arch must be one of {', '.join(ARCHS)} or timm:<name> (any timm model, e.g. "
                             f"timm:resnet10t); got '{self.arch}'.{hint}")
        check_choice(self.stem, ("imagenet", "cifar"), "model.stem")  # checked for every arch; only ResNets use it
        check(self.patch_size >= 0, f"model.patch_size must be >= 0 (got {self.patch_size}); 0 = data.image_size // 8.")
        check(0 <= self.drop_path_rate < 1, f"model.drop_path_rate must be in [0, 1) (got {self.drop_path_rate}).")
        check(0 <= self.proj_dropout < 1, f"model.proj_dropout must be in [0, 1) (got {self.proj_dropout}).")
        check(self.proj_hidden_dim >= 1 and self.proj_out_dim >= 1,
              "model.proj_hidden_dim and proj_out_dim must be >= 1.")
        check(self.proj_layers >= 1, f"model.proj_layers must be >= 1 (got {self.proj_layers}).")
        check(self.pred_hidden_dim >= 1, f"model.pred_hidden_dim must be >= 1 (got {self.pred_hidden_dim}).")


ARCHS = ("resnet18", "resnet34", "resnet50", "vit_tiny", "vit_small")  # and timm:<name>


def _is_timm_model(name: str) -> bool:
    import timm  # only for timm archs and unknown names: reading other configs never imports torch

    return timm.is_model(name)


def _check_timm_name(name: str) -> None:
    if not _is_timm_model(name):
        import timm

        hint = did_you_mean(name, timm.list_models(), " See timm.list_models() for the names.", prefix="timm:")
        raise UsageError(f"model.arch 'timm:{name}': timm {timm.__version__} has no model '{name}'.{hint}")


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

    def validate(self) -> None:
        check(self.lr > 0, f"optim.lr must be > 0 (got {self.lr}); try 3e-4 for Adam or 0.3-1.0 for SGD/LARS.")
        check(self.weight_decay >= 0, f"optim.weight_decay must be >= 0 (got {self.weight_decay}).")
        check(0 <= self.momentum < 1, f"optim.momentum must be in [0, 1) (got {self.momentum}).")
        check(self.warmup_epochs >= 0, f"optim.warmup_epochs must be >= 0 (got {self.warmup_epochs}).")
        check_choice(self.name, ("adam", "adamw", "sgd", "lars"), "optim.name")
        check_choice(self.schedule, ("constant", "cosine"), "optim.schedule")
        check(self.lars_eta > 0, f"optim.lars_eta must be > 0 (got {self.lars_eta}).")


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
    # Wall-clock budget of pretraining in minutes (crlf.training.schedule): the epochs, the low/full-resolution split and
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

    def validate(self) -> None:
        check(self.batch_size >= 2, f"train.batch_size must be >= 2 (got {self.batch_size}): every method uses "
                                    f"batch statistics or negatives.")
        check(self.epochs >= 1, f"train.epochs must be >= 1 (got {self.epochs}).")
        check(self.threads >= 0, f"train.threads must be >= 0 (got {self.threads}).")
        check(self.checkpoint_every_steps >= 0, "train.checkpoint_every_steps must be >= 0.")
        check(self.eval_every >= 0, "train.eval_every must be >= 0.")
        check(self.budget_minutes is None or self.budget_minutes > 0,
              f"train.budget_minutes (--budget) must be > 0 minutes (got {self.budget_minutes}); e.g. --budget 20.")
        check(self.low_res_epochs >= 0, f"train.low_res_epochs must be >= 0 (got {self.low_res_epochs}).")
        check_choice(self.precision, ("fp32", "bf16", "auto"), "train.precision")


@dataclass(frozen=True)
class EvalConfig:
    knn_k: int = 200
    knn_temperature: float = 0.1
    linear_max_iter: int = 200
    tsne_points: int = 2000
    # A labelled folder without a test split: the share of each class held out for the linear probe and kNN
    # to be measured on (seeded, stratified; crlf.data.holdout). Unused where the source has a test split.
    split: float = 0.2

    def validate(self) -> None:
        check(self.knn_k >= 1, "eval.knn_k must be >= 1.")
        check(self.knn_temperature > 0, "eval.knn_temperature must be > 0.")
        check(0 < self.split < 1, "eval.split (--eval-split) must be between 0 and 1, e.g. 0.2.")
