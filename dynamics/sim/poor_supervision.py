"""Poor supervision at the simulator scale: judges that fail the way real judges fail, read against
the unfiltered control, with the co-degradation alarm running in every arm (numbers only).

The paper warns that with poor supervision both branches degrade (Gen down, the understanding's false
positives up) while the intrinsic Non still falls. Proposition 1 says which bad positives do it: a
misaligned training target ``x_u`` raises ``log pi(x0 | y0)`` of the probes its kernel row reaches,
``K(Y0, Yu)``, so *near misses* (misaligned candidates that look like aligned ones) raise the
understanding's yes on misaligned probes, where random bad positives (``corrupt:p``) are mostly
generic samples a Bayes understanding is blind to. The judges scanned here (:mod:`dynamics.judges`):

- ``lookalike:<p>``: the exact judge that also accepts each near miss with probability ``p``;
- ``pr:<precision>,<recall>``: an external judge with set precision and recall, errors near misses
  first, scanned over the precision at a fixed recall;

with the controls ``all`` (unfiltered: every arm is read against it), ``self`` and ``oracle``, in
every coupling asked for (:data:`dynamics.protocol.COUPLINGS`), ``size.seeds`` replicas in each world.
Each arm is placed by :func:`dynamics.study.phase_of` (``exact_gen_acc``, ``exact_pre_fp_rate``, the
no-transfer margin :data:`dynamics.study.phase.PHASE_FP_MARGIN`) with Non and the win rate, the
realised precision and recall of its accepted set (the loop's audit: ``sft_precision``,
``sft_recall``), the share of its false positives that are near misses, and the verdicts of the
co-degradation alarm (:class:`dynamics.alarm.EpochAlarm`, on the loop's sampled ``gen_acc`` and
``non_unification`` as the entry points install it, and a second one on the exact metrics): its
false-alarm rate on the ``self`` and ``oracle`` arms, its miss rate on the arms that degrade.

Example (a tiny world)::

    >>> from dynamics.sim.study import SimSize
    >>> out = poor_supervision_scan(SimSize.tiny(epochs=1), couplings=("bayes",), worlds=(0,),
    ...                             lookalike_ps=(1.0,), precisions=(0.5,), recall=0.8, kernel=False)
    >>> sorted(out["summary"]["rows"]["bayes"])
    ['all', 'lookalike:1', 'oracle', 'pr:0.5,0.8', 'self']
    >>> rows = poor_supervision_scan(SimSize.tiny(epochs=1), couplings=("tied",), worlds=(0,), lookalike_ps=(),
    ...                              precisions=(), kernel=False)["summary"]["rows"]["tied"]
    >>> "weak" in rows
    True
    >>> row = out["summary"]["rows"]["bayes"]["lookalike:1"]
    >>> row["phase"] in ("co-improvement", "co-degradation", "drift", "no transfer", "undetermined")
    True
    >>> sorted(k for k in out["summary"]["alarm"]["bayes"] if not k.startswith("exact_"))
    ['co_degradation_miss_rate', 'co_degrading_arms', 'degrading_arms', 'false_alarm_rate', 'miss_rate']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from dynamics.protocol import COUPLINGS
from dynamics.sim.study import Reference, SimSize, exact_epoch_metrics, pretrained, weak_pretrained
from dynamics.sim.world import SimWorld
from dynamics.study import run_arm
from dynamics.study.phase import PHASE_FP_MARGIN
from dynamics.study.supervision import (
    CONTROLS,
    ScanKeys,
    alarm_recorder,
    format_rows,
    near_miss_share,
    read_scan,
)

__all__ = [
    "CONTROLS",
    "LOOKALIKE_PS",
    "PR_PRECISIONS",
    "PR_RECALL",
    "SIM_KEYS",
    "WEAK_COUPLINGS",
    "alarmed_arms",
    "format_rows",
    "kernel_signs",
    "near_miss_share",
    "poor_supervision_scan",
    "scan_judges",
]

LOOKALIKE_PS = (0.1, 0.25, 0.5, 1.0)
PR_PRECISIONS = (0.9, 0.7, 0.6, 0.5, 0.4, 0.3)
# a strict judge: at a high recall the pool runs out of misaligned candidates before a low precision
# is reached (at recall 0.8 no precision below about 0.56 is realisable in these worlds)
PR_RECALL = 0.3
ALARM_TOLERANCE = 0.01  # the entry points' default (--alarm-tolerance)
# the couplings with a weak arm: under bayes an earlier checkpoint's understanding is no weaker (its generator's
# posterior is as good: dynamics.sim.study.WEAK_FRACTION)
WEAK_COUPLINGS = ("decoupled", "trunk", "tied")
# the simulator's exact metrics, the loop's sampled Non beside them, the loop's alarm and one fed the exact metrics
SIM_KEYS = ScanKeys(gen="exact_gen_acc", fp="exact_pre_fp_rate", non="exact_non_unification", win="exact_win_rate",
                    others=("non_unification",), alarms=("alarm", "exact_alarm"))


def scan_judges(lookalike_ps: Sequence[float] = LOOKALIKE_PS, precisions: Sequence[float] = PR_PRECISIONS,
                recall: float = PR_RECALL) -> list[str]:
    """The judge specs of the scan (without the controls), ``lookalike`` first.

    >>> scan_judges((0.5,), (0.9, 0.5), 0.8)
    ['lookalike:0.5', 'pr:0.9,0.8', 'pr:0.5,0.8']
    """
    return [f"lookalike:{p:g}" for p in lookalike_ps] + [f"pr:{q:g},{recall:g}" for q in precisions]


def alarmed_arms(size: SimSize, judges: Sequence[str], *, worlds: Sequence[int] = (0,), coupling: str | None = None,
                 perturbation: float = 0.0, perturb_at: str = "pretrained",
                 alarm_tolerance: float = ALARM_TOLERANCE, **cfg_overrides) -> dict[str, list[dict]]:
    """:func:`dynamics.sim.study.world_arms` with the co-degradation alarm in every arm: ``{judge:
    records of every world}``, every record tagged with its ``world`` and carrying the simulator's
    exact metrics, ``alarm`` (the loop's alarm, :class:`~dynamics.alarm.EpochAlarm` at
    ``alarm_tolerance``, fired at this epoch), ``exact_alarm`` (the same alarm fed the exact
    ``exact_gen_acc`` and ``exact_non_unification``) and ``sft_near_miss_share``
    (:func:`near_miss_share` of the arm's final training set). A ``weak`` arm is judged by
    :func:`dynamics.sim.study.weak_pretrained` of the same world and coupling. The arms of one pre-trained model
    share their draws before training (:func:`dynamics.clo.run_clo`'s ``shared_start``: the same
    records as separate runs).

    >>> arms = alarmed_arms(SimSize.tiny(epochs=1), ["all", "lookalike:1"])
    >>> sorted(arms), {type(r["alarm"]) for r in arms["all"]}
    (['all', 'lookalike:1'], {<class 'bool'>})
    """
    out: dict[str, list[dict]] = {j: [] for j in judges}
    for w in worlds:
        sz = dataclasses.replace(size, world_seed=int(w))
        world, model0 = pretrained(sz, coupling=coupling, perturbation=perturbation, perturb_at=perturb_at)
        weak = (weak_pretrained(sz, coupling=coupling, perturbation=perturbation, perturb_at=perturb_at)
                if "weak" in judges else None)
        ref = Reference.of(model0)
        shared: dict = {}
        for j in judges:
            cfg = sz.config(judge=j, **cfg_overrides)
            arm = run_arm(model0, cfg, external=world.oracle, label=j, tags={"world": int(w)}, shared_start=shared,
                          judge_model=weak,
                          on_epoch=_epoch_hook(world, model0, ref, cfg.threshold, alarm_tolerance))
            share = near_miss_share(arm.data, world.oracle)
            for rec in arm.records:
                rec["sft_near_miss_share"] = share[int(rec["replica"])]
            out[j] += arm.records
    return out


def kernel_signs(size: SimSize, judges: Sequence[str], *, coupling: str | None = None, world: int = 0,
                 tol: float = 1e-3) -> dict[str, dict]:
    """The kernel module's first-order prediction of the understanding's change under each judge's
    training set, before training, against one measured epoch (:func:`dynamics.transfer.sim_transfer`,
    world ``world``, plain SGD at the scan's rate): per judge, on the misaligned probes and on the
    pre-trained model's false positives, the predicted and measured mean change of ``log P(yes)``
    (Proposition 1: near-miss positives should raise it) with the sign agreement per probe
    (``(mean, s.e., replicas)``), and the sign agreement over every probe. The ``weak`` judge (no
    judge slot in that experiment) is left out.

    >>> out = kernel_signs(SimSize.tiny(epochs=1), ["all"])
    >>> sorted(out["all"])
    ['fp', 'misaligned', 'sign_agreement']
    """
    from dynamics.transfer import sim_transfer

    sz = dataclasses.replace(size, world_seed=int(world))
    w, model0 = pretrained(sz, coupling=coupling)
    out = {}
    for j in judges:
        if j == "weak":
            continue
        s = sim_transfer(w, model0, sz.config(judge=j, optimizer="sgd"), tol=tol)["summary"]
        nan = (float("nan"), float("nan"), 0)
        out[j] = {kind: {k: tuple(s["by_kind"][kind][k]) if kind in s["by_kind"] else nan
                         for k in ("pred_delta_u", "delta_u", "sign_agreement")} for kind in ("misaligned", "fp")}
        out[j]["sign_agreement"] = tuple(s.get("sign_agreement", nan))
    return out


def _epoch_hook(world: SimWorld, model, ref: Reference, threshold: float, tolerance: float):
    """The ``on_epoch`` of one arm: the exact metrics, then the loop's alarm and one fed the exact
    ``exact_gen_acc`` and ``exact_non_unification``."""

    def exact(epoch: int, records: list[dict]) -> None:
        for rec, ex in zip(records, exact_epoch_metrics(world, model, ref, threshold=threshold)):
            rec.update(ex)

    return alarm_recorder(tolerance, {"alarm": ("gen_acc", "non_unification"),
                                      "exact_alarm": ("exact_gen_acc", "exact_non_unification")}, before=exact)


def poor_supervision_scan(size: SimSize, *, couplings: Sequence[str] = COUPLINGS,
                          worlds: Sequence[int] = (0, 1), lookalike_ps: Sequence[float] = LOOKALIKE_PS,
                          precisions: Sequence[float] = PR_PRECISIONS, recall: float = PR_RECALL,
                          weak: Sequence[str] = WEAK_COUPLINGS, alpha: float = 0.01,
                          alarm_tolerance: float = ALARM_TOLERANCE, kernel: bool = True) -> dict:
    """Poor supervision: ``lookalike:p`` over ``lookalike_ps`` and ``pr:precision,recall`` over
    ``precisions`` at a fixed ``recall``, with the controls, per coupling, each arm read against the
    unfiltered control (phase, Gen, FP, Non, win rate), its realised precision and recall, and the
    co-degradation alarm's false-alarm and miss rates. In the couplings of ``weak`` a ``weak`` arm runs
    too (:func:`dynamics.sim.study.weak_pretrained`: the same replicas pre-trained for fewer steps; under
    ``bayes`` an earlier generator's posterior is no weaker a judge, so not by default). With
    ``kernel``, each row also has ``kernel``: the first-order prediction of the sign of the
    understanding's change on misaligned probes and false positives under that judge's data, against a
    measured epoch (:func:`kernel_signs`, the first world).

    Returns ``{"name": "fig_poor_supervision", "summary": ..., "plot": ...}``. ``summary["rows"]
    [coupling][judge]``: :meth:`dynamics.study.Phase.to_dict` (``gen``, ``fp``, ``exact_non_unification``,
    ``non_unification``, ``exact_win_rate`` beyond the control and ``final_exact_win_rate`` against
    50, each ``(mean, s.e., n)``) plus ``non_change`` (Non's own change, not beyond the control),
    ``precision``, ``recall``, ``near_miss_share`` (final values), ``alarm_rate`` and
    ``exact_alarm_rate`` (the share of units whose alarm fired at some epoch). ``summary["alarm"]
    [coupling]``: the false-alarm rate over the ``self`` and ``oracle`` units; the miss rate over the
    units of the *degrading* arms (those whose Gen falls beyond the control at ``alpha``, listed in
    ``degrading_arms``) and over those of the arms that co-degrade while Non falls beyond the control
    (``co_degrading_arms``: the case the alarm exists for), each ``(rate, s.e., units)``, NaN where
    there is no such arm. Keys prefixed ``exact_``: the alarm fed the exact metrics.
    """
    if not 0.0 < recall <= 1.0:
        raise ValueError(f"poor_supervision_scan: recall={recall} must lie in (0, 1]")
    judges = scan_judges(lookalike_ps, precisions, recall)
    rows: dict[str, dict[str, dict]] = {}
    alarm: dict[str, dict] = {}
    for c in couplings:
        mine = [*judges, "weak"] if c in weak else judges
        arms = alarmed_arms(size, ["all", *CONTROLS, *mine], worlds=worlds, coupling=c, alarm_tolerance=alarm_tolerance)
        rows[c], alarm[c] = read_scan(arms, mine, keys=SIM_KEYS, alpha=alpha)
        if kernel:
            for j, k in kernel_signs(size, ["all", *CONTROLS, *mine], coupling=c, world=worlds[0]).items():
                rows[c][j]["kernel"] = k
    summary = {"size": dataclasses.asdict(size), "worlds": list(worlds), "couplings": list(couplings),
               "alpha": alpha, "fp_margin": PHASE_FP_MARGIN, "control": "all", "alarm_tolerance": alarm_tolerance,
               "lookalike_ps": list(lookalike_ps), "precisions": list(precisions), "recall": recall,
               "weak": [c for c in couplings if c in weak], "rows": rows, "alarm": alarm, "keys": SIM_KEYS.to_dict()}
    plot = {"couplings": list(couplings), "judges": [*CONTROLS, *judges, "weak"], "scale": "simulator",
            "keys": SIM_KEYS.to_dict()}
    return {"name": "fig_poor_supervision", "summary": summary, "plot": plot}
