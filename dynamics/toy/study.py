"""Toy-world experiments: CLO arms read against their controls, the one-step first-order check,
full against Janus-like sharing.

Every arm of a seed starts from the *same* pre-trained model (restored between arms) with the same
CLO seed, so the arms see the same evaluation samples and the same training candidates and differ
only in which candidates their judge accepts (``self``, the unfiltered control ``all``, the exact
judge ``oracle``, a ``corrupt:<p>`` judge). Records are the loop's own (:func:`dynamics.clo.run_clo`),
with every per-group metric also flattened to ``<metric>@<group>`` (``gen_acc@tag:counting``) so that the helpers of
:mod:`dynamics.figures.sim` (:func:`~dynamics.figures.sim.change`,
:func:`~dynamics.figures.sim.paired_difference`) read them per category.

Example (the tiny preset: a few pre-training steps, one epoch; no gap check at this size)::

    >>> from dynamics.toy.study import ToySize, judge_study
    >>> size = ToySize.tiny()
    >>> arms = judge_study(size, ["all", "noisy:0.5"], check=False)
    >>> sorted(arms), sorted({r["epoch"] for r in arms["all"]})
    (['all', 'noisy:0.5'], [0, 1])
    >>> "gen_acc@tag:counting" in arms["all"][0]
    True
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from dynamics.clo import CLOConfig, _train_batch, build_data, replica_seeds, run_clo
from dynamics.kernels import first_order_probe
from dynamics.toy.model import ToyConfig, ToyModel
from dynamics.toy.world import CATEGORIES

__all__ = [
    "TOY_CLO",
    "ToySize",
    "category_table",
    "flatten_groups",
    "judge_study",
    "one_step_check",
    "one_step_summary",
    "pretrained_model",
    "run_arms",
    "slope",
]

# The toy's CLO recipe (the default of ``python experiments/full_clo.py``): one self-judged round,
# curriculum replay after two epochs; Adam as in the calibration run (``optimizer="sgd"`` is the
# theory's setting).
TOY_CLO = CLOConfig(candidates=8, epochs=4, lr=1e-4, optimizer="adam", batch_size=16, eval_candidates=8,
                    curriculum="epochs:2", chunk_size=512)


@dataclass(frozen=True)
class ToySize:
    """The size of a toy experiment: seeds, the model preset and its pre-training, the CLO recipe.

    ``overrides`` are :class:`~dynamics.toy.model.ToyConfig` fields (e.g. ``{"gen_noise": 0.2}``);
    ``cache_dir`` is the pre-trained checkpoint cache (None: pre-train every time).
    """

    seeds: tuple[int, ...] = (0, 1, 2)
    preset: str = "default"
    pretrain_steps: int | None = None
    overrides: dict = field(default_factory=dict)
    clo: CLOConfig = field(default_factory=lambda: dataclasses.replace(TOY_CLO, progress=False))
    cache_dir: str | None = "cache/toy"
    train_on: str = "all"

    @classmethod
    def tiny(cls, **kw) -> ToySize:
        """For doctests and smoke tests: the tiny preset, 2 seeds, one short epoch, no cache."""
        base = {"seeds": (0, 1), "preset": "tiny", "pretrain_steps": 5, "cache_dir": None,
                "clo": dataclasses.replace(TOY_CLO, epochs=1, candidates=2, eval_candidates=2, curriculum="off",
                                           progress=False)}
        base.update(kw)
        return cls(**base)

    def config(self, sharing: str = "full") -> ToyConfig:
        return ToyConfig.preset(self.preset, sharing=sharing, **self.overrides)


def pretrained_model(size: ToySize, seed: int, *, sharing: str = "full", understanding: str = "head",
                     check: bool = True, progress: bool = False):
    """The pre-trained toy model of ``seed`` (cached), in eval mode, its understanding read by the
    trained yes/no head (``"head"``) or through the Bayes link (``"bayes"``: a calibrated
    :class:`~dynamics.toy.bayes.BayesLinked`); with ``check`` stop unless it has the internal gap
    (:func:`dynamics.toy.pretrain.check_gap`; the report is kept as ``model.gap``)."""
    from dynamics.toy.pretrain import check_gap, pretrain

    if understanding not in ("head", "bayes"):
        raise ValueError(f"understanding must be 'head' or 'bayes', got {understanding!r}")
    model = pretrain(size.config(sharing), steps=size.pretrain_steps, seed=seed, cache_dir=size.cache_dir,
                     progress=progress)
    model.eval()
    if understanding == "bayes":
        from dynamics.toy.bayes import BayesLinked

        model = BayesLinked(model, seed=seed)
        model.calibrate(seed=seed)
    if check:
        model.gap = check_gap(model, seed=seed)
    return model


def flatten_groups(records: Sequence[dict]) -> list[dict]:
    """Copies of ``records`` with ``groups[tag][metric]`` also stored as ``"<metric>@<tag>"``.

    >>> flatten_groups([{"x": 1, "groups": {"counting": {"x": 2}}}])[0]["x@counting"]
    2
    """
    out = []
    for r in records:
        r = dict(r)
        for tag, vals in (r.get("groups") or {}).items():
            for k, v in vals.items():
                r[f"{k}@{tag}"] = v
        out.append(r)
    return out


def _train_ids(model: ToyModel, train_on: str):
    if train_on == "all":
        return None
    train, heldout = model.world.split_ids()
    return {"train": train, "heldout": heldout}[train_on]


def run_arms(model: ToyModel, cfg: CLOConfig, judges: Sequence[str], *, train_ids=None,
             labels: Sequence[str] | None = None) -> dict[str, list[dict]]:
    """One CLO run per judge from the current weights of ``model`` (restored after each, and at the
    end), judged exactly; ``{label: records}`` with the per-category metrics flattened."""
    state = copy.deepcopy(model.state_dict())
    external = model.world.external_judge()
    out = {}
    try:
        for label, judge in zip(labels or judges, judges):
            model.load_state_dict(state)
            res = run_clo(model, dataclasses.replace(cfg, judge=judge), external=external, train_ids=train_ids)
            out[label] = flatten_groups(res.metrics)
    finally:
        model.load_state_dict(state)
        model.eval()
    return out


def judge_study(size: ToySize, judges: Sequence[str], *, sharing: str = "full", understanding: str = "head",
                check: bool = True, clo_overrides: dict | None = None, progress: bool = False) -> dict[str, list[dict]]:
    """Every judge's CLO arm on every seed of ``size`` (one pre-trained model per seed, shared by its
    arms; ``clo_overrides`` are :class:`~dynamics.clo.CLOConfig` fields); ``{judge: records of all
    seeds}``."""
    torch.set_num_threads(1)  # measured fastest for a model this small; more threads only add overhead
    arms: dict[str, list[dict]] = {j: [] for j in judges}
    for s in size.seeds:
        model = pretrained_model(size, s, sharing=sharing, understanding=understanding, check=check,
                                 progress=progress)
        cfg = dataclasses.replace(size.clo, seed=s, **(clo_overrides or {}))
        got = run_arms(model, cfg, judges, train_ids=_train_ids(model, size.train_on))
        for j in judges:
            arms[j].extend(got[j])
    return arms


# ----------------------------------------------------------------------------------- one step


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log|y| against log x (the order of a residual in the step size).

    >>> round(slope([1e-3, 1e-2, 1e-1], [2e-6, 2e-4, 2e-2]), 6)
    2.0
    """
    lx = [math.log(x) for x in xs]
    ly = [math.log(abs(y)) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def one_step_check(model: ToyModel, *, lrs: Sequence[float] = (1e-3, 3e-3, 1e-2, 3e-2), batch_prompts: int = 16,
                   n_probes: int = 24, candidates: int = 8, seed: int = 0, judge: str = "self",
                   threshold: float = 0.5) -> list[dict]:
    """Measured against predicted one-step change of probe log-probabilities (finding 3).

    In float64 on a copy of ``model``: Algorithm 1 builds self-judged SFT data (``candidates`` per
    prompt), the first CLO minibatch of ``batch_prompts`` prompts gives the loss ``L``
    (:func:`dynamics.clo.batch_loss`), and one plain SGD step ``theta - lr * grad L`` over the
    generation parameters is taken. Probes are the model's own samples on other prompts:
    ``n_probes`` generation probes ``log pi(x | c)`` and ``n_probes`` understanding probes
    ``log P(yes | x, c)``, half of them false positives of the pre-trained understanding where there
    are enough. The prediction is ``lr * <grad log p(o), -grad L>`` from
    :func:`dynamics.kernels.first_order_probe`. Returns one row per (lr, branch, probe) with
    ``measured``, ``predicted`` and the probe's ``kind`` (``fp``, ``tp``, ``tn``, ``fn`` against the
    exact detector). ``threshold``: the judge's acceptance threshold.

    transformers' eager attention takes its softmax in float32 even in a float64 model, so the
    relative error has a floor of about 0.2 % at the smallest steps instead of falling as lr.
    """
    from dynamics.clo import batch_loss

    m = copy.deepcopy(model).double().eval()
    cfg = dataclasses.replace(TOY_CLO, candidates=candidates, judge=judge, batch_size=batch_prompts, optimizer="sgd",
                              seed=seed, progress=False, audit=False, threshold=threshold)
    n = len(m.prompts)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g)
    data = build_data(m, cfg, order, external=m.world.external_judge(), seeds=replica_seeds(cfg, 1, 2))
    has = data.accepted[0].any(-1).nonzero().flatten()
    if len(has) == 0:
        raise ValueError(f"judge {judge!r} accepted no candidate: no SFT batch for the one-step check")
    cols = has[:batch_prompts]
    batch = _train_batch(data, cfg, cols, torch.ones(1, len(cols), dtype=torch.bool), torch.device("cpu"))
    trained = set(data.prompt_ids[cols].tolist())

    # Probes: the model's own samples on prompts outside the batch, judged by both judges.
    others = torch.tensor([i for i in order.tolist() if i not in trained])
    x = m.sample(others, 4, seed=seed + 1)
    own = (m.judge(others, x)[0] >= threshold)
    ext = m.world.external_judge()(others, x)[0].bool()
    kind = torch.where(own, torch.where(ext, 1, 0), torch.where(ext, 3, 2))  # 0 fp, 1 tp, 2 tn, 3 fn
    names = ("fp", "tp", "tn", "fn")
    flat = [(int(others[i]), x[0, i, k], names[int(kind[i, k])]) for i in range(len(others)) for k in range(x.shape[2])]
    perm = torch.randperm(len(flat), generator=g).tolist()
    fps = [flat[i] for i in perm if flat[i][2] == "fp"][: n_probes // 2]
    rest = [flat[i] for i in perm if flat[i][2] != "fp"][: n_probes - len(fps)]
    probes = fps + rest

    params = m.generation_parameters()

    def logp():  # both branches in one vector: generation probes first, then understanding
        return torch.stack([m.probe_logprob(p, img, what) for what in ("gen", "yes") for p, img, _ in probes])

    pred1 = first_order_probe(logp, lambda: -batch_loss(m, cfg, batch), params, lr=1.0)
    with torch.no_grad():
        before = logp()
    m.zero_grad(set_to_none=True)
    grads = torch.autograd.grad(batch_loss(m, cfg, batch), params)
    saved = [p.detach().clone() for p in params]
    after = {}
    for lr in lrs:
        with torch.no_grad():
            for p, s0, gr in zip(params, saved, grads):
                p.copy_(s0 - lr * gr)
            after[lr] = logp()
            for p, s0 in zip(params, saved):
                p.copy_(s0)
    rows, n = [], len(probes)
    for b, branch in enumerate(("generation", "understanding")):
        for lr in lrs:
            for j, (pid, _img, k) in enumerate(probes):
                i = b * n + j
                rows.append({"lr": float(lr), "branch": branch, "probe": j, "prompt_id": pid, "kind": k,
                             "measured": float(after[lr][i] - before[i]), "predicted": float(lr * pred1[i])})
    return rows


def one_step_summary(rows: Sequence[dict]) -> dict:
    """Per branch: the relative error ``|measured - predicted| / |predicted|`` (median over probes)
    at each lr, the slope of the residual in lr, and the sign agreement at the smallest lr.

    >>> r = [{"lr": lr, "branch": "generation", "probe": 0, "measured": lr + lr ** 2, "predicted": lr}
    ...      for lr in (1e-3, 1e-2)]
    >>> s = one_step_summary(r)["generation"]
    >>> round(s["residual_slope"], 6), s["sign_agreement"]
    (2.0, 1.0)
    """
    out = {}
    for branch in sorted({r["branch"] for r in rows}):
        rs = [r for r in rows if r["branch"] == branch]
        lrs = sorted({r["lr"] for r in rs})
        rel, resid = {}, {}
        for lr in lrs:
            at = [r for r in rs if r["lr"] == lr]
            errs = sorted(abs(r["measured"] - r["predicted"]) / max(abs(r["predicted"]), 1e-300) for r in at)
            rel[lr] = errs[len(errs) // 2]
            resid[lr] = sum(abs(r["measured"] - r["predicted"]) for r in at) / len(at)
        small = [r for r in rs if r["lr"] == lrs[0]]
        out[branch] = {
            "median_relative_error": rel,
            "mean_abs_residual": resid,
            "residual_slope": slope(lrs, [resid[lr] for lr in lrs]) if len(lrs) > 1 else math.nan,
            "sign_agreement": sum((r["measured"] > 0) == (r["predicted"] > 0) for r in small) / len(small),
            "probes": len(small),
        }
    return out


def category_table(arms: dict[str, list[dict]], keys: Sequence[str] = ("gen_acc", "und_fp_rate", "non_unification",
                                                                      "win_rate"),
                   control: str | None = "all", categories: Sequence[str] = ("",) + tuple(CATEGORIES)) -> list[dict]:
    """Rows ``{judge, category, metric, before, after, change, vs_control}`` (each ``(mean, s.e., seeds)``
    across seeds; ``vs_control`` is the paired change minus the control arm's change). ``category ""``
    is the whole prompt set; ``win_rate`` has no "before" (it compares to the pre-trained model), its
    ``after`` is read at the last epoch with its denominator ``win_rate_n``."""
    from dynamics.figures.sim import change, paired_difference

    rows = []
    for judge, recs in arms.items():
        for cat in categories:
            for key in keys:
                k = f"{key}@tag:{cat}" if cat else key
                if not any(r.get(k) is not None for r in recs):
                    continue
                b, a, d = change(recs, k)
                row = {"judge": judge, "category": cat or "all", "metric": key, "before": b, "after": a, "change": d}
                if key == "win_rate":
                    n_key = f"win_rate_n@tag:{cat}" if cat else "win_rate_n"
                    row["n"] = change(recs, n_key)[1]
                if control and control in arms and judge != control:
                    row["vs_control"] = paired_difference(recs, arms[control], k)
                rows.append(row)
    return rows
