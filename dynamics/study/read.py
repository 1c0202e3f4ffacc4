"""Reading the records of a study: per-unit values, changes over training, an arm against its control.

A record is one line of ``metrics.jsonl`` (one replica at one epoch, at any scale). Its *unit* is the
pre-trained model it ran from: ``(world, seed)`` (``world`` is 0 where a study has one world). Every
reader pairs by unit, so an arm is read against its control replica by replica; the statistics of
those paired numbers are :mod:`dynamics.study.stats`.

    >>> a = [{"epoch": e, "seed": s, "x": 0.5 + 0.1 * e + 0.01 * s} for e in (0, 1) for s in (0, 1, 2)]
    >>> b = [{"epoch": e, "seed": s, "x": 0.5 + 0.02 * e * s} for e in (0, 1) for s in (0, 1, 2)]
    >>> delta(a, "x").mean, beyond(a, b, "x").values
    (0.1, (0.1, 0.08, 0.06))
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from dynamics.study.stats import Estimate, one_sample

__all__ = [
    "beyond",
    "change",
    "delta",
    "final",
    "final_values",
    "flatten_groups",
    "last_epoch",
    "paired_difference",
    "per_unit",
    "unit",
    "vs_control",
]


def unit(record: dict) -> tuple[int, int]:
    """The unit a record belongs to: ``(world, seed)``."""
    return int(record.get("world", 0)), int(record["seed"])


def last_epoch(records: Sequence[dict]) -> int:
    if not records:
        raise ValueError("no records to read")
    return max(int(r["epoch"]) for r in records)


def per_unit(records: Sequence[dict], key: str, epoch: int) -> dict[tuple[int, int], float]:
    """``{unit: value of key}`` at ``epoch`` (records without the key are left out)."""
    return {unit(r): float(r[key]) for r in records if int(r["epoch"]) == epoch and r.get(key) is not None}


def _ends(records, start, end):
    return start, last_epoch(records) if end is None else end


def delta(records: Sequence[dict], key: str, *, start: int = 0, end: int | None = None) -> Estimate:
    """The per-unit change ``after - before`` of ``key`` between epochs ``start`` and ``end``
    (default the last)."""
    start, end = _ends(records, start, end)
    b, a = per_unit(records, key, start), per_unit(records, key, end)
    return one_sample(a[u] - b[u] for u in sorted(set(a) & set(b)))


def beyond(records: Sequence[dict], control: Sequence[dict], key: str, *, start: int = 0,
           end: int | None = None) -> Estimate:
    """Per unit, the change of ``key`` in an arm minus its change in the control arm run from the same
    pre-trained model: the effect beyond what training on own samples does anyway."""
    start, end = _ends(records, start, end)
    a0, a1 = per_unit(records, key, start), per_unit(records, key, end)
    b0, b1 = per_unit(control, key, start), per_unit(control, key, end)
    units = sorted(set(a0) & set(a1) & set(b0) & set(b1))
    return one_sample((a1[u] - a0[u]) - (b1[u] - b0[u]) for u in units)


def final(records: Sequence[dict], key: str, *, epoch: int | None = None, minus: float = 0.0) -> Estimate:
    """The per-unit value of ``key`` at ``epoch`` (default the last), minus ``minus`` (e.g. 0.5 for a
    win rate read against its tie)."""
    epoch = last_epoch(records) if epoch is None else epoch
    v = per_unit(records, key, epoch)
    return one_sample(v[u] - minus for u in sorted(v))


def change(records: Sequence[dict], key: str, *, start: int = 0, end: int | None = None):
    """``(before, after, delta)``, each ``(mean, s.e., units)``; ``delta`` is the paired per-unit
    change.

    >>> recs = [{"epoch": e, "seed": s, "x": e + s} for e in (0, 1) for s in (0, 1)]
    >>> change(recs, "x")[2]
    (1.0, 0.0, 2)
    """
    start, end = _ends(records, start, end)
    b, a = per_unit(records, key, start), per_unit(records, key, end)
    units = sorted(set(a) & set(b))
    return (one_sample(b[u] for u in units).as_tuple(), one_sample(a[u] for u in units).as_tuple(),
            one_sample(a[u] - b[u] for u in units).as_tuple())


def paired_difference(records_a: Sequence[dict], records_b: Sequence[dict], key: str, *, start: int = 0,
                      end: int | None = None) -> tuple[float, float, int]:
    """:func:`beyond` as ``(mean, s.e., units)``. Positive: arm a moved ``key`` up more than arm b.

    >>> a = [{"epoch": e, "seed": 0, "x": 2.0 * e} for e in (0, 1)]
    >>> b = [{"epoch": e, "seed": 0, "x": 1.0 * e} for e in (0, 1)]
    >>> paired_difference(a, b, "x")[0]
    1.0
    """
    return beyond(records_a, records_b, key, start=start, end=end).as_tuple()


def final_values(records: Sequence[dict], key: str, *, epoch: int | None = None) -> list[float]:
    """Per-unit values of ``key`` at ``epoch`` (default the last), in unit order.

    >>> final_values([{"epoch": 1, "seed": 1, "x": 3.0}, {"epoch": 1, "seed": 0, "x": 2.0}], "x")
    [2.0, 3.0]
    """
    return list(final(records, key, epoch=epoch).values)


def vs_control(arms: dict, control: str, keys: Iterable[str]) -> dict:
    """For every arm but ``control``: each key's change beyond the control's, ``(mean, s.e., units)``.
    ``arms`` maps a label to its records (or to an object with ``.records``)."""
    recs = {k: getattr(v, "records", v) for k, v in arms.items()}
    keys = list(keys)
    return {label: {k: paired_difference(r, recs[control], k) for k in keys}
            for label, r in recs.items() if label != control}


def flatten_groups(records: Sequence[dict]) -> list[dict]:
    """Copies of ``records`` with ``groups[tag][metric]`` also stored as ``"<metric>@<tag>"``, so the
    readers above read a category like any other key.

    >>> flatten_groups([{"x": 1, "groups": {"tag:counting": {"x": 2}}}])[0]["x@tag:counting"]
    2
    """
    out = []
    for r in records:
        r = dict(r)
        for tag, vals in (r.get("groups") or {}).items():
            for k, v in vals.items():
                r[f"{k}@{tag}"] = v
        out.append(r)
    return out
