"""Benchmark: wall time of a default ``python experiments/sim_clo.py`` run.

The default run: P = V = 64, one seed, pre-training (300 steps), 20 epochs of self-judged SFT,
theory tracking on (every 5th step, 32 probes), evaluation every epoch, records and plots written.
The script times it as a user sees it (a fresh interpreter, imports included) and, separately, the
run itself inside an interpreter warmed up by a tiny run (imports and first-use costs paid); it
checks that the run wrote its records (metrics.jsonl with every epoch, a non-empty theory.jsonl,
curves.png).

    python benchmarks/bench_sim_default.py            # the default run
    python benchmarks/bench_sim_default.py --quick    # a seconds-long smoke run (P = V = 16, 2 epochs)
    python benchmarks/bench_sim_default.py -- --seeds 4   # extra flags after -- go to sim_clo.py

Target: the fresh-interpreter wall time < 60 s on 2 cores. A missed target is printed, not fatal;
a run that fails or writes incomplete records exits with status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 60.0
QUICK = ["--prompts", "16", "--tokens", "16", "--epochs", "2", "--pretrain-steps", "30"]


def check_run(out: Path, epochs: int) -> list[str]:
    """What is missing from a finished run directory."""
    problems = []
    metrics = out / "metrics.jsonl"
    if not metrics.exists():
        return [f"{metrics} was not written"]
    got = sorted({json.loads(line)["epoch"] for line in metrics.read_text().splitlines() if line.strip()})
    if got != list(range(epochs + 1)):
        problems.append(f"metrics.jsonl has epochs {got}, expected 0..{epochs}")
    theory = out / "theory.jsonl"
    if not theory.exists() or not theory.read_text().strip():
        problems.append("theory.jsonl is missing or empty: theory tracking did not run")
    if not (out / "curves.png").exists():
        problems.append("curves.png was not written")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Wall time of a default experiments/sim_clo.py run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run (P = V = 16, 2 epochs)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the run")
    p.add_argument("extra", nargs="*", help="flags passed to sim_clo.py (after --)")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    flags = (QUICK if args.quick else []) + list(args.extra)
    epochs = 20
    for i, f in enumerate(flags):
        if f == "--epochs" and i + 1 < len(flags):
            epochs = int(flags[i + 1])
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "fresh"
        start = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                str(ROOT / "experiments" / "sim_clo.py"),
                "--out",
                str(out),
                "--no-progress",
                *flags,
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            check=False,
        )
        fresh = time.perf_counter() - start
        if proc.returncode != 0:
            print(proc.stdout[-3000:] + proc.stderr[-3000:], file=sys.stderr)
            print(f"sim_clo.py failed with exit status {proc.returncode}", file=sys.stderr)
            return 1
        problems = check_run(out, epochs)

        # the same run inside this interpreter, after a warm-up run (the run's own cost)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        import torch

        from dynamics.runs.sim import main as sim_main

        torch.set_num_threads(args.threads)
        with contextlib.redirect_stdout(io.StringIO()):  # warm-up: first-use imports happen here
            sim_main(["--out", str(Path(tmp) / "warm-up"), "--no-progress", *QUICK, "--epochs", "1"])
            out2 = Path(tmp) / "warm"
            start = time.perf_counter()
            sim_main(["--out", str(out2), "--no-progress", *flags])
            warm = time.perf_counter() - start
        problems += check_run(out2, epochs)

    print(
        f"default sim_clo.py run{' (quick)' if args.quick else ''}: flags {flags or '(none)'}, "
        f"OMP_NUM_THREADS={args.threads}"
    )
    print(f"  fresh interpreter (imports included)   {fresh:7.2f} s")
    print(f"  the run alone (warm interpreter)       {warm:7.2f} s")
    print(f"target < {TARGET_S:g} s (fresh): {'met' if fresh < TARGET_S else 'MISSED'}")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
