"""Poor supervision that fails the way real judges fail, at the simulator scale: the look-alike judge
(``lookalike:p``, the exact judge that also accepts each near miss with probability p) over p, and an
external judge of set precision and recall (``pr:precision,recall``, errors near misses first) over the
precision at a fixed recall, and a weaker checkpoint's understanding (``weak``), in every coupling,
each arm read against the unfiltered control (phase, Gen, false positives, Non, win rate), with the
realised precision and recall of its training set and the co-degradation alarm's false-alarm and
miss rates.

    python paper_figures/fig_poor_supervision.py          # P = V = 48, 8 seeds x 2 worlds, 10 epochs
    python paper_figures/fig_poor_supervision.py --quick  # a seconds-long smoke run

Writes fig_poor_supervision.png, .pdf, .json (the numbers) and fig_poor_supervision_phase.png, .pdf
into --out (default paper_figures/out), and prints the table.

Experiment: :func:`dynamics.sim.poor_supervision.poor_supervision_scan`,
drawing: :func:`dynamics.figures.poor_supervision.draw_poor_supervision`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dynamics.protocol import COUPLINGS

DEFAULT_OUT = Path(__file__).resolve().parent / "out"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default paper_figures/out)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run in seconds: SimSize.quick, one world, bayes and tied, a short grid")
    p.add_argument("--seeds", type=int, default=None, help="replicas per world (default 8, quick 2)")
    p.add_argument("--worlds", type=int, nargs="+", default=None, help="world seeds (default 0 1, quick 0)")
    p.add_argument("--couplings", nargs="+", choices=list(COUPLINGS), default=None,
                   help="couplings of the understanding to generation (default all four, quick bayes tied)")
    p.add_argument("--lookalike", type=float, nargs="+", default=None,
                   help="p of the look-alike judge (default 0.1 0.25 0.5 1)")
    p.add_argument("--precisions", type=float, nargs="+", default=None,
                   help="precisions of the pr judge (default 0.9 0.7 0.6 0.5 0.4 0.3)")
    p.add_argument("--recall", type=float, default=None, help="the pr judge's fixed recall (default 0.3)")
    p.add_argument("--weak", nargs="*", choices=list(COUPLINGS), default=None,
                   help="couplings with a 'weak' arm (the same models pre-trained for fewer steps judge the data; "
                        "default decoupled trunk tied, quick tied; give the flag alone for none)")
    p.add_argument("--alarm-tolerance", type=float, default=0.01,
                   help="the co-degradation alarm's tolerance, a fraction (default 0.01, the entry points' "
                        "--alarm-tolerance)")
    return p


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    import matplotlib
    import torch

    matplotlib.use("Agg")
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    from dynamics.figures.poor_supervision import draw_poor_supervision
    from dynamics.sim import poor_supervision as ps
    from dynamics.sim.study import SimSize

    if args.quick:
        size = SimSize.quick(**({"seeds": args.seeds} if args.seeds else {}))
        kw = {"worlds": (0,), "couplings": ("bayes", "tied"), "lookalike_ps": (1.0,), "precisions": (0.9, 0.5),
              "weak": ("tied",)}
    else:
        size = SimSize(prompts=48, tokens=48, seeds=args.seeds or 8, epochs=10, pretrain_steps=200)
        kw = {}
    for name, value in (("worlds", args.worlds), ("couplings", args.couplings), ("lookalike_ps", args.lookalike),
                        ("precisions", args.precisions), ("recall", args.recall), ("weak", args.weak)):
        if value is not None:
            kw[name] = tuple(value) if isinstance(value, list) else value
    try:
        size.validate()
        for spec in ps.scan_judges(kw.get("lookalike_ps", ps.LOOKALIKE_PS), kw.get("precisions", ps.PR_PRECISIONS),
                                   kw.get("recall", ps.PR_RECALL)):
            size.config(judge=spec)  # names a bad p, precision or recall before any training
        if not 0.0 <= args.alarm_tolerance <= 1.0:
            raise ValueError(f"--alarm-tolerance must lie in [0, 1], got {args.alarm_tolerance}")
    except ValueError as e:
        parser().error(str(e))
    result = ps.poor_supervision_scan(size, alarm_tolerance=args.alarm_tolerance, **kw)
    print(ps.format_rows(result))
    result["paths"] = draw_poor_supervision(result, args.out)
    for path in result["paths"]:
        print(path)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
