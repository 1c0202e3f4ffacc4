"""The notebooks, executed once each in the default suite (``make test`` runs them here, not a second
time through nbmake): every cell runs without error and the notebook shows the plots it draws (a
backend forced inside the kernel, e.g. ``matplotlib.use("Agg")``, would leave ``plt.show()`` showing
nothing); the committed files hold no outputs, so no stale numbers contradict a fresh run.

One class per notebook, so that ``pytest -n 2 --dist loadscope`` runs them on both workers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

# the figures each notebook shows: plt.show() and IPython.display.Image outputs
EXPECTED_IMAGES = {
    "analyse_a_run.ipynb": 3,  # curves, the sample grid before and after, the first-order check
    "simulator_tour.ipynb": 4,  # co-improvement curves, corrupt-judge scan, curriculum, phase diagram
    "theory_walkthrough.ipynb": 3,  # kernel norms, the eta^2 residual, the aligned regime
    "toy_world_tour.ipynb": 3,  # the world's scenes, the sample grid before and after, the first-order check
}


def _images(nb) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
               for out in cell.get("outputs", []))


def _execute(name: str):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbclient.NotebookClient(nb, timeout=1800, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def _check(name: str) -> None:
    nb = _execute(name)
    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
              if out.get("output_type") == "error"]
    assert not errors, errors
    assert _images(nb) == EXPECTED_IMAGES[name], f"{name}: {_images(nb)} images shown"


def test_every_notebook_is_listed_and_committed_without_outputs():
    assert {p.name for p in NOTEBOOKS.glob("*.ipynb")} == set(EXPECTED_IMAGES)
    for name in EXPECTED_IMAGES:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        stale = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.get("outputs") or c.execution_count)]
        assert stale == [], f"{name}: committed outputs in cells {stale}; clear them"


class TestAnalyseARun:
    def test_runs_and_shows_its_plots(self, monkeypatch):
        monkeypatch.delenv("DYNAMICS_RUN", raising=False)  # the notebook makes its own tiny-Janus run
        _check("analyse_a_run.ipynb")


class TestSimulatorTour:
    def test_runs_and_shows_its_plots(self):
        _check("simulator_tour.ipynb")


class TestTheoryWalkthrough:
    def test_runs_and_shows_its_plots(self):
        _check("theory_walkthrough.ipynb")


class TestToyWorldTour:
    def test_runs_and_shows_its_plots(self):
        _check("toy_world_tour.ipynb")
