"""crlf classify (a probe from a few labels -> predictions.csv) and crlf demo --probe."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest

from crlf.cli import main

from helpers_curate import make_plain_folder

HEADER = ["file", "label", "confidence", "label_2", "confidence_2", "label_3", "confidence_3"]


def read_csv(path):
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """An unlabelled pool (12 per class, flat file names) and 4 labelled images per class."""
    base = tmp_path_factory.mktemp("classify")
    classes = make_plain_folder(base / "classes", per_class=16, seed=7)
    pool, labelled = base / "pool", base / "labelled"
    pool.mkdir()
    for folder in sorted(classes.iterdir()):
        (labelled / folder.name).mkdir(parents=True)
        for i, p in enumerate(sorted(folder.iterdir())):
            shutil.copy(p, (labelled / folder.name / p.name) if i < 4 else (pool / f"{folder.name}_{p.name}"))
    return pool, labelled


@pytest.fixture(scope="module")
def classified(tiny_run, folders, tmp_path_factory):
    pool, labelled = folders
    out = tmp_path_factory.mktemp("classified")
    code = main(["classify", str(tiny_run), "--labelled", str(labelled), "--data", str(pool),
                 "--out", str(out / "predictions.csv"), "--save-probe", str(out / "probe.safetensors"),
                 "--quiet", "--device", "cpu"])
    assert code == 0
    return out


def test_classify_predicts_every_image_with_top3(classified, folders, capsys):
    pool, _ = folders
    header, rows = read_csv(classified / "predictions.csv")
    assert header == HEADER
    assert sorted(r[0] for r in rows) == sorted(p.name for p in pool.iterdir())
    for row in rows:
        confidences = [float(row[i]) for i in (2, 4, 6)]
        assert confidences == sorted(confidences, reverse=True) and sum(confidences) == pytest.approx(1, abs=2e-3)
        assert sorted(row[i] for i in (1, 3, 5)) == ["brick", "grass", "sea"]
    # A wiring check: the probe's classes reach the right files (a mix-up of class names scores ~0, chance
    # 1/3). How much of the pool the 2-epoch toy encoder gets right depends on its rounding: measured 0.72,
    # 0.89 and 0.97 under AVX-512, AVX2 and SSE4.1 kernels. The probe's accuracy itself is tested on
    # constructed features below.
    right = np.mean([row[1] == row[0].split("_")[0] for row in rows])
    assert right >= 0.5


def test_predictions_from_a_probe_on_separable_features_are_right_with_ranked_runners_up():
    from crlf.classify import predict_rows
    from crlf.evaluate import train_linear_probe

    rng = np.random.default_rng(0)
    centres = 4.0 * np.eye(3, 4)  # (3, 4) three well-separated classes
    y = np.repeat([0, 1, 2], 4)  # 4 labels per class, as in the command's test
    train = centres[y] + 0.3 * rng.normal(size=(12, 4))
    pool_y = np.repeat([0, 1, 2], 12)
    pool = centres[pool_y] + 0.3 * rng.normal(size=(36, 4))
    probe = train_linear_probe(train.astype(np.float32), y, 3, seed=0)
    rows = predict_rows(probe, pool.astype(np.float32), ["brick", "grass", "sea"], [f"{i}.png" for i in range(36)])
    assert [r[1] for r in rows] == [["brick", "grass", "sea"][c] for c in pool_y]
    assert all(float(r[2]) > 0.5 > float(r[4]) >= float(r[6]) for r in rows)


def test_classify_prints_cross_validated_accuracy(tiny_run, folders, tmp_path, capsys):
    pool, labelled = folders
    assert main(["classify", str(tiny_run), "--labelled", str(labelled), "--data", str(pool),
                 "--out", str(tmp_path / "p.csv"), "--quiet", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "cross-validated accuracy" in out and "4-fold" in out and "12 labelled images" in out


def test_saved_probe_gives_the_same_predictions(tiny_run, classified, folders, tmp_path):
    pool, _ = folders
    again = tmp_path / "again.csv"
    assert main(["classify", str(tiny_run), "--probe", str(classified / "probe.safetensors"), "--data", str(pool),
                 "--out", str(again), "--quiet", "--device", "cpu"]) == 0
    assert again.read_text() == (classified / "predictions.csv").read_text()


def test_labels_from_a_csv_relative_to_the_data(tiny_run, folders, tmp_path):
    pool, _ = folders
    files = sorted(p.name for p in pool.iterdir())
    lines = ["file,label"] + [f"{f},{f.split('_')[0]}" for f in files if f.endswith(("04.png", "05.png", "06.png"))]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    assert main(["classify", str(tiny_run), "--labelled", str(tmp_path / "labels.csv"), "--data", str(pool),
                 "--out", str(tmp_path / "p.csv"), "--quiet", "--device", "cpu"]) == 0
    _, rows = read_csv(tmp_path / "p.csv")
    assert len(rows) == len(files)


@pytest.mark.parametrize("case,message", [
    ("one-class", "needs at least two"),
    ("single-image", "class 'sea'"),
    ("no-labels", "pass either --labelled"),
    ("not-csv", "must end in .csv"),
])
def test_classify_bad_input_is_named_with_exit_2(tiny_run, folders, tmp_path, capsys, case, message):
    pool, labelled = folders
    out, args = tmp_path / "p.csv", ["--labelled"]
    bad = tmp_path / "labelled"
    if case == "one-class":
        shutil.copytree(labelled / "brick", bad / "brick")
        args = ["--labelled", str(bad)]
    elif case == "single-image":
        shutil.copytree(labelled, bad)
        for p in sorted((bad / "sea").iterdir())[1:]:
            p.unlink()
        args = ["--labelled", str(bad)]
    elif case == "no-labels":
        args = []
    elif case == "not-csv":
        out, args = tmp_path / "p.txt", ["--labelled", str(labelled)]
    code = main(["classify", str(tiny_run), *args, "--data", str(pool), "--out", str(out), "--quiet", "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err
    if case == "one-class":
        assert "brick" in err


def test_demo_serves_the_classes_of_a_saved_probe(tiny_run, classified):
    from crlf.serve.search import RunSearch

    run = RunSearch(tiny_run, probe=classified / "probe.safetensors")
    image = run.train_image(0)
    top = run.predict(run.embed(image))
    assert sorted(name for name, _ in top) == ["brick", "grass", "sea"]
    assert run.classes == ["cat", "dog", "frog"]  # the neighbours keep the run's own labels
    assert run.probe_info["num_labelled"] == 12


def test_demo_refuses_a_probe_of_another_width(tiny_run, tmp_path, capsys):
    import torch

    from crlf.evaluate import LinearProbe
    from crlf.probe_file import save_probe

    probe = LinearProbe(torch.zeros(2, 7), torch.zeros(2), torch.zeros(7), torch.ones(7), 0.0, {})
    save_probe(tmp_path / "p.safetensors", probe, ["a", "b"], {})
    assert main(["demo", str(tiny_run), "--probe", str(tmp_path / "p.safetensors"), "--port", "0"]) == 2
    assert "7-d features" in capsys.readouterr().err


def test_demo_with_a_probe_serves_a_run_that_was_never_evaluated(tiny_run, classified, folders, tmp_path):
    """The usual case for a probe: pretrained on unlabeled images, so no evaluation, no neighbour bank."""
    from crlf.serve.backend import DemoBackend
    from crlf.serve.search import RunSearch

    run_dir = tmp_path / "pretrained-only"
    shutil.copytree(tiny_run, run_dir)
    for name in ("train_embeddings.npy", "train_labels.npy", "test_embeddings.npy", "test_labels.npy",
                 "linear_probe.safetensors", "metrics.json"):
        (run_dir / name).unlink()
    run = RunSearch(run_dir, probe=classified / "probe.safetensors")
    backend = DemoBackend(run, tmp_path / "work")
    pool, _ = folders
    gallery, _, status = backend.details(str(sorted(pool.iterdir())[0]))
    assert gallery == [] and "Linear probe: **" in status and "Nearest" not in status
    assert {name for name, _ in run.predict(run.embed(np.zeros((3, 32, 32), np.uint8)))} == {"brick", "grass", "sea"}
