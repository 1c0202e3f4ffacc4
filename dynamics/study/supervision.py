"""Reading a poor-supervision scan, at any scale: each judge's arm against the unfiltered control, the
realised quality of its training set, and the co-degradation alarm's verdicts in every arm.

A scan runs, per unit, the unfiltered control ``all``, the controls ``self`` and ``oracle`` and the
judges under study from the same pre-trained model (:func:`dynamics.study.run_arms`). This module
reads it, with the metric keys of the scale (:class:`ScanKeys`: the simulator's exact metrics, or the
loop's sampled ones at the toy scale):

- :func:`alarm_recorder`: an ``on_epoch`` hook that runs :class:`dynamics.alarm.EpochAlarm` on one or
  more (external accuracy, Non) pairs of each record and writes its verdict into the record (``alarm``,
  ``exact_alarm``, ...);
- :func:`near_miss_share`: the share of an accepted set's misaligned candidates that are near misses
  of their prompt (:func:`dynamics.judges.near_misses`);
- :func:`read_scan`: per judge, its phase against the control (:func:`dynamics.study.phase_of`) with
  Non and the win rate, its own changes, the final precision, recall and near-miss share of its
  training set and its alarms' firing rates; per scan, the alarms' false-alarm rate over the
  ``self`` and ``oracle`` units and their miss rate over the units of the arms that degrade;
- :func:`format_rows`: the scan as a text table.

Example (records of two units; an arm whose Gen falls while Non falls)::

    >>> def recs(g, n, f=0.0, fired=False):
    ...     return [{"epoch": e, "seed": s, "gen_acc": 0.6 + e * (g + 0.01 * s), "und_fp_rate": 0.3 + e * (f + 0.01 * s),
    ...              "non_unification": 0.2 + e * (n + 0.01 * s), "win_rate": 0.5, "sft_precision": 0.9,
    ...              "sft_recall": 0.8, "sft_near_miss_share": 0.5, "alarm": fired and e > 0}
    ...             for e in (0, 1) for s in range(6)]
    >>> arms = {"all": recs(0, 0), "self": recs(0.1, -0.1), "oracle": recs(0.1, -0.1), "bad": recs(-0.1, -0.1, 0.1, True)}
    >>> rows, alarm = read_scan(arms, ["bad"], keys=LOOP_KEYS, alpha=0.01)
    >>> alarm["degrading_arms"], alarm["co_degrading_arms"], alarm["miss_rate"][0], alarm["false_alarm_rate"][0]
    (['bad'], ['bad'], 0.0, 0.0)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from dynamics.alarm import CoDegradationWarning, EpochAlarm
from dynamics.study.phase import PHASE_FP_MARGIN, phase_of
from dynamics.study.read import beyond, delta, last_epoch, unit
from dynamics.study.stats import less, mean_se

__all__ = ["CONTROLS", "LOOP_KEYS", "ScanKeys", "alarm_recorder", "fired", "format_rows", "near_miss_share",
           "rate", "read_scan"]

CONTROLS = ("self", "oracle")  # the arms whose alarms are false alarms


@dataclass(frozen=True)
class ScanKeys:
    """The record keys a scan is read on: Gen accuracy, the understanding's false-positive rate, Non,
    the win rate (its final value read against 0.5), further keys read beyond the control, and the
    alarm verdicts (one record key per alarm, written by :func:`alarm_recorder`)."""

    gen: str
    fp: str
    non: str
    win: str
    others: tuple[str, ...] = ()
    alarms: tuple[str, ...] = ("alarm",)

    def to_dict(self) -> dict:
        return {"gen": self.gen, "fp": self.fp, "non": self.non, "win": self.win, "others": list(self.others),
                "alarms": list(self.alarms)}


# the loop's own (sampled) metrics, at every scale
LOOP_KEYS = ScanKeys(gen="gen_acc", fp="und_fp_rate", non="non_unification", win="win_rate")


def alarm_recorder(tolerance: float, feeds: Mapping[str, tuple[str, str]] | None = None,
                   before: Callable[[int, list[dict]], None] | None = None) -> Callable[[int, list[dict]], None]:
    """An ``on_epoch`` hook of :func:`dynamics.clo.run_clo`: for each ``{record key: (external accuracy
    key, Non key)}`` of ``feeds`` (default ``{"alarm": ("gen_acc", "non_unification")}``, the alarm the
    entry points install) one :class:`~dynamics.alarm.EpochAlarm` at ``tolerance``, whose verdict at
    this epoch is written into each record under the record key (its warnings silenced: the verdicts
    are in the records). ``before(epoch, records)`` runs first (e.g. adds exact metrics to the records).

    >>> hook = alarm_recorder(0.01)
    >>> hook(0, [{"seed": 0, "gen_acc": 0.6, "non_unification": 0.3}])
    >>> rec = {"seed": 0, "gen_acc": 0.5, "non_unification": 0.2}
    >>> hook(1, [rec]); rec["alarm"]
    True
    """
    feeds = dict(feeds or {"alarm": ("gen_acc", "non_unification")})
    alarms = {key: EpochAlarm(tolerance) for key in feeds}

    def on_epoch(epoch: int, records: list[dict]) -> None:
        if before is not None:
            before(epoch, records)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CoDegradationWarning)
            for key, (acc, non) in feeds.items():
                alarms[key](epoch, [{"seed": r["seed"], "gen_acc": r[acc], "non_unification": r[non]}
                                    for r in records])
        for rec in records:
            for key in feeds:
                rec[key] = alarms[key].alarms[int(rec["seed"])].history[-1]["alarm"]

    return on_epoch


def near_miss_share(data, external) -> list[float]:
    """Per replica, the share of the accepted set's misaligned candidates (by the external verdicts
    the loop's audit recorded, ``data.external_yes``) that are near misses of their prompt
    (:func:`dynamics.judges.near_misses` of ``external``); NaN where every accepted candidate is aligned.

    >>> import torch
    >>> from types import SimpleNamespace
    >>> class Ext:
    ...     def near_miss(self, ids, images):
    ...         return images[..., 0] == 1
    >>> data = SimpleNamespace(prompt_ids=torch.tensor([0]), images=torch.tensor([[[[0], [1], [2]]]]),
    ...                        accepted=torch.tensor([[[True, True, True]]]),
    ...                        external_yes=torch.tensor([[[True, False, False]]]))
    >>> near_miss_share(data, Ext())
    [0.5]
    """
    from dynamics.judges import near_misses

    if data.external_yes is None:
        raise ValueError("near_miss_share: the training set carries no external verdicts (run with an external "
                         "judge and audit=True)")
    bad = data.accepted & ~data.external_yes.bool()
    near = bad & near_misses(external, data.prompt_ids, data.images).to(bad.device)
    out = []
    for r in range(bad.shape[0]):
        n = int(bad[r].sum())
        out.append(float(near[r].sum()) / n if n else math.nan)
    return out


def fired(records: Sequence[dict], key: str) -> dict[tuple[int, int], bool]:
    """Per unit, whether the alarm ``key`` fired at any epoch after the first."""
    out: dict[tuple[int, int], bool] = {}
    for r in records:
        out[unit(r)] = out.get(unit(r), False) or (int(r["epoch"]) > 0 and bool(r[key]))
    return out


def rate(flags: Sequence[bool]) -> tuple[float, float, int]:
    """The share of ``True`` with its binomial standard error and count.

    >>> rate([True, False, False, False])
    (0.25, 0.21650635094610965, 4)
    """
    n = len(flags)
    if n == 0:
        return math.nan, math.nan, 0
    p = sum(flags) / n
    return p, math.sqrt(p * (1 - p) / n), n


def _final(records: Sequence[dict], key: str) -> tuple[float, float, int]:
    end = last_epoch(records)
    return mean_se(r.get(key) for r in records if int(r["epoch"]) == end)


def _own(records: Sequence[dict], keys: ScanKeys) -> dict:
    """An arm's own numbers: the change of Gen, FP and Non over training (not beyond the control),
    the final precision, recall and near-miss share of its training set, its alarms' firing rates."""
    out = {f"{name}_change": delta(records, key).as_tuple()
           for name, key in (("gen", keys.gen), ("fp", keys.fp), ("non", keys.non))}
    out.update({name: _final(records, key) for name, key in (("precision", "sft_precision"), ("recall", "sft_recall"),
                                                             ("near_miss_share", "sft_near_miss_share"))})
    for key in keys.alarms:
        out[f"{key}_rate"] = rate(list(fired(records, key).values()))
    return out


def read_scan(arms: Mapping[str, Sequence[dict]], judges: Sequence[str], *, keys: ScanKeys, alpha: float = 0.01,
              controls: Sequence[str] = CONTROLS, control: str = "all") -> tuple[dict, dict]:
    """``(rows, alarm)`` of one coupling's scan ``arms`` ``{arm: records}`` (``control``, ``controls``
    and ``judges`` among them).

    ``rows[arm]`` for every arm but the control: :meth:`dynamics.study.Phase.to_dict` (``gen``, ``fp``,
    Non, ``keys.others`` and the win rate beyond the control, ``final_<win>`` against 50, each
    ``(mean, s.e., n)``) plus the arm's own changes (``gen_change``, ``fp_change``, ``non_change``),
    the final ``precision``, ``recall`` and ``near_miss_share`` of its training set and ``<alarm>_rate``
    (the share of units whose alarm fired at some epoch); ``rows[control]`` the own numbers only.
    ``alarm``: per alarm key, the false-alarm rate over the units of ``controls``, the miss rate over
    the units of the *degrading* arms (Gen falls beyond the control at ``alpha``: ``degrading_arms``)
    and over those that co-degrade while Non falls beyond the control (``co_degrading_arms``: the case
    the alarm exists for), each ``(rate, s.e., units)`` and NaN where there is no such arm; keys
    ``<prefix>false_alarm_rate``, ... with the prefix ``""`` for ``alarm`` and ``exact_`` for
    ``exact_alarm``."""
    rows: dict[str, dict] = {}
    for j in [a for a in (*controls, *judges) if a in arms]:
        ph = phase_of(arms[j], arms[control], gen_key=keys.gen, fp_key=keys.fp, fp_margin=PHASE_FP_MARGIN,
                      alpha=alpha, other_keys=(keys.non, *keys.others, keys.win), final_keys={keys.win: 0.5})
        rows[j] = {**ph.to_dict(), **_own(arms[j], keys)}
    rows[control] = _own(arms[control], keys)
    degrading = [j for j in judges if rows[j]["gen_direction"] == -1]
    silent = [j for j in degrading if rows[j]["phase"] == "co-degradation"
              and less(beyond(arms[j], arms[control], keys.non), alpha=alpha).holds]
    alarm: dict = {"degrading_arms": degrading, "co_degrading_arms": silent}
    for key in keys.alarms:
        prefix = "" if key == "alarm" else key[: -len("alarm")]
        alarm[f"{prefix}false_alarm_rate"] = rate([f for j in controls if j in arms
                                                   for f in fired(arms[j], key).values()])
        alarm[f"{prefix}miss_rate"] = rate([not f for j in degrading for f in fired(arms[j], key).values()])
        alarm[f"{prefix}co_degradation_miss_rate"] = rate([not f for j in silent for f in fired(arms[j], key).values()])
    return rows, alarm


def _num(x) -> float:
    """A number of a result read back from JSON, where NaN is written as null."""
    return math.nan if x is None else x


def _kernel(k: dict | None) -> str:
    """The first-order prediction of a row (``kernel``), where the scan computed one: the predicted and
    measured mean change of ``log P(yes)`` on misaligned probes and false positives."""
    if not k:
        return ""
    part = [f"{kind} dU pred {_num(k[kind]['pred_delta_u'][0]):+.4f} meas {_num(k[kind]['delta_u'][0]):+.4f}"
            for kind in ("misaligned", "fp")]
    return " | " + ", ".join(part) + f", sign agreement {_num(k['sign_agreement'][0]):.2f}"


def format_rows(result: dict) -> str:
    """A scan's result (``summary["rows"]`` ``{coupling: rows}``, ``summary["alarm"]``,
    ``summary["keys"]``) as a text table: points beyond the control, mean ± s.e."""
    s = result["summary"]
    keys = s["keys"]
    alarms = keys["alarms"]

    def pm(v, scale=100.0):
        if not v or math.isnan(_num(v[0])):
            return "     n/a   "
        return f"{scale * v[0]:+6.1f}±{scale * _num(v[1]):4.1f}"

    head = (f"{'coupling':9} {'judge':15} {'phase':15} {'Gen':>11} {'FP':>11} {'Non':>11} {'win-50':>11} | "
            f"{'own Gen':>11} {'own FP':>11} {'own Non':>11} | {'prec':>5} {'rec':>5} {'near':>5} "
            + " ".join(f"{a[:5]:>5}" for a in alarms))
    lines = [head]
    for c, by in s["rows"].items():
        for j, r in by.items():
            vs = (f"{'(control)':15} {'':>11} {'':>11} {'':>11} {'':>11}" if "phase" not in r else
                  f"{r['phase']:15} {pm(r['gen'])} {pm(r['fp'])} {pm(r[keys['non']])} {pm(r['final_' + keys['win']])}")
            lines.append(f"{c:9} {j:15} {vs} | {pm(r['gen_change'])} {pm(r['fp_change'])} {pm(r['non_change'])} | "
                         f"{_num(r['precision'][0]):5.3f} {_num(r['recall'][0]):5.3f} {_num(r['near_miss_share'][0]):5.3f} "
                         + " ".join(f"{_num(r[a + '_rate'][0]):5.2f}" for a in alarms) + _kernel(r.get("kernel")))
        a = s["alarm"][c]
        parts = []
        for key in alarms:
            p = "" if key == "alarm" else key[: -len("alarm")]
            parts.append(f"{key}: false alarms {pm(a[p + 'false_alarm_rate'])} over {list(CONTROLS)}, misses "
                         f"{pm(a[p + 'miss_rate'])} over {a['degrading_arms']}, {pm(a[p + 'co_degradation_miss_rate'])} "
                         f"over {a['co_degrading_arms']}")
        lines.append(f"{c:9} " + "; ".join(parts))
    return "\n".join(lines)
