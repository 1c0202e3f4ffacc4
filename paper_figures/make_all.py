"""Regenerate every figure: runs each ``paper_figures/fig_*.py`` script in its own process.

    python paper_figures/make_all.py                 # full size (minutes)
    python paper_figures/make_all.py --quick         # seconds-long smoke runs of every figure
    python paper_figures/make_all.py --only phase  # the scripts whose name contains "phase"

``--quick`` and ``--out`` are passed to every script. Exits with status 1 naming the scripts that
failed (the others still run).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent


def scripts(only: str | None = None) -> list[Path]:
    """Every figure script, in name order (``only``: those whose name contains it)."""
    found = sorted(HERE.glob("fig_*.py"))
    return [p for p in found if only is None or only in p.stem]


def run_one(script: Path, extra: list[str]) -> tuple[Path, int, float, str]:
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, str(script), *extra],
        capture_output=True,
        text=True,
        env=env,
        cwd=HERE.parent,
        check=False,
    )
    return script, proc.returncode, time.perf_counter() - start, proc.stdout + proc.stderr


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Regenerate every figure of paper_figures/ (each fig_*.py script).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=HERE / "out", help="output directory passed to every script")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run of every figure")
    p.add_argument("--only", default=None, help="run only the scripts whose name contains this")
    p.add_argument("-j", "--jobs", type=int, default=1, help="scripts run at once")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    todo = scripts(args.only)
    if not todo:
        p.error(f"no paper_figures/fig_*.py script matches --only {args.only!r}")
    extra = ["--out", str(args.out.resolve())] + (["--quick"] if args.quick else [])
    failed = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for script, rc, secs, out in pool.map(lambda s: run_one(s, extra), todo):
            status = "ok" if rc == 0 else f"FAILED (exit {rc})"
            print(f"{script.name:<45} {secs:6.1f} s  {status}", flush=True)
            if rc != 0:
                failed.append(script.name)
                print(out[-4000:], file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(todo)} figure scripts failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"{len(todo)} figures written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
