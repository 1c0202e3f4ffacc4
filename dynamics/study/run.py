"""Reading one run directory of ``experiments/full_clo.py`` (the toy world, Janus-Pro, Emu3; one or
several processes; ``--seeds N`` with ``seed_<s>/`` subdirectories) or ``experiments/sim_clo.py``,
and the paper's analysis of it: what ``notebooks/analyse_a_run.ipynb`` shows for any run.

:func:`open_run` reads the directory without loading a model: ``config.json`` (the CLO settings and
what the run recorded of its model), ``identity.json`` (every flag), the records of every seed
(``metrics.jsonl``; the simulator's ``theory.jsonl``), the judge's audit and the saved sample images.
On that :class:`Run`:

- :meth:`Run.table`: the per-category table before -> after (:func:`dynamics.report.summary_table`,
  ± one standard error across seeds); :func:`changes` the paired change per seed with its t test
  (:mod:`dynamics.study.read`, :mod:`dynamics.study.stats`), :func:`format_changes` as text;
- :func:`audit`: per epoch, the size of the self-judged set and the external judge's precision and
  recall of it (``sft_precision``, ``sft_recall``: recorded where the run had an external judge);
- :meth:`Run.curve_keys`: the recorded metrics a curve figure can draw
  (:func:`dynamics.figures.sim.plot_curves`); :meth:`Run.grids`: the sample grids the run saved;
- :func:`load_model`: the model rebuilt from the run's settings with its last checkpoint
  (``state.pt``) loaded: for a real model through :func:`dynamics.runs.janus.load_model`, the loader
  of the run itself. A sharded FSDP checkpoint (``state-<epoch>.dcp/``) is read by as many processes
  as wrote it: it raises :class:`ShardedCheckpointError` saying so;
- :func:`first_order`: the one-step first-order check on that checkpoint
  (:mod:`dynamics.study.first_order`): the toy's :func:`dynamics.toy.study.one_step_check`, a real
  model's :func:`dynamics.full.janus.entk_probe` on the run's own candidates; the simulator's run
  records the check at every tracked training step (``theory.jsonl``), which is read instead.

Bad input raises before any work, naming the path: a missing path (``FileNotFoundError``), a file
(``NotADirectoryError``), a directory without a run (:class:`NotARunError`).

Example (a directory that holds no run)::

    >>> import tempfile
    >>> try:
    ...     open_run(tempfile.mkdtemp())
    ... except NotARunError as e:
    ...     print(str(e).split(": ", 1)[1])
    not a run directory of experiments/full_clo.py or experiments/sim_clo.py (no config.json here or in seed_<s>/ subdirectories)
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from pathlib import Path

from dynamics.records import RunDir, to_jsonable
from dynamics.report import CURVE_KEYS, _fmt, aggregate, summary_table
from dynamics.study.read import delta, flatten_groups, per_unit
from dynamics.study.stats import mean_se

__all__ = [
    "AUDIT_KEYS",
    "NotARunError",
    "Run",
    "ShardedCheckpointError",
    "audit",
    "changes",
    "first_order",
    "format_audit",
    "format_changes",
    "format_first_order",
    "load_model",
    "open_run",
]

#: What the audit reads per epoch: the self-judged set's size and the external judge's precision and
#: recall of it (the share of the set it accepts; the share of its accepted candidates the set holds).
AUDIT_KEYS = ("sft_size", "sft_precision", "sft_recall")

_SEED_DIR = re.compile(r"seed_(\d+)")


class NotARunError(ValueError):
    """A directory that holds no run of ``experiments/full_clo.py`` or ``experiments/sim_clo.py``."""


class ShardedCheckpointError(RuntimeError):
    """A sharded FSDP checkpoint: only a launch with the number of processes that wrote it reads it."""


@dataclasses.dataclass
class Run:
    """A run directory as :func:`open_run` reads it.

    ``parts``: the directories :func:`dynamics.clo.run_clo` wrote (the run itself, or its
    ``seed_<s>/``, in seed order); ``config``: the first part's ``config.json`` (``config``: the CLO
    settings, ``run``: what the entry point recorded, ``versions``); ``identity``: ``identity.json``
    (every flag; empty where absent); ``records``: every part's ``metrics.jsonl`` (one per replica and
    epoch); ``theory``: the simulator's ``theory.jsonl`` records; ``images``: every saved sample image
    (grids ``samples*.png`` and the decoded PNGs under ``samples_before/``, ``samples_after/``)."""

    path: Path
    scale: str
    parts: list[Path]
    config: dict
    identity: dict
    records: list[dict]
    theory: list[dict]
    images: list[Path]

    @property
    def clo(self) -> dict:
        """The CLO settings (``config.json``'s ``config``)."""
        return self.config.get("config", {})

    @property
    def info(self) -> dict:
        """What the entry point recorded of the run (``config.json``'s ``run``)."""
        return self.config.get("run", {})

    @property
    def seeds(self) -> list[int]:
        return sorted({int(r["seed"]) for r in self.records})

    @property
    def epochs(self) -> list[int]:
        return sorted({int(r["epoch"]) for r in self.records})

    @property
    def model_name(self) -> str:
        """``toy``, ``sim`` or the ``--model`` of a real-model run."""
        return {"toy": "toy", "sim": "sim"}.get(self.scale, str(self.info.get("model", "?")))

    @property
    def world_size(self) -> int:
        """The number of processes the run was launched with."""
        return int(self.info.get("world_size", 1))

    def checkpoint(self, part: int = 0) -> Path:
        """``state.pt`` of a part (FileNotFoundError naming it when absent)."""
        path = self.parts[part] / "state.pt"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no checkpoint (the run saves state.pt after its first evaluation)")
        return path

    def sharded(self, part: int = 0) -> list[Path]:
        """The sharded FSDP checkpoint directories (``state-<epoch>.dcp/``) of a part: empty unless the
        run trained under ``--parallel fsdp``."""
        return sorted(p for p in self.parts[part].glob("state-*.dcp") if p.is_dir())

    def table(self, **kw) -> str:
        """The per-category table before -> after (:func:`dynamics.report.summary_table`; ``kw`` go to it)."""
        return summary_table(self.records, **kw)

    def curve_keys(self, keys: Sequence[str] = CURVE_KEYS + ("sft_precision", "sft_recall")) -> list[str]:
        """The ``keys`` the records hold a value of at some epoch (what a curve panel can draw)."""
        return [k for k in keys if any(r.get(k) is not None for r in self.records)]

    def grids(self) -> list[Path]:
        """The sample grids to show, one set per part: ``samples.png`` (before and after side by side)
        where the run drew it, else its ``samples_before.png`` and ``samples_after.png``."""
        out = []
        for part in self.parts:
            both = part / "samples.png"
            out += [both] if both.is_file() else sorted(p for p in part.glob("samples_*.png") if p.is_file())
        return out

    def describe(self) -> str:
        """A few lines: what ran, where, and what the directory holds."""
        c, i = self.clo, self.info
        what = {"sim": f"simulator ({i.get('prompts')} prompts x {i.get('tokens')} tokens, coupling "
                       f"{i.get('coupling')})",
                "toy": f"toy world (coupling {i.get('coupling')})"}.get(
            self.scale, f"{self.model_name} ({i.get('family', '?')}; scope {i.get('scope')}, precision "
                        f"{i.get('precision')})")
        procs = f"{self.world_size} process(es)" + (f", {i.get('parallel')}" if self.world_size > 1 else "")
        lines = [f"run directory: {self.path}",
                 f"model: {what}; {procs}",
                 (f"CLO: judge {c.get('judge')} at threshold {c.get('threshold')}, loss {c.get('loss')}, "
                  f"{c.get('candidates')} candidates, {c.get('epochs')} epochs, curriculum {c.get('curriculum')}"),
                 f"seeds: {self.seeds} ({len(self.parts)} part(s)); evaluated epochs: {self.epochs}",
                 f"sample images: {len(self.images)} file(s); checkpoint: "
                 + ("sharded FSDP" if self.sharded() else "state.pt" if (self.parts[0] / "state.pt").is_file()
                    else "none")]
        return "\n".join(lines)


def _parts(path: Path) -> list[Path]:
    """The directories with a run's records: ``path`` itself or its ``seed_<s>/``, in seed order."""
    if (path / "config.json").is_file():
        return [path]
    seeds = [p for p in path.iterdir() if p.is_dir() and _SEED_DIR.fullmatch(p.name) and (p / "config.json").is_file()]
    return sorted(seeds, key=lambda p: int(_SEED_DIR.fullmatch(p.name).group(1)))


def open_run(path) -> Run:
    """Read the run directory ``path`` (no model is loaded). Raises ``FileNotFoundError`` (no such
    path), ``NotADirectoryError`` (a file), :class:`NotARunError` (no ``config.json`` with
    ``metrics.jsonl``, here or in ``seed_<s>/``) and :class:`dynamics.records.DamagedRunError` (a damaged
    ``config.json``), each naming the path."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such run directory")
    if not path.is_dir():
        raise NotADirectoryError(f"{path}: not a directory; pass the run directory (the --out of the run)")
    parts = _parts(path)
    if not parts:
        raise NotARunError(f"{path}: not a run directory of experiments/full_clo.py or experiments/sim_clo.py "
                           f"(no config.json here or in seed_<s>/ subdirectories)")
    todo = "the run directory is damaged"
    configs = [RunDir(p).read_json("config.json", todo=todo) for p in parts]
    records, theory, images = [], [], []
    for p in parts:
        run = RunDir(p)
        if not run.file("metrics.jsonl").is_file():
            raise NotARunError(f"{p}: holds config.json but no metrics.jsonl: the run stopped before its first "
                               f"evaluation")
        records += run.read_jsonl("metrics.jsonl")
        theory += run.read_jsonl("theory.jsonl")
        images += sorted(f for f in p.glob("samples*.png") if f.is_file())
        for d in sorted(q for q in p.glob("samples_*") if q.is_dir()):
            images += sorted(d.glob("*.png"))
    if not records:
        raise NotARunError(f"{parts[0] / 'metrics.jsonl'}: no records yet")
    scale = configs[0].get("run", {}).get("scale")
    if scale not in ("sim", "toy", "full"):
        raise NotARunError(f"{parts[0] / 'config.json'}: run.scale is {scale!r}, expected sim, toy or full")
    identity_file = path / "identity.json"
    identity = RunDir(path).read_json("identity.json", todo=todo) if identity_file.is_file() else {}
    return Run(path=path, scale=scale, parts=parts, config=configs[0], identity=identity, records=records,
               theory=theory, images=images)


# ------------------------------------------------------------------------------- statistics


def changes(run: Run, keys: Sequence[str] = ("gen_acc", "und_fp_rate", "non_unification"), *,
            groups: bool = True, start: int | None = None, end: int | None = None) -> list[dict]:
    """Per category (``overall`` first, then every recorded group) and metric: the value before
    (epoch ``start``, default the first) and after (``end``, default the last) as ``(mean, s.e., seeds)``
    and the paired change per seed as a :class:`dynamics.study.stats.Estimate` (``p()`` its two-sided
    t test; NaN with one seed). Categories a metric was not measured in are left out."""
    recs = flatten_groups(run.records)
    e0 = run.epochs[0] if start is None else start
    e1 = run.epochs[-1] if end is None else end
    cats = [None] + (sorted({g for r in run.records for g in r.get("groups", {})}) if groups else [])
    rows = []
    for cat in cats:
        for key in keys:
            k = key if cat is None else f"{key}@{cat}"
            b, a = per_unit(recs, k, e0), per_unit(recs, k, e1)
            if not b or not a:
                continue
            rows.append({"category": cat or "overall", "metric": key, "before": mean_se(b.values()),
                         "after": mean_se(a.values()), "change": delta(recs, k, start=e0, end=e1)})
    return rows


def _pct(m: float, se: float) -> str:
    return _fmt(m, se, True)  # the summary table's number format


def format_changes(rows: Sequence[dict]) -> str:
    """:func:`changes` as a text table (percent; change in points with its two-sided p)."""
    head = f"{'category':<22} {'metric':<16} {'before':>12} {'after':>12} {'change (points)':>16} {'p':>7} {'seeds':>5}"
    lines = [head, "-" * len(head)]
    for r in rows:
        est = r["change"]
        p = est.p()
        lines.append(f"{r['category']:<22} {r['metric']:<16} {_pct(*r['before'][:2]):>12} {_pct(*r['after'][:2]):>12} "
                     f"{'n/a' if math.isnan(est.mean) else f'{100 * est.mean:+.1f}':>16} "
                     f"{'n/a' if math.isnan(p) else f'{p:.3f}':>7} {est.n:>5}")
    lines.append("(± one standard error across seeds; p: two-sided paired t test of the change, n/a with one seed)")
    return "\n".join(lines)


def audit(run: Run) -> list[dict]:
    """Per epoch, each of :data:`AUDIT_KEYS` as ``(mean, s.e., seeds)`` across seeds; empty when the
    run recorded no external audit (no external judge, or ``--no-audit``)."""
    if not any(r.get("sft_precision") is not None for r in run.records):
        return []
    per_key = {k: aggregate(run.records, k) for k in AUDIT_KEYS}
    return [{"epoch": e, **{k: per_key[k][e] for k in AUDIT_KEYS}} for e in run.epochs]


def format_audit(rows: Sequence[dict]) -> str:
    """:func:`audit` as a text table (set size as a count, precision and recall in percent)."""
    if not rows:
        return "no audit recorded: the run had no external judge (or ran with --no-audit)"
    lines = [f"{'epoch':>5} {'SFT set size':>14} {'precision':>12} {'recall':>12}"]
    for r in rows:
        m, se, _ = r["sft_size"]
        size = f"{m:.1f}" + ("" if math.isnan(se) else f"±{se:.1f}")
        lines.append(f"{r['epoch']:>5} {size:>14} {_pct(*r['sft_precision'][:2]):>12} {_pct(*r['sft_recall'][:2]):>12}")
    lines.append("(precision: share of the self-judged set the external judge accepts; recall: share of the "
                 "externally accepted candidates the set holds; percent, ± one standard error across seeds)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the checkpoint


def _check_not_sharded(run: Run, part: int) -> None:
    shards = run.sharded(part)
    if shards or run.info.get("parallel") == "fsdp":
        where = shards[-1] if shards else run.parts[part]
        raise ShardedCheckpointError(
            f"{where}: a sharded FSDP checkpoint written by {run.world_size} processes; it is read by a launch "
            f"with the same number of processes (torchrun --nproc_per_node {run.world_size}), not in one process")


def load_model(run: Run, *, part: int = 0, device: str | None = None, dtype=None):
    """The model of ``run`` (of its ``part``-th seed directory) with its last checkpoint loaded, in eval
    mode. The toy and the simulator are rebuilt from ``config.json``; a real model through
    :func:`dynamics.runs.janus.load_model` from the run's flags (``identity.json``) and what
    ``config.json`` recorded (model, scope, precision, sampling, judge, prompt files), checked
    against the recorded sampling and judge settings. ``device``: a real model's device (default cuda
    when available, else cpu). ``dtype``: cast the loaded model to it (e.g. ``torch.float64`` for a
    first-order check above rounding; None keeps the run's precision). Raises
    :class:`ShardedCheckpointError` for an FSDP run."""
    _check_not_sharded(run, part)
    state = RunDir(run.parts[part]).load_state("state.pt")
    if state is None:
        run.checkpoint(part)  # raises, naming the missing file
    config = run.config if part == 0 else RunDir(run.parts[part]).read_json("config.json")
    seed = int(config["config"]["seed"])
    info = config["run"]
    if run.scale == "sim":
        import torch

        from dynamics.sim import SimModel, SimWorld

        world = SimWorld(info["prompts"], info["tokens"], seed=info["world_seed"])
        model = SimModel(world, replicas=info["seeds"], seed=seed, coupling=info["coupling"],
                         dtype=torch.float64 if info.get("float64") else torch.float32)
    elif run.scale == "toy":
        from dynamics.toy.model import ToyConfig, ToyModel

        model = ToyModel(ToyConfig.from_dict(info["toy_config"]), seed=seed)
        if info.get("coupling") == "bayes":
            from dynamics.toy.bayes import BayesLinked

            model = BayesLinked(model, seed=seed, offset=info["bayes_offset"])
    else:
        model = _full_model(run, info, seed, device)
    model.load_state_dict(state["model"])
    if dtype is not None:  # a real model's adapter reads its dtype from its parameters
        (model.model if run.scale == "full" else model).to(dtype)
    return model.eval() if hasattr(model, "eval") else model


def _full_model(run: Run, info: dict, seed: int, device: str | None):
    """A real model rebuilt as the run built it (the run's own loader), its settings checked."""
    import torch

    from dynamics.cli import content_hash
    from dynamics.runs.full import build_parser
    from dynamics.runs.janus import load_model as load_full_model
    from dynamics.runs.janus import load_prompt_sets

    parser = build_parser()
    args = parser.parse_args([])
    for k, v in run.identity.items():  # every flag the run was given (paths are recorded by content hash)
        if hasattr(args, k) and not (isinstance(v, str) and v.startswith(("sha256:", "missing:", "dir:", "hub:"))) \
                and not isinstance(v, list):
            setattr(args, k, v)
    s, j = info["sampling"], info["judge"]
    args.model, args.scope, args.cfg_mode, args.precision = info["model"], info["scope"], info["cfg_mode"], info[
        "precision"]
    args.cfg_scale, args.temperature, args.top_k = s["cfg_scale"], s["temperature"], s["top_k"] or 0
    args.sample_batch_size = s["batch_size"] or 0
    args.judge_mode, args.judge_batch_size = j["mode"], j["batch_size"]
    args.no_progress = True
    args.prompts = [Path(p) for p in info["prompts"]]
    args.eval_prompts = [Path(p) for p in info.get("eval_prompts") or []] or None
    for flag, paths in (("prompts", args.prompts), ("eval_prompts", args.eval_prompts or [])):
        hashes = run.identity.get(flag) or []
        for p, h in zip(paths, hashes):
            if not p.exists():
                raise FileNotFoundError(f"{p}: the run's --{flag.replace('_', '-')} file is gone; the model's "
                                        f"prompt set cannot be rebuilt")
            if isinstance(h, str) and h.startswith("sha256:") and content_hash(p) != h.removeprefix("sha256:"):
                raise ValueError(f"{p}: changed since the run (its content hash differs from identity.json); the "
                                 f"prompt set would differ")
    prompts, _ = load_prompt_sets(args)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_full_model(args, args.model, prompts, seed=seed, device=device)
    for name, built, saved in (("sampling", model.sampling, s), ("judge", model.judge_config, j)):
        now = to_jsonable(dataclasses.asdict(built))
        if now != saved:
            diff = sorted(k for k in set(now) | set(saved) if now.get(k) != saved.get(k))
            raise ValueError(f"{run.parts[0] / 'config.json'}: the rebuilt model's {name} settings differ from the "
                             f"run's in {diff}")
    return model


def first_order(run: Run, model=None, *, lrs: Sequence[float] = (1e-3, 1e-2), n_probes: int = 8,
                seed: int = 0) -> dict:
    """The one-step first-order check at the run's checkpoint: ``{"source": what was computed,
    "rows": one per (lr, branch, probe) with measured and predicted change, "summary":
    :func:`dynamics.study.first_order.summary`}``.

    - toy: :func:`dynamics.toy.study.one_step_check` on ``model`` (default :func:`load_model`) with
      the run's judge and threshold, ``n_probes`` probes per branch;
    - real model: :func:`dynamics.full.janus.entk_probe` at each ``lr``: the training pair is the
      first candidate of the run's self-judged set (the first candidate where the set is empty), the
      probes the first candidates of up to ``n_probes`` other training prompts (the checkpoint's
      data state), in the model's own precision;
    - simulator: no model is needed; the run's theory tracker recorded the first-order prediction
      against every tracked training step (``theory.jsonl``; one group per step and replica)."""
    from dynamics.study.first_order import summary

    if run.scale == "sim":
        rows = _sim_rows(run.theory)
        return {"source": "theory.jsonl: the tracker's prediction against each tracked training step of the run",
                "rows": rows, "summary": summary(rows) if rows else {}}
    model = load_model(run) if model is None else model
    if run.scale == "toy":
        from dynamics.toy.study import one_step_check

        c = run.clo
        rows = one_step_check(model, lrs=lrs, n_probes=n_probes, candidates=int(c.get("candidates", 8)),
                              seed=seed, judge=c.get("judge", "self"), threshold=float(c.get("threshold", 0.5)))
        return {"source": "toy one-step check (float64 copy of the checkpoint; one plain-SGD step on a self-judged "
                          "minibatch)", "rows": rows, "summary": summary(rows)}
    rows = _full_rows(run, model, lrs=lrs, n_probes=n_probes)
    return {"source": "entk_probe on the checkpoint: one plain-SGD step on log pi_gen(u) of a candidate the run's "
                      "judge accepted", "rows": rows, "summary": summary(rows)}


def _sim_rows(theory: Sequence[dict]) -> list[dict]:
    rows = []
    for t in theory:
        if not t.get("first_order_valid", True) or "pred_delta_g" not in t:
            continue
        group = (int(t.get("replica", 0)), int(t["epoch"]), int(t.get("step", 0)))
        for branch, m, p in (("generation", "delta_g", "pred_delta_g"), ("understanding", "delta_u", "pred_delta_u")):
            for j, (mv, pv) in enumerate(zip(t[m], t[p])):
                rows.append({"lr": float(t["lr"]), "branch": branch, "probe": j, "measured": float(mv),
                             "predicted": float(pv), "seed": group,
                             "aligned": bool(t.get("probe_aligned", [False] * (j + 1))[j])})
    return rows


def _full_rows(run: Run, model, *, lrs: Sequence[float], n_probes: int) -> list[dict]:
    import torch

    from dynamics.full.janus import entk_probe

    state = RunDir(run.parts[0]).load_state("state.pt")
    data = state["data"]
    images, accepted, prompt_ids = data["images"][0], data["accepted"][0], data["prompt_ids"]
    hits = accepted.nonzero().tolist()
    pu, ku = hits[0] if hits else (0, 0)
    # the probes: the first candidate of other training prompts, or the other candidates of a lone prompt
    pairs = [(i, 0) for i in range(len(prompt_ids)) if i != pu][:n_probes] or \
        [(pu, k) for k in range(images.shape[1]) if k != ku][:n_probes]
    if not pairs:
        raise ValueError(f"{run.parts[0] / 'state.pt'}: one candidate of one prompt: no probe besides the training pair")
    probe_images = torch.stack([images[i, k] for i, k in pairs])
    pids = [int(prompt_ids[i]) for i, _ in pairs]
    rows = []
    for lr in lrs:
        r = entk_probe(model, pids, probe_images, int(prompt_ids[pu]), images[pu, ku], lr=float(lr))
        for branch, key in (("generation", "gen"), ("understanding", "und")):
            pred, meas = getattr(r, f"predicted_{key}"), getattr(r, f"measured_{key}")
            rows += [{"lr": float(lr), "branch": branch, "probe": j, "prompt_id": pids[j],
                      "accepted": bool(accepted[pairs[j]]), "measured": float(meas[j]),
                      "predicted": float(pred[j])} for j in range(len(pids))]
    return rows


def format_first_order(result: dict) -> str:
    """A :func:`first_order` result in a few lines: per branch the relative error at each lr, the
    residual's slope in lr (2 at first order; n/a with one lr) and the sign agreement."""
    lines = [result["source"]]
    if not result["summary"]:
        return lines[0] + ": nothing recorded (the run tracked no step: --track-every 0)"
    for branch, s in result["summary"].items():
        rel = ", ".join(f"lr {lr:g}: {100 * e:.2f}%" for lr, e in s["relative_error"].items())
        slope = "n/a" if math.isnan(s["residual_slope"]) else f"{s['residual_slope']:.2f}"
        lines.append(f"{branch:<14} relative error {rel}; residual slope {slope}; sign agreement "
                     f"{100 * s['sign_agreement']:.0f}% of {s['probes']} predictions at the smallest lr")
    return "\n".join(lines)
