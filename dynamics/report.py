"""Reading runs: aggregation over seeds (mean and standard error), summary tables, the metrics' panel
titles, and progress bars that do not flood logs (:func:`progress`). A run's ``curves.png`` is drawn
by :func:`dynamics.figures.sim.write_curves`.

Works on the records of ``metrics.jsonl`` (one dict per replica and epoch), at every scale.

    >>> recs = [{"epoch": 0, "seed": s, "gen_acc": a} for s, a in [(0, 0.5), (1, 0.7)]]
    >>> aggregate(recs, "gen_acc")
    {0: (0.6, 0.09999999999999998, 2)}
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

from dynamics.study.stats import mean_se  # the statistics' one home; re-exported here for tables

__all__ = ["LABELS", "PROGRESS_LOG_INTERVAL", "aggregate", "group_value", "mean_se", "progress", "summary_table"]

CURVE_KEYS = ("gen_acc", "win_rate", "non_unification", "und_fp_rate")
# Panel titles of every metric a figure draws, at every scale (``dynamics.figures`` draws with them).
# The loop's metrics are measured on sampled images (Gen accuracy by the external judge); the
# simulator's ``exact_`` metrics are computed on its full tables.
LABELS = {
    "gen_acc": "Gen accuracy (sampled)",
    "win_rate": "Und win rate (sampled)",
    "non_unification": "Non-unification (sampled)",
    "und_fp_rate": "Und FP rate, pre-trained samples",
    "und_fn_rate": "Und FN rate, pre-trained samples",
    "attribution": "Weak-generation attribution",
    "sft_size": "SFT set size",
    "discard_size": "Discard pool size",
    "sft_precision": "SFT-set precision (oracle)",
    "sft_recall": "SFT-set recall (oracle)",
    "exact_gen_acc": "Gen accuracy (exact)",
    "exact_win_rate": "Und win rate (exact)",
    "exact_non_unification": "Non-unification (exact)",
    "exact_pre_fp_rate": "Und FP rate, pre-trained samples (exact)",
    "exact_und_fp_rate": "Und FP rate, all pairs (exact)",
    "exact_und_fn_rate": "Und FN rate, all pairs (exact)",
}


def group_value(record: dict, key: str, group: str | None = None):
    """``record[key]`` overall, or within ``record["groups"][group]``."""
    if group is None:
        return record.get(key)
    return record.get("groups", {}).get(group, {}).get(key)


def aggregate(records: Sequence[dict], key: str, group: str | None = None) -> dict[int, tuple[float, float, int]]:
    """Per epoch: (mean, standard error, number of seeds) of ``key`` across seeds."""
    epochs: dict[int, list] = {}
    for r in records:
        epochs.setdefault(int(r["epoch"]), []).append(group_value(r, key, group))
    return {e: mean_se(v) for e, v in sorted(epochs.items())}


def _fmt(m: float, se: float, pct: bool) -> str:
    if math.isnan(m):
        return "n/a"
    scale = 100.0 if pct else 1.0
    s = f"{m * scale:.1f}"
    if not math.isnan(se):
        s += f"±{se * scale:.1f}"
    return s


def summary_table(records: Sequence[dict], *, groups: bool = True, start: int | None = None,
                  end: int | None = None) -> str:
    """A text table per category: Gen, Und win rate (with its denominator), Non, Und false-positive
    rate, before -> after (percent; ± one standard error across seeds where there are several)."""
    epochs = sorted({int(r["epoch"]) for r in records})
    e0 = epochs[0] if start is None else start
    e1 = epochs[-1] if end is None else end
    names: list[str | None] = [None]
    if groups:
        seen = []
        for r in records:
            for g in r.get("groups", {}):
                if g not in seen:
                    seen.append(g)
        names += sorted(seen)
    header = f"{'category':<24} {'Gen before -> after':>24} {'Und win rate (n)':>20} {'Non before -> after':>24} " \
             f"{'Und FP before -> after':>24}"
    lines = [header, "-" * len(header)]
    for g in names:
        row = [f"{'overall' if g is None else g:<24}"]
        for key in ("gen_acc", "win_rate", "non_unification", "und_fp_rate"):
            agg = aggregate(records, key, g)
            if e0 not in agg or e1 not in agg:
                row.append(f"{'n/a':>24}")
                continue
            b, a = agg[e0], agg[e1]
            if key == "win_rate":
                n = [group_value(r, "win_rate_n", g) for r in records if int(r["epoch"]) == e1]
                ntot = sum(int(x) for x in n if x is not None)
                row.append(f"{_fmt(a[0], a[1], True) + f' ({ntot})':>20}")
            else:
                row.append(f"{_fmt(b[0], b[1], True) + ' -> ' + _fmt(a[0], a[1], True):>24}")
        lines.append(" ".join(row))
    nseeds = len({r.get("seed") for r in records})
    lines.append(f"(epochs {e0} -> {e1}; {nseeds} seed{'s' if nseeds != 1 else ''}; percent, ± one standard error)")
    return "\n".join(lines)


# a bar writing to a log file updates at most this often (seconds); at a terminal tqdm's own 0.1 s
PROGRESS_LOG_INTERVAL = 60.0


def _interactive(stream) -> bool:
    """Whether progress bars reach a person: ``stream`` is a terminal, or the code runs in a Jupyter
    kernel (whose stderr is not a terminal but shows tqdm's widget)."""
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False
    shell = sys.modules.get("IPython")
    ip = shell.get_ipython() if shell is not None and hasattr(shell, "get_ipython") else None
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def progress(iterable=None, *, desc: str | None = None, enabled: bool = True, leave: bool = True, **kw):
    """A tqdm progress bar (``tqdm.auto``) that does not flood logs: ``enabled=False`` turns it off;
    when stderr is not a terminal (a log file, a pipe) a bar that stays (``leave``) updates at most
    every :data:`PROGRESS_LOG_INTERVAL` seconds and a transient one (``leave=False``) is off, so a
    log holds a handful of lines, not thousands of carriage-return updates. ``kw`` go to tqdm.

    >>> list(progress(range(3), desc="demo", enabled=False))
    [0, 1, 2]
    """
    from tqdm.auto import tqdm

    interactive = _interactive(sys.stderr)
    disable = not enabled or (not interactive and not leave)
    if not interactive:
        kw.setdefault("mininterval", PROGRESS_LOG_INTERVAL)
    return tqdm(iterable, desc=desc, disable=disable, leave=leave, **kw)
