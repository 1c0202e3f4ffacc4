"""The command line of the figure scripts of ``paper_figures/`` (each script only calls :func:`main`).

:data:`FIGURES` pairs every figure with its experiment (``dynamics.<scale>.experiments.<name>``,
which returns a result dict) and its draw function (``dynamics.figures.<scale>.draw_<name>``, which
writes ``fig_<name>.png``, ``.pdf`` and ``.json``); both are imported on use, so a simulator figure
does not load the toy (transformers).

Example::

    >>> sorted(n for n, f in FIGURES.items() if f.scale == "toy")
    ['toy_curriculum_map', 'toy_first_order', 'toy_judges', 'toy_phase_diagram', 'toy_poor_supervision', 'toy_recipes', 'toy_scopes']
    >>> FIGURES["phase_diagram"].draw.__name__
    'draw_phase_diagram'
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FIGURES", "QUICK_KW", "Figure", "figure_parser", "main", "run_figure"]


@dataclass(frozen=True)
class Figure:
    """A figure of ``paper_figures/``: its scale (``sim`` or ``toy``) and its name, which names the
    experiment (``dynamics.<scale>.experiments.<name>``) and the draw function
    (``dynamics.figures.<scale>.draw_<name>``)."""

    scale: str
    name: str

    @property
    def experiment(self) -> Callable[..., dict]:
        return getattr(importlib.import_module(f"dynamics.{self.scale}.experiments"), self.name)

    @property
    def draw(self) -> Callable[[dict, str | Path], list[Path]]:
        return getattr(importlib.import_module(f"dynamics.figures.{self.scale}"), f"draw_{self.name}")


FIGURES: dict[str, Figure] = {
    name: Figure(scale, name)
    for scale, names in (
        ("sim", ("training_curves", "co_improvement_vs_degradation", "corrupt_scan", "phase_diagram", "curriculum",
                 "fp_correction", "predicted_vs_measured", "eta_slope")),
        ("toy", ("toy_judges", "toy_first_order", "toy_phase_diagram", "toy_recipes", "toy_poor_supervision",
                 "toy_curriculum_map", "toy_scopes")),
    )
    for name in names
}

# figure-specific settings of ``--quick`` (smaller grids; the size itself is ``SimSize.quick`` or the
# toy's ``QUICK``)
QUICK_KW: dict[str, dict] = {
    "corrupt_scan": {"ps": (0.0, 0.6, 1.0)},
    "eta_slope": {"lrs": (0.005, 0.01, 0.02)},
    "curriculum": {"replay_epochs": (1, 3)},
    "fp_correction": {"pairs": 4},
    "phase_diagram": {"judges": ("self", "corrupt:0.6"), "worlds": (0,)},
    "toy_phase_diagram": {"judges": ("self",)},
    "toy_first_order": {"lrs": (1e-3, 1e-2), "n_probes": 4},
    "toy_poor_supervision": {"couplings": ("tied",), "lookalike_ps": (1.0,), "precisions": (0.5,)},
    "toy_curriculum_map": {"ns": (1, 2), "replays": ("off", "late"), "losses": ("sft",)},
    "toy_scopes": {"scopes": ("all", "trunk")},
}


def run_figure(name: str, size, out_dir: str | Path, **kw) -> dict:
    """Run the experiment of figure ``name`` at ``size`` (``kw`` go to it), draw its result into
    ``out_dir``; the result with ``paths`` (PNG, PDF, JSON) added.

    >>> import tempfile
    >>> from dynamics.sim.study import SimSize
    >>> out = run_figure("phase_diagram", SimSize.tiny(epochs=1), tempfile.mkdtemp(), couplings=("decoupled",),
    ...                  judges=("self",))
    >>> [p.suffix for p in out["paths"]]
    ['.png', '.pdf', '.json']
    """
    fig = _figure(name)
    result = fig.experiment(size, **kw)
    return {**result, "paths": fig.draw(result, out_dir)}


def _figure(name: str) -> Figure:
    if name not in FIGURES:
        raise ValueError(f"unknown figure {name!r}; expected one of {sorted(FIGURES)}")
    return FIGURES[name]


def figure_parser(name: str, default_out: str | Path, *, quick_help: str) -> argparse.ArgumentParser:
    """The start of figure ``name``'s command line: its experiment's first docstring paragraph as
    description, ``--out`` and ``--quick`` (every figure script has them).

    >>> figure_parser("phase_diagram", "out", quick_help="small").parse_args(["--quick"]).quick
    True
    """
    fn = _figure(name).experiment
    doc = (fn.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(default_out), help="output directory")
    p.add_argument("--quick", action="store_true", help=quick_help)
    return p


def add_sim_size_flags(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--seeds``, ``--epochs``, ``--prompts`` and ``--seed``: a simulator figure's size (read back by
    :func:`sim_size`)."""
    p.add_argument("--seeds", type=int, default=None, help="replicas (seeds seed..seed+N-1); default 4, quick 2")
    p.add_argument("--epochs", type=int, default=None, help="CLO epochs; default 20, quick 4")
    p.add_argument("--prompts", type=int, default=None, help="P = V, prompts and image tokens; default 64, quick 24")
    p.add_argument("--seed", type=int, default=0, help="first model seed")
    return p


def sim_size(p: argparse.ArgumentParser, args: argparse.Namespace):
    """The :class:`~dynamics.sim.study.SimSize` of :func:`add_sim_size_flags`'s flags (``SimSize.quick``
    under ``--quick``); a bad size is a usage error of ``p``.

    >>> p = add_sim_size_flags(figure_parser("eta_slope", "out", quick_help="small"))
    >>> sim_size(p, p.parse_args(["--quick", "--prompts", "12"])).prompts
    12
    """
    from dynamics.sim.study import SimSize

    over = {k: v for k, v in (("seeds", args.seeds), ("epochs", args.epochs)) if v is not None}
    if args.prompts is not None:
        over.update(prompts=args.prompts, tokens=args.prompts)
    over["seed"] = args.seed
    size = SimSize.quick(**over) if args.quick else SimSize(**over)
    try:
        size.validate()
    except ValueError as e:
        p.error(str(e))
    return size


def _sim_size(name: str, default_out, argv):
    import torch

    p = add_sim_size_flags(figure_parser(name, default_out, quick_help="a small size for smoke tests (seconds)"))
    args = p.parse_args(argv)
    size = sim_size(p, args)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    return args, size, {}


def _toy_size(name: str, default_out, argv):
    p = figure_parser(name, default_out,
                      quick_help="the tiny preset, a few pre-training steps, no gap check: a smoke run (seconds)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds seed..seed+N-1 (default 3, quick 2)")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="pre-trained checkpoint cache (default: $DYNAMICS_CACHE, else the user's cache directory)")
    if name == "toy_judges":
        from dynamics.protocol import COUPLINGS

        p.add_argument("--coupling", default="tied", choices=list(COUPLINGS),
                       help="how understanding reads the generation branch (see experiments/full_clo.py --help)")
    args = p.parse_args(argv)
    n = args.seeds if args.seeds is not None else (2 if args.quick else 3)
    if n < 1:
        p.error(f"--seeds must be >= 1, got {n}")
    from dynamics.toy.experiments import QUICK, ToySize

    base = QUICK if args.quick else ToySize()
    size = dataclasses.replace(base, seeds=tuple(range(args.seed, args.seed + n)),
                               cache_dir=None if args.quick else (str(args.cache_dir) if args.cache_dir else base.cache_dir))
    return args, size, ({"coupling": args.coupling} if name == "toy_judges" else {})


def main(name: str, argv: Sequence[str] | None = None, *, default_out: str | Path = "paper_figures/out") -> dict:
    """The command line of one figure script: ``--out``, ``--quick``, and the size: ``--seeds``,
    ``--seed``, and for the simulator ``--epochs`` and ``--prompts``, for the toy ``--cache-dir`` (and
    ``--coupling`` for ``toy_judges``).

    Runs :data:`FIGURES` ``[name]``, writes ``<out>/fig_<name>.png``, ``.pdf`` and ``.json`` (the
    numbers behind it) with matplotlib's non-interactive backend, and prints the paths. Returns the
    experiment's result with ``paths``.

    >>> import contextlib, io, tempfile
    >>> with contextlib.redirect_stdout(io.StringIO()):
    ...     out = main("eta_slope", ["--quick", "--prompts", "12", "--epochs", "1",
    ...                            "--out", tempfile.mkdtemp()])
    >>> out["summary"]["size"]["prompts"]
    12
    >>> with contextlib.redirect_stdout(io.StringIO()):
    ...     out = main("toy_first_order", ["--quick", "--seeds", "1", "--out", tempfile.mkdtemp()])
    >>> list(out["summary"]["size"]["seeds"])
    [0]
    """
    fig = _figure(name)
    args, size, kw = (_sim_size if fig.scale == "sim" else _toy_size)(name, default_out, argv)
    if args.quick:
        kw.update(QUICK_KW.get(name, {}))
    import matplotlib

    matplotlib.use("Agg")
    result = run_figure(name, size, args.out, **kw)
    for path in result["paths"]:
        print(path)
    return result
