"""What every entry point does around :func:`dynamics.clo.run_clo`: the run directory, the
summary table, the curves."""

from __future__ import annotations

import datetime as _dt
import sys
from pathlib import Path

from dynamics.report import plot_curves, summary_table

__all__ = ["clean_errors", "default_out", "finish"]


def clean_errors(fn):
    """Run ``fn()``; report the project's known failure modes as one ``error: ...`` line and exit
    status 2 instead of a traceback (the message already names the cause)."""
    from dynamics.clo import EmptyTrainingSetError, NonFiniteLossError
    from dynamics.full.external import MissingJudgementError
    from dynamics.records import ConfigMismatchError

    known = (EmptyTrainingSetError, NonFiniteLossError, ConfigMismatchError, FileExistsError, ValueError,
             FileNotFoundError, OSError, MissingJudgementError)
    try:
        return fn()
    except known as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def default_out(name: str) -> Path:
    """``runs/<name>/<UTC timestamp>``: a fresh directory per run unless --out names one."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / name / stamp


def finish(records: list[dict], out: Path, *, title: str, stream=None) -> str:
    """Print the summary table, write ``summary.txt`` and ``curves.png`` into ``out``."""
    table = summary_table(records)
    Path(out).mkdir(parents=True, exist_ok=True)
    print(f"\n{title}\n{table}\n\nrun directory: {out}", file=stream or sys.stdout)
    (Path(out) / "summary.txt").write_text(title + "\n" + table + "\n")
    plot_curves({title: records}, Path(out) / "curves.png", title=title)
    return table


def write_bayes_link(out: Path, before: list[dict], after: list[dict], *, stream=None) -> Path:
    """Write the distance from the Bayes link before and after CLO (:func:`dynamics.transfer.bayes_link`,
    one dict per replica) as ``bayes_link.json`` in ``out`` and print one line of it."""
    import json

    from dynamics.records import to_jsonable
    from dynamics.study import mean_se

    path = Path(out) / "bayes_link.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable({"before": before, "after": after}), indent=1) + "\n")

    def show(links):
        m, se, n = mean_se(link["spearman"] for link in links)
        return f"{m:.3f}" + (f" ± {se:.3f}" if n > 1 else "")

    print(f"distance from the Bayes link (Spearman of log P(yes) against the generator's posterior log pi(y | x)): "
          f"{show(before)} before -> {show(after)} after ({path.name})", file=stream or sys.stdout)
    return path
