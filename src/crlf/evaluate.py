"""Evaluation of a frozen encoder: linear probe, kNN, per-class accuracy and the confusion matrix.

Protocol (guarded in code, not only written down):
* features come from un-augmented, normalised images, through the backbone (not the projection head),
  with the encoder frozen and in ``eval()`` mode under ``torch.inference_mode()``;
* the linear probe is trained on training features only; its weight decay is chosen on a held-out
  10 % of the training split, never on test, and the chosen value is recorded;
* pretraining only ever loaded the training split (``crlf.training.pretrain.load_training_data``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix
from tqdm.auto import tqdm

from crlf.data.augment import normalize
from crlf.neighbours import CosineIndex

PROBE_WEIGHT_DECAYS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
HOLDOUT_FRACTION = 0.1


class ProtocolError(AssertionError):
    """An evaluation would break the protocol (trainable or train-mode encoder, test data in training)."""


def assert_frozen(encoder: torch.nn.Module) -> None:
    if encoder.training:
        raise ProtocolError("the encoder is in train mode: BatchNorm would use batch statistics. Call encoder.eval().")
    if any(p.requires_grad for p in encoder.parameters()):
        raise ProtocolError("the encoder has trainable parameters: freeze it (requires_grad_(False)) for evaluation.")


def freeze(encoder: torch.nn.Module) -> torch.nn.Module:
    encoder.eval()
    encoder.requires_grad_(False)
    return encoder


@torch.inference_mode()
def extract_features(encoder: torch.nn.Module, images: np.ndarray, mean, std, device: torch.device,
                     batch_size: int = 512, progress: bool = True, desc: str = "features") -> np.ndarray:
    """uint8 ``(N, 3, H, W)`` -> backbone features ``(N, D)`` float32, without augmentation."""
    assert_frozen(encoder)
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", disable=not progress, leave=False):
        batch = torch.from_numpy(images[start:start + batch_size]).to(device)
        out.append(encoder(normalize(batch, mean, std)).float().cpu())  # (b, D)
    return torch.cat(out).numpy()


# ---------------------------------------------------------------------------------------------------
# Linear probe


@dataclass
class LinearProbe:
    weight: torch.Tensor  # (C, D), on standardised features
    bias: torch.Tensor  # (C,)
    mean: torch.Tensor  # (D,) feature standardisation learnt on train
    std: torch.Tensor  # (D,)
    weight_decay: float
    holdout_accuracy: dict[float, float]

    def logits(self, features: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(features, dtype=torch.float32)
        return ((x - self.mean) / self.std) @ self.weight.T + self.bias  # (N, C)


def _fit_softmax(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float, max_iter: int,
                 init: tuple[torch.Tensor, torch.Tensor] | None = None):
    """Multinomial logistic regression by full-batch L-BFGS: deterministic, and seconds for 50,000 x 512.

    ``init`` warm-starts from a nearby solution (the previous weight decay's): the objective is strictly
    convex, so the optimum is the same, only reached in fewer iterations."""
    weight = (init[0].clone() if init else torch.zeros(num_classes, x.shape[1])).requires_grad_(True)
    bias = (init[1].clone() if init else torch.zeros(num_classes)).requires_grad_(True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-9)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return weight.detach(), bias.detach()


def _standardised(train_x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(standardised features ``(N, D)``, their mean ``(D,)``, their std ``(D,)``)."""
    x = torch.as_tensor(train_x, dtype=torch.float32)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    return (x - mean) / std, mean, std


def _decay_path(xs: torch.Tensor, train_y: np.ndarray, num_classes: int, max_iter: int, seed: int,
                weight_decays) -> tuple[float, dict[float, float], dict]:
    """(the weight decay with the best accuracy on a stratified held-out part of ``xs`` ``(N, D)``, the
    accuracy of each, each one's solution on the rest)."""
    y = torch.as_tensor(train_y, dtype=torch.int64)
    rng = np.random.default_rng(seed)
    holdout = np.zeros(len(y), dtype=bool)
    for c in np.unique(train_y):  # stratified hold-out
        idx = rng.permutation(np.flatnonzero(train_y == c))
        holdout[idx[: max(1, int(round(len(idx) * HOLDOUT_FRACTION)))]] = True
    fit_idx, val_idx = torch.from_numpy(np.flatnonzero(~holdout)), torch.from_numpy(np.flatnonzero(holdout))
    accuracy, solutions, init = {}, {}, None
    # Strongest regulariser first, each fit warm-started from the last: the path of solutions is smooth in
    # the weight decay, which halves the probe's time on 50,000 x 512 features (bench/eval_speed.py).
    for wd in sorted(weight_decays, reverse=True):
        w, b = init = solutions[wd] = _fit_softmax(xs[fit_idx], y[fit_idx], num_classes, wd, max_iter, init)
        accuracy[wd] = float(((xs[val_idx] @ w.T + b).argmax(1) == y[val_idx]).float().mean())
    accuracy = {wd: accuracy[wd] for wd in weight_decays}
    best = max(weight_decays, key=lambda wd: (accuracy[wd], wd))  # ties: the stronger regulariser
    return best, accuracy, solutions


def train_linear_probe(train_x: np.ndarray, train_y: np.ndarray, num_classes: int, max_iter: int = 200,
                       seed: int = 0, weight_decays=PROBE_WEIGHT_DECAYS) -> LinearProbe:
    """Choose the weight decay on a held-out part of train, then refit on all of train."""
    xs, mean, std = _standardised(train_x)
    best, accuracy, solutions = _decay_path(xs, train_y, num_classes, max_iter, seed, weight_decays)
    w, b = _fit_softmax(xs, torch.as_tensor(train_y, dtype=torch.int64), num_classes, best, max_iter, solutions[best])
    return LinearProbe(w, b, mean, std, best, accuracy)


def choose_weight_decay(train_x: np.ndarray, train_y: np.ndarray, num_classes: int, max_iter: int = 200,
                        seed: int = 0, weight_decays=PROBE_WEIGHT_DECAYS) -> float:
    """The weight decay :func:`train_linear_probe` would choose, without its final fit."""
    return _decay_path(_standardised(train_x)[0], train_y, num_classes, max_iter, seed, weight_decays)[0]


def fit_linear_probe(train_x: np.ndarray, train_y: np.ndarray, num_classes: int, weight_decay: float,
                     max_iter: int = 200) -> LinearProbe:
    """One fit on all of train with a weight decay chosen already (no held-out part, nothing to choose)."""
    xs, mean, std = _standardised(train_x)
    w, b = _fit_softmax(xs, torch.as_tensor(train_y, dtype=torch.int64), num_classes, weight_decay, max_iter)
    return LinearProbe(w, b, mean, std, weight_decay, {})


# ---------------------------------------------------------------------------------------------------
# kNN


def knn_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, num_classes: int,
                ks=(200, 20), temperature: float = 0.1, chunk: int = 1024) -> dict[int, np.ndarray]:
    """Cosine-similarity kNN with votes weighted by ``exp(sim / T)`` (Wu et al., 2018). Returns {k: preds}."""
    labels = torch.as_tensor(train_y, dtype=torch.int64)
    top_sim, top_idx = CosineIndex(train_x).topk(test_x, max(ks), chunk)  # (M, kmax), most similar first
    weights = (top_sim / temperature).exp()
    top_labels = labels[top_idx]  # (M, kmax)
    preds = {}
    for k in ks:
        kk = min(k, top_idx.shape[1])
        votes = torch.zeros(len(top_idx), num_classes).scatter_add_(1, top_labels[:, :kk], weights[:, :kk])  # (M, C)
        preds[k] = votes.argmax(1).numpy()
    return preds


# ---------------------------------------------------------------------------------------------------
# Everything together


def evaluate_features(train_x, train_y, test_x, test_y, classes: list[str], knn_k: int = 200,
                      knn_temperature: float = 0.1, max_iter: int = 200, seed: int = 0) -> tuple[dict, LinearProbe]:
    num_classes = len(classes)
    t0 = time.perf_counter()
    probe = train_linear_probe(train_x, train_y, num_classes, max_iter=max_iter, seed=seed)
    linear_pred = probe.logits(test_x).argmax(1).numpy()
    t_linear = time.perf_counter() - t0
    t0 = time.perf_counter()
    ks = tuple(dict.fromkeys((knn_k, 20)))  # k=20 is always reported too
    knn = knn_predict(train_x, train_y, test_x, num_classes, ks=ks, temperature=knn_temperature)
    t_knn = time.perf_counter() - t0
    cm = confusion_matrix(test_y, linear_pred, labels=list(range(num_classes)))
    per_class = cm.diagonal() / np.maximum(cm.sum(1), 1)
    metrics = {
        "linear_top1": float((linear_pred == test_y).mean()),
        "knn_top1": float((knn[knn_k] == test_y).mean()),
        "knn_top1_k20": float((knn[20] == test_y).mean()),
        "knn": {"k": knn_k, "temperature": knn_temperature, "metric": "cosine"},
        "linear_probe": {"weight_decay": probe.weight_decay, "optimizer": "L-BFGS, full batch",
                         "max_iter": max_iter, "standardised_features": True,
                         "holdout_fraction_of_train": HOLDOUT_FRACTION,
                         "holdout_accuracy": {f"{k:g}": v for k, v in probe.holdout_accuracy.items()}},
        "per_class_accuracy": {c: float(a) for c, a in zip(classes, per_class)},
        "confusion_matrix": cm.tolist(),
        "classes": classes,
        "num_train": int(len(train_y)),
        "num_test": int(len(test_y)),
        "eval_linear_s": round(t_linear, 2),
        "eval_knn_s": round(t_knn, 2),
    }
    return metrics, probe
