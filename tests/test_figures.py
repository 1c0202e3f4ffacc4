"""Tests of the figures: an experiment's result drawn writes PNG, PDF and its numbers (every
experiment and draw function also runs in its docstring example), the drawing modules import nothing
that runs a model or computes a statistic, one figure script runs end to end with --quick, every draw
function's figures follow the style (a non-empty PNG, at most a page wide, every legend outside every
axes), the sample grids count the four cases, progress bars stay quiet in logs, and make_all.py runs
every script (slow: one process per script)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dynamics.runs.figures import FIGURES, main, run_figure
from dynamics.sim.study import SimSize

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
FIG_DIR = ROOT / "paper_figures"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}


def _check_outputs(out: Path, stem: str) -> dict:
    png, pdf, js = (out / f"{stem}.{ext}" for ext in ("png", "pdf", "json"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert pdf.read_bytes()[:5] == b"%PDF-", pdf
    return json.loads(js.read_text())


def test_a_figure_writes_png_pdf_and_its_numbers(tmp_path):
    """Every experiment and draw function is also run by its docstring example (at a tiny size); here
    one figure is checked down to the file contents."""
    result = run_figure("predicted_vs_measured", SimSize.tiny(epochs=4), tmp_path)
    summary = _check_outputs(tmp_path, "fig_predicted_vs_measured")
    assert summary["size"]["prompts"] == 12 and summary["tracked_records"] > 0
    assert {p.name for p in result["paths"]} == {
        f"fig_predicted_vs_measured.{e}" for e in ("png", "pdf", "json")
    }


def test_a_result_survives_json_and_draws_again(tmp_path):
    """A result is JSON-able: drawn again from its JSON round trip, it writes the same numbers."""
    fig = FIGURES["corrupt_scan"]
    result = fig.experiment(SimSize.tiny(epochs=1), ps=(0.0, 1.0))
    fig.draw(result, tmp_path / "a")
    fig.draw(json.loads(json.dumps(result)), tmp_path / "b")
    a, b = (tmp_path / d / "fig_corrupt_scan.json" for d in ("a", "b"))
    assert a.read_text() == b.read_text()


def test_figures_only_draw():
    """The drawing modules load no model, experiment runner, comparison or test (checked in a fresh
    interpreter; a curve's mean ± s.e. over seeds is read by :func:`dynamics.report.aggregate`), and
    nothing else in the package imports them."""
    code = (
        "import sys, dynamics.figures.sim, dynamics.figures.toy\n"
        "bad = ('dynamics.sim', 'dynamics.toy', 'dynamics.study.arms', 'dynamics.study.read',"
        " 'dynamics.study.claims', 'dynamics.study.first_order', 'dynamics.clo', 'dynamics.kernels',"
        " 'dynamics.full', 'transformers')\n"
        "print(sorted(m for m in sys.modules if m.startswith(bad)))"
    )
    proc = _run(["-c", code])
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
    pkg = ROOT / "dynamics"
    importers = [
        p.relative_to(ROOT).as_posix()
        for p in pkg.rglob("*.py")
        if p.parent.name not in ("figures", "runs")
        for line in p.read_text().splitlines()
        if line.lstrip().startswith(("import dynamics.figures", "from dynamics.figures"))
    ]
    assert importers == []


def test_every_figure_has_a_script():
    scripts = {p.stem for p in FIG_DIR.glob("fig_*.py")}
    assert {f"fig_{n}" for n in FIGURES} <= scripts


def _run(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )


def test_one_figure_script_quick(tmp_path):
    proc = _run([str(FIG_DIR / "fig_phase_diagram.py"), "--quick", "--out", str(tmp_path)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = _check_outputs(tmp_path, "fig_phase_diagram")
    assert set(summary["rows"]) == {"decoupled", "trunk", "tied", "bayes"}
    assert set(summary["rows"]["bayes"]) == {"self", "corrupt:0.6"}
    from dynamics.study import PHASES

    assert {row["phase"] for rows in summary["rows"].values() for row in rows.values()} <= set(PHASES)


def test_figure_command_line_refuses_bad_sizes(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main("phase_diagram", ["--quick", "--seeds", "0", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "SimSize.seeds=0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown figure 'nope'"):
        main("nope", [])


def test_every_figure_pairs_an_experiment_with_its_draw_function():
    for name, fig in FIGURES.items():
        if fig.scale == "sim":  # the toy's load transformers: checked by test_toy_study
            assert fig.experiment.__module__ == "dynamics.sim.experiments", name
            assert fig.draw.__module__ == "dynamics.figures.sim", name


def test_make_all_help_and_bad_filter():
    proc = _run([str(FIG_DIR / "make_all.py"), "--help"])
    assert proc.returncode == 0 and "--quick" in proc.stdout and "--out" in proc.stdout
    proc = _run([str(FIG_DIR / "make_all.py"), "--only", "no_such_figure"])
    assert proc.returncode == 2 and "no_such_figure" in proc.stderr


@pytest.mark.slow
def test_make_all_quick_regenerates_every_figure(tmp_path):
    proc = _run([str(FIG_DIR / "make_all.py"), "--quick", "--out", str(tmp_path)], timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for script in FIG_DIR.glob("fig_*.py"):
        assert (tmp_path / f"{script.stem}.png").exists(), script.name
        assert (tmp_path / f"{script.stem}.pdf").exists(), script.name


# ------------------------------------------------------------------------- every figure, looked at
# Each draw function gets a small result of its experiment's form (built here, so drawing is all that
# runs: the experiments themselves run in their docstrings and in the slow make_all test), and every
# figure it makes must be a non-empty PNG, at most a page wide, with every legend outside every axes.


def _stat(m, se=0.01, n=4):
    return (m, se, n)


def _sim_size(**kw):
    return {"prompts": 24, "epochs": 4, "seeds": 4, **kw}


def _curves(labels, keys, n=4):
    return {lab: {k: [[e, 0.5 + 0.05 * e + 0.01 * i, 0.02, n] for e in range(5)] for k in keys}
            for i, lab in enumerate(labels)}


def _phase_rows(couplings, judges):
    phases = ("co-improvement", "drift", "no transfer", "co-degradation", "undetermined")
    return {c: {j: {"phase": phases[(i + k) % len(phases)], "gen": _stat(0.1 * (k - 1), n=8),
                    "fp": _stat(-0.02 * k, n=8), "exact_non_unification": _stat(-0.05, n=8),
                    "final_exact_win_rate": _stat(0.1, n=8), "final_win_rate": _stat(0.05, n=8)}
                for k, j in enumerate(judges)} for i, c in enumerate(couplings)}


def _sim_results() -> dict:
    keys = ["exact_gen_acc", "exact_pre_fp_rate", "non_unification", "win_rate"]
    scan_keys = ["exact_gen_acc", "exact_pre_fp_rate", "exact_win_rate", "exact_non_unification"]
    rows_lr = [{"lr": lr, "resid_g": _stat(lr**2), "resid_u": _stat(2 * lr**2)} for lr in (0.005, 0.01, 0.02)]
    rows_lr[-1].update(slope_g=2.0, slope_u=1.9)
    pts = {k: {g: {"predicted": [0.1 * i for i in range(20)], "measured": [0.11 * i for i in range(20)]}
               for g in ("misaligned", "aligned")} for k in ("g", "u")}
    sim = {
        "training_curves": ({"size": _sim_size()}, {"keys": keys, "control": "SFT (all: control)", "curriculum": "cur",
                                                    "curves": _curves(["SFT", "DPO", "cur", "SFT (all: control)"], keys)}),
        "co_improvement_vs_degradation": ({"size": _sim_size()},
                                          {"keys": keys, "curves": _curves(["self", "all", "oracle", "corrupt:0.6"], keys)}),
        "corrupt_scan": ({"size": _sim_size(), "rows": [{"p": p, **{k: _stat(-p) for k in scan_keys}} for p in (0, 0.5, 1)],
                          "controls": {"self": {k: {"change": _stat(0.1)} for k in scan_keys}}},
                         {"keys": scan_keys, "controls": {c: {k: _stat(0.05) for k in scan_keys} for c in ("all", "oracle")}}),
        "phase_diagram": ({"size": _sim_size(), "worlds": [0, 1], "alpha": 0.05, "fp_margin": 0.01,
                           "rows": _phase_rows(["decoupled", "trunk", "tied", "bayes"], ["self", "corrupt:0.6"])},
                          {"couplings": ["decoupled", "trunk", "tied", "bayes"], "judges": ["self", "corrupt:0.6"],
                           "scale": "simulator"}),
        "curriculum": ({"size": _sim_size(), "candidates": 1},
                       {"keys": ["discard_size", "sft_size", "exact_gen_acc", "exact_pre_fp_rate"],
                        "curves": _curves(["off", "epochs:1", "epochs:3", "adaptive"],
                                          ["discard_size", "sft_size", "exact_gen_acc", "exact_pre_fp_rate"])}),
        "fp_correction": ({"size": _sim_size(), "corrected_similarity": _stat(0.9), "random_similarity": _stat(0.89),
                           "correction_rate_trained": _stat(0.6), "correction_rate_held_out": _stat(0.4)},
                          {"delta_g": {"corrected": [-1.0, -0.5, -0.2], "random": [0.1, -0.2, 0.3]},
                           "ratios": {"corrected": [3.0, 2.0], "random": [1.0, 0.8]}}),
        "predicted_vs_measured": ({"size": _sim_size(), "lr": 0.5, "rel_err_g": _stat(0.05), "rel_err_u": _stat(0.1)},
                                  {"points": pts}),
        "eta_slope": ({"size": _sim_size(), "rows": {"SFT": rows_lr, "DPO": rows_lr}}, {}),
    }
    return {name: {"name": f"fig_{name}", "summary": s, "plot": p} for name, (s, p) in sim.items()}


def _toy_size(**kw):
    return {"seeds": [0, 1, 2], "worlds": [0], "preset": "default", "pretrain_steps": 1200, **kw}


def _toy_results() -> dict:
    judges, cats = ["self", "all", "oracle", "corrupt:0.9"], ["all", "single_object", "counting"]
    metrics = ["gen_acc", "und_fp_rate", "non_unification", "win_rate"]
    rows = [{"judge": j, "category": c, "metric": m, "before": _stat(0.5, n=3), "after": _stat(0.5 + 0.02 * i, n=3),
             "change": _stat(0.02 * i - 0.01, n=3), "n": (2.0 + 5 * i, 1.0, 3)}
            for i, j in enumerate(judges) for c in cats for m in metrics]
    fo_rows = [{"branch": b, "lr": lr, "predicted": 0.1 * i * lr, "measured": 0.11 * i * lr, "kind": "fp"}
               for b in ("generation", "understanding") for lr in (1e-3, 1e-2) for i in range(5)]
    fo_sum = {b: {"mean_abs_residual": {"0.001": 1e-6, "0.01": 1e-4}, "residual_slope": 2.0}
              for b in ("generation", "understanding")}
    arm = {k: {"self": (_stat(0.5, n=3), _stat(0.52, n=3), _stat(0.02, n=3)),
               "all": (_stat(0.5, n=3), _stat(0.5, n=3), _stat(0.0, n=3))}
           for k in ("gen_acc", "und_fp_rate", "und_fn_rate", "win_rate")}
    arm["win_rate_n"] = {"self": (12.0, 1.0, 3), "all": (3.0, 1.0, 3)}
    scope_arm = {k: {"self": (_stat(0.5, n=3), _stat(0.52, n=3), _stat(0.02, n=3)),
                     "all": (_stat(0.5, n=3), _stat(0.5, n=3), _stat(0.0, n=3))}
                 for k in ("gen_acc", "und_fp_rate", "non_unification", "win_rate")}
    scope_arm["win_rate_n"] = arm["win_rate_n"]
    ps_judges = ["self", "oracle", "lookalike:1", "pr:0.5,0.3"]
    ps_rows = {j: {"phase": "drift", "gen": _stat(0.02 * i), "fp": _stat(-0.01), "non_unification": _stat(-0.03),
                   "final_win_rate": _stat(0.05)} for i, j in enumerate(ps_judges)}
    nan = (float("nan"), float("nan"), 0)
    alarm = {"false_alarm_rate": (0.1, 0.05, 6), "miss_rate": nan, "co_degradation_miss_rate": nan}
    cm_rows = [{"n": n, "loss": "sft", "replay": r, "pool": (12.0 / n, 1.0, 3), "recovered": (10.0 / n, 1.0, 3),
                "replay_precision": (0.7, 0.05, 3), "first_precision": (0.85, 0.01, 3),
                **({"vs_off": {"gen_acc": (0.01, 0.02, 3), "und_fp_rate": (-0.01, 0.004, 3)}} if r != "off" else {})}
               for n in (1, 2) for r in ("off", "late")]
    toy = {
        "toy_judges": ({"size": _toy_size(), "coupling": "tied", "rows": rows},
                       {"judges": judges, "categories": cats, "metrics": metrics}),
        "toy_first_order": ({"size": _toy_size(), "lrs": [1e-3, 1e-2], "rows": fo_rows, "summary": fo_sum}, {}),
        "toy_phase_diagram": ({"size": _toy_size(), "alpha": 0.05, "fp_margin": 0.01,
                               "rows": _phase_rows(["trunk", "tied"], ["self"]), "excluded": {"decoupled": [1, 2]}},
                              {"couplings": ["decoupled", "trunk", "tied"], "judges": ["self"], "scale": "toy"}),
        "toy_recipes": ({"size": _toy_size(), "recipes": {"default": arm, "longer": arm}},
                        {"labels": ["default", "longer"]}),
        "toy_scopes": ({"size": _toy_size(), "scopes": {"all": scope_arm, "trunk": scope_arm},
                        "parameters": {"all": 120000, "trunk": 80000}}, {"labels": ["all", "trunk"]}),
        "toy_poor_supervision": ({"rows": {"tied": ps_rows}, "alarm": {"tied": alarm}, "lookalike_ps": [1.0],
                                  "precisions": [0.5], "recall": 0.3, "units": {"tied": [[0, 0], [0, 1]]},
                                  "alpha": 0.05, "alarm_tolerance": 0.01},
                                 {"couplings": ["tied"], "judges": ps_judges, "scale": "toy world",
                                  "keys": {"gen": "gen_acc", "fp": "und_fp_rate", "non": "non_unification",
                                           "win": "win_rate", "others": [], "alarms": ["alarm"]}}),
        "toy_curriculum_map": ({"rows": cm_rows, "judge": "self", "keys": ["gen_acc", "und_fp_rate", "non_unification"],
                                "why": {"rho_gap_gen": 0.1, "points": []}}, {"scale": "toy world"}),
    }
    return {name: {"name": f"fig_{name}", "summary": s, "plot": p} for name, (s, p) in toy.items()}


def _other_results() -> dict:
    cm_rows = [{"n": n, "loss": loss, "replay": r, "pool": (12.0 / n, 1.0, 4), "recovered": (10.0 / n, 1.0, 4),
                "replay_precision": (0.7, 0.05, 4), "first_precision": (0.85, 0.01, 4),
                **({"vs_off": {"exact_gen_acc": (0.01, 0.02, 4), "exact_pre_fp_rate": (-0.01, 0.004, 4)}}
                   if r != "off" else {})}
               for n in (1, 2, 8) for loss in ("sft", "dpo") for r in ("off", "early", "late", "adaptive")]
    cells = {f"cell:{t}/easy": {"non_start": (0.3 + i / 100, 0.01, 4), "gen_gain": (0.2, 0.02, 4)}
             for i, t in enumerate(("object", "colour", "binding"))}
    rho = {"mean": 0.1, "se": 0.1, "n": 4, "ci": [-0.2, 0.4], "level": 0.95,
           "per_unit": {"0,0": 0.5, "0,1": -0.5, "0,2": 0.2, "0,3": 0.2}}
    nc_rows = [{"n": n, "train_size": (36.0 * n, 1.0, 4), "change": {"exact_gen_acc": (0.1 + 0.01 * n, 0.01, 4),
                "exact_pre_fp_rate": (-0.1, 0.01, 4)}} for n in (1, 2, 8)]
    cell = {b: {"relative_error": 0.3, "sign_agreement": 0.9} for b in ("gen", "und")}
    table = {k: {"epoch1": cell, "end": cell, "interval": i + 1, "segment": {"gen": 0.2, "und": 0.3}}
             for i, k in enumerate(("1", "10", "epoch", "all"))}
    traj = {"measured": {"gen": [[0.0] * 4, [0.1, 0.2, 0.3, 0.4]], "und": [[0.0] * 4, [0.0, 0.1, 0.1, 0.2]]}}
    traj.update({k: {b: [[0.0] * 4, [0.12, 0.2, 0.25, 0.4]] for b in ("gen", "und")} for k in ("1", "all")})
    run = {"optimiser": {"name": "sgd", "lr": 0.5}, "info": {}, "trajectories": traj}
    prow = lambda g, ph: {"phase": ph, "gen": (g, 0.01, 16), "fp": (-g / 4, 0.005, 16),
                          "exact_non_unification": (-0.1, 0.01, 16), "final_exact_win_rate": (g, 0.01, 16)}
    ps_judges = ["self", "lookalike:0.5", "lookalike:1", "pr:0.9,0.3", "pr:0.5,0.3"]
    ps_rows = {c: {j: prow(0.2 - 0.05 * i, "co-improvement" if i < 2 else "drift") for i, j in enumerate(ps_judges)}
               for c in ("tied", "bayes")}
    nan = (float("nan"), float("nan"), 0)
    alarm = {c: {"false_alarm_rate": (0.1, 0.05, 32), "miss_rate": (0.2, 0.1, 16), "co_degradation_miss_rate": nan}
             for c in ps_rows}
    return {
        "curriculum_map": ("dynamics.figures.ablations", {"rows": cm_rows, "judge": "self", "why": {
            "rho_gap_gen": 0.1, "points": [{"precision_gap": -0.1, "gen_vs_off": 0.02, "replay": "late"}]}}, {}),
        "gap_gain": ("dynamics.figures.ablations", {"cells": cells, "rho": rho}, {}),
        "n_candidates": ("dynamics.figures.ablations", {"rows": nc_rows}, {}),
        "multistep": ("dynamics.figures.multistep", {"ks": ["1", "10", "epoch", "all"], "table": {"sim_sgd": table},
                                                      "runs": {"sim_sgd": [run]}}, {"runs": ["sim_sgd"]}),
        "poor_supervision": ("dynamics.figures.poor_supervision", {
            "rows": ps_rows, "alarm": alarm, "lookalike_ps": [0.5, 1.0], "precisions": [0.9, 0.5], "recall": 0.3,
            "worlds": [0, 1], "alpha": 0.01, "alarm_tolerance": 0.01}, {"couplings": ["tied", "bayes"], "judges": ps_judges}),
    }


def _draw_all(out: Path):
    """Every draw function on its small result; ``{figure file stem: figure}`` for every figure made."""
    import importlib

    import matplotlib
    import matplotlib.pyplot as plt

    matplotlib.use("Agg")
    drawn: dict[str, object] = {}
    close = plt.close

    def keep(fig=None):
        if fig is not None and not isinstance(fig, str):
            drawn[fig.get_label() or f"fig{len(drawn)}"] = fig
        else:
            close(fig)

    plt.close = keep
    try:
        results = {**_sim_results(), **_toy_results()}
        for name, result in results.items():
            before = len(drawn)
            FIGURES[name].draw(result, out)
            assert len(drawn) > before, name
            _label_new(drawn, before, name)
        for name, (module, summary, plot) in _other_results().items():
            before = len(drawn)
            getattr(importlib.import_module(module), f"draw_{name}")(
                {"name": f"fig_{name}", "summary": summary, "plot": plot}, out)
            _label_new(drawn, before, name)
    finally:
        plt.close = close
    return drawn


def _label_new(drawn: dict, before: int, name: str) -> None:
    for i, key in enumerate(list(drawn)[before:]):
        drawn[f"{name}#{i}"] = drawn.pop(key)


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _check_figure(name: str, fig) -> None:
    from matplotlib.axes import Axes
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.legend import Legend

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    assert fig.get_size_inches()[0] <= 7.0 + 1e-9, (name, fig.get_size_inches())
    axes = [a for a in fig.findobj(Axes) if a.get_visible() and a.axison]
    legends = [leg for leg in fig.findobj(Legend) if leg.get_visible()]
    for leg in legends:
        lb = leg.get_window_extent(renderer)
        for ax in axes:
            assert not _overlaps(lb, ax.get_window_extent(renderer)), f"{name}: legend overlaps an axes"


def test_every_figure_is_a_png_with_its_legends_outside_every_axes(tmp_path, monkeypatch):
    """Every draw function (simulator, toy, ablations, multi-step, poor supervision): a non-empty PNG per
    figure; no legend's window extent meets any axes' (legends outside the data); at most 7 inches
    wide. (PDFs are skipped here for time: test_a_figure_writes_png_pdf_and_its_numbers writes one.)"""
    import matplotlib
    from matplotlib.figure import Figure

    monkeypatch.setitem(matplotlib.rcParams, "figure.max_open_warning", 0)  # every figure is kept to be checked
    savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, path, **kw: None if str(path).endswith(".pdf")
                        else savefig(self, path, **kw))
    drawn = _draw_all(tmp_path)
    names = {p.stem for p in tmp_path.glob("*.png")}
    assert {f"fig_{n}" for n in FIGURES} <= names
    for png in tmp_path.glob("*.png"):
        assert png.stat().st_size > 5000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png.name
    for name, fig in drawn.items():
        _check_figure(name, fig)
    assert len(drawn) >= len(FIGURES) + 6
    import matplotlib.pyplot as plt

    for fig in drawn.values():
        plt.close(fig)


def test_sample_grid_and_run_curves_follow_the_style(tmp_path):
    """The sample grid (before and after side by side, changed cells counted) and a run's curves.png:
    non-empty PNGs with the legend outside every axes; the four cases are counted in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    from matplotlib.figure import Figure

    from dynamics.figures.samples import case_counts, plot_sample_grid, write_sample_grids
    from dynamics.figures.sim import write_curves

    imgs = np.zeros((2, 3, 4, 4, 3))
    exact = {"before": [[True, False, True], [False, False, True]], "after": [[True, True, True], [False, False, True]]}
    p_yes = {"before": [[0.9, 0.8, 0.2], [0.1, 0.4, 0.7]], "after": [[0.9, 0.1, 0.8], [0.1, 0.4, 0.7]]}
    fig = plot_sample_grid({"before": imgs, "after": imgs}, exact, p_yes, prompts=["a red circle", "two squares"],
                           figure=Figure)
    assert "accepts wrong 1" in fig.get_suptitle() and "rejects correct 1" in fig.get_suptitle()
    assert case_counts(exact["after"], p_yes["after"])["both accept"] == 3
    _check_figure("samples", fig)
    paths = write_sample_grids(tmp_path, {"before": imgs, "after": imgs}, exact, p_yes, prompts=["a", "b"])
    assert [p.name for p in paths] == ["samples_before.png", "samples_after.png", "samples.png"]
    recs = [{"epoch": e, "seed": s, "gen_acc": 0.5 + e / 10, "win_rate": 0.5, "non_unification": 0.3,
             "und_fp_rate": 0.2} for e in range(3) for s in range(2)]
    for p in [*paths, write_curves(recs, tmp_path / "curves.png", title="toy world: judge=self " * 8)]:
        assert p.stat().st_size > 5000, p


def test_sample_grid_without_verdicts_frames_by_the_models_own_verdict():
    """A real run whose judge has no verdict on the samples still draws the model's own P(yes)."""
    import numpy as np
    from matplotlib.figure import Figure

    from dynamics.figures.samples import plot_sample_grid

    imgs = np.zeros((1, 2, 4, 4, 3))
    fig = plot_sample_grid({"before": imgs}, None, {"before": [[0.9, 0.2]]}, prompts=["a cat"], figure=Figure)
    assert "says yes 1, says no 1" in fig.get_suptitle()
    _check_figure("samples without verdicts", fig)


def test_progress_bars_do_not_flood_a_log(capsys):
    """Written to a pipe or file (pytest captures stderr: not a terminal), a transient bar is off and a
    lasting one updates at most every PROGRESS_LOG_INTERVAL seconds."""
    from dynamics.report import PROGRESS_LOG_INTERVAL, progress

    assert progress(range(3), leave=False).disable
    import time

    bar = progress(range(240), desc="steps")
    assert not bar.disable and bar.mininterval == PROGRESS_LOG_INTERVAL >= 30
    for _ in bar:  # about 0.6 s: tqdm's own 0.1 s interval would write some six updates
        time.sleep(0.0025)
    assert capsys.readouterr().err.count("\r") <= 3
    assert progress(range(3), enabled=False).disable
