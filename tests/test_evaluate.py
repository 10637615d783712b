import numpy as np
import pytest
import torch

from crlf.evaluate import (
    ProtocolError,
    evaluate_features,
    extract_features,
    freeze,
    knn_predict,
    train_linear_probe,
)
from crlf.models.encoder import ResNetEncoder


def clusters(n_per_class=50, classes=4, dim=16, spread=0.1, seed=0):
    """Points around fixed class centres (the centres do not depend on ``seed``, the noise does)."""
    centres = np.random.default_rng(123).normal(size=(classes, dim)) * 3
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per_class)
    return (centres[y] + rng.normal(scale=spread, size=(len(y), dim))).astype(np.float32), y


def test_linear_probe_and_knn_on_separable_features():
    x, y = clusters()
    tx, ty = clusters(seed=1)
    metrics, probe = evaluate_features(x, y, tx, ty, ["a", "b", "c", "d"], knn_k=20)
    assert metrics["linear_top1"] == 1.0 and metrics["knn_top1"] == 1.0
    assert probe.weight_decay in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
    assert np.trace(np.asarray(metrics["confusion_matrix"])) == len(ty)


def test_random_features_are_near_chance():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(1000, 32)).astype(np.float32), rng.integers(0, 10, 1000)
    tx, ty = rng.normal(size=(1000, 32)).astype(np.float32), rng.integers(0, 10, 1000)
    metrics, _ = evaluate_features(x, y, tx, ty, [str(i) for i in range(10)])
    assert metrics["linear_top1"] < 0.16 and metrics["knn_top1"] < 0.16


def test_knn_hand_computed():
    train = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1])
    preds = knn_predict(train, labels, np.array([[1, 0.05], [0.05, 1]], np.float32), 2, ks=(1, 3), temperature=0.1)
    assert preds[1].tolist() == [0, 1] and preds[3].tolist() == [0, 1]


def test_weight_decay_is_chosen_without_test_data():
    x, y = clusters(spread=3.0)
    probe = train_linear_probe(x, y, 4)
    assert set(probe.holdout_accuracy) == {1e-6, 1e-5, 1e-4, 1e-3, 1e-2}


def test_guards_refuse_train_mode_or_trainable_encoder():
    enc = ResNetEncoder()
    images = np.zeros((2, 3, 32, 32), np.uint8)
    with pytest.raises(ProtocolError, match="train mode"):
        extract_features(enc, images, (0.5,) * 3, (0.5,) * 3, torch.device("cpu"), progress=False)
    enc.eval()
    with pytest.raises(ProtocolError, match="trainable"):
        extract_features(enc, images, (0.5,) * 3, (0.5,) * 3, torch.device("cpu"), progress=False)
    feats = extract_features(freeze(enc), images, (0.5,) * 3, (0.5,) * 3, torch.device("cpu"), progress=False)
    assert feats.shape == (2, 512)
