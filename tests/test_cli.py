"""Shared CLI plumbing: flags, config files, validation before work."""

import json
from pathlib import Path

import pytest

from dynamics.cli import check_device, check_value, clo_config, clo_parser, parse_args, run_identity


def test_config_file_is_overridden_by_flags(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"epochs": 7, "lr": 0.01, "judge": "all"}))
    args = parse_args(clo_parser("t"), ["--config", str(f), "--lr", "0.2"])
    cfg = clo_config(args)
    assert (cfg.epochs, cfg.lr, cfg.judge) == (7, 0.2, "all")


def test_unknown_config_key_names_file_and_key(tmp_path, capsys):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"epochz": 7}))
    with pytest.raises(SystemExit):
        parse_args(clo_parser("t"), ["--config", str(f)])
    assert "unknown setting 'epochz'" in capsys.readouterr().err


def test_boolean_flags():
    assert clo_config(parse_args(clo_parser("t"), ["--no-audit"])).audit is False
    assert clo_config(parse_args(clo_parser("t"), [])).audit is True


@pytest.mark.parametrize("argv,field", [(["--candidates", "0"], "--candidates"), (["--threshold", "2"], "--threshold"),
                                        (["--lr", "-0.1"], "--lr"), (["--lr", "nan"], "--lr must be a finite"),
                                        (["--weight-decay", "nan"], "--weight-decay"), (["--grad-clip", "inf"], "--grad-clip"),
                                        (["--adaptive-probe", "0"], "--adaptive-probe must be >= 1")])
def test_invalid_values_are_usage_errors_naming_the_flag(argv, field, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(clo_parser("t"), argv)
    assert e.value.code == 2 and field in capsys.readouterr().err


def test_domain_checks_of_the_config_name_the_field():
    with pytest.raises(ValueError, match="corrupt:9"):
        clo_config(parse_args(clo_parser("t"), ["--judge", "corrupt:9"]))


@pytest.mark.parametrize("values,message", [
    ({"epochs": 2.5}, "epochs expected an integer, got 2.5"), ({"lr": None}, "lr expected a value, got null"),
    ({"epochs": True}, "epochs expected an integer, got True"), ({"audit": "false"}, "audit expected true or false"),
    ({"lr": "0.1"}, "lr expected a number"), ({"judge": 3}, "judge expected a string"),
    ({"seed": -1}, "seed must be >= 0, got -1"), ({"beta": 0}, "beta must be > 0"),
])
def test_config_files_share_the_schema_of_the_flags(tmp_path, capsys, values, message):
    f = tmp_path / "c.json"
    f.write_text(json.dumps(values))
    with pytest.raises(SystemExit) as e:
        parse_args(clo_parser("t"), ["--config", str(f)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"--config {f}: {message}" in err


def test_a_config_switch_is_a_json_boolean(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"audit": False, "no_progress": True}))
    args = parse_args(clo_parser("t"), ["--config", str(f)])
    assert clo_config(args).audit is False and clo_config(args).progress is False


def test_a_binary_config_file_is_a_usage_error(tmp_path, capsys):
    f = tmp_path / "c.json"
    f.write_bytes(bytes(range(256)))
    with pytest.raises(SystemExit) as e:
        parse_args(clo_parser("t"), ["--config", str(f)])
    assert e.value.code == 2 and f"--config {f}: not a JSON text file" in capsys.readouterr().err


def test_a_new_flag_is_typed_without_further_code():
    """A flag added with add_argument gets the schema from its action: type, finiteness, choices."""
    import argparse

    p = clo_parser("t")
    p.add_argument("--rate", type=float, default=1.0)
    p.add_argument("--mode", default="a", choices=["a", "b"])
    assert check_value(p, "rate", float("inf")) == "must be a finite number, got inf"
    assert check_value(p, "rate", 2) is None and check_value(p, "mode", "c").startswith("expected one of a, b")
    assert isinstance(p, argparse.ArgumentParser)


def test_identity_ignores_cosmetic_flags_and_hashes_files(tmp_path):
    p = clo_parser("t")
    p.add_argument("--prompts", type=Path, default=None)
    f = tmp_path / "p.txt"
    f.write_text("a red cube\n")
    a = run_identity(p, parse_args(p, ["--prompts", str(f), "--no-progress", "--out", "x"]))
    g = tmp_path / "q.txt"
    g.write_text("a red cube\n")
    b = run_identity(p, parse_args(p, ["--prompts", str(g)]))
    assert a == b  # same content, other path; display and output flags are not part of it
    f.write_text("a blue cube\n")
    assert run_identity(p, parse_args(p, ["--prompts", str(f)]))["prompts"] != a["prompts"]
    assert "progress" not in a and "no_progress" not in a and "out" not in a and a["version_dynamics"]


def test_device_names_are_checked_against_torch():
    import torch

    assert "not a torch device name" in check_device("gpu0")
    assert check_device("cpu") is None and check_device(None) is None
    if not torch.cuda.is_available():
        assert "no CUDA device" in check_device("cuda")
