"""CLO, written once for every scale: self-judged data (Algorithm 1), generation-only training
(SFT or DPO), curriculum replay over the discard pool (Algorithm 2), evaluation against an
external judge.

The loop talks to a model only through :class:`dynamics.protocol.UnifiedModel`, so the simulator,
the toy transformer and Janus-Pro run through the same code. State is explicit
(:class:`CLOData`); every epoch is checkpointed, so an interrupted run resumes to the same records.

Example (a two-prompt, two-token world whose model is a table of logits)::

    >>> import torch
    >>> from dynamics.clo import CLOConfig, run_clo
    >>> from dynamics.testing import TableModel
    >>> model = TableModel.random(prompts=4, tokens=6, seed=0)
    >>> cfg = CLOConfig(candidates=4, epochs=2, lr=0.5, seed=0, eval_candidates=4, progress=False)
    >>> result = run_clo(model, cfg, external=model.oracle)
    >>> [m["epoch"] for m in result.metrics]
    [0, 1, 2]
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from dynamics import losses as _losses
from dynamics import metrics as _metrics
from dynamics.full import distributed as _par
from dynamics.judges import near_misses, parse_judge
from dynamics.protocol import ExternalJudge, TrainBatch, UnifiedModel
from dynamics.records import RunDir, to_jsonable, versions
from dynamics.report import progress as progress_bar

__all__ = [
    "CLOConfig",
    "CLOData",
    "CLOResult",
    "EmptyTrainingSetError",
    "NonFiniteLossError",
    "StepHook",
    "build_data",
    "evaluate",
    "parse_curriculum",
    "replay",
    "run_clo",
    "train_batch",
]

log = logging.getLogger(__name__)

LOSSES = ("sft", "dpo")
OPTIMIZERS = ("sgd", "adam")
DPO_VARIANTS = _losses.DPO_VARIANTS


class NonFiniteLossError(RuntimeError):
    """The training loss or the parameters after a step became NaN or infinite (divergence); the run
    stops and the last good checkpoint is kept."""


class EmptyTrainingSetError(RuntimeError):
    """The judge accepted no candidate (or, for DPO, no prompt has both an accepted and a rejected one)."""


@dataclass
class CLOConfig:
    """Every setting of a CLO run. Defaults follow the paper where it gives one; the rest are ours.

    Training is plain SGD by default: the setting of the theory (with Adam the kernel is not JJ^T).
    """

    candidates: int = 8  # N images per prompt (paper: 10)
    threshold: float = 0.5  # accept when the judge's score (P(yes) for the self judge) >= threshold
    judge: str = "self"  # self | oracle | all | noisy:<p> | corrupt:<p> | lookalike:<p> | pr:<prec>,<rec> | weak
    loss: str = "sft"  # sft | dpo
    beta: float = 0.1  # DPO temperature
    dpo_variant: str = "sigmoid"  # sigmoid | ipo | hinge | robust | conservative
    nll_weight: float = 0.0  # weight of the per-token NLL term on the chosen sample (DPO)
    epochs: int = 20
    lr: float = 0.05
    optimizer: str = "sgd"  # sgd | adam
    weight_decay: float = 0.0
    batch_size: int = 16  # prompts per training step (every accepted candidate of each)
    grad_clip: float = 0.0  # 0 = off (global norm; only with one replica)
    curriculum: str = "off"  # off | epochs:<e1,e2,..> | adaptive[:<level>]
    adaptive_probe: int = 32  # discard-pool prompts probed per epoch by the adaptive trigger
    eval_candidates: int = 4  # samples per evaluation prompt
    eval_every: int = 1  # evaluate every k-th epoch (always before training and after the last epoch)
    chunk_size: int = 64  # prompts per sampling / judging call
    audit: bool = True  # also judge the training candidates externally (precision of the SFT set)
    seed: int = 0
    progress: bool = True

    def validate(self) -> None:
        """Raise ValueError naming the field and value of the first bad setting."""

        def bad(name, why):
            raise ValueError(f"config field {name}={getattr(self, name)!r}: {why}")

        if not isinstance(self.candidates, int) or self.candidates < 1:
            bad("candidates", "needs at least 1 candidate per prompt")
        if not 0.0 <= self.threshold <= 1.0:
            bad("threshold", "must lie in [0, 1]")
        parse_judge(self.judge)
        if self.loss not in LOSSES:
            bad("loss", f"expected one of {LOSSES}")
        if self.loss == "dpo" and self.candidates < 2:
            bad("candidates", "DPO needs at least 2 candidates per prompt to form a pair")
        if self.dpo_variant not in DPO_VARIANTS:
            bad("dpo_variant", f"expected one of {DPO_VARIANTS}")
        if not self.beta > 0:
            bad("beta", "must be positive")
        if self.nll_weight < 0:
            bad("nll_weight", "must be >= 0")
        if self.epochs < 0:
            bad("epochs", "must be >= 0")
        if not (self.lr >= 0 and math.isfinite(self.lr)):
            bad("lr", "must be a finite number >= 0")
        if self.optimizer not in OPTIMIZERS:
            bad("optimizer", f"expected one of {OPTIMIZERS}")
        if self.batch_size < 1:
            bad("batch_size", "must be >= 1")
        if self.eval_candidates < 1:
            bad("eval_candidates", "must be >= 1")
        if not isinstance(self.eval_every, int) or self.eval_every < 1:
            bad("eval_every", "must be an integer >= 1")
        if self.chunk_size < 1:
            bad("chunk_size", "must be >= 1")
        if self.grad_clip < 0:
            bad("grad_clip", "must be >= 0")
        parse_curriculum(self.curriculum, self.epochs)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_curriculum(spec: str, epochs: int) -> tuple[str, tuple[int, ...], float]:
    """``off`` | ``epochs:e1,e2`` | ``adaptive[:level]`` -> (mode, replay epochs, adaptive level).

    >>> parse_curriculum("epochs:10", 20)
    ('epochs', (10,), 0.0)
    >>> parse_curriculum("adaptive", 20)
    ('adaptive', (), 0.25)
    >>> parse_curriculum("epochs:30", 20)
    Traceback (most recent call last):
    ...
    ValueError: curriculum 'epochs:30': replay epoch 30 is outside 1..20
    """
    mode, _, arg = spec.partition(":")
    if mode == "off" and not arg:
        return "off", (), 0.0
    if mode == "epochs":
        try:
            eps = tuple(sorted({int(e) for e in arg.split(",") if e.strip()}))
        except ValueError:
            raise ValueError(f"curriculum {spec!r}: replay epochs must be integers, e.g. epochs:10") from None
        if not eps:
            raise ValueError(f"curriculum {spec!r}: name at least one replay epoch, e.g. epochs:10")
        for e in eps:
            if not 1 <= e <= max(epochs, 1):
                raise ValueError(f"curriculum {spec!r}: replay epoch {e} is outside 1..{epochs}")
        return "epochs", eps, 0.0
    if mode == "adaptive":
        level = 0.25
        if arg:
            try:
                level = float(arg)
            except ValueError:
                raise ValueError(f"curriculum {spec!r}: level {arg!r} is not a number") from None
            if not 0.0 < level <= 1.0:
                raise ValueError(f"curriculum {spec!r}: level {level} must lie in (0, 1]")
        return "adaptive", (), level
    raise ValueError(f"unknown curriculum {spec!r}; expected off, epochs:<e1,e2,..> or adaptive[:<level>]")


class StepHook(Protocol):
    """Observes training steps (e.g. theory tracking). ``after_step`` returns records for
    ``theory.jsonl``; the loop adds ``epoch`` and ``step`` to each."""

    def before_step(self, model: UnifiedModel, batch: TrainBatch, lr: float) -> None: ...

    def after_step(self, model: UnifiedModel, batch: TrainBatch, lr: float) -> list[dict]: ...


@dataclass
class CLOData:
    """The data state of a run: candidates of every training prompt and the judge's verdicts.

    Shapes: ``prompt_ids`` (P,), ``images`` (R, P, N, M), ``p_yes`` and ``score`` (R, P, N) (the
    model's own P(yes) when judged; the data judge's score), ``accepted`` (R, P, N): the SFT set,
    ``pool`` (R, P): the discard pool (no candidate accepted). DPO: ``pair`` (R, P) whether the prompt
    has a pair, ``chosen``/``rejected`` (R, P) candidate indices, ``ref_chosen``/``ref_rejected``
    (R, P) reference log-probs (the model at the time the pair was built). ``replayed`` (R, P): the
    prompts moved out of the pool by curriculum replay.
    """

    prompt_ids: torch.Tensor
    images: torch.Tensor
    p_yes: torch.Tensor
    score: torch.Tensor
    accepted: torch.Tensor
    pool: torch.Tensor
    replayed: torch.Tensor
    pair: torch.Tensor | None = None
    chosen: torch.Tensor | None = None
    rejected: torch.Tensor | None = None
    ref_chosen: torch.Tensor | None = None
    ref_rejected: torch.Tensor | None = None
    external_yes: torch.Tensor | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    def sft_size(self) -> torch.Tensor:
        return self.accepted.sum((1, 2))

    def pair_count(self) -> torch.Tensor:
        return self.pair.sum(1) if self.pair is not None else torch.zeros(self.accepted.shape[0], dtype=torch.long)


@dataclass
class EvalSet:
    """The fixed evaluation reference: the pre-trained model's samples and their verdicts."""

    prompt_ids: torch.Tensor
    images: torch.Tensor
    pre_yes: torch.Tensor
    external_yes: torch.Tensor | None


@dataclass
class CLOResult:
    metrics: list[dict]
    data: CLOData
    eval_set: EvalSet
    theory: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# distributed helpers: prompts sharded across ranks for sampling and judging, results gathered


def _dist():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _map_prompts(fn: Callable[[torch.Tensor, list[int], int], dict], ids: torch.Tensor, chunk: int,
                 seeds: list[int], desc: str, progress: bool) -> dict[str, torch.Tensor]:
    """Apply ``fn(chunk_ids, chunk_seeds, start)`` over prompt chunks (sharded across ranks) and
    concatenate the results along the prompt axis (dim 1). Chunk seeds (one per replica) depend only
    on the replica's seed and the chunk's position, so results depend neither on the number of ranks
    nor on how many replicas run side by side."""
    rank, world = _dist()
    starts = list(range(0, len(ids), chunk))
    mine = starts[rank::world]
    parts: dict[int, dict] = {}
    for s in progress_bar(mine, desc=desc, enabled=progress and rank == 0, leave=False):
        parts[s] = {k: v.cpu() for k, v in fn(ids[s : s + chunk], [_derive(x, s) for x in seeds], s).items()}
    if world > 1:
        gathered: list = [None] * world
        torch.distributed.all_gather_object(gathered, parts)
        parts = {k: v for g in gathered for k, v in g.items()}
    keys = parts[starts[0]].keys()
    return {k: torch.cat([parts[s][k] for s in starts], dim=1) for k in keys}


def _seed_arg(seeds: list[int]):
    """What ``model.sample`` takes: an int for one replica, one seed per replica otherwise."""
    return seeds[0] if len(seeds) == 1 else list(seeds)


def _generators(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def replica_seeds(cfg: CLOConfig, replicas: int, *tags: int) -> list[int]:
    """Seeds of replica r = derived from ``cfg.seed + r`` and ``tags``: replica r of a vectorised run
    sees exactly the randomness of a one-replica run with seed ``cfg.seed + r``."""
    return [_derive(cfg.seed + r, *tags) for r in range(replicas)]


def _derive(seed: int, *tags: int) -> int:
    """A seed derived from the run seed and integer tags (phase, epoch), stable across runs."""
    digest = hashlib.sha256(repr((int(seed),) + tuple(int(t) for t in tags)).encode()).hexdigest()
    return int(digest[:15], 16)


# ---------------------------------------------------------------------------------------------
# Algorithm 1: self-judged data


def build_data(model: UnifiedModel, cfg: CLOConfig, prompt_ids: torch.Tensor, *, external: ExternalJudge | None,
               seeds: list[int], candidates: dict | None = None, judge_model: UnifiedModel | None = None) -> CLOData:
    """Algorithm 1: N candidates per prompt, judged; the SFT set, the discard pool and DPO pairs.
    ``seeds``: one per replica. ``candidates``: the sampled candidates with the model's own and the
    external verdicts (:func:`sample_candidates` with the same model, settings and seeds), when they
    were drawn already: only the data judge's scoring is done here then. ``judge_model``: the judge
    slot of the ``weak`` judge (see :func:`run_clo`); its ``P(yes)`` is taken here, never cached with
    the candidates."""
    judge = parse_judge(cfg.judge)
    use_external = external is not None and (judge.needs_external or cfg.audit)
    if candidates is not None:  # copies: training and replay change the data state in place
        got = {k: v.clone() for k, v in candidates.items()}
    else:
        got = sample_candidates(model, cfg, prompt_ids, external=external, seeds=seeds, use_external=use_external)
    ext = got.get("external_yes") if use_external else None
    if use_external and ext is None:
        raise ValueError("build_data: the candidates given carry no external verdicts, and this judge needs them")
    # the data judge scores chunk by chunk with the chunk's own seeds (as sampling did), so a run is the
    # same whether or not its candidates were drawn before
    near = near_misses(external, prompt_ids, got["images"]) if judge.needs_near_miss else None
    judge_yes = (_judge_model_yes(judge_model, cfg, prompt_ids, got["images"], seeds) if judge.needs_judge_model
                 else None)
    parts = []
    for start in range(0, len(prompt_ids), cfg.chunk_size):
        sl = slice(start, start + cfg.chunk_size)
        gens = _generators([_derive(x, start) + 1 for x in seeds])
        parts.append(judge.score(got["p_yes"][:, sl], None if ext is None else ext[:, sl], threshold=cfg.threshold,
                                 generator=gens, near_miss=None if near is None else near[:, sl],
                                 judge_yes=None if judge_yes is None else judge_yes[:, sl]))
    score = torch.cat(parts, dim=1)
    accepted = _metrics.accepts(score, cfg.threshold)
    data = CLOData(
        prompt_ids=prompt_ids.clone(),
        images=got["images"],
        p_yes=got["p_yes"],
        score=score,
        accepted=accepted,
        pool=~accepted.any(-1),
        replayed=torch.zeros_like(accepted[..., 0]),
        external_yes=ext,
    )
    if cfg.loss == "dpo":
        _make_pairs(model, cfg, data, torch.ones_like(data.pool))
    return data


def sample_candidates(model: UnifiedModel, cfg: CLOConfig, prompt_ids: torch.Tensor, *,
                      external: ExternalJudge | None, seeds: list[int], use_external: bool = True) -> dict:
    """The candidates of Algorithm 1 before any data judge: ``images`` ``(R, P, N, M)``, the model's
    own ``p_yes`` and (``use_external`` and an external judge) the ``external_yes`` verdicts."""

    def one(ids, s, _start):
        images = model.sample(ids, cfg.candidates, seed=_seed_arg(s))
        out = {"images": images, "p_yes": model.judge(ids, images).to(torch.float64)}
        if use_external and external is not None:
            out["external_yes"] = external(ids, images).bool()
        return out

    return _map_prompts(one, prompt_ids, cfg.chunk_size, seeds, "sampling + judging", cfg.progress)


def _judge_model_yes(judge_model, cfg: CLOConfig, prompt_ids: torch.Tensor, images: torch.Tensor,
                     seeds: list[int]) -> torch.Tensor:
    """The judge model's ``P(yes)`` ``(R, P, N)`` (float64) on the candidates ``images``: the data judge
    ``weak``, chunk by chunk (sharded across ranks) like sampling, without gradients."""
    if judge_model is None:
        raise ValueError(f"judge {cfg.judge!r} needs a judge model (judge_model=...), and none was given")
    device = _device(judge_model)

    def one(ids, _s, start):
        with torch.no_grad():
            yes = judge_model.judge(ids, images[:, start : start + len(ids)].to(device))
        return {"yes": yes.to(torch.float64)}

    return _map_prompts(one, prompt_ids, cfg.chunk_size, seeds, "judging (judge model)", cfg.progress)["yes"]


def _make_pairs(model, cfg, data: CLOData, rows: torch.Tensor) -> None:
    """(Re)build DPO pairs for the prompts where ``rows`` (R, P) is set: the most and the least
    yes-like candidate (by the judge's score) of a prompt with both an accepted and a rejected one;
    reference log-probs from the current model (computed once per data round)."""
    acc = data.accepted
    score = data.score
    chosen = torch.where(acc, score, torch.full_like(score, -1.0)).argmax(-1)
    rejected = torch.where(~acc, score, torch.full_like(score, 2.0)).argmin(-1)
    pair = acc.any(-1) & (~acc).any(-1)
    if data.pair is None:
        data.pair, data.chosen, data.rejected = pair & rows, chosen, rejected
        data.ref_chosen = torch.zeros(pair.shape, dtype=torch.float64)
        data.ref_rejected = torch.zeros(pair.shape, dtype=torch.float64)
    else:
        data.pair = torch.where(rows, pair, data.pair)
        data.chosen = torch.where(rows, chosen, data.chosen)
        data.rejected = torch.where(rows, rejected, data.rejected)
    cols = rows.any(0).nonzero().flatten()
    if len(cols) == 0:
        return
    device = _device(model)
    for s in range(0, len(cols), cfg.chunk_size):
        c = cols[s : s + cfg.chunk_size]
        with torch.no_grad():
            lc = model.image_logprob(data.prompt_ids[c], _candidate(data, data.chosen, c).to(device))[..., 0]
            lr = model.image_logprob(data.prompt_ids[c], _candidate(data, data.rejected, c).to(device))[..., 0]
        sel = rows[:, c]
        data.ref_chosen[:, c] = torch.where(sel, lc.double().cpu(), data.ref_chosen[:, c])
        data.ref_rejected[:, c] = torch.where(sel, lr.double().cpu(), data.ref_rejected[:, c])


def _candidate(data: CLOData, index: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """The candidate ``index[r, p]`` of each replica r and prompt column p in ``cols``: (R, b, 1, M)."""
    R, _, _, M = data.images.shape
    return data.images[:, cols].gather(2, index[:, cols][..., None, None].expand(R, len(cols), 1, M))


def _device(model) -> torch.device:
    for p in model.generation_parameters():
        return p.device
    return torch.device("cpu")


# ---------------------------------------------------------------------------------------------
# Algorithm 2: curriculum replay


def replay(model: UnifiedModel, cfg: CLOConfig, data: CLOData, *, external, seeds: list[int],
           judge_model: UnifiedModel | None = None) -> dict:
    """Regenerate and re-judge the discard pool with the current model (judged by the data judge:
    ``judge_model`` for ``weak``); move accepted candidates into the training set and their prompts out
    of the pool. Returns counts per replica."""
    cols = data.pool.any(0).nonzero().flatten()
    R = data.pool.shape[0]
    if len(cols) == 0:
        return {"replay_prompts": torch.zeros(R, dtype=torch.long), "replay_moved": torch.zeros(R, dtype=torch.long)}
    fresh = build_data(model, dataclasses.replace(cfg, loss="sft"), data.prompt_ids[cols], external=external,
                       seeds=seeds, judge_model=judge_model)
    in_pool = data.pool[:, cols]  # (R, c)
    moved = in_pool & fresh.accepted.any(-1)
    for name in ("images", "p_yes", "score", "accepted", "external_yes"):
        old, new = getattr(data, name), getattr(fresh, name)
        if old is None or new is None:
            continue
        m = moved.view(*moved.shape, *([1] * (old.dim() - 2)))
        old[:, cols] = torch.where(m, new, old[:, cols])
    data.pool[:, cols] = in_pool & ~moved
    data.replayed[:, cols] |= moved
    if cfg.loss == "dpo":
        rows = torch.zeros_like(data.pool)
        rows[:, cols] = moved
        _make_pairs(model, cfg, data, rows)
    return {"replay_prompts": in_pool.sum(1), "replay_moved": moved.sum(1)}


def _adaptive_trigger(model, cfg, data, level, *, external, seeds, judge_model=None) -> tuple[bool, float]:
    """Probe up to ``adaptive_probe`` discard-pool prompts with the current model: trigger replay
    when the share of probed prompts that now get at least one accepted candidate reaches ``level``."""
    cols = data.pool.any(0).nonzero().flatten()
    if len(cols) == 0:
        return False, 0.0
    g = torch.Generator().manual_seed(seeds[0])
    cols = cols[torch.randperm(len(cols), generator=g)[: cfg.adaptive_probe]]
    probe = build_data(model, dataclasses.replace(cfg, loss="sft", progress=False), data.prompt_ids[cols],
                       external=external, seeds=[x + 1 for x in seeds], judge_model=judge_model)
    in_pool = data.pool[:, cols]
    hit = (probe.accepted.any(-1) & in_pool).sum().item() / max(1, in_pool.sum().item())
    return hit >= level, hit


# ---------------------------------------------------------------------------------------------
# evaluation


def make_eval_set(model, cfg, prompt_ids, *, external, seeds: list[int]) -> EvalSet:
    """The pre-trained model's samples on the evaluation prompts, with its own and (where there is
    an external judge) the external verdicts."""

    def one(ids, s, _start):
        images = model.sample(ids, cfg.eval_candidates, seed=_seed_arg(s))
        out = {"images": images, "p_yes": model.judge(ids, images)}
        if external is not None:
            out["ext"] = external(ids, images).bool()
        return out

    got = _map_prompts(one, prompt_ids, cfg.chunk_size, seeds, "evaluation set", cfg.progress)
    pre_yes = _metrics.accepts(got["p_yes"], cfg.threshold)
    return EvalSet(prompt_ids.clone(), got["images"], pre_yes, got.get("ext"))


def evaluate(model: UnifiedModel, cfg: CLOConfig, eval_set: EvalSet, *, external, seeds: list[int],
             groups: dict[str, list[int]] | None = None) -> list[dict]:
    """All metrics of the current model, one dict per replica (overall and per group). Without an
    external judge only the intrinsic ones (non-unification, self-agreement with the pre-trained
    understanding) are computed."""

    def one(ids, s, _start):
        images = model.sample(ids, cfg.eval_candidates, seed=_seed_arg(s))
        out = {"own": _metrics.accepts(model.judge(ids, images), cfg.threshold)}
        if external is not None:
            out["ext"] = external(ids, images).bool()
        return out

    cur = _map_prompts(one, eval_set.prompt_ids, cfg.chunk_size, seeds, "evaluating", cfg.progress)

    def judge_pre(ids, s, start):
        p_yes = model.judge(ids, eval_set.images[:, start : start + len(ids)].to(_device(model)))
        return {"yes": _metrics.accepts(p_yes, cfg.threshold)}

    pre_cur = _map_prompts(judge_pre, eval_set.prompt_ids, cfg.chunk_size, seeds, "re-judging", cfg.progress)["yes"]

    def summary(cols):
        if external is None:
            return {"non_unification": _metrics.non_unification(cur["own"][:, cols]),
                    "und_agreement_with_pretrained": _metrics.accuracy(pre_cur[:, cols] == eval_set.pre_yes[:, cols])}
        return _metrics.summarise(
            cur_samples_own_yes=cur["own"][:, cols],
            cur_samples_external_yes=cur["ext"][:, cols],
            pre_samples_pre_yes=eval_set.pre_yes[:, cols],
            pre_samples_cur_yes=pre_cur[:, cols],
            pre_samples_external_yes=eval_set.external_yes[:, cols],
        )

    R = cur["own"].shape[0]
    allcols = torch.arange(len(eval_set.prompt_ids))
    overall = summary(allcols)
    out = [{k: v[r].item() for k, v in overall.items()} for r in range(R)]
    if groups:
        pos = {int(p): i for i, p in enumerate(eval_set.prompt_ids.tolist())}
        for name, members in groups.items():
            cols = torch.tensor([pos[m] for m in members if m in pos], dtype=torch.long)
            if len(cols) == 0:
                continue
            s = summary(cols)
            for r in range(R):
                out[r].setdefault("groups", {})[name] = {k: v[r].item() for k, v in s.items()}
    return out


# ---------------------------------------------------------------------------------------------
# training the generation objective


def _batches(data: CLOData, cfg: CLOConfig, seeds: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Minibatches of one epoch: replica r shuffles its own training prompts with its own seed and
    takes ``batch_size`` of them per step; step t trains every replica on its t-th batch at once
    (the union of their prompt columns, with a membership mask ``(R, b)``). Replica r thus follows
    exactly the schedule of a one-replica run with seed ``cfg.seed + r``."""
    has = data.accepted.any(-1) if cfg.loss == "sft" else data.pair  # (R, P)
    R = has.shape[0]
    rank, world = _dist()
    size = cfg.batch_size * world
    per_rep = []
    for r in range(R):
        cols = has[r].nonzero().flatten()
        cols = cols[torch.randperm(len(cols), generator=torch.Generator().manual_seed(seeds[r]))]
        per_rep.append([cols[s : s + size][rank::world] for s in range(0, len(cols), size)])
    out = []
    for t in range(max(len(b) for b in per_rep)):
        parts = [b[t] if t < len(b) else torch.zeros(0, dtype=torch.long) for b in per_rep]
        cols = torch.unique(torch.cat(parts))
        member = torch.stack([torch.isin(cols, p) for p in parts])
        out.append((cols, member))
    return out


def train_batch(data: CLOData, cfg: CLOConfig, cols: torch.Tensor, member: torch.Tensor, device) -> TrainBatch:
    """The training minibatch of prompt columns ``cols`` (``member``: which replicas train on each)."""
    ids = data.prompt_ids[cols]
    if cfg.loss == "sft":
        w = data.accepted[:, cols] & member[..., None]
        return TrainBatch("sft", ids, w.to(torch.float64).to(device), images=data.images[:, cols].to(device))
    w = (data.pair[:, cols] & member)[..., None]
    return TrainBatch("dpo", ids, w.to(torch.float64).to(device),
                      chosen=_candidate(data, data.chosen, cols).to(device),
                      rejected=_candidate(data, data.rejected, cols).to(device),
                      ref_chosen=data.ref_chosen[:, cols, None].to(device),
                      ref_rejected=data.ref_rejected[:, cols, None].to(device))


def batch_loss(model: UnifiedModel, cfg: CLOConfig, batch: TrainBatch) -> torch.Tensor:
    """The generation objective of one minibatch: the sum over replicas of each replica's mean loss
    (so every replica gets its own gradient, exactly as if trained alone)."""
    w = batch.weights
    count = w.sum((1, 2))  # (R,)
    _, world = _dist()
    if world > 1:  # each rank holds a share of the batch: normalise by the whole batch's count, so that the
        # ranks' averaged gradients equal one process's on the whole batch (a mean of share means would not)
        count = _par.global_sum(count) / world
    count = count.clamp_min(1.0 / world)
    if batch.kind == "sft":
        logp = model.image_logprob(batch.prompt_ids, batch.images)  # (R, B, K)
        per = -(w * logp.to(w.dtype)).sum((1, 2)) / count
        return per.sum()
    lc = model.image_logprob(batch.prompt_ids, batch.chosen).to(w.dtype)
    lr = model.image_logprob(batch.prompt_ids, batch.rejected).to(w.dtype)
    loss = _losses.preference_loss(lc, lr, batch.ref_chosen, batch.ref_rejected, beta=cfg.beta,
                                   variant=cfg.dpo_variant, nll_weight=cfg.nll_weight,
                                   nll_tokens=batch.chosen.shape[-1])  # per-token NLL of the chosen sample
    return ((w * loss).sum((1, 2)) / count).sum()


def _optimizer(params, cfg: CLOConfig):
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _train_module(model):
    """The module to put in train/eval mode (adapters wrap an nn.Module)."""
    return model if isinstance(model, torch.nn.Module) else getattr(model, "module", None)


# ---------------------------------------------------------------------------------------------
# the loop


def run_clo(
    model: UnifiedModel,
    cfg: CLOConfig,
    *,
    external: ExternalJudge | None = None,
    train_ids: Sequence[int] | torch.Tensor | None = None,
    eval_ids: Sequence[int] | torch.Tensor | None = None,
    out_dir: str | None = None,
    resume: bool = False,
    hooks: Iterable[StepHook] = (),
    run_info: dict | None = None,
    on_epoch: Callable[[int, list[dict]], None] | None = None,
    shared_start: dict | None = None,
    judge_model: UnifiedModel | None = None,
) -> CLOResult:
    """Run CLO: Algorithm 1 once with the pre-trained model, ``cfg.epochs`` epochs of
    generation-only training, curriculum replay (Algorithm 2) as configured, and an evaluation
    against ``external`` before training (epoch 0) and after every epoch.

    ``external`` may be None where no external judge exists (real models without one): then only
    the intrinsic metrics are reported, and the ``oracle``/``noisy`` judges are refused.
    ``train_ids``/``eval_ids`` default to every prompt of ``model.prompts``. With ``out_dir`` the run
    writes config.json, metrics.jsonl, theory.jsonl, data.safetensors and state.pt there, and
    ``resume=True`` continues from the last checkpoint (refusing a directory of another config).
    ``on_epoch(epoch, records)`` is called after each evaluation (e.g. a co-degradation alarm).

    ``shared_start``: a dict shared by runs from the *same* pre-trained weights (the arms of a study).
    What a run draws before training (the evaluation set, the candidates with the model's own and
    external verdicts, the epoch-0 evaluation) depends only on the weights, the seed and the sampling
    settings, not on the data judge, loss or recipe; the first run stores it there and the others
    reuse it, with the same records as if each had drawn it (tested).

    ``judge_model``: the judge slot, the data judge of ``cfg.judge="weak"`` (ignored by other judges): a
    unified model of the same world with the same replicas (e.g. a weaker checkpoint, less understanding
    pre-training) whose ``.judge(prompt_ids, images)`` ``P(yes)`` ``(R, B, K)`` judges the candidates of
    Algorithm 1, of curriculum replay and of the adaptive trigger. The model's own ``p_yes`` stays its
    own, and ``external`` stays the ground truth of the audit (``sft_precision``, ``sft_recall``) and of
    the evaluation. Its verdicts are not part of ``shared_start``.
    """
    cfg.validate()
    judge = parse_judge(cfg.judge)
    if judge.needs_external and external is None:
        raise ValueError(f"judge {cfg.judge!r} needs an external judge, and none was given")
    if judge.needs_judge_model:
        _check_judge_model(model, judge_model, cfg.judge)
    if cfg.grad_clip and model.replicas > 1:
        raise ValueError("grad_clip couples replicas through the global norm; use it with one replica")
    n_prompts = len(model.prompts)
    train_ids = _ids(train_ids, n_prompts, "train_ids")
    eval_ids = _ids(eval_ids, n_prompts, "eval_ids")
    mode, replay_epochs, level = parse_curriculum(cfg.curriculum, cfg.epochs)
    rank, world = _dist()
    writer = rank == 0
    R = model.replicas
    hooks = list(hooks)

    run = RunDir(out_dir) if out_dir is not None else None
    info = {"config": cfg.to_dict(), "run": run_info or {}, "versions": versions()}
    state = None
    if run is not None:
        if resume and run.file("config.json").exists():
            run.check_config(cfg.to_dict())
            state = run.load_state("state.pt")
            if writer:
                run.remove_partial_writes()
        elif not resume and run.file("state.pt").exists():
            raise FileExistsError(f"{run.path} holds a run already; pass resume=True (--resume) or a new directory")
        if writer and state is None:
            for name in ("metrics.jsonl", "theory.jsonl"):
                run.file(name).unlink(missing_ok=True)
            run.write_json("config.json", info)

    scope = list(model.generation_parameters())
    if not scope:
        raise ValueError("the model's generation_parameters() is empty: nothing to train")
    opt = _optimizer(scope, cfg)  # over a sharded module's registered (sharded) parameters
    _par.set_phase(_train_module(model), False)  # sampling and judging run on gathered parameters
    groups = _eval_groups(model, eval_ids)
    theory: list[dict] = []

    if state is None:
        start_key = _start_key(cfg, train_ids, eval_ids, external is not None)
        reuse = shared_start is not None and start_key in shared_start
        if reuse:  # build_data copies the candidates; the evaluation records are copied here
            eval_set, candidates, per0 = shared_start[start_key]
            per0 = copy.deepcopy(per0)
        else:
            eval_set = make_eval_set(model, cfg, eval_ids, external=external, seeds=replica_seeds(cfg, R, 1))
            candidates = (sample_candidates(model, cfg, train_ids, external=external, seeds=replica_seeds(cfg, R, 2))
                          if shared_start is not None else None)
            per0 = None
        data = build_data(model, cfg, train_ids, external=external, seeds=replica_seeds(cfg, R, 2),
                          candidates=candidates, judge_model=judge_model)
        _check_training_set(cfg, data)
        if per0 is None:
            per0 = _evaluate_now(model, cfg, eval_set, external, groups)
            if shared_start is not None:
                shared_start[start_key] = (eval_set, candidates, copy.deepcopy(per0))
        records = _epoch_records(model, cfg, eval_set, data, external, groups, epoch=0, extra={}, per=per0)
        metrics = list(records)
        if run is not None and writer:
            for r in records:
                run.append_jsonl("metrics.jsonl", r)
            run.save_tensors("data.safetensors", data.tensors())
        if run is not None:
            _save(run, model, opt, data, eval_set, epoch=0, hooks=hooks, writer=writer)
        if on_epoch:
            on_epoch(0, records)
        start = 1
    else:
        _check_world(run, state, world)
        if state.get("sharded"):  # FSDP: each rank reads its shards
            _par.load_sharded(run.file(state["sharded"]), _train_module(model), opt)
        else:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
        data = CLOData(**state["data"])
        eval_set = EvalSet(**state["eval_set"])
        for h, hs in zip(hooks, state.get("hooks", ()), strict=False):
            if hs is not None:
                h.load_state_dict(hs)
        start = state["epoch"] + 1
        if writer:  # write-ahead recovery: records past the checkpoint are derived again
            for name in ("metrics.jsonl", "theory.jsonl"):
                run.recover_jsonl(name)
            run.truncate_jsonl("metrics.jsonl", lambda r: r["epoch"] < start)
            run.truncate_jsonl("theory.jsonl", lambda r: r["epoch"] < start)
        metrics = run.read_jsonl("metrics.jsonl")
        _check_records(run, cfg, metrics, start, R)
        log.info("resuming %s at epoch %d", run.path, start)

    module = _train_module(model)
    _par.set_phase(module, True)  # sharded (FSDP) modules: the parameters the optimizer holds are the registered ones
    frozen = _freeze_outside(model, scope)
    try:
        for epoch in range(start, cfg.epochs + 1):
            if module is not None:
                module.train()
            _par.set_phase(module, True)
            losses_, norms = [], []
            batches = _batches(data, cfg, replica_seeds(cfg, R, 3, epoch))
            bar = progress_bar(batches, desc=f"epoch {epoch}", enabled=cfg.progress and rank == 0, leave=False)
            for step, (cols, member) in enumerate(bar):
                batch = train_batch(data, cfg, cols, member, _device(model))
                for h in hooks:
                    h.before_step(model, batch, cfg.lr)
                opt.zero_grad(set_to_none=True)
                loss = batch_loss(model, cfg, batch)
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(f"epoch {epoch} step {step}: loss is {loss.item()}; stopped, "
                                             + _last_good(run, epoch))
                loss.backward()
                if cfg.grad_clip:
                    norm = torch.nn.utils.clip_grad_norm_(scope, cfg.grad_clip)
                    norms.append(float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm))  # sharded
                else:
                    norms.append(float(torch.sqrt(_par.grad_sq_norm(scope))))
                opt.step()
                if not _finite(scope):
                    raise NonFiniteLossError(f"epoch {epoch} step {step}: the parameters are not finite after the "
                                             f"step (diverged: lr {cfg.lr}, weight decay {cfg.weight_decay}); "
                                             f"stopped, " + _last_good(run, epoch))
                losses_.append(float(_par.global_sum(loss.detach()) / world))  # the whole batch's loss
                for h in hooks:
                    for rec in h.after_step(model, batch, cfg.lr) or []:
                        rec = {"epoch": epoch, "step": step, **rec}
                        theory.append(rec)
                        if run is not None and writer:
                            run.append_jsonl("theory.jsonl", rec)
            if batches and max(norms) == 0.0:
                warnings.warn(f"epoch {epoch}: every gradient norm was zero: the generation objective does not "
                              f"reach the trainable parameters", RuntimeWarning, stacklevel=2)
            if module is not None:
                module.eval()
            _par.set_phase(module, False)  # gathered for replay and evaluation
            if batches:  # finite parameters can still overflow the outputs: the last batch read again, no RNG drawn
                with torch.no_grad():
                    after = batch_loss(model, cfg, batch)
                if not torch.isfinite(after):
                    raise NonFiniteLossError(f"epoch {epoch} step {len(batches) - 1}: the loss after the step is "
                                             f"{after.item()} (diverged: lr {cfg.lr}, weight decay {cfg.weight_decay}); "
                                             f"stopped, " + _last_good(run, epoch))
            extra = {"train_loss": sum(losses_) / max(1, len(losses_)), "grad_norm": max(norms, default=0.0),
                     "steps": len(batches)}
            rep = _maybe_replay(model, cfg, data, epoch, mode, replay_epochs, level, external, judge_model)
            extra.update(rep)
            evaluated = epoch % cfg.eval_every == 0 or epoch == cfg.epochs
            records = (_epoch_records(model, cfg, eval_set, data, external, groups, epoch=epoch, extra=extra)
                       if evaluated else [])  # evaluation draws its own seeds: skipping it leaves training as it is
            metrics.extend(records)
            if run is not None and writer:
                for r in records:
                    run.append_jsonl("metrics.jsonl", r)
                if rep.get("replay"):
                    run.save_tensors("data.safetensors", data.tensors())
            if run is not None:
                _save(run, model, opt, data, eval_set, epoch=epoch, hooks=hooks, writer=writer)
            if on_epoch and evaluated:
                on_epoch(epoch, records)
    finally:  # also on error: the caller gets the model back trainable and in eval mode
        for p in frozen:
            p.requires_grad_(True)
        if module is not None:
            module.eval()
    return CLOResult(metrics=metrics, data=data, eval_set=eval_set, theory=theory)


def _check_judge_model(model, judge_model, spec: str) -> None:
    """Refuse a missing judge model or one of another world (prompt count) or replica count."""
    if judge_model is None:
        raise ValueError(f"judge {spec!r} needs a judge model (run_clo(..., judge_model=...): a unified model of the "
                         f"same world whose .judge gives the data judge's P(yes)), and none was given")
    if not callable(getattr(judge_model, "judge", None)):
        raise TypeError(f"judge {spec!r}: the judge model ({type(judge_model).__name__}) has no judge(prompt_ids, "
                        f"images) method")
    for what, a, b in (("replicas", model.replicas, getattr(judge_model, "replicas", None)),
                       ("prompts", len(model.prompts), len(judge_model.prompts) if hasattr(judge_model, "prompts")
                        else None)):
        if b is not None and a != b:
            raise ValueError(f"judge {spec!r}: the judge model has {b} {what}, the model {a}; it must be a model "
                             f"of the same world with the same replicas")


def _ids(ids, n: int, name: str) -> torch.Tensor:
    out = torch.arange(n) if ids is None else torch.as_tensor(list(ids) if not torch.is_tensor(ids) else ids).long()
    if out.numel() == 0:
        raise ValueError(f"{name} is empty")
    if out.min() < 0 or out.max() >= n:
        raise ValueError(f"{name} holds prompt id {int(out.max() if out.max() >= n else out.min())} outside 0..{n - 1}")
    return out


def _start_key(cfg: CLOConfig, train_ids, eval_ids, has_external: bool) -> tuple:
    """What the draws before training depend on besides the weights (see ``shared_start``)."""
    return (cfg.seed, cfg.candidates, cfg.eval_candidates, cfg.chunk_size, cfg.threshold, has_external,
            tuple(train_ids.tolist()), tuple(eval_ids.tolist()))


def _eval_groups(model, eval_ids) -> dict[str, list[int]]:
    keep = set(eval_ids.tolist())
    return {k: [i for i in v if i in keep] for k, v in model.prompts.groups().items()}


def _check_training_set(cfg: CLOConfig, data: CLOData) -> None:
    if cfg.loss == "sft":
        empty = (data.sft_size() == 0).nonzero().flatten().tolist()
        if empty:
            raise EmptyTrainingSetError(
                f"judge {cfg.judge!r} at threshold {cfg.threshold} accepted none of the "
                f"{data.accepted[0].numel()} candidates (replica {empty}): Algorithm 1 gives an empty SFT set")
    else:
        empty = (data.pair_count() == 0).nonzero().flatten().tolist()
        if empty:
            raise EmptyTrainingSetError(
                f"judge {cfg.judge!r} at threshold {cfg.threshold}: no prompt has both an accepted and a "
                f"rejected candidate (replica {empty}), so there is no DPO pair")


def _evaluate_now(model, cfg, eval_set, external, groups) -> list[dict]:
    """The evaluation of an epoch (its seeds are the same every epoch: common random numbers)."""
    return evaluate(model, cfg, eval_set, external=external, seeds=replica_seeds(cfg, len(eval_set.images), 4),
                    groups=groups)


def _epoch_records(model, cfg, eval_set, data, external, groups, *, epoch, extra, per=None) -> list[dict]:
    if per is None:
        per = _evaluate_now(model, cfg, eval_set, external, groups)
    R = len(per)
    if data.external_yes is not None:  # the share of the self-judged set the external judge accepts
        precision = _metrics.rate(data.external_yes, data.accepted)[0]
        recall = _metrics.rate(data.accepted, data.external_yes)[0]  # ... and of the aligned candidates it holds
    out = []
    for r in range(R):
        rec = {"epoch": epoch, "seed": cfg.seed + r if R > 1 else cfg.seed, "replica": r}
        rec.update(per[r])
        rec["sft_size"] = int(data.sft_size()[r])
        if data.external_yes is not None:
            rec["sft_precision"] = precision[r].item()
            rec["sft_recall"] = recall[r].item()
        rec["discard_size"] = int(data.pool[r].sum())
        rec["replayed_prompts"] = int(data.replayed[r].sum())
        if cfg.loss == "dpo":
            rec["dpo_pairs"] = int(data.pair_count()[r])
        for k, v in extra.items():
            rec[k] = v[r].item() if torch.is_tensor(v) and v.dim() == 1 else v
        out.append(to_jsonable(rec))
    return out


def _maybe_replay(model, cfg, data, epoch, mode, replay_epochs, level, external, judge_model=None) -> dict:
    if mode == "off":
        return {}
    trigger, probe = (epoch in replay_epochs), None
    if mode == "adaptive":
        trigger, probe = _adaptive_trigger(model, cfg, data, level, external=external,
                                           seeds=replica_seeds(cfg, model.replicas, 5, epoch), judge_model=judge_model)
    out: dict = {"replay": bool(trigger)}
    if probe is not None:
        out["replay_probe_rate"] = probe
    if trigger:
        out.update(replay(model, cfg, data, external=external, seeds=replica_seeds(cfg, model.replicas, 6, epoch),
                          judge_model=judge_model))
    return out


def _save(run: RunDir, model, opt, data: CLOData, eval_set: EvalSet, *, epoch: int, hooks=(),
          writer: bool = True) -> None:
    """The checkpoint: everything a resumed run needs, the step hooks' state (``state_dict()``) included.
    Called on every rank; the writer (rank 0) writes ``state.pt``. A sharded (FSDP) module's parameters
    and optimizer state go to ``state-<epoch>.dcp/`` (every rank its shards, written before ``state.pt``
    names it, so a kill leaves the previous checkpoint whole); older shard directories are removed after."""
    module = _train_module(model)
    sharded = _par.is_sharded(module)
    name = f"state-{epoch}.dcp" if sharded else None
    if sharded:
        _par.save_sharded(run.file(name), module, opt)
    if writer:
        run.save_state("state.pt", {
            "epoch": epoch,
            "model": None if sharded else model.state_dict(),
            "optimizer": None if sharded else opt.state_dict(),
            "sharded": name,
            "world_size": _dist()[1],
            "data": data.tensors(),
            "eval_set": dataclasses.asdict(eval_set),
            "hooks": [h.state_dict() if hasattr(h, "state_dict") else None for h in hooks],
        })
        if sharded:
            import shutil

            for old in run.path.glob("state-*.dcp"):
                if old.name != name:
                    shutil.rmtree(old, ignore_errors=True)
    if sharded:
        _par.set_phase(module, False)  # back to the inference layout the loop left it in


def _check_world(run: RunDir, state: dict, world: int) -> None:
    """Refuse to resume with another number of processes (the training batches are split over ranks,
    so the run would continue on another schedule)."""
    saved = state.get("world_size", 1)
    if saved != world:
        from dynamics.records import ConfigMismatchError

        raise ConfigMismatchError(f"{run.file('state.pt')} was written by a run of {saved} process(es), this one has "
                                  f"{world}: relaunch with --nproc_per_node {saved} to resume it")


def _finite(params) -> bool:
    """Whether every parameter is finite (a sharded parameter: its local shard, all ranks agreeing)."""
    ok = torch.tensor(True)
    for p in params:
        t = p.detach()
        t = t.to_local() if hasattr(t, "to_local") else t
        ok &= bool(t.isfinite().all())
    if any(hasattr(p, "to_local") for p in params):
        ok = _par.global_sum(ok.to(torch.int64)) == _dist()[1]  # every rank's shards finite
    return bool(ok)


def _last_good(run: RunDir | None, epoch: int) -> str:
    return f"the last good checkpoint (epoch {epoch - 1}) is kept" + (f" in {run.file('state.pt')}" if run else "")


def _check_records(run: RunDir, cfg: CLOConfig, metrics: list[dict], start: int, replicas: int) -> None:
    """Refuse to resume when ``metrics.jsonl`` lacks records the checkpoint follows (they cannot be
    derived again without the model of those epochs)."""
    want = [e for e in range(start) if e == 0 or e % cfg.eval_every == 0 or e == cfg.epochs]
    have = {e: 0 for e in want}
    for r in metrics:
        if r.get("epoch") in have:
            have[r["epoch"]] += 1
    short = [e for e, n in have.items() if n < replicas]
    if short:
        from dynamics.records import DamagedRunError

        raise DamagedRunError(f"{run.file('metrics.jsonl')} lacks the records of epoch(s) {short} that the checkpoint "
                              f"(epoch {start - 1}) follows; they cannot be derived again: start a new run with "
                              f"another --out")


def _freeze_outside(model, scope) -> list[torch.nn.Parameter]:
    """Freeze every parameter outside the generation scope for the run; return those frozen."""
    module = _train_module(model)
    if module is None:
        return []
    keep = {id(p) for p in scope}
    frozen = [p for p in module.parameters() if id(p) not in keep and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    return frozen
