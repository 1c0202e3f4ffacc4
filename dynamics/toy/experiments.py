"""The toy world's figure experiments: the paper's findings at multi-token scale, each read against
controls from the same pre-trained model and seeds (the unfiltered control ``all`` and the exact judge
``oracle``; :mod:`dynamics.toy.study` runs the arms, :mod:`dynamics.study` reads them).

- :func:`toy_judges`      findings 1 and 2: the self judge against ``all``, ``oracle`` and a corrupt
                          judge, per GenEval category: Gen accuracy, understanding false positives,
                          Non, win rate (``coupling="bayes"``: the Bayes-linked understanding
                          instead of the trained head);
- :func:`toy_first_order` finding 3: the measured one-step change of ``log pi`` (generation) and
                          ``log P(yes)`` (understanding) of probe pairs against the first-order
                          prediction, and the residual's order in lr;
- :func:`toy_recipes`     what it would take: the self judge against the control under stronger or
                          longer generation training (lr, epochs, plain SGD);
- :func:`toy_phase_diagram` coupling x judge quality: how understanding moves beyond the control as
                          the coupling of the branches grows (decoupled, trunk: Janus-like, tied: one
                          trunk and image vocabulary, bayes: :class:`dynamics.toy.bayes.BayesLinked`).

Each returns a JSON-able result ``{"name": ..., "summary": ..., "plot": ...}``: ``name`` the figure's
file stem, ``summary`` the numbers behind the figure (written as ``<name>.json``), ``plot`` what the
drawing needs besides; :mod:`dynamics.figures.toy` draws it.

Example (``QUICK``: the tiny preset, no gap; a smoke run of the machinery)::

    >>> result = toy_first_order(QUICK, lrs=(1e-3, 1e-2), n_probes=4)
    >>> result["name"], sorted(result["summary"]["summary"])
    ('fig_toy_first_order', ['generation', 'understanding'])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from dynamics.protocol import COUPLINGS
from dynamics.study import change, paired_difference, phase_table, vs_control
from dynamics.study.phase import PHASE_FP_MARGIN
from dynamics.toy.study import (
    ToySize,
    category_table,
    judge_study,
    one_step_check,
    one_step_summary,
    pretrained_model,
)
from dynamics.toy.world import CATEGORIES

__all__ = [
    "METRICS",
    "QUICK",
    "RECIPES",
    "ToySize",
    "self_vs_control",
    "size_dict",
    "study",
    "toy_curriculum_map",
    "toy_first_order",
    "toy_judges",
    "toy_phase_diagram",
    "toy_poor_supervision",
    "toy_recipes",
    "toy_scopes",
]

# a smoke-test size: the tiny preset, no gap (check off), threshold 0 so every judge accepts something
QUICK = ToySize.tiny(clo=dataclasses.replace(ToySize.tiny().clo, threshold=0.0))

METRICS = ("gen_acc", "und_fp_rate", "non_unification", "win_rate")
VS_CONTROL_KEYS = ("gen_acc", "und_fp_rate", "non_unification", "win_rate", "und_fn_rate")


def _quick(size: ToySize) -> bool:
    return size.preset == "tiny"


def study(size: ToySize, judges: Sequence[str], *, coupling: str = "tied",
          clo_overrides: dict | None = None, excluded: list | None = None) -> dict[str, list[dict]]:
    """:func:`dynamics.toy.study.judge_study`, with the gap check off at the tiny preset (a tiny model
    has no gap). With ``excluded`` (a list), units without the gap are left out and listed there
    instead of stopping the study."""
    return judge_study(size, judges, coupling=coupling, check=not _quick(size), clo_overrides=clo_overrides,
                       skip_no_gap=excluded is not None, excluded=excluded)


def self_vs_control(arms: dict[str, list[dict]], keys: Sequence[str]) -> dict:
    """Per key: the self arm's change minus the control's (paired by seed), and each arm's
    ``(before, after, change)``; every value ``(mean, s.e., seeds)``.

    >>> recs = lambda d: [{"epoch": e, "seed": 0, "x": d * e} for e in (0, 1)]
    >>> self_vs_control({"self": recs(0.3), "all": recs(0.1)}, ["x"])["x"]["vs_control"][0]
    0.2
    """
    return {k: {"vs_control": paired_difference(arms["self"], arms["all"], k), "self": change(arms["self"], k),
                "all": change(arms["all"], k)} for k in keys}


def size_dict(size: ToySize) -> dict:
    """``size`` as a JSON-able dict (the CLO config through its own ``to_dict``)."""
    d = dataclasses.asdict(size)
    d["clo"] = size.clo.to_dict()
    return d


def toy_judges(size: ToySize, *, judges: Sequence[str] = ("self", "all", "oracle", "corrupt:0.9"),
               coupling: str = "tied") -> dict:
    """Findings 1 and 2: the self judge against the unfiltered control, the exact judge and a corrupt
    judge, per category (change of Gen accuracy, understanding false-positive rate on the pre-trained
    samples, Non; the win rate with its denominator).

    >>> result = toy_judges(QUICK, judges=("self", "all"))
    >>> sorted(result["summary"]["vs_control"]), result["plot"]["judges"]
    (['self'], ['self', 'all'])
    """
    arms = study(size, judges, coupling=coupling)
    rows = category_table(arms, METRICS, control="all" if "all" in judges else None)
    name = "fig_toy_judges" + ("" if coupling == "tied" else f"_{coupling}")
    summary = {"size": size_dict(size), "coupling": coupling, "rows": rows,
               "vs_control": vs_control(arms, "all", VS_CONTROL_KEYS) if "all" in judges else {}}
    plot = {"judges": list(judges), "categories": ["all", *CATEGORIES], "metrics": list(METRICS)}
    return {"name": name, "summary": summary, "plot": plot}


def toy_first_order(size: ToySize, *, lrs: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1), n_probes: int = 24) -> dict:
    """Finding 3: one SGD step of self-judged SFT (float64); measured change of ``log pi(x | c)`` and
    ``log P(yes | x, c)`` on probe pairs against the first-order prediction, per lr, every seed.

    (Example in the module docstring.)
    """
    torch.set_num_threads(1)
    rows = []
    for s in size.seeds:
        model = pretrained_model(size, s, check=not _quick(size))
        for r in one_step_check(model, lrs=lrs, n_probes=n_probes, seed=s, threshold=size.clo.threshold):
            rows.append({**r, "seed": s})
    summary = {"size": size_dict(size), "lrs": list(lrs), "summary": one_step_summary(rows),
               "per_seed": {s: one_step_summary([r for r in rows if r["seed"] == s]) for s in size.seeds},
               "rows": rows}
    return {"name": "fig_toy_first_order", "summary": summary, "plot": {}}


def toy_phase_diagram(size: ToySize, *, couplings: Sequence[str] = COUPLINGS,
                      judges: Sequence[str] = ("self", "oracle", "corrupt:0.9"), alpha: float = 0.05) -> dict:
    """Coupling x judge quality at the toy scale: for each coupling (``decoupled``, ``trunk``,
    ``tied``, ``bayes``) and judge, the change of Gen accuracy, of the understanding's false-positive
    rate, of Non and the win rate beyond the unfiltered control (paired by unit), and the arm's phase
    (:func:`dynamics.study.phase_of`, one-sided tests at ``alpha``: few units, so 0.05). Units whose
    pre-trained model lacks the internal gap are left out (``summary["excluded"]``); a coupling with
    fewer than two units left has no row (its reasons are listed).

    >>> result = toy_phase_diagram(QUICK, couplings=("tied",), judges=("self",))
    >>> sorted(result["summary"]["rows"]["tied"]), result["plot"]["couplings"]
    (['self'], ['tied'])
    """
    excluded: dict[str, list] = {c: [] for c in couplings}
    arms = {c: study(size, ("all", *judges), coupling=c, excluded=excluded[c]) for c in couplings}
    arms = {c: a for c, a in arms.items() if len({(r.get("world", 0), r["seed"]) for r in a["all"]}) >= 2}
    table = phase_table(arms, control="all", gen_key="gen_acc", fp_key="und_fp_rate", fp_margin=PHASE_FP_MARGIN, alpha=alpha,
                        other_keys=("non_unification", "win_rate"), final_keys={"win_rate": 0.5})
    rows = {c: {j: ph.to_dict() for j, ph in by_judge.items()} for c, by_judge in table.items()}
    win_n = {c: {j: change(arms[c][j], "win_rate_n")[1] for j in judges} for c in arms}
    summary = {"size": size_dict(size), "units": [list(u) for u in size.units()], "alpha": alpha,
               "fp_margin": PHASE_FP_MARGIN, "control": "all", "rows": rows, "win_rate_n": win_n,
               "excluded": {c: e for c, e in excluded.items() if e}}
    return {"name": "fig_toy_phase_diagram", "summary": summary,
            "plot": {"couplings": list(couplings), "judges": list(judges), "scale": "toy world"}}


RECIPES = (
    ("default", {}),
    ("lr x10", {"lr": 1e-3}),
    ("epochs x3", {"epochs": 12, "curriculum": "epochs:6"}),
    ("SGD", {"optimizer": "sgd", "lr": 5e-3}),
)


def toy_recipes(size: ToySize, *, recipes: Sequence[tuple[str, dict]] = RECIPES) -> dict:
    """What it would take: the self judge against the unfiltered control under stronger or longer
    generation training (the default round, lr x 10, three times the epochs, plain SGD); the change
    of Gen accuracy, of the understanding's false-positive and false-negative rates, and the win
    rate with its denominator.

    >>> result = toy_recipes(QUICK, recipes=(("default", {}),))
    >>> sorted(result["summary"]["recipes"]["default"])[:2], result["plot"]["labels"]
    (['gen_acc', 'non_unification'], ['default'])
    """
    keys = ("gen_acc", "und_fp_rate", "und_fn_rate", "win_rate", "non_unification")
    results = {}
    for label, over in recipes:
        arms = study(size, ("self", "all"), clo_overrides=over)
        results[label] = self_vs_control(arms, keys)
        results[label]["win_rate_n"] = {a: change(arms[a], "win_rate_n")[1] for a in ("self", "all")}
    summary = {"size": size_dict(size), "recipes": results, "spec": {lab: over for lab, over in recipes}}
    return {"name": "fig_toy_recipes", "summary": summary, "plot": {"labels": [r[0] for r in recipes]}}


# the ablations live in their own module; the figure registry (dynamics.runs.figures) finds every toy
# experiment here
from dynamics.toy.ablations import toy_curriculum_map, toy_poor_supervision, toy_scopes
