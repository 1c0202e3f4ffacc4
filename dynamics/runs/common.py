"""What every entry point does around :func:`dynamics.clo.run_clo`: the run directory (created
exclusively, its identity checked on ``--resume`` before any work), the up-front size check, the
summary table, the curves."""

from __future__ import annotations

import datetime as _dt
import os
import sys
import warnings
from pathlib import Path

from dynamics.figures.sim import write_curves
from dynamics.records import RunDir
from dynamics.report import summary_table

__all__ = ["check_size", "clean_errors", "default_out", "finish", "memory_limit", "report_weak_judge", "run_dir",
           "write_bayes_link"]


def clean_errors(fn):
    """Run ``fn()``; report the project's known failure modes as one ``error: ...`` line and exit
    status 2 instead of a traceback (the message already names the cause); a diverged run
    (:class:`~dynamics.clo.NonFiniteLossError`: it names the epoch, the step and the last good
    checkpoint) exits with status 1."""
    from dynamics.clo import EmptyTrainingSetError, NonFiniteLossError
    from dynamics.full.external import MissingJudgementError
    from dynamics.records import ConfigMismatchError

    known = (EmptyTrainingSetError, NonFiniteLossError, ConfigMismatchError, FileExistsError, ValueError,
             FileNotFoundError, OSError, MissingJudgementError)
    try:
        return fn()
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except known as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def default_out(name: str) -> Path:
    """``runs/<name>/<UTC timestamp>[-<k>]``, created here exclusively: runs started in the same second
    get distinct directories (``-2``, ``-3``, ...)."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / name
    base.mkdir(parents=True, exist_ok=True)
    for k in range(1, 10_000):
        path = base / (stamp if k == 1 else f"{stamp}-{k}")
        try:
            path.mkdir()  # atomic: exactly one run creates it
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"{base}: no free run directory for {stamp}; pass --out")


def run_dir(parser, args, name: str, identity: dict) -> Path:
    """The run directory of parsed ``args`` (``--out``, ``--resume``), checked before any work (usage
    errors, exit 2): ``--resume`` needs ``--out`` holding a run of the same ``identity``
    (:func:`dynamics.cli.run_identity`; every differing field is named with both values); without
    ``--resume`` a fresh directory (``--out`` must not hold a run). The identity is written as
    ``identity.json`` (atomically) on a fresh start."""
    from dynamics.records import DamagedRunError, differences

    writer = int(os.environ.get("RANK", "0")) == 0
    if args.resume:
        if args.out is None:
            parser.error("--resume needs --out, the run directory to continue")
        out = Path(args.out)
        if not (out / "identity.json").is_file():
            held = [n for n in ("config.json", "state.pt", "metrics.jsonl") if (out / n).exists()]
            if not out.is_dir() or held:
                what = "no such directory" if not out.is_dir() else f"{held[0]} but no identity.json"
                parser.error(f"--resume: {out} holds no run to continue ({what}); start one without --resume")
            if writer:  # killed before its identity was written: nothing ran yet, so the run starts here
                RunDir(out).remove_partial_writes()
                RunDir(out).write_json("identity.json", identity)
            return out
        try:
            old = RunDir(out).read_json("identity.json", todo="start a new run with another --out")
        except DamagedRunError as e:
            parser.error(str(e))
        diff = differences(old, identity)
        if diff:
            parser.error(f"--resume: the run in {out} has other settings; resume needs the same ones (or a new --out):"
                         + "".join(f"\n  {d}" for d in diff))
        return out
    if args.out is None:
        if os.environ.get("WORLD_SIZE", "1") != "1":
            parser.error("--out is required with several processes: every rank writes into the same run directory")
        out = default_out(name)
    else:
        out = Path(args.out)
        held = [n for n in ("identity.json", "config.json", "state.pt") if (out / n).exists()]
        if held and writer:
            parser.error(f"--out {out} holds a run already ({held[0]}); pass --resume to continue it or choose "
                         f"another --out")
    if writer:
        RunDir(out).write_json("identity.json", identity)
    return out


def memory_limit() -> int:
    """Bytes this process may still allocate: the smaller of the memory available now and the cgroup
    limit (``$DYNAMICS_MEMORY_LIMIT``, in bytes, overrides both)."""
    if os.environ.get("DYNAMICS_MEMORY_LIMIT"):
        return int(os.environ["DYNAMICS_MEMORY_LIMIT"])
    limits = []
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        limits.append(int(info["MemAvailable"].split()[0]) * 1024)
    except (OSError, KeyError, ValueError):
        limits.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    try:
        text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if text != "max":
            limits.append(int(text))
    except (OSError, ValueError):
        pass
    return min(limits)


def check_size(parser, need: int, what: str, *, work: float = 0.0, slow: float = float("inf")) -> None:
    """Refuse (a usage error naming the estimate and the limit) a run whose estimated peak memory
    ``need`` (bytes; ``what`` names the sizes it follows from) does not fit :func:`memory_limit`; warn
    when its ``work`` (e.g. images sampled) exceeds ``slow``."""
    limit = memory_limit()
    if need > limit:
        parser.error(f"{what} needs about {need / 2**30:.2f} GiB, more than the {limit / 2**30:.2f} GiB of memory "
                     f"available here; make those sizes smaller")
    if work > slow:
        warnings.warn(f"{what}: {work:.3g} samples, {work / slow:.0f}x what runs in minutes here; this will be slow",
                      RuntimeWarning, stacklevel=2)


def finish(records: list[dict], out: Path, *, title: str, stream=None) -> str:
    """Print the summary table, write ``summary.txt`` and ``curves.png`` into ``out``."""
    table = summary_table(records)
    Path(out).mkdir(parents=True, exist_ok=True)
    print(f"\n{title}\n{table}\n\nrun directory: {out}", file=stream or sys.stdout)
    run = RunDir(out)
    run.write_text("summary.txt", title + "\n" + table + "\n")
    run.write_with("curves.png", lambda p: write_curves(records, p, title=title))
    return table


def write_bayes_link(out: Path, before: list[dict], after: list[dict], *, stream=None) -> Path:
    """Write the distance from the Bayes link before and after CLO (:func:`dynamics.transfer.bayes_link`,
    one dict per replica) as ``bayes_link.json`` in ``out`` and print one line of it."""
    import json

    from dynamics.records import to_jsonable
    from dynamics.study import mean_se

    run = RunDir(out)
    path = run.file("bayes_link.json")
    run.write_text(path.name, json.dumps(to_jsonable({"before": before, "after": after}), indent=1) + "\n")

    def show(links):
        m, se, n = mean_se(link["spearman"] for link in links)
        return f"{m:.3f}" + (f" ± {se:.3f}" if n > 1 else "")

    print(f"distance from the Bayes link (Spearman of log P(yes) against the generator's posterior log pi(y | x)): "
          f"{show(before)} before -> {show(after)} after ({path.name})", file=stream or sys.stdout)
    return path


def report_weak_judge(steps: int, weak: float, own: float, what: str) -> None:
    """Print the balanced accuracy of the ``weak`` judge's verdicts (``steps`` pre-training steps) beside
    the model's own (``what``: on which samples, how measured); warn when it is no weaker a judge."""
    print(f"weak judge ({steps} pre-training steps): balanced accuracy of its verdicts {weak:.3f}, the model's own "
          f"{own:.3f} ({what})")
    if not weak < own:
        warnings.warn(f"--judge weak: the checkpoint of {steps} pre-training steps is no weaker a judge than the model's "
                      f"own understanding (balanced accuracy {weak:.3f} against {own:.3f}); lower "
                      f"--weak-pretrain-steps for a weaker one", RuntimeWarning, stacklevel=3)
