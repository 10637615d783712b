"""crlf sweep (mean ± std over seeds) and crlf compare (table + overlaid curves) on tiny synthetic runs."""

from __future__ import annotations

import json

import pytest

from crlf.cli import main
from crlf.reports.sweep import markdown_table, scalar_metrics, summarise

from conftest import SEED_CONFIG, make_image_folder


def test_summary_statistics_by_hand(tmp_path):
    for name, acc in (("a", 0.5), ("b", 0.7)):
        (tmp_path / name).mkdir()
        metrics = {"linear_top1": acc, "seed": 1, "num_train": 10, "few_shot": {"5way_1shot": {"accuracy": acc / 2}},
                   "config": {"optim": {"lr": 0.1}}, "pretrain_time_s": 3.0}
        (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))
    s = summarise([tmp_path / "a", tmp_path / "b"])
    assert s["metrics"]["linear_top1"]["mean"] == pytest.approx(0.6)
    assert s["metrics"]["linear_top1"]["std"] == pytest.approx(0.1414213, abs=1e-6)  # sample std, ddof=1
    assert s["metrics"]["few_shot.5way_1shot.accuracy"]["mean"] == pytest.approx(0.3)
    assert "seed" not in s["metrics"] and "num_train" not in s["metrics"] and "config.optim.lr" not in s["metrics"]
    assert "| linear_top1 | 0.6000 ± 0.1414 | 2 |" in markdown_table(s)


def test_sweep_two_seeds_then_compare(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", train_per_class=8, test_per_class=3)
    out = tmp_path / "sweep"
    argv = ["sweep", "--config", str(SEED_CONFIG), "--data", str(data), "--seeds", "0", "1", "--out", str(out),
            "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["runs"] == [str(out / "seed0"), str(out / "seed1")]
    for seed in (0, 1):
        m = json.loads((out / f"seed{seed}" / "metrics.json").read_text())
        assert m["seed"] == seed and (out / f"seed{seed}" / "report.html").is_file()
    row = summary["metrics"]["linear_top1"]
    assert row["n"] == 2 and len(row["values"]) == 2
    assert "| linear_top1 | " in printed and " ± " in printed and "retrieval.mAP" in printed

    assert main(argv) == 0  # both seeds are done: nothing is retrained
    assert printed.count("already done") == 0 and capsys.readouterr().out.count("already done") == 2

    png = tmp_path / "cmp.png"
    assert main(["compare", str(out / "seed0"), str(out / "seed1"), "--out", str(png)]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| metric | seed0 | seed1 |")
    assert "| linear_top1 |" in table and "| retrieval.mAP |" in table and "| pretrain_time_s |" in table
    assert png.is_file() and png.stat().st_size > 1000


def test_compare_draws_the_knn_monitor_when_present(tmp_path, capsys):
    for name, knn in (("a", None), ("b", 0.4)):
        d = tmp_path / name
        d.mkdir()
        lines = [{"epoch": e, "loss": 5 - e, **({"knn_top1": knn + e / 10} if knn else {})} for e in (1, 2)]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c.png")]) == 0
    assert "| metric | a | b |" in capsys.readouterr().out
    assert (tmp_path / "c.png").is_file()


def test_compare_and_sweep_refuse_bad_input(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "nope")]) == 2
    assert "not a finished CRLF run" in capsys.readouterr().err
    assert main(["sweep", "--seeds", "0", "0", "--out", str(tmp_path / "s")]) == 2
    assert "repeats" in capsys.readouterr().err
    assert main(["sweep", "--seeds", "0", "--seed", "1", "--out", str(tmp_path / "s")]) == 2


def test_scalar_metrics_skips_settings():
    m = scalar_metrics({"linear_top1": 0.5, "knn": {"k": 200, "temperature": 0.1}, "epochs": 3,
                        "retrieval": {"mAP": 0.2, "num_queries": 10}, "flag": True})
    assert m == {"linear_top1": 0.5, "epochs": 3.0, "retrieval.mAP": 0.2}
