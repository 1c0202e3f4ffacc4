"""Command-line plumbing shared by the entry points: the CLO flags (one per :class:`CLOConfig`
field, the same at every scale), config files, and validation before any expensive work.

    >>> p = clo_parser("demo")
    >>> args = parse_args(p, ["--epochs", "3", "--judge", "corrupt:0.5"])
    >>> clo_config(args).judge, clo_config(args).epochs
    ('corrupt:0.5', 3)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from dynamics.clo import CLOConfig

__all__ = ["CLO_HELP", "add_alarm_flag", "alarm_hook", "clo_config", "clo_parser", "parse_args"]

CLO_HELP = {
    "candidates": "N images sampled per prompt (Algorithm 1; paper: 10)",
    "threshold": "accept a candidate when its judge score (P(yes) for the self judge) >= this, in [0, 1]",
    "judge": "data judge: self | oracle | external | all (unfiltered control) | noisy:<p> (external judge, "
             "verdicts inverted with prob. p) | corrupt:<p> (self judge, verdicts inverted with prob. p: poor "
             "supervision) | lookalike:<p> (external judge that also accepts each near miss of the prompt, all "
             "attributes right but one, with prob. p) | pr:<precision>,<recall> (an external judge with that set "
             "precision and recall on the candidate pool, errors drawn from near misses first)",
    "loss": "generation objective: sft | dpo",
    "beta": "DPO temperature beta",
    "dpo_variant": "DPO loss variant: sigmoid | ipo | hinge | robust | conservative",
    "nll_weight": "weight of the per-token NLL term on the chosen sample (DPO)",
    "epochs": "training epochs over the self-judged set",
    "lr": "learning rate",
    "optimizer": "sgd (plain SGD: the theory's setting) | adam",
    "weight_decay": "weight decay",
    "batch_size": "prompts per training step (each with all its accepted candidates)",
    "grad_clip": "clip the global gradient norm to this (0 = off; one replica only)",
    "curriculum": "curriculum replay of the discard pool: off | epochs:<e1,e2,..> | adaptive[:<level>] "
                  "(replay when that share of probed pool prompts gets an accepted candidate)",
    "adaptive_probe": "discard-pool prompts probed per epoch by the adaptive trigger",
    "eval_candidates": "samples per evaluation prompt",
    "eval_every": "evaluate every k-th epoch (always before training and after the last epoch; evaluation draws its "
                  "own seeds, so skipping it leaves training unchanged)",
    "chunk_size": "prompts per sampling / judging call",
    "audit": "also judge every training candidate with the external judge (precision of the self-judged set; "
             "costly with a large external VLM)",
    "seed": "random seed (replica r of a vectorised run uses seed + r)",
}


def clo_parser(description: str, defaults: CLOConfig | None = None, **kw) -> argparse.ArgumentParser:
    """An argparse parser with one flag per CLOConfig field, plus --config, --out, --resume,
    --no-progress. ``defaults`` sets the scale's defaults (shown by --help)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                **kw)
    p.add_argument("--config", type=Path, default=None,
                   help="JSON file of settings (keys: flag names with '_' for '-'); flags given on the command "
                        "line win")
    p.add_argument("--out", type=Path, default=None, help="run directory (records, data, checkpoints, plots)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    g = p.add_argument_group("CLO (the same at every scale)")
    base = defaults or CLOConfig()
    for f in dataclasses.fields(CLOConfig):
        if f.name == "progress":
            continue
        default = getattr(base, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            g.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                           help=CLO_HELP[f.name])
        else:
            g.add_argument(flag, dest=f.name, type=type(default), default=default, help=CLO_HELP[f.name])
    return p


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``, applying a --config file first so that explicit flags override it. An unknown
    key in the file is an error naming the file and key."""
    pre, _ = parser.parse_known_args(argv)
    if pre.config is not None:
        path = pre.config
        if not path.exists():
            parser.error(f"--config {path}: no such file")
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            parser.error(f"--config {path}: line {e.lineno}: {e.msg}")
        if not isinstance(values, dict):
            parser.error(f"--config {path}: expected a JSON object of settings")
        known = {a.dest for a in parser._actions}
        for key in values:
            if key.replace("-", "_") not in known:
                parser.error(f"--config {path}: unknown setting {key!r}")
        parser.set_defaults(**{k.replace("-", "_"): v for k, v in values.items()})
    return parser.parse_args(argv)


def clo_config(args: argparse.Namespace) -> CLOConfig:
    """The CLOConfig named by parsed flags, validated (ValueError names the field and value)."""
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(CLOConfig) if hasattr(args, f.name)}
    kw["progress"] = not getattr(args, "no_progress", False)
    cfg = CLOConfig(**kw)
    cfg.validate()
    return cfg


def add_alarm_flag(group) -> None:
    """``--alarm-tolerance``, the same at every scale (:class:`dynamics.alarm.EpochAlarm`)."""
    group.add_argument("--alarm-tolerance", type=float, default=0.01,
                       help="co-degradation alarm: warn when the external judge's accuracy falls by more than this "
                            "(a fraction in [0, 1]; 1 = never) while Non falls, against the previous epoch or the "
                            "pre-trained model")


def alarm_hook(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """The co-degradation alarm named by ``--alarm-tolerance``, checked (a parser error naming the
    flag and value) before any expensive work; pass it to :func:`dynamics.clo.run_clo` as ``on_epoch``."""
    from dynamics.alarm import EpochAlarm

    tol = args.alarm_tolerance
    if not 0.0 <= tol <= 1.0:  # also refuses nan
        parser.error(f"--alarm-tolerance must lie in [0, 1], got {tol}")
    return EpochAlarm(tolerance=tol)
