"""Command-line plumbing shared by the entry points: the CLO flags (one per :class:`CLOConfig`
field, the same at every scale), config files, one typed schema for both, and a run's identity.

The schema is the parser itself: each flag's type, choices and default (from its argparse action)
plus :data:`RANGES` (a flag's allowed interval, keyed by its dest: one line per flag). The same
check (:func:`check_value`) types a ``--config`` file's JSON values and every final value, so a file
and the command line give the same errors: every number is finite and in range, an integer is an
integer, a switch is a JSON boolean (``{"float64": "false"}`` is refused, not read as true), before
any work. Every usage error exits with status 2 (``parser.error``).

A run's identity (:func:`run_identity`) is every setting that changes its numbers: every flag but
those in :data:`COSMETIC` (display, output paths, logging), with files by content hash, plus the
package versions; ``--resume`` compares it field by field (:func:`dynamics.runs.common.run_dir`).

    >>> p = clo_parser("demo")
    >>> args = parse_args(p, ["--epochs", "3", "--judge", "corrupt:0.5"])
    >>> clo_config(args).judge, clo_config(args).epochs
    ('corrupt:0.5', 3)
    >>> check_value(p, "epochs", 2.5)
    'expected an integer, got 2.5'
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dynamics.clo import CLOConfig

__all__ = ["CLO_HELP", "COSMETIC", "RANGES", "Range", "add_alarm_flag", "alarm_hook", "check_device", "check_value",
           "check_weak_judge", "clo_config", "clo_parser", "content_hash", "given_flags", "parse_args", "run_identity"]


@dataclass(frozen=True)
class Range:
    """An allowed interval of a numeric flag (None: unbounded on that side; ``open``: excluded)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def why(self, v) -> str | None:
        """Why ``v`` lies outside the interval, or None."""
        lo_bad = self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo)
        hi_bad = self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi)
        if not (lo_bad or hi_bad):
            return None
        if self.hi is None:
            return f"must be {'>' if self.lo_open else '>='} {self.lo}, got {v}"
        left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
        return f"must lie in {left}{self.lo}, {self.hi}{right}, got {v}"


#: The allowed interval of each numeric flag, by dest, at every scale (a flag not listed is only checked
#: for its type and finiteness). One line per flag: a new numeric flag adds its line here.
RANGES: dict[str, Range] = {
    # CLO
    "candidates": Range(1), "threshold": Range(0, 1), "beta": Range(0, lo_open=True), "nll_weight": Range(0),
    "epochs": Range(0), "lr": Range(0), "weight_decay": Range(0), "batch_size": Range(1), "grad_clip": Range(0),
    "adaptive_probe": Range(1), "eval_candidates": Range(1), "eval_every": Range(1), "chunk_size": Range(1),
    "seed": Range(0), "alarm_tolerance": Range(0, 1), "weak_pretrain_steps": Range(1),
    # simulator
    "prompts": Range(2), "tokens": Range(2), "seeds": Range(1), "world_seed": Range(0), "gap": Range(0, 1),
    "pretrain_steps": Range(1), "track_every": Range(0), "probes": Range(1),
    # unified models
    "max_prompts": Range(0), "lora_rank": Range(1), "cfg_scale": Range(0), "temperature": Range(0, lo_open=True),
    "top_k": Range(0), "sample_batch_size": Range(0), "judge_batch_size": Range(1), "logprob_batch_size": Range(0),
    "save_images": Range(0), "gen_noise": Range(0, 1), "log_images": Range(0),
}

#: Flags (by dest) that change no number of a run: display, output paths, logging, caches of
#: deterministic work. Every other flag is part of the run's identity. One line per flag.
COSMETIC = frozenset({
    "help", "config", "out", "resume", "no_progress", "alarm_tolerance", "cache_dir", "save_images",
    "report_to", "run_name", "tracking_dir", "tracking_project", "log_images",
})


def _kind(action: argparse.Action) -> str:
    """What a flag holds: ``switch``, ``int``, ``float``, ``path``, ``str`` or ``parsed`` (a flag with its
    own ``type`` callable: a string in a config file, then whatever the callable makes of it)."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)):
        return "switch"
    t = action.type
    if t is int or t is float:
        return t.__name__
    if t is Path or (isinstance(t, type) and issubclass(t, os.PathLike)):
        return "path"
    return "str" if t is None or t is str else "parsed"


def _action(parser: argparse.ArgumentParser, dest: str) -> argparse.Action | None:
    return next((a for a in parser._actions if a.dest == dest), None)


def check_value(parser: argparse.ArgumentParser, dest: str, value, *, parsed: bool = False):
    """Why ``value`` is not a valid setting of the flag ``dest`` (its type, choices, finiteness and
    :data:`RANGES`), or None. ``value`` is a ``--config`` file's JSON value, or (``parsed``) the value
    argparse made (a flag with its own ``type`` callable checked it then)."""
    action = _action(parser, dest)
    if parsed and _kind(action) == "parsed":
        return None
    if action is None:
        return "unknown setting"
    if value is None:
        return None if action.default is None else "expected a value, got null"
    many = action.nargs in ("+", "*")
    if many:
        if not isinstance(value, (list, tuple)) or (action.nargs == "+" and not value):
            return f"expected a list of {_kind(action)}s, got {value!r}"
        values = list(value)
    else:
        values = [value]
    kind = _kind(action)
    for v in values:
        if kind == "switch" and not isinstance(v, bool):
            return f"expected true or false, got {v!r}"
        if kind == "int" and (isinstance(v, bool) or not isinstance(v, int)):
            return f"expected an integer, got {v!r}"
        if kind == "float":
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                return f"expected a number, got {v!r}"
            if not math.isfinite(v):
                return f"must be a finite number, got {v}"
        if kind in ("path", "str", "parsed") and not isinstance(v, (str, os.PathLike)):
            return f"expected a {'path' if kind == 'path' else 'string'}, got {v!r}"
        if action.choices is not None and v not in action.choices:
            return f"expected one of {', '.join(map(str, action.choices))}, got {v!r}"
        if kind in ("int", "float") and dest in RANGES:
            why = RANGES[dest].why(v)
            if why:
                return why
    return None


def _flag(parser: argparse.ArgumentParser, dest: str) -> str:
    action = _action(parser, dest)
    return action.option_strings[0] if action is not None and action.option_strings else dest


def _from_json(parser: argparse.ArgumentParser, dest: str, value):
    """A checked JSON value as the parser would hold it (paths as :class:`~pathlib.Path`)."""
    action = _action(parser, dest)
    if value is not None and _kind(action) == "path":
        return [Path(v) for v in value] if isinstance(value, (list, tuple)) else Path(value)
    return value


CLO_HELP = {
    "candidates": "N images sampled per prompt (Algorithm 1; paper: 10)",
    "threshold": "accept a candidate when its judge score (P(yes) for the self judge) >= this, in [0, 1]",
    "judge": "data judge: self | oracle | external | all (unfiltered control) | noisy:<p> (external judge, "
             "verdicts inverted with prob. p) | corrupt:<p> (self judge, verdicts inverted with prob. p: poor "
             "supervision) | lookalike:<p> (external judge that also accepts each near miss of the prompt, all "
             "attributes right but one, with prob. p) | pr:<precision>,<recall> (an external judge with that set "
             "precision and recall on the candidate pool, errors drawn from near misses first) | weak (the "
             "understanding of a weaker checkpoint of the same model, pre-trained for --weak-pretrain-steps; the "
             "external judge stays the ground truth of the audit and the evaluation)",
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
    --no-progress and --weak-pretrain-steps (the ``weak`` judge's checkpoint: :func:`check_weak_judge`).
    ``defaults`` sets the scale's defaults (shown by --help)."""
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
    g.add_argument("--weak-pretrain-steps", type=int, default=None,
                   help="--judge weak: pre-training steps of the weaker checkpoint that judges (the same model, "
                        "world and seed pre-trained for fewer steps; fewer than the run's). Default: a share of the "
                        "run's pre-training steps, 1/15 in the simulator (dynamics.sim.study.WEAK_FRACTION) and "
                        "5/8 in the toy world (dynamics.toy.study.WEAK_FRACTION), each measured to give a judge "
                        "weaker than the model's own understanding. Given without --judge weak it is refused")
    return p


def check_weak_judge(parser: argparse.ArgumentParser, args: argparse.Namespace, pretrain_steps: int | None, *,
                     unsupported: str | None = None) -> int | None:
    """Check ``--judge weak`` and ``--weak-pretrain-steps`` before any work (usage errors, exit 2) and
    return the weak judge's pre-training steps as given (None: the scale's default; also None without
    the weak judge). ``pretrain_steps``: the run's own pre-training steps (the weak judge needs fewer);
    ``unsupported``: why this scale has no weak judge (then ``--judge weak`` is refused with it).

    >>> p = clo_parser("demo")
    >>> check_weak_judge(p, parse_args(p, ["--judge", "weak", "--weak-pretrain-steps", "20"]), 300)
    20
    """
    from dynamics.judges import parse_judge

    steps = getattr(args, "weak_pretrain_steps", None)
    try:
        weak = parse_judge(args.judge).needs_judge_model
    except ValueError:  # a bad spec is the config check's error
        return None
    if weak and unsupported:
        parser.error(f"--judge weak: {unsupported}")
    if steps is None:
        return None
    if not weak:
        parser.error(f"--weak-pretrain-steps {steps}: only the weak judge (--judge weak) reads it, the judge is "
                     f"{args.judge!r}; remove it")
    if pretrain_steps is not None and not steps < pretrain_steps:
        parser.error(f"--weak-pretrain-steps {steps}: must be fewer than the run's pre-training steps "
                     f"({pretrain_steps}): the weak judge is the model with less understanding pre-training")
    return steps


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``, applying a --config file first so that explicit flags override it, then check
    every value against the schema (:func:`check_value`). A bad file (missing, not JSON, an unknown key,
    a value of the wrong type or range) and a bad value are usage errors (exit 2) naming the file or
    flag, the key and the value."""
    pre, _ = parser.parse_known_args(argv)
    if getattr(pre, "config", None) is not None:
        path = pre.config
        if not path.is_file():
            parser.error(f"--config {path}: no such file")
        try:
            values = json.loads(path.read_text())
        except UnicodeDecodeError:
            parser.error(f"--config {path}: not a JSON text file")
        except json.JSONDecodeError as e:
            parser.error(f"--config {path}: line {e.lineno}: {e.msg}")
        if not isinstance(values, dict):
            parser.error(f"--config {path}: expected a JSON object of settings")
        known = {a.dest for a in parser._actions} - {"help", "config"}
        typed = {}
        for key, value in values.items():
            dest = key.replace("-", "_")
            if dest not in known:
                parser.error(f"--config {path}: unknown setting {key!r}")
            why = check_value(parser, dest, value)
            if why:
                parser.error(f"--config {path}: {key} {why}")
            typed[dest] = _from_json(parser, dest, value)
        parser.set_defaults(**typed)
    args = parser.parse_args(argv)
    for action in parser._actions:
        if action.dest in ("help", "config") or not hasattr(args, action.dest):
            continue
        why = check_value(parser, action.dest, getattr(args, action.dest), parsed=True)
        if why:
            parser.error(f"{_flag(parser, action.dest)} {why}")
    return args


def given_flags(parser: argparse.ArgumentParser, args: argparse.Namespace, dests) -> list[str]:
    """The flags among ``dests`` set to something other than their default (on the command line or
    in a config file)."""
    return [_flag(parser, d) for d in dests if hasattr(args, d) and getattr(args, d) != parser.get_default(d)]


def check_device(device: str | None) -> str | None:
    """Why torch cannot use ``device`` here, or None (None: the default device).

    >>> check_device("gpu0")
    "not a torch device name (expected cpu, cuda, cuda:<index>, mps, ...): 'gpu0'"
    """
    import torch

    if device is None:
        return None
    try:
        d = torch.device(device)
    except (RuntimeError, ValueError):
        return f"not a torch device name (expected cpu, cuda, cuda:<index>, mps, ...): {device!r}"
    if d.type == "cuda":
        if not torch.cuda.is_available():
            return f"{device!r}: this torch has no CUDA device (CUDA build: {torch.version.cuda is not None})"
        if d.index is not None and d.index >= torch.cuda.device_count():
            return f"{device!r}: only {torch.cuda.device_count()} CUDA device(s) here"
    elif d.type == "mps" and not torch.backends.mps.is_available():
        return f"{device!r}: MPS is not available here"
    elif d.type not in ("cpu", "cuda", "mps", "meta"):
        return f"{device!r}: device type {d.type!r} is not supported"
    return None


def content_hash(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, or of a directory's files (relative names and bytes, sorted): what a
    run's identity records of an input file instead of its path."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else "").encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def run_identity(parser: argparse.ArgumentParser, args: argparse.Namespace, **extra) -> dict:
    """Every setting that changes the run's numbers: each flag not in :data:`COSMETIC` (a path by its
    content hash, ``sha256:<hex>``), the versions of this package and torch, and ``extra`` (what a
    scale adds, e.g. a model's revision; it replaces a flag of the same name)."""
    from dynamics.records import to_jsonable, versions

    def value(v):
        if isinstance(v, (list, tuple)):
            return [value(x) for x in v]
        if isinstance(v, os.PathLike):
            return f"sha256:{content_hash(v)}" if Path(v).exists() else f"missing:{v}"
        return v

    ident = {a.dest: value(getattr(args, a.dest)) for a in parser._actions
             if a.dest not in COSMETIC and hasattr(args, a.dest)}
    v = versions()
    ident.update({"version_dynamics": v["dynamics"], "version_torch": v["torch"]})
    ident.update(extra)
    return to_jsonable(ident)


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
