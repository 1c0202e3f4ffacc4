"""Shared CLI plumbing: flags, config files, validation before work."""

import json

import pytest

from dynamics.cli import clo_config, clo_parser, parse_args


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


@pytest.mark.parametrize("argv,field", [(["--candidates", "0"], "candidates"), (["--threshold", "2"], "threshold"),
                                        (["--lr", "-0.1"], "lr"), (["--judge", "corrupt:9"], "corrupt:9")])
def test_invalid_values_are_named(argv, field):
    with pytest.raises(ValueError, match=field):
        clo_config(parse_args(clo_parser("t"), argv))
