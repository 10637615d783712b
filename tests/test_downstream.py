"""Issue 4 metrics against hand-computed cases, and the protocol guards firing when violated."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crlf.downstream.fewshot import few_shot_accuracy, few_shot_eval, sample_episodes
from crlf.downstream.label_efficiency import label_efficiency, subset_index
from crlf.downstream.protocol import check_deterministic, check_disjoint, protocol_record
from crlf.downstream.retrieval import clustering_metrics, ranked_relevance, retrieval_metrics
from crlf.evaluate import ProtocolError, freeze


def blobs(n_per_class: int, classes: int, dim: int = 16, spread: float = 0.05, seed: int = 0):
    """Tight clusters around orthogonal directions: perfectly separable by cosine."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per_class)
    x = np.eye(dim, dtype=np.float32)[y] + rng.normal(0, spread, (len(y), dim)).astype(np.float32)
    return x, y


# --------------------------------------------------------------------------------------------- retrieval

def test_retrieval_on_a_hand_computed_case():
    # Train: 4 points on the unit circle; classes 0, 0, 1, 1 at angles 0, 90, 180, 270 degrees.
    train = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], dtype=np.float32)
    train_y = np.array([0, 0, 1, 1])
    # Query A (class 0) at 10 deg: ranking 0deg(0) 90deg(0) 270deg(1) 180deg(1) -> AP = (1/1 + 2/2) / 2 = 1
    # Query B (class 1) at 10 deg: relevant items at ranks 3 and 4 -> AP = (1/3 + 2/4) / 2 = 5/12
    # Query C (class 1) at 100 deg: ranking 90(0) 180(1) 0(0) 270(1) -> AP = (1/2 + 2/4) / 2 = 1/2
    a = [np.cos(np.radians(10)), np.sin(np.radians(10))]
    c = [np.cos(np.radians(100)), np.sin(np.radians(100))]
    test = np.array([a, a, c], dtype=np.float32)
    test_y = np.array([0, 1, 1])
    m = retrieval_metrics(train, train_y, test, test_y, ks=(1, 2, 3))
    assert m["recall@1"] == pytest.approx(1 / 3)  # only A's nearest shares its class
    assert m["recall@2"] == pytest.approx(2 / 3)  # C's 2nd neighbour (180) is class 1
    assert m["recall@3"] == pytest.approx(1.0)  # B's 3rd neighbour (270) is class 1
    assert m["mAP"] == pytest.approx((1 + 5 / 12 + 1 / 2) / 3, abs=1e-6)


def test_retrieval_chunking_and_the_slow_reference():
    rng = np.random.default_rng(1)
    train, train_y = rng.normal(size=(300, 8)).astype(np.float32), rng.integers(0, 4, 300)
    test, test_y = rng.normal(size=(37, 8)).astype(np.float32), rng.integers(0, 4, 37)
    fast = retrieval_metrics(train, train_y, test, test_y, chunk=5)
    tn = train / np.linalg.norm(train, axis=1, keepdims=True)
    qn = test / np.linalg.norm(test, axis=1, keepdims=True)
    aps, hits1 = [], []
    for q, y in zip(qn, test_y):  # the obvious definition, one query at a time
        rel = (train_y[np.argsort(-(tn @ q), kind="stable")] == y).astype(float)
        aps.append((np.cumsum(rel) / np.arange(1, len(rel) + 1) * rel).sum() / rel.sum())
        hits1.append(rel[0])
    assert fast["mAP"] == pytest.approx(np.mean(aps), abs=1e-5)
    assert fast["recall@1"] == pytest.approx(np.mean(hits1))


def test_ranked_relevance_keeps_the_order():
    sim = np.array([[0.1, 0.9, -0.5, 0.3]], dtype=np.float32)
    rel = np.array([[True, False, True, False]])
    assert ranked_relevance(sim, rel).tolist() == [[0, 0, 1, 1]]  # 0.9 0.3 0.1 -0.5


def test_clustering_perfect_and_random():
    x, y = blobs(20, 4)
    perfect = clustering_metrics(x, y, 4)
    assert perfect["nmi"] == pytest.approx(1.0) and perfect["ari"] == pytest.approx(1.0)
    noise = clustering_metrics(np.random.default_rng(0).normal(size=(200, 16)), np.repeat(np.arange(4), 50), 4)
    assert noise["ari"] < 0.1


# ---------------------------------------------------------------------------------------------- few-shot

def test_few_shot_separable_is_perfect_and_random_is_chance():
    x, y = blobs(25, 8)
    res = few_shot_eval(x, y, episodes=600)
    for key in ("5way_1shot", "5way_5shot"):
        assert res[key]["accuracy"] == 1.0 and res[key]["ci95"] == 0.0
        assert (res[key]["n_way"], res[key]["queries_per_class"], res[key]["episodes"]) == (5, 15, 600)
    rng = np.random.default_rng(0)
    noise = few_shot_accuracy(rng.normal(size=(200, 32)), np.repeat(np.arange(8), 25), k_shot=5, episodes=600)
    assert abs(noise["accuracy"] - 0.2) < 0.03  # chance for 5 ways
    assert 0 < noise["ci95"] < 0.02  # 1.96 * std / sqrt(600)


def test_episodes_are_disjoint_and_within_class():
    y = np.repeat(np.arange(6), 20)
    idx = sample_episodes(y, np.arange(6), 5, 16, 50, np.random.default_rng(0))  # (E, ways, K+Q)
    assert idx.shape == (50, 5, 16)
    for episode in idx:
        assert len(set(episode.ravel())) == 5 * 16  # no image twice
        assert len({y[row[0]] for row in episode}) == 5  # five different classes
        assert all(len(set(y[row])) == 1 for row in episode)  # each way is one class


def test_few_shot_shrinks_on_tiny_data_and_says_so():
    x, y = blobs(4, 3)
    res = few_shot_eval(x, y)
    assert res["5way_1shot"]["n_way"] == 3 and res["5way_1shot"]["queries_per_class"] == 3
    assert "skipped" in res["5way_5shot"]  # 5 shots + 1 query need 6 images per class


# -------------------------------------------------------------------------------------- label efficiency

def test_label_subsets_are_balanced_nested_and_fixed():
    y = np.repeat(np.arange(10), 100)
    one = subset_index(y, 0.01, 10, seed=0)
    assert np.bincount(y[one]).tolist() == [2] * 10  # 1 % = 10 images, raised to 2 per class
    ten = subset_index(y, 0.1, 10, seed=0)
    assert np.bincount(y[ten]).tolist() == [10] * 10
    assert np.array_equal(ten, subset_index(y, 0.1, 10, seed=0))
    assert len(subset_index(y, 1.0, 10, seed=0)) == 1000


def test_label_efficiency_on_separable_features():
    x, y = blobs(60, 5)
    tx, ty = blobs(10, 5, seed=1)
    full = {"linear_top1": 0.5, "weight_decay": 1e-3}  # the main probe's result is reused, not refitted
    res = label_efficiency(x, y, tx, ty, 5, max_iter=30, full_result=full)
    assert list(res["fractions"]) == ["1%", "10%", "100%"]
    assert [v["num_labels"] for v in res["fractions"].values()] == [10, 30, 300]  # 1 %: at least 2 per class
    assert res["fractions"]["1%"]["linear_top1"] >= 0.8  # 1 support + 1 hold-out image per class
    assert res["fractions"]["10%"]["linear_top1"] == 1.0
    assert res["fractions"]["100%"]["linear_top1"] == 0.5


# ------------------------------------------------------------------------------------------------ guards

def test_disjoint_check_passes_and_fires():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (50, 3, 8, 8), dtype=np.uint8)
    test = rng.integers(0, 256, (20, 3, 8, 8), dtype=np.uint8)
    assert check_disjoint(train, test)["duplicates"] == 0
    with pytest.raises(ProtocolError, match="leaked"):
        check_disjoint(np.concatenate([train, test[:5]]), test)  # 25 % of test in train
    with pytest.warns(UserWarning, match="exact duplicates"):  # one duplicate in 200: recorded, not fatal
        big_test = rng.integers(0, 256, (200, 3, 8, 8), dtype=np.uint8)
        rec = check_disjoint(np.concatenate([train, big_test[:1]]), big_test)
    assert rec["duplicates"] == 1 and rec["duplicate_test_indices"] == [0]


class NoisyEncoder(torch.nn.Module):
    """Adds fresh noise on every call, like an augmentation left in the feature path."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3 * 8 * 8, 4)

    def forward(self, x):
        return self.lin(x.flatten(1)) + torch.randn(len(x), 4)


def test_feature_determinism_guard_fires():
    from crlf.evaluate import extract_features

    images = np.random.default_rng(0).integers(0, 256, (6, 3, 8, 8), dtype=np.uint8)
    enc = freeze(NoisyEncoder())
    feats = extract_features(enc, images, (0.5,) * 3, (0.5,) * 3, torch.device("cpu"), progress=False)
    with pytest.raises(ProtocolError, match="un-augmented"):
        check_deterministic(enc, images, feats, (0.5,) * 3, (0.5,) * 3, torch.device("cpu"))
    enc.train()  # and a train-mode encoder is refused before anything runs
    with pytest.raises(ProtocolError, match="train mode"):
        protocol_record(enc, images, images, feats, (0.5,) * 3, (0.5,) * 3, torch.device("cpu"))


def test_deterministic_encoder_passes():
    from crlf.evaluate import extract_features

    images = np.random.default_rng(0).integers(0, 256, (6, 3, 8, 8), dtype=np.uint8)
    enc = freeze(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 4)))
    feats = extract_features(enc, images, (0.5,) * 3, (0.5,) * 3, torch.device("cpu"), progress=False)
    assert check_deterministic(enc, images, feats, (0.5,) * 3, (0.5,) * 3, torch.device("cpu"))["max_abs_diff"] == 0


def test_run_metrics_json_has_the_new_sections(tiny_run):
    import json

    m = json.loads((tiny_run / "metrics.json").read_text())
    for key in ("label_efficiency", "few_shot", "retrieval", "clustering", "protocol", "eval_extra_s"):
        assert key in m, key
    assert m["protocol"]["train_test_overlap"]["duplicates"] == 0
    assert m["protocol"]["train_test_overlap"]["test_images_checked"] == 12
    assert set(m["retrieval"]) >= {"recall@1", "recall@5", "recall@10", "mAP"}
    assert m["clustering"]["nmi"] >= 0.5  # 3 colour classes: k-means finds them (chance-level clusters give ~0)
    assert m["label_efficiency"]["fractions"]["100%"]["linear_top1"] == m["linear_top1"]


# ------------------------------------------------------------------------------ fine-tuning (opt-in flags)

def test_random_crop_flip_is_per_sample_and_keeps_pixels():
    from crlf.downstream.finetune import random_crop_flip

    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    x = x.repeat(32, 1, 1, 1)  # (64, 3, 8, 8): 32 copies of two images
    out = random_crop_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert len({tuple(o[0, 4].tolist()) for o in out[::2]}) > 1  # different crops/flips within one batch
    centre = out[:, :, 3:5, 3:5]  # the 1-pixel shift keeps every centre pixel inside the source image
    assert set(centre.unique().tolist()) <= set(x.unique().tolist())


def test_mixup_cutmix_give_soft_targets():
    from crlf.downstream.finetune import build_mix

    mix = build_mix("both", 3)
    x, y = torch.rand(8, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    xm, target = mix(x, y)
    assert xm.shape == x.shape and target.shape == (8, 3)
    torch.testing.assert_close(target.sum(1), torch.ones(8))
    assert build_mix("none", 3) is None
    with pytest.raises(ValueError):
        build_mix("cutout", 3)


@pytest.mark.slow  # two fine-tunings on a CPU; their parts are tested fast above, the flags' help below
def test_evaluate_finetune_and_supervised_baseline_flags(tiny_run, tmp_path, capsys):
    import json
    import shutil

    from crlf.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert main(["evaluate", str(run), "--finetune", "--supervised-baseline", "--finetune-epochs", "1",
                 "--mix", "cutmix", "--device", "cpu", "--quiet"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    for key in ("finetune", "supervised_baseline"):
        assert list(m[key]["fractions"]) == ["1%", "10%", "100%"]
        assert all(0 <= v["top1"] <= 1 for v in m[key]["fractions"].values())
        assert m[key]["epochs"] == 1 and m[key]["mix"] == "cutmix"
    assert m["finetune"]["encoder_lr"] < m["finetune"]["lr"]  # the pretrained backbone moves slowly
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "not run" not in page.split('id="label-efficiency"')[1].split("<h2")[0]


def test_evaluate_help_names_the_expensive_flags(capsys):
    from crlf.cli import main

    assert main(["evaluate", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "EXPENSIVE" in text and "--finetune" in text and "--supervised-baseline" in text
