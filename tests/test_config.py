import dataclasses
import re

import pytest

from crlf.cli import main
from crlf.config import (
    Config,
    DataConfig,
    EvalConfig,
    OptimConfig,
    apply_overrides,
    convert,
    load_config,
    to_dict,
)
from crlf.errors import UsageError, did_you_mean

from conftest import SEED_CONFIG


def test_seed_config_is_the_reference_recipe():
    cfg = load_config(SEED_CONFIG)
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.optim.name, cfg.optim.lr) == (256, 10, "adam", 3e-4)
    assert (cfg.method.temperature, cfg.optim.weight_decay) == (0.07, 1e-4)
    assert (cfg.model.arch, cfg.model.stem, cfg.model.proj_hidden_dim, cfg.model.proj_out_dim) == (
        "resnet18", "imagenet", 256, 64)
    assert cfg.augment.crop_scale == (0.2, 1.0) and cfg.augment.jitter_p == 0.8 and cfg.augment.blur_kernel == 3
    assert cfg.data.image_size == 32  # the reference's size, pinned (the default is auto: 32 on CIFAR)
    default = Config()
    assert dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, channels_last=False)) == dataclasses.replace(
        default, data=dataclasses.replace(default.data, image_size=32))


def test_flags_override_yaml(tmp_path):
    cfg = load_config(SEED_CONFIG, {"train": {"epochs": 3}, "optim": {"lr": 0.1}})
    assert cfg.train.epochs == 3 and cfg.optim.lr == 0.1 and cfg.train.batch_size == 256


def test_set_flag_reads_yaml_values_and_wins_over_dedicated_flags():
    from crlf.cli import build_parser, train_overrides

    args = build_parser().parse_args(["pretrain", "--lr", "0.1", "--set", "optim.lr=0.002", "--set",
                                      "augment.crop_scale=[0.3, 1]", "--set", "augment.blur_p=0",
                                      "--set", "optim.schedule=cosine"])
    cfg = load_config(SEED_CONFIG, train_overrides(args))
    assert cfg.optim.lr == 0.002 and cfg.augment.crop_scale == (0.3, 1.0)
    assert cfg.augment.blur_p == 0.0 and cfg.optim.schedule == "cosine"


def test_round_trip_through_dict():
    cfg = load_config(SEED_CONFIG)
    assert apply_overrides(Config(), to_dict(cfg)) == cfg


@pytest.mark.parametrize("overrides, message", [
    ({"train": {"epoch": 3}}, "Did you mean 'epochs'"),
    ({"trian": {"epochs": 3}}, "Did you mean 'train'"),
    ({"optim": {"lr": 0}}, "optim.lr must be > 0"),
    ({"optim": {"lr": -1}}, "optim.lr must be > 0"),
    ({"method": {"temperature": 0}}, "temperature must be > 0"),
    ({"train": {"batch_size": 1}}, "batch_size must be >= 2"),
    ({"train": {"epochs": 0}}, "epochs must be >= 1"),
    ({"train": {"epochs": 2.5}}, "must be an integer"),
    ({"augment": {"flip_p": 1.5}}, "probability"),
    ({"model": {"stem": "cifra"}}, "Did you mean 'cifar'"),
])
def test_bad_values_are_usage_errors(overrides, message):
    with pytest.raises(UsageError, match=message):
        load_config(SEED_CONFIG, overrides)


def test_unknown_key_in_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  bach_size: 64\n")
    with pytest.raises(UsageError, match=r"train.bach_size.*Did you mean 'batch_size'"):
        load_config(path)


@pytest.mark.parametrize("argv, message", [
    (["pretrain", "--epoch", "3"], "Did you mean '--epochs'"),
    (["pretrain", "--lr", "0"], "optim.lr must be > 0"),
    (["pretrain", "--lr=-3e-4"], "optim.lr must be > 0"),
    (["pretrain", "--temperature", "0"], "temperature must be > 0"),
    (["pretrain", "--batch-size", "1"], "batch_size must be >= 2"),
    (["pretrain", "--epochs", "0"], "epochs must be >= 1"),
    (["pretrain", "--config", "nope.yaml"], "does not exist"),
    (["pretrain", "--data", "/no/such/folder"], "does not exist"),
    (["evaluate", "/no/such/run"], "not a CRLF run folder"),
    (["pretrain", "--set", "train.epochs"], "--set takes SECTION.KEY=VALUE"),
    (["pretrain", "--set", "epochs=3"], "--set takes SECTION.KEY=VALUE"),
    (["pretrain", "--set", "train.epoch=3"], "Did you mean 'epochs'"),
    (["pretrain", "--set", "augment.crop_scale=[0.2, 1"], "is not a valid value"),
    (["pretrain", "--set", "train.low_res_epochs=2"], "train.low_res_size must be between 8 and"),
    (["pretrain", "--set", "train.low_res_epochs=2", "--set", "train.low_res_size=64"], "low_res_size must be"),
])
def test_cli_bad_input_exits_2_with_message(argv, message, capsys, tmp_path):
    code = main(argv + (["--out", str(tmp_path / "r")] if argv[0] == "pretrain" else []))
    assert code == 2
    assert message in capsys.readouterr().err


def test_exponent_notation_without_a_dot_is_a_number(tmp_path):
    """YAML 1.1 (PyYAML) reads `1e-5` as a string; in a float key it means the number, in a file or via --set."""
    from crlf.cli import build_parser, train_overrides

    config = tmp_path / "c.yaml"
    config.write_text("optim:\n  lr: 1e-3\n  weight_decay: 5e-4\n")
    cfg = load_config(config)
    assert (cfg.optim.lr, cfg.optim.weight_decay) == (1e-3, 5e-4)
    args = build_parser().parse_args(["pretrain", "--set", "optim.weight_decay=1e-05"])
    assert load_config(None, train_overrides(args)).optim.weight_decay == 1e-5
    with pytest.raises(UsageError, match="must be a number"):
        apply_overrides(Config(), {"optim": {"lr": "fast"}})


# -- each method's own settings -------------------------------------------------------------------------------

def test_every_shipped_config_loads_and_round_trips():
    for path in sorted((SEED_CONFIG.parent).rglob("*.yaml")):
        cfg = load_config(path)
        assert apply_overrides(Config(), to_dict(cfg)) == cfg, path
        assert set(to_dict(cfg)["method"]) == {"name", *type(cfg.method).keys()}, path  # only its own keys


def test_a_run_folder_from_before_per_method_settings_still_loads(tmp_path):
    """config.yaml / a checkpoint written with the one flat method section (all 18 keys): the keys the method
    did not read are dropped (that run ignored them), the ones it read keep their values."""
    flat = {"name": "byol", "temperature": 0.07, "momentum": 0.98, "momentum_final": 1.0, "queue_size": 0,
            "queue_start_epoch": 0.0, "num_prototypes": 3000, "sinkhorn_epsilon": 0.05, "sinkhorn_iterations": 3,
            "freeze_prototypes_epochs": 0.0, "sim_weight": 25.0, "var_weight": 25.0, "cov_weight": 1.0,
            "redundancy_weight": 0.0051, "loss_scale": 1.0, "teacher_temperature": 0.04,
            "warmup_teacher_temperature": 0.04, "warmup_teacher_epochs": 0.0, "center_momentum": 0.9}
    cfg = apply_overrides(Config(), {"method": flat})
    assert to_dict(cfg)["method"] == {"name": "byol", "momentum": 0.98, "momentum_final": 1.0}
    partial = {k: v for k, v in flat.items() if k != "center_momentum"}  # written by hand: strict
    with pytest.raises(UsageError, match="method 'byol' has no setting 'temperature'"):
        apply_overrides(Config(), {"method": partial})


def test_queue_size_0_is_accepted_by_methods_without_a_queue_and_nothing_else_is():
    assert to_dict(apply_overrides(Config(), {"method": {"name": "simsiam", "queue_size": 0}}))["method"] == {
        "name": "simsiam"}
    with pytest.raises(UsageError, match="method 'simsiam' has no setting 'queue_size'"):
        apply_overrides(Config(), {"method": {"name": "simsiam", "queue_size": 64}})


def test_naming_another_method_starts_from_its_defaults():
    cfg = load_config(SEED_CONFIG, {"method": {"name": "vicreg", "var_weight": 50}})  # seed.yaml set a temperature
    assert to_dict(cfg)["method"] == {"name": "vicreg", "sim_weight": 25.0, "var_weight": 50.0, "cov_weight": 1.0}


@pytest.mark.parametrize("name", ["byol", "simsiam", "vicreg", "barlowtwins"])
def test_temperature_flag_for_a_method_without_one_exits_2(name, capsys, tmp_path):
    code = main(["pretrain", "--set", f"method.name={name}", "--temperature", "0.2", "--out", str(tmp_path / "r")])
    assert code == 2
    err = capsys.readouterr().err
    assert f"method '{name}' has no setting 'temperature'" in err and "a setting of simclr" in err


def test_temperature_flag_sets_the_temperature_of_methods_that_have_one():
    from crlf.cli import build_parser, train_overrides

    for name in ("simclr", "mocov3", "swav", "dino"):
        args = build_parser().parse_args(["pretrain", "--set", f"method.name={name}", "--temperature", "0.3"])
        assert load_config(None, train_overrides(args)).method.temperature == 0.3


@pytest.mark.parametrize("annotation, value, expected", [
    (int | None, None, None), (int | None, 3.0, 3), (float | None, "1e-5", 1e-5), (bool | None, None, None),
    (tuple[float, float], [1, 2], (1.0, 2.0)), (str, 7, "7"),
])
def test_values_are_converted_by_their_annotation(annotation, value, expected):
    assert convert(value, annotation, "section.key") == expected


@pytest.mark.parametrize("annotation, value, message", [
    (int, None, "'section.key' must be an integer, got None"),
    (bool | None, 1, "'section.key' must be true or false or null, got 1"),
    (tuple[float, float, float], [1, 2], "'section.key' must be a list of 3 numbers"),
])
def test_a_value_its_annotation_rejects_is_a_usage_error_naming_the_key(annotation, value, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        convert(value, annotation, "section.key")


def test_every_section_checks_its_own_keys():
    for section in (DataConfig(limit=1), OptimConfig(lr=0), EvalConfig(knn_k=0)):
        with pytest.raises(UsageError, match=type(section).__name__.removesuffix("Config").lower() + r"\."):
            section.validate()


def test_one_did_you_mean_for_every_message():
    assert did_you_mean("trian", ["train", "eval"]) == " Did you mean 'train'?"
    assert did_you_mean("zzz", ["train"], " Known keys: train.") == " Known keys: train."
    assert did_you_mean("resnet10", ["resnet10t"], prefix="timm:") == " Did you mean 'timm:resnet10t'?"
