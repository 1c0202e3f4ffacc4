"""Smoke tests of the figures: an experiment's result drawn writes PNG, PDF and its numbers (every
experiment and draw function also runs in its docstring example), the drawing modules import nothing
that runs a model or computes a statistic, one figure script runs end to end with --quick, and
make_all.py runs every script (slow: one process per script)."""

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
