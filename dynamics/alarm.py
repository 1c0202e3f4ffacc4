"""The co-degradation alarm, at every scale.

The paper's co-degradation (both branches get worse under bad supervision) is invisible to the
intrinsic metric: Non can fall while generation degrades. Any run with an external judge (the
world's alignment table for the simulator, the exact detector for the toy, a file, a detector or
a VLM for Janus) can see it: external accuracy falls while Non falls.

- :class:`CoDegradationAlarm` watches one series of (external accuracy, Non) and warns
  (:class:`CoDegradationWarning`) when both fall;
- :class:`EpochAlarm` is the ``on_epoch`` hook of :func:`dynamics.clo.run_clo`: one alarm per
  replica (seed), fed the loop's own records; the entry points of every scale install it
  (``--alarm-tolerance``);
- :func:`probe` scores a probe set of a model's own samples by its own and an external judge.

Example (the loop's records of one replica)::

    >>> import warnings
    >>> hook = EpochAlarm(tolerance=0.02)
    >>> hook(0, [{"seed": 0, "gen_acc": 0.6, "non_unification": 0.3}])
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     hook(1, [{"seed": 0, "gen_acc": 0.5, "non_unification": 0.2}])
    >>> print(caught[0].message)
    seed 0, epoch 1: co-degradation: external accuracy 0.600 -> 0.500 while Non 0.300 -> 0.200 (vs epoch 0)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from dynamics import metrics

__all__ = ["CoDegradationAlarm", "CoDegradationWarning", "EpochAlarm", "probe"]


class CoDegradationWarning(UserWarning):
    """External accuracy on the probe set fell while the non-unification score improved."""


@dataclass
class CoDegradationAlarm:
    """Flags co-degradation during training: external accuracy on a held-out probe set falls while
    Non (the share of own generations the model's own understanding rejects) improves (falls).

    :meth:`update` compares each epoch with the previous one and with the first (the pre-trained
    model): it fires when external accuracy dropped by more than ``tolerance`` *and* Non dropped
    by more than ``non_tolerance`` against either. It then ``warnings.warn``s a
    :class:`CoDegradationWarning` (prefixed with ``label`` when one is given) and returns ``True``.
    Both quantities are fractions in [0, 1].

    >>> alarm = CoDegradationAlarm(tolerance=0.02)
    >>> alarm.update(0, external_acc=0.60, non=0.30)
    False
    >>> alarm.update(1, external_acc=0.59, non=0.25)   # within tolerance
    False
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     alarm.update(2, external_acc=0.50, non=0.20)
    True
    >>> print(caught[0].message)
    epoch 2: co-degradation: external accuracy 0.590 -> 0.500 while Non 0.250 -> 0.200 (vs epoch 1); external accuracy 0.600 -> 0.500 while Non 0.300 -> 0.200 (vs epoch 0)
    """

    tolerance: float = 0.0
    non_tolerance: float = 0.0
    history: list[dict] = field(default_factory=list)
    label: str = ""

    def __post_init__(self) -> None:
        for name in ("tolerance", "non_tolerance"):
            v = getattr(self, name)
            if not (math.isfinite(v) and 0.0 <= v <= 1.0):
                raise ValueError(f"CoDegradationAlarm: {name} must be in [0, 1], got {v!r}")

    def update(self, epoch: int, external_acc: float, non: float) -> bool:
        """Record one probe result; warn and return ``True`` on co-degradation."""
        for name, v in (("external_acc", external_acc), ("non", non)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and 0.0 <= v <= 1.0):
                raise ValueError(
                    f"CoDegradationAlarm.update: {name} must be a fraction in [0, 1] (not %), got {v!r}"
                )
        if self.history and epoch <= self.history[-1]["epoch"]:
            raise ValueError(
                f"CoDegradationAlarm.update: epoch {epoch} is not after the last recorded epoch {self.history[-1]['epoch']}"
            )
        refs = []
        if self.history:
            refs.append(self.history[-1])
            if self.history[0] is not self.history[-1]:
                refs.append(self.history[0])
        msgs = []
        for ref in refs:
            if ref["external_acc"] - external_acc > self.tolerance and ref["non"] - non > self.non_tolerance:
                msgs.append(
                    f"external accuracy {ref['external_acc']:.3f} -> {external_acc:.3f} while Non "
                    f"{ref['non']:.3f} -> {non:.3f} (vs epoch {ref['epoch']})"
                )
        flag = bool(msgs)
        self.history.append(
            {"epoch": int(epoch), "external_acc": float(external_acc), "non": float(non), "alarm": flag}
        )
        if flag:
            prefix = f"{self.label}, " if self.label else ""
            warnings.warn(
                CoDegradationWarning(f"{prefix}epoch {epoch}: co-degradation: " + "; ".join(msgs)), stacklevel=2
            )
        return flag

    def state_dict(self) -> dict:
        """Settings and history, for checkpoints and resume."""
        return {
            "tolerance": self.tolerance,
            "non_tolerance": self.non_tolerance,
            "history": [dict(h) for h in self.history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        self.tolerance, self.non_tolerance = float(state["tolerance"]), float(state["non_tolerance"])
        self.history = [dict(h) for h in state["history"]]


class EpochAlarm:
    """The ``on_epoch(epoch, records)`` hook of :func:`dynamics.clo.run_clo` that runs one
    :class:`CoDegradationAlarm` per replica on the loop's own evaluation records (``gen_acc``, the
    external judge's accuracy, and ``non_unification``). Records without ``gen_acc`` (a run without
    an external judge) are skipped. The warning names the replica's seed.

    >>> hook = EpochAlarm(tolerance=0.01)
    >>> hook(0, [{"seed": 3, "gen_acc": 0.5, "non_unification": 0.4}, {"seed": 4, "non_unification": 0.4}])
    >>> sorted(hook.alarms), hook.alarms[3].history[0]["external_acc"]
    ([3], 0.5)
    """

    def __init__(self, tolerance: float = 0.01, non_tolerance: float = 0.0) -> None:
        CoDegradationAlarm(tolerance=tolerance, non_tolerance=non_tolerance)  # checks both, one message
        self.tolerance, self.non_tolerance = tolerance, non_tolerance
        self.alarms: dict[int, CoDegradationAlarm] = {}

    def __call__(self, epoch: int, records: Sequence[Mapping[str, Any]]) -> None:
        for rec in records:
            if rec.get("gen_acc") is None or rec.get("non_unification") is None:
                continue
            key = int(rec.get("seed", rec.get("replica", 0)))
            alarm = self.alarms.get(key)
            if alarm is None:
                alarm = self.alarms[key] = CoDegradationAlarm(
                    tolerance=self.tolerance, non_tolerance=self.non_tolerance, label=f"seed {key}")
            alarm.update(epoch, float(rec["gen_acc"]), float(rec["non_unification"]))


def probe(
    model: Any,
    external: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    prompt_ids: torch.Tensor,
    *,
    n: int,
    seed: int,
    threshold: float = 0.5,
) -> tuple[float, float]:
    """Score a probe set: sample ``n`` candidates per prompt, judge them with the model's own
    understanding and with ``external``; return ``(external_acc, non)`` as fractions, where
    ``external_acc`` is the share the external judge accepts (:func:`dynamics.metrics.accuracy`) and
    ``non`` the share the model's own judge rejects (:func:`dynamics.metrics.non_unification` of the
    verdicts ``P(yes) >= threshold``, the loop's rule), both over all replicas, prompts and candidates.

    >>> class Const:  # a model whose own judge says P(yes) = 0.8 for everything
    ...     def sample(self, ids, n, *, seed): return torch.zeros(1, len(ids), n, 3, dtype=torch.long)
    ...     def judge(self, ids, images): return torch.full(images.shape[:3], 0.8)
    >>> probe(Const(), lambda ids, images: images.sum(-1) == 0, torch.arange(4), n=2, seed=0)
    (1.0, 0.0)
    """
    if n < 1:
        raise ValueError(f"probe: n must be >= 1, got {n}")
    with torch.no_grad():
        images = model.sample(prompt_ids, n, seed=seed)
        own = metrics.accepts(model.judge(prompt_ids, images), threshold)
        ext = external(prompt_ids, images).bool()
    # one series over every replica, prompt and candidate: a leading axis of one
    return float(metrics.accuracy(ext.reshape(1, -1))), float(metrics.non_unification(own.reshape(1, -1)))
