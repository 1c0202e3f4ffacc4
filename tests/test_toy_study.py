"""The bookkeeping of the toy experiments: per-category records and the table read against the
control, on synthetic records whose answers are known."""

from __future__ import annotations

import math

import pytest

from dynamics.toy.study import category_table, flatten_groups, one_step_summary, slope


def _rec(seed, epoch, gen, fp, cat_gen, win=0.5, n=0):
    return {"seed": seed, "epoch": epoch, "gen_acc": gen, "und_fp_rate": fp, "non_unification": 1 - gen,
            "win_rate": win, "win_rate_n": n,
            "groups": {"tag:counting": {"gen_acc": cat_gen, "und_fp_rate": fp, "non_unification": 1 - cat_gen,
                                        "win_rate": win, "win_rate_n": n}}}


def test_category_table_reads_changes_against_the_control_seed_by_seed():
    arms = {
        "self": flatten_groups([_rec(s, e, 0.5 + 0.1 * e + 0.01 * s, 0.3 - 0.02 * e, 0.4 + 0.2 * e, 0.6, 10 + s)
                                for s in (0, 1) for e in (0, 2)]),
        "all": flatten_groups([_rec(s, e, 0.5 + 0.01 * e + 0.01 * s, 0.3, 0.4, 0.4, 5) for s in (0, 1) for e in (0, 2)]),
    }
    rows = category_table(arms, categories=("", "counting"))
    get = {(r["judge"], r["category"], r["metric"]): r for r in rows}
    gen = get[("self", "all", "gen_acc")]
    assert gen["before"][0] == pytest.approx(0.505) and gen["after"][0] == pytest.approx(0.705)
    assert gen["change"][:2] == pytest.approx((0.2, 0.0)) and gen["change"][2] == 2
    assert gen["vs_control"][0] == pytest.approx(0.2 - 0.02)
    assert get[("self", "counting", "gen_acc")]["vs_control"][0] == pytest.approx(0.4)
    assert get[("self", "all", "und_fp_rate")]["vs_control"][0] == pytest.approx(-0.04)
    win = get[("self", "all", "win_rate")]
    assert win["after"][0] == pytest.approx(0.6) and win["n"][0] == pytest.approx(10.5)
    assert "vs_control" not in get[("all", "all", "gen_acc")]
    assert ("self", "colors", "gen_acc") not in get  # a category without records has no row


def test_one_step_summary_and_slope():
    rows = [{"lr": lr, "branch": b, "probe": j, "measured": p * lr + (j + 1) * lr ** 2, "predicted": p * lr}
            for lr in (1e-3, 1e-2, 1e-1) for b in ("generation", "understanding") for j, p in enumerate((1.0, -2.0))]
    s = one_step_summary(rows)
    for b in ("generation", "understanding"):
        assert s[b]["residual_slope"] == pytest.approx(2.0)
        assert s[b]["probes"] == 2
        assert s[b]["sign_agreement"] == 1.0
        assert s[b]["mean_abs_residual"][1e-2] == pytest.approx(1.5e-4)
    assert math.isclose(slope([1, 10], [3, 30]), 1.0)


def test_toy_figure_command_line_refuses_bad_input(tmp_path, capsys):
    from dynamics.runs.figures import main

    with pytest.raises(SystemExit) as exc:
        main("toy_judges", ["--quick", "--seeds", "0", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "--seeds must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main("toy_judges", ["--quick", "--coupling", "telepathy", "--out", str(tmp_path)])
    assert "invalid choice: 'telepathy'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown figure 'nope'"):
        main("nope", [])


def test_every_toy_figure_pairs_an_experiment_with_its_draw_function():
    from dynamics.runs.figures import FIGURES

    toy = {name: fig for name, fig in FIGURES.items() if fig.scale == "toy"}
    assert sorted(toy) == ["toy_curriculum_map", "toy_first_order", "toy_judges", "toy_phase_diagram",
                           "toy_poor_supervision", "toy_recipes", "toy_scopes"]
    for name, fig in toy.items():
        assert fig.experiment.__module__ in ("dynamics.toy.experiments", "dynamics.toy.ablations"), name
        assert fig.draw.__module__ == "dynamics.figures.toy", name


def test_unknown_coupling_is_named():
    from dynamics.toy.study import ToySize, pretrained_model

    with pytest.raises(ValueError, match="coupling must be one of decoupled, trunk, tied, bayes; got 'oracle'"):
        pretrained_model(ToySize.tiny(), 0, coupling="oracle")
