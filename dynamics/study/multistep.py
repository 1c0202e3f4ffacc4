"""The multi-step check: the linearised prediction of a CLO run (:mod:`dynamics.flow`) against the
run itself, at the training learning rates, for the simulator and the toy world.

The one-step check (:mod:`dynamics.study.first_order`) tests the theory one plain-SGD step at a time
at small steps. Here the model takes the real run's steps: the simulator's plain SGD at lr 0.5 and
the toy recipe's Adam at lr 1e-4 (:data:`dynamics.toy.recipe.TOY_CLO`), on the self-judged CLO
minibatches in the run's order (captured from :func:`dynamics.clo.run_clo` itself, curriculum replay
included), and every probe's ``log pi(x | y)`` (generation) and ``log P(yes | x, y)``
(understanding) is predicted over the whole run, re-linearised every ``k`` steps: ``k = 1``, ``10``,
once per epoch (``"epoch"``) and once for the run (``"all"``). Errors are read at the end of every
epoch (the horizon), per probe set, with the one-step check's definition
(:func:`dynamics.study.first_order.relative_error`: normalised by the predicted change; both norms are
kept, so the error relative to the measured change is one division away).

Where the model is linearised: the simulator at its logits (the theory's eNTK flow, ``G = pi - e_x``
moving with the linearised logits), or at ``log pi`` of the training samples (``level="logprob"``);
the toy at ``log pi`` of the training samples, the protocol's output (the toy exposes no logits).
Both run in float64 on a copy of the pre-trained model; the minibatches come from the float32 run.

Example (the tiny simulator; three epochs)::

    >>> from dynamics.sim.study import SimSize
    >>> setup = sim_setup(SimSize.tiny(epochs=3), probes=8)
    >>> out = run_multistep(setup, ks=(1, "all"))
    >>> sorted(out["errors"]), sorted(out["errors"]["1"]["end"])
    (['1', 'all'], ['gen', 'und'])
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch.func import functional_call

from dynamics.clo import CLOConfig, parse_curriculum
from dynamics.flow import Objective, Optimiser, clo_objective, errors, flow, logit_objective
from dynamics.study.arms import run_arm

__all__ = [
    "KS",
    "RUNS",
    "Setup",
    "capture_batches",
    "epoch_starts",
    "format_table",
    "k_label",
    "multistep_experiment",
    "pick_probes",
    "run_multistep",
    "sim_setup",
    "toy_setup",
]

KS = (1, 10, "epoch", "all")
# the runs of the figure: (scale, settings of sim_setup / toy_setup). The simulator's Adam has no training
# lr of its own; 1e-3 moves its probes over the first epoch about as much as the toy's recipe does.
RUNS = {
    "sim_sgd_logits": ("sim", {"level": "logits"}),
    "sim_sgd_logprob": ("sim", {"level": "logprob"}),
    "sim_adam_logits": ("sim", {"level": "logits", "optimizer": "adam", "lr": 1e-3}),
    "toy_adam_logprob": ("toy", {}),
}
BRANCHES = ("gen", "und")
KINDS = ("fp", "tp", "tn", "fn")  # own verdict x external verdict: false / true positive, true / false negative


def k_label(k: int | str) -> str:
    """The JSON key of a re-linearisation interval: ``1 -> "1"``, ``"epoch" -> "epoch"``."""
    return str(k)


@dataclass
class Setup:
    """What the multi-step check of one run needs: the trainable parameters (float64), the objective,
    the run's minibatches in order with the epoch of each, the probes (``"gen"``: ``log pi(x | y)``,
    ``"und"``: ``log P(yes | x, y)``, one entry per probe pair, ``kinds[i]`` its verdict kind), the
    optimiser and the judge's threshold."""

    scale: str
    params: dict[str, torch.Tensor]
    objective: Objective
    batches: list
    epochs: list[int]
    probes: dict
    kinds: list[str]
    optimiser: Optimiser
    threshold: float
    info: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ the run


class _Capture:
    """A step hook that keeps every minibatch the loop trains on, in order."""

    def __init__(self):
        self.batches = []

    def before_step(self, model, batch, lr):
        self.batches.append(batch)

    def after_step(self, model, batch, lr):
        return [{"flow_step": len(self.batches) - 1}]


def capture_batches(model, cfg: CLOConfig, *, external, train_ids=None) -> tuple[list, list[int]]:
    """The minibatches of a CLO run of ``cfg`` from ``model`` (restored afterwards), in the run's
    order, and the epoch of each: the loop's own data (Algorithm 1, curriculum replay) and schedule.
    Intermediate evaluations are skipped (they draw their own seeds, so training is unchanged)."""
    cfg = dataclasses.replace(cfg, eval_every=max(1, cfg.epochs), progress=False)
    hook = _Capture()
    arm = run_arm(model, cfg, external=external, hooks=[hook], train_ids=train_ids)
    epochs = {r["flow_step"]: int(r["epoch"]) for r in arm.theory}
    return hook.batches, [epochs[i] for i in range(len(hook.batches))]


def epoch_starts(epochs: Sequence[int]) -> list[int]:
    """The first step of every epoch.

    >>> epoch_starts([1, 1, 2, 2, 2, 3])
    [0, 2, 5]
    """
    return [i for i, e in enumerate(epochs) if i == 0 or e != epochs[i - 1]]


def _with_epochs(cfg: CLOConfig, epochs: int | None) -> CLOConfig:
    """``cfg`` for ``epochs`` epochs, dropping curriculum replays that would fall after the last one."""
    if epochs is None or epochs == cfg.epochs:
        return cfg
    mode, replay, _ = parse_curriculum(cfg.curriculum, cfg.epochs)
    curriculum = cfg.curriculum
    if mode == "epochs":
        kept = [e for e in replay if e <= epochs]
        curriculum = "epochs:" + ",".join(map(str, kept)) if kept else "off"
    return dataclasses.replace(cfg, epochs=int(epochs), curriculum=curriculum)


def pick_probes(own: torch.Tensor, ext: torch.Tensor, n: int, *, seed: int) -> tuple[list[int], list[str]]:
    """``n`` probe rows out of candidate pairs with the model's own verdict ``own`` and the external
    one ``ext`` (bool ``(N,)``): half of them false positives (own yes, external no) where there are
    enough, the rest at random among the others (more false positives where the others run out);
    returns the rows and their kinds (``fp``, ``tp``, ``tn``, ``fn``).

    >>> own = torch.tensor([True, True, False, False, True]); ext = torch.tensor([False, True, False, True, False])
    >>> rows, kinds = pick_probes(own, ext, 4, seed=0)
    >>> len(rows), kinds.count("fp")
    (4, 2)
    """
    if n < 1:
        raise ValueError(f"probes must be >= 1, got {n}")
    kind = torch.where(own, torch.where(ext, 1, 0), torch.where(ext, 3, 2))
    perm = torch.randperm(len(own), generator=torch.Generator().manual_seed(int(seed))).tolist()
    fps = [i for i in perm if kind[i] == 0][: n // 2]
    rest = [i for i in perm if kind[i] != 0][: n - len(fps)]
    rows = fps + rest
    rows += [i for i in perm if kind[i] == 0 and i not in set(fps)][: n - len(rows)]  # too few of the others
    if len(rows) < n:
        raise ValueError(f"asked for {n} probes, only {len(rows)} candidate pairs")
    return rows, [KINDS[int(kind[i])] for i in rows]


# ------------------------------------------------------------------------------------------ scales


def _trainable(module, params) -> dict[str, torch.Tensor]:
    ids = {id(p) for p in params}
    return {n: p.detach() for n, p in module.named_parameters() if id(p) in ids}


def sim_setup(size=None, *, seed: int = 0, epochs: int | None = None, probes: int = 32, level: str = "logits",
              **cfg_overrides) -> Setup:
    """The simulator's check: one pre-trained replica of ``size`` (default :class:`~dynamics.sim.study.SimSize`,
    model seed ``seed``), a self-judged CLO run with the size's settings (plain SGD at lr 0.5;
    ``cfg_overrides`` are :class:`~dynamics.clo.CLOConfig` fields, e.g. ``optimizer="adam"``) for
    ``epochs`` epochs (default the size's), probes drawn from every (prompt, token) pair, half of them
    false positives of the pre-trained understanding. ``level``: ``"logits"`` or ``"logprob"``."""
    from dynamics.sim.study import SimSize, pretrained

    if level not in ("logits", "logprob"):
        raise ValueError(f"level must be 'logits' or 'logprob', got {level!r}")
    size = dataclasses.replace(size or SimSize(), seeds=1, seed=int(seed))
    world, model = pretrained(size)
    cfg = _with_epochs(size.config(**cfg_overrides), epochs)
    batches, epoch_of = capture_batches(model, cfg, external=world.oracle)
    m = copy.deepcopy(model).double().eval()
    params = _trainable(m, m.generation_parameters())

    def logits(p, ids):
        return functional_call(m, p, (ids, "gen"))

    if level == "logits":
        objective = logit_objective(cfg, logits)
    else:
        objective = clo_objective(cfg, lambda p, ids, x: torch.log_softmax(logits(p, ids), -1).gather(-1, x[..., 0]))
    with torch.no_grad():
        table = torch.sigmoid(m(torch.arange(m.num_prompts), "und"))[0]  # (P, V) own P(yes)
    own = (table >= cfg.threshold).reshape(-1)
    ext = world.aligned.reshape(-1).bool()
    rows, kinds = pick_probes(own, ext, probes, seed=seed)
    rows = torch.tensor(rows)
    y, x = rows // m.num_tokens, rows % m.num_tokens

    def gen(p):
        return torch.log_softmax(logits(p, y), -1)[0, torch.arange(len(y)), x]

    def und(p):
        return torch.nn.functional.logsigmoid(functional_call(m, p, (y, "und")))[0, torch.arange(len(y)), x]

    info = {"prompts": m.num_prompts, "tokens": m.num_tokens, "level": level, "config": cfg.to_dict(),
            "parameters": sum(v.numel() for v in params.values())}
    return Setup("sim", params, objective, batches, epoch_of, {"gen": gen, "und": und}, kinds,
                 Optimiser.from_config(cfg), cfg.threshold, info)


def toy_setup(size=None, *, seed: int = 0, epochs: int | None = None, probes: int = 24,
              check: bool | None = None, **cfg_overrides) -> Setup:
    """The toy world's check: the pre-trained toy model of ``seed`` (:func:`dynamics.toy.study.pretrained_model`,
    cached), a self-judged CLO run with the size's recipe (the toy recipe: Adam at lr 1e-4, curriculum
    replay after epoch 2; ``cfg_overrides`` are :class:`~dynamics.clo.CLOConfig` fields) for
    ``epochs`` epochs, probes among the model's own samples on random prompts, half of them false
    positives. ``check``: the gap check of the pre-trained model (default on except at the tiny preset)."""
    from dynamics.toy.study import ToySize, pretrained_model

    size = size or ToySize()
    if check is None:
        check = size.preset != "tiny"
    cfg = _with_epochs(dataclasses.replace(size.clo, seed=int(seed), **cfg_overrides), epochs)
    model = pretrained_model(size, seed, check=check, threshold=cfg.threshold)
    external = model.world.external_judge()
    batches, epoch_of = capture_batches(model, cfg, external=external)
    m = copy.deepcopy(model).double().eval()
    params = _trainable(m, m.generation_parameters())
    objective = clo_objective(cfg, lambda p, ids, x: functional_call(m, p, (ids, x), {"what": "gen"}))

    ids = torch.randperm(len(m.prompts), generator=torch.Generator().manual_seed(int(seed) + 1))
    samples = m.sample(ids, 4, seed=int(seed) + 1)  # (1, P, 4, M)
    own = (m.judge(ids, samples)[0] >= cfg.threshold).reshape(-1)
    ext = external(ids, samples)[0].bool().reshape(-1)
    rows, kinds = pick_probes(own, ext, probes, seed=seed)
    rows = torch.tensor(rows)
    pid = ids[rows // samples.shape[2]]
    img = samples[0].reshape(-1, samples.shape[-1])[rows].view(1, len(rows), 1, -1)

    def gen(p):
        return functional_call(m, p, (pid, img), {"what": "gen"}).reshape(-1)

    def und(p):
        return functional_call(m, p, (pid, img), {"what": "yes"}).reshape(-1)

    info = {"preset": size.preset, "prompts": len(m.prompts), "config": cfg.to_dict(), "level": "logprob",
            "parameters": sum(v.numel() for v in params.values())}
    return Setup("toy", params, objective, batches, epoch_of, {"gen": gen, "und": und}, kinds,
                 Optimiser.from_config(cfg), cfg.threshold, info)


# ------------------------------------------------------------------------------------------ reading


def run_multistep(setup: Setup, ks: Sequence[int | str] = KS) -> dict:
    """Measure the run of ``setup`` and predict it for every ``k``; the numbers, JSON-ready.

    Returns ``steps``, ``epoch_steps`` (steps per epoch), ``intervals`` (per k, the steps per
    linearisation), ``errors[k][horizon][branch]`` (:func:`dynamics.flow.errors` at ``"epoch<e>"``, the
    end of epoch ``e``, and ``"end"``), ``segment_errors[k][branch]`` (the median error of a segment's
    own change; for ``k = 1`` the one-step error at the run's learning rate), ``verdicts[k]`` (the
    understanding probes' verdicts at the end: measured and predicted flips, false positives corrected,
    agreement), and ``trajectories``
    (the measured and predicted cumulative change of every probe after every step)."""
    starts = epoch_starts(setup.epochs)
    T = len(setup.batches)
    res = flow(setup.params, setup.objective, setup.batches, setup.probes, setup.optimiser, ks=ks,
               epoch_starts=starts)
    ends = {f"epoch{setup.epochs[s]}": e for s, e in zip(starts, starts[1:] + [T])}
    ends["end"] = T
    out = {"scale": setup.scale, "optimiser": dataclasses.asdict(setup.optimiser), "steps": T,
           "epoch_steps": [e - s for s, e in zip(starts, starts[1:] + [T])], "kinds": setup.kinds,
           "losses": res.measured.losses, "info": setup.info, "intervals": {}, "errors": {}, "segment_errors": {},
           "verdicts": {},
           "trajectories": {"measured": {b: (v - v[0]).tolist() for b, v in res.measured.values.items()}}}
    und0 = res.measured.values["und"][0]
    fp = torch.tensor([k == "fp" for k in setup.kinds])
    thr = math.log(setup.threshold) if setup.threshold > 0 else -math.inf
    yes0 = und0 >= thr
    yes_m = res.measured.values["und"][T] >= thr
    for k in ks:
        key, pred = k_label(k), res.predicted[k]
        lengths = [e - s for s, e in zip(pred.starts, list(pred.starts[1:]) + [T])]
        out["intervals"][key] = lengths
        out["errors"][key] = {h: errors(res.measured, pred, at=at) for h, at in ends.items()}
        out["segment_errors"][key] = _segment_errors(res.measured, pred, T)
        yes_p = (und0 + pred.change["und"][T]) >= thr
        out["verdicts"][key] = {
            "flips_measured": int((yes_m != yes0).sum()), "flips_predicted": int((yes_p != yes0).sum()),
            "fp_corrected_measured": int((fp & ~yes_m).sum()), "fp_corrected_predicted": int((fp & ~yes_p).sum()),
            "agreement": float((yes_p == yes_m).double().mean()), "fp_probes": int(fp.sum()),
        }
        out["trajectories"][key] = {b: v.tolist() for b, v in pred.change.items()}
    return out


def _segment_errors(measured, pred, T: int) -> dict:
    """Per probe set, the median over segments of the error of each segment's own change (for ``k = 1``:
    the one-step error at the run's learning rate, along the run)."""
    from dynamics.study.first_order import relative_error

    bounds = list(pred.starts) + [T]
    out = {}
    for b, v in measured.values.items():
        c = pred.change[b]
        out[b] = statistics.median(relative_error(v[e] - v[s], c[e] - c[s]) for s, e in itertools.pairwise(bounds))
    return out


def _mean(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return sum(xs) / len(xs) if xs else math.nan


def _table(runs: Sequence[dict], ks: Sequence[int | str]) -> dict:
    """Per k, horizon (``epoch1`` and ``end``) and branch: the error and sign agreement averaged over runs."""
    out = {}
    for k in map(k_label, ks):
        out[k] = {}
        for h in ("epoch1", "end"):
            out[k][h] = {b: {m: _mean([r["errors"][k][h][b][m] for r in runs if h in r["errors"][k]])
                             for m in ("relative_error", "sign_agreement")} for b in BRANCHES}
        out[k]["interval"] = _mean([_mean(r["intervals"][k]) for r in runs])
        out[k]["segment"] = {b: _mean([r["segment_errors"][k][b] for r in runs]) for b in BRANCHES}
    return out


def multistep_experiment(*, sim_size=None, toy_size=None, sim_seeds: Sequence[int] = (0,),
                         toy_seeds: Sequence[int] = (0,), ks: Sequence[int | str] = KS, sim_epochs: int | None = None,
                         toy_epochs: int | None = None, sim_probes: int = 32, toy_probes: int = 24,
                         runs: Mapping[str, tuple[str, dict]] | None = None) -> dict:
    """The multi-step figure's experiment: every run of ``runs`` (default :data:`RUNS`: the simulator
    with plain SGD at its training lr, linearised at its logits and at ``log pi``, the simulator with
    Adam, the toy with its recipe's Adam), every seed of its scale; ``{"name", "summary", "plot"}``
    with ``summary["table"][run][k]`` the error and sign agreement at each horizon (``epoch1``,
    ``end``) per probe set, averaged over seeds, and ``summary["runs"][run]`` every seed's
    :func:`run_multistep` (the trajectories of its first seed only)."""
    runs = RUNS if runs is None else runs
    out: dict[str, list[dict]] = {}
    for name, (scale, kw) in runs.items():
        if scale == "sim":
            seeds = list(sim_seeds)
            out[name] = [run_multistep(sim_setup(sim_size, seed=s, epochs=sim_epochs, probes=sim_probes, **kw), ks)
                         for s in seeds]
        elif scale == "toy":
            seeds = list(toy_seeds)
            out[name] = [run_multistep(toy_setup(toy_size, seed=s, epochs=toy_epochs, probes=toy_probes, **kw), ks)
                         for s in seeds]
        else:
            raise ValueError(f"run {name!r}: scale must be 'sim' or 'toy', got {scale!r}")
        for s, r in zip(seeds, out[name]):
            r["seed"] = int(s)
            if r is not out[name][0]:
                r.pop("trajectories")
    out = {name: rs for name, rs in out.items() if rs}
    table = {name: _table(rs, ks) for name, rs in out.items()}
    summary = {"ks": [k_label(k) for k in ks], "table": table, "runs": out,
               "run_settings": {name: {"scale": runs[name][0], **runs[name][1]} for name in out}}
    return {"name": "fig_multistep", "summary": summary, "plot": {"runs": list(out)}}


def format_table(summary: dict) -> str:
    """The experiment's table as text: per run and k, the error (and sign agreement) of the generation
    and understanding probes at the end of the first epoch and of the run, and the median segment error.

    >>> cell = {b: {"relative_error": 0.1, "sign_agreement": 1.0} for b in BRANCHES}
    >>> t = {"1": {"epoch1": cell, "end": cell, "interval": 1.0, "segment": {"gen": 0.1, "und": 0.1}}}
    >>> print(format_table({"ks": ["1"], "table": {"sim": t}}).splitlines()[2])
    sim               1        1.0 | 0.100 (1.00)  0.100 (1.00) | 0.100 (1.00)  0.100 (1.00) | 0.100  0.100
    """
    head = (f"{'run':<17} {'k':>5} {'steps/lin':>10} | {'gen, epoch 1':<12}  {'und, epoch 1':<12} | "
            f"{'gen, end':<12}  {'und, end':<12} | segment (gen, und)")
    lines = [head, "-" * len(head)]

    def cell(c):
        return f"{c['relative_error']:.3f} ({c['sign_agreement']:.2f})"

    for run, table in summary["table"].items():
        for k in summary["ks"]:
            t = table[k]
            lines.append(f"{run:<17} {k:>5} {t['interval']:>10.1f} | {cell(t['epoch1']['gen'])}  "
                         f"{cell(t['epoch1']['und'])} | {cell(t['end']['gen'])}  {cell(t['end']['und'])} | "
                         f"{t['segment']['gen']:.3f}  {t['segment']['und']:.3f}")
    return "\n".join(lines)
