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
    ...                             lookalike_ps=(1.0,), precisions=(0.5,), recall=0.8)
    >>> sorted(out["summary"]["rows"]["bayes"])
    ['all', 'lookalike:1', 'oracle', 'pr:0.5,0.8', 'self']
    >>> row = out["summary"]["rows"]["bayes"]["lookalike:1"]
    >>> row["phase"] in ("co-improvement", "co-degradation", "drift", "no transfer", "undetermined")
    True
    >>> sorted(k for k in out["summary"]["alarm"]["bayes"] if not k.startswith("exact_"))
    ['co_degradation_miss_rate', 'co_degrading_arms', 'degrading_arms', 'false_alarm_rate', 'miss_rate']
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence

from dynamics.alarm import CoDegradationWarning, EpochAlarm
from dynamics.protocol import COUPLINGS
from dynamics.sim.study import Reference, SimSize, exact_epoch_metrics, pretrained
from dynamics.sim.world import SimWorld
from dynamics.study import beyond, delta, less, mean_se, phase_of, run_arm
from dynamics.study.phase import PHASE_FP_MARGIN
from dynamics.study.read import last_epoch, unit

__all__ = [
    "CONTROLS",
    "LOOKALIKE_PS",
    "PR_PRECISIONS",
    "PR_RECALL",
    "alarmed_arms",
    "format_rows",
    "near_miss_share",
    "poor_supervision_scan",
    "scan_judges",
]

LOOKALIKE_PS = (0.1, 0.25, 0.5, 1.0)
PR_PRECISIONS = (0.9, 0.7, 0.6, 0.5, 0.4, 0.3)
# a strict judge: at a high recall the pool runs out of misaligned candidates before a low precision
# is reached (at recall 0.8 no precision below about 0.56 is realisable in these worlds)
PR_RECALL = 0.3
CONTROLS = ("self", "oracle")  # the arms whose alarms are false alarms
ALARM_TOLERANCE = 0.01  # the entry points' default (--alarm-tolerance)


def scan_judges(lookalike_ps: Sequence[float] = LOOKALIKE_PS, precisions: Sequence[float] = PR_PRECISIONS,
                recall: float = PR_RECALL) -> list[str]:
    """The judge specs of the scan (without the controls), ``lookalike`` first.

    >>> scan_judges((0.5,), (0.9, 0.5), 0.8)
    ['lookalike:0.5', 'pr:0.9,0.8', 'pr:0.5,0.8']
    """
    return [f"lookalike:{p:g}" for p in lookalike_ps] + [f"pr:{q:g},{recall:g}" for q in precisions]


def near_miss_share(world: SimWorld, data) -> list[float]:
    """Per replica, the share of the accepted set's misaligned candidates that are near misses of their
    prompt (:attr:`SimWorld.near_misses`; NaN where every accepted candidate is aligned).

    >>> from dynamics.sim.study import run_arm as sim_arm
    >>> w, m = pretrained(SimSize.tiny())
    >>> len(near_miss_share(w, sim_arm(w, m, SimSize.tiny().config(judge="all")).data))
    2
    """
    ids = data.prompt_ids[None, :, None].expand_as(data.accepted)
    tok = data.images[..., 0]
    bad = data.accepted & ~world.aligned[ids, tok]
    near = bad & world.near_misses[ids, tok]
    out = []
    for r in range(bad.shape[0]):
        n = int(bad[r].sum())
        out.append(float(near[r].sum()) / n if n else math.nan)
    return out


def alarmed_arms(size: SimSize, judges: Sequence[str], *, worlds: Sequence[int] = (0,), coupling: str | None = None,
                 perturbation: float = 0.0, perturb_at: str = "pretrained",
                 alarm_tolerance: float = ALARM_TOLERANCE, **cfg_overrides) -> dict[str, list[dict]]:
    """:func:`dynamics.sim.study.world_arms` with the co-degradation alarm in every arm: ``{judge:
    records of every world}``, every record tagged with its ``world`` and carrying the simulator's
    exact metrics, ``alarm`` (the loop's alarm, :class:`~dynamics.alarm.EpochAlarm` at
    ``alarm_tolerance``, fired at this epoch), ``exact_alarm`` (the same alarm fed the exact
    ``exact_gen_acc`` and ``exact_non_unification``) and ``sft_near_miss_share``
    (:func:`near_miss_share` of the arm's final training set). The arms of one pre-trained model
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
        ref = Reference.of(model0)
        shared: dict = {}
        for j in judges:
            cfg = sz.config(judge=j, **cfg_overrides)
            arm = run_arm(model0, cfg, external=world.oracle, label=j, tags={"world": int(w)}, shared_start=shared,
                          on_epoch=_epoch_hook(world, model0, ref, cfg.threshold, alarm_tolerance))
            share = near_miss_share(world, arm.data)
            for rec in arm.records:
                rec["sft_near_miss_share"] = share[int(rec["replica"])]
            out[j] += arm.records
    return out


def _epoch_hook(world: SimWorld, model, ref: Reference, threshold: float, tolerance: float):
    """The ``on_epoch`` of one arm: the exact metrics, then the two alarms (their warnings silenced:
    the verdicts go into the records)."""
    loop_alarm, exact_alarm = EpochAlarm(tolerance), EpochAlarm(tolerance)

    def on_epoch(epoch: int, records: list[dict]) -> None:
        for rec, ex in zip(records, exact_epoch_metrics(world, model, ref, threshold=threshold)):
            rec.update(ex)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CoDegradationWarning)
            loop_alarm(epoch, records)
            exact_alarm(epoch, [{"seed": r["seed"], "gen_acc": r["exact_gen_acc"],
                                 "non_unification": r["exact_non_unification"]} for r in records])
        for rec in records:
            rec["alarm"] = loop_alarm.alarms[int(rec["seed"])].history[-1]["alarm"]
            rec["exact_alarm"] = exact_alarm.alarms[int(rec["seed"])].history[-1]["alarm"]

    return on_epoch


def _fired(records: Sequence[dict], key: str) -> dict[tuple[int, int], bool]:
    """Per unit, whether the alarm ``key`` fired at any epoch after the first."""
    out: dict[tuple[int, int], bool] = {}
    for r in records:
        out[unit(r)] = out.get(unit(r), False) or (int(r["epoch"]) > 0 and bool(r[key]))
    return out


def _rate(flags: Sequence[bool]) -> tuple[float, float, int]:
    """The share of ``True`` with its binomial standard error and count."""
    n = len(flags)
    if n == 0:
        return math.nan, math.nan, 0
    p = sum(flags) / n
    return p, math.sqrt(p * (1 - p) / n), n


def _own(records: Sequence[dict]) -> dict:
    """An arm's own numbers: the change of Gen, FP and Non over training (not beyond the control),
    the final precision, recall and near-miss share of its training set, its alarms' firing rates."""
    out = {f"{name}_change": delta(records, key).as_tuple()
           for name, key in (("gen", "exact_gen_acc"), ("fp", "exact_pre_fp_rate"), ("non", "exact_non_unification"))}
    out.update({name: _final(records, key) for name, key in (("precision", "sft_precision"), ("recall", "sft_recall"),
                                                             ("near_miss_share", "sft_near_miss_share"))})
    out["alarm_rate"] = _rate(list(_fired(records, "alarm").values()))
    out["exact_alarm_rate"] = _rate(list(_fired(records, "exact_alarm").values()))
    return out


def _final(records: Sequence[dict], key: str) -> tuple[float, float, int]:
    end = last_epoch(records)
    return mean_se(r.get(key) for r in records if int(r["epoch"]) == end)


def poor_supervision_scan(size: SimSize, *, couplings: Sequence[str] = COUPLINGS,
                          worlds: Sequence[int] = (0, 1), lookalike_ps: Sequence[float] = LOOKALIKE_PS,
                          precisions: Sequence[float] = PR_PRECISIONS, recall: float = PR_RECALL,
                          alpha: float = 0.01, alarm_tolerance: float = ALARM_TOLERANCE) -> dict:
    """Poor supervision: ``lookalike:p`` over ``lookalike_ps`` and ``pr:precision,recall`` over
    ``precisions`` at a fixed ``recall``, with the controls, per coupling, each arm read against the
    unfiltered control (phase, Gen, FP, Non, win rate), its realised precision and recall, and the
    co-degradation alarm's false-alarm and miss rates.

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
    arm_names = ["all", *CONTROLS, *judges]
    rows: dict[str, dict[str, dict]] = {}
    alarm: dict[str, dict] = {}
    for c in couplings:
        arms = alarmed_arms(size, arm_names, worlds=worlds, coupling=c, alarm_tolerance=alarm_tolerance)
        rows[c] = {}
        for j in arm_names[1:]:
            ph = phase_of(arms[j], arms["all"], gen_key="exact_gen_acc", fp_key="exact_pre_fp_rate",
                          fp_margin=PHASE_FP_MARGIN, alpha=alpha,
                          other_keys=("exact_non_unification", "non_unification", "exact_win_rate"),
                          final_keys={"exact_win_rate": 0.5})
            rows[c][j] = {**ph.to_dict(), **_own(arms[j])}
        rows[c]["all"] = _own(arms["all"])
        degrading = [j for j in judges if rows[c][j]["gen_direction"] == -1]
        # the alarm's own case: both branches degrade while Non falls beyond the control
        silent = [j for j in degrading if rows[c][j]["phase"] == "co-degradation"
                  and less(beyond(arms[j], arms["all"], "exact_non_unification"), alpha=alpha).holds]
        alarm[c] = {"degrading_arms": degrading, "co_degrading_arms": silent}
        for key, name in (("alarm", ""), ("exact_alarm", "exact_")):
            alarm[c][f"{name}false_alarm_rate"] = _rate([f for j in CONTROLS for f in _fired(arms[j], key).values()])
            alarm[c][f"{name}miss_rate"] = _rate([not f for j in degrading for f in _fired(arms[j], key).values()])
            alarm[c][f"{name}co_degradation_miss_rate"] = _rate(
                [not f for j in silent for f in _fired(arms[j], key).values()])
    summary = {"size": dataclasses.asdict(size), "worlds": list(worlds), "couplings": list(couplings),
               "alpha": alpha, "fp_margin": PHASE_FP_MARGIN, "control": "all", "alarm_tolerance": alarm_tolerance,
               "lookalike_ps": list(lookalike_ps), "precisions": list(precisions), "recall": recall,
               "rows": rows, "alarm": alarm}
    plot = {"couplings": list(couplings), "judges": [*CONTROLS, *judges], "scale": "simulator",
            "keys": {"gen": "exact_gen_acc", "fp": "exact_pre_fp_rate", "non": "exact_non_unification"}}
    return {"name": "fig_poor_supervision", "summary": summary, "plot": plot}


def format_rows(result: dict) -> str:
    """The scan as a text table (points beyond the control, mean ± s.e.)."""
    s = result["summary"]

    def pm(v, scale=100.0):
        return f"{scale * v[0]:+6.1f}±{scale * v[1]:4.1f}" if v and not math.isnan(v[0]) else "     n/a   "

    head = (f"{'coupling':9} {'judge':15} {'phase':15} {'Gen':>11} {'FP':>11} {'Non':>11} {'win-50':>11} | "
            f"{'own Gen':>11} {'own FP':>11} {'own Non':>11} | {'prec':>5} {'rec':>5} {'near':>5} {'alarm':>5} "
            f"{'exact':>5}")
    lines = [head]
    for c, by in s["rows"].items():
        for j, r in by.items():
            vs = (f"{'(control)':15} {'':>11} {'':>11} {'':>11} {'':>11}" if j == "all" else
                  f"{r['phase']:15} {pm(r['gen'])} {pm(r['fp'])} {pm(r['exact_non_unification'])} "
                  f"{pm(r['final_exact_win_rate'])}")
            lines.append(f"{c:9} {j:15} {vs} | {pm(r['gen_change'])} {pm(r['fp_change'])} {pm(r['non_change'])} | "
                         f"{r['precision'][0]:5.3f} {r['recall'][0]:5.3f} {r['near_miss_share'][0]:5.3f} "
                         f"{r['alarm_rate'][0]:5.2f} {r['exact_alarm_rate'][0]:5.2f}")
        a = s["alarm"][c]
        lines.append(f"{c:9} alarm: false alarms {pm(a['false_alarm_rate'])} (exact {pm(a['exact_false_alarm_rate'])}) "
                     f"over {list(CONTROLS)}; misses {pm(a['miss_rate'])} (exact {pm(a['exact_miss_rate'])}) over "
                     f"{a['degrading_arms']}; {pm(a['co_degradation_miss_rate'])} (exact "
                     f"{pm(a['exact_co_degradation_miss_rate'])}) over {a['co_degrading_arms']}")
    return "\n".join(lines)

