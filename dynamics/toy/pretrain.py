"""Pre-training of the toy model, its checkpoint cache, and the check that it has the paper's gap.

The recipe (:class:`dynamics.toy.model.ToyConfig`) trains both branches from scratch on the world's
training prompts (held-out prompts never appear): generation on canonical scenes of a prompt,
understanding on yes/no questions about canonical scenes, hard negatives (scenes of a perturbed
prompt), random and cluttered scenes, each image carrying several questions (the first in the judge's
exact format, the others labelled by the exact detector). The budget is a number of steps, never
wall time: a busy machine must not silently get a different model.

After pre-training, understanding is stronger than generation (the paper's internal gap):
:func:`gap_report` measures it against the exact detector and :func:`check_gap` stops a run whose
model lacks it. The default recipe (1,200 steps) costs about 150 ms of one CPU core per step
(torch.set_num_threads(1) is best for a model this small); the checkpoint is cached, so only the
first run pays it.

Example (the tiny preset, a few steps, no cache)::

    >>> from dynamics.toy.model import ToyConfig
    >>> from dynamics.toy.pretrain import pretrain
    >>> model = pretrain(ToyConfig.preset("tiny"), steps=3, seed=0, cache_dir=None, progress=False)
    >>> model.pretrain_info["steps"], len(model.pretrain_info["losses"]) > 0
    (3, True)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from filelock import FileLock

from dynamics import metrics
from dynamics.report import progress as progress_bar
from dynamics.toy.model import ToyConfig, ToyModel
from dynamics.toy.world import CATEGORIES

__all__ = [
    "DataStream",
    "GapError",
    "cache_key",
    "check_gap",
    "gap_report",
    "load_checkpoint",
    "pretrain",
    "save_checkpoint",
]

_FORMAT = 1  # bump when the recipe's meaning changes, so old cached checkpoints are not reused


def cache_key(config: ToyConfig, steps: int, seed: int, perturbation: float = 0.0) -> str:
    """A hash of everything that determines the pre-trained weights.

    >>> cache_key(ToyConfig(), 10, 0) == cache_key(ToyConfig(), 10, 0) != cache_key(ToyConfig(), 10, 1)
    True
    >>> cache_key(ToyConfig(), 10, 0) != cache_key(ToyConfig(), 10, 0, perturbation=1e-6)
    True
    """
    blob = {"config": config.to_dict(), "steps": int(steps), "seed": int(seed), "format": _FORMAT}
    if perturbation:
        blob["perturbation"] = float(perturbation)
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def save_checkpoint(model: ToyModel, path_stem: str | os.PathLike, info: dict | None = None) -> tuple[str, str]:
    """Write ``{stem}.safetensors`` (weights) and ``{stem}.json`` (config and ``info``), atomically.

    >>> import tempfile, os
    >>> m = ToyModel(ToyConfig.preset("tiny"))
    >>> w, j = save_checkpoint(m, os.path.join(tempfile.mkdtemp(), "m"), {"steps": 0})
    >>> torch.equal(load_checkpoint(w).trunk.norm.weight, m.trunk.norm.weight)
    True
    """
    from safetensors.torch import save_file

    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    w, j = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    tmp_w, tmp_j = w.with_suffix(".safetensors.tmp"), j.with_suffix(".json.tmp")
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp_w))
    tmp_j.write_text(json.dumps({"config": model.config.to_dict(), **(info or {})}, indent=1))
    os.replace(tmp_w, w)  # weights first: a JSON file marks a complete checkpoint
    os.replace(tmp_j, j)
    return str(w), str(j)


def load_checkpoint(path: str | os.PathLike) -> ToyModel:
    """A :class:`ToyModel` from ``{stem}.safetensors`` or ``{stem}.json`` (both must exist).

    ``model.pretrain_info`` holds the JSON's fields other than ``config``.
    """
    from safetensors.torch import load_file

    stem = Path(path).with_suffix("")
    w, j = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    for f in (w, j):
        if not f.exists():
            raise FileNotFoundError(f"load_checkpoint: {f} is missing")
    meta = json.loads(j.read_text())
    if "config" not in meta:
        raise ValueError(f"load_checkpoint: {j} has no 'config' field")
    model = ToyModel(ToyConfig.from_dict(meta.pop("config")))
    model.load_state_dict(load_file(str(w)))
    model.pretrain_info = meta
    return model


def _long(rows) -> torch.Tensor:
    """An int64 tensor of (nested) lists, through NumPy: several times faster than ``torch.tensor``."""
    return torch.from_numpy(np.array(rows, dtype=np.int64))


class DataStream:
    """Pre-training batches: generation pairs and packed understanding questions, deterministic in
    ``seed``. Generated ``chunk`` steps at a time (the detector labels a chunk in one call).

    >>> from dynamics.toy.model import ToyModel, ToyConfig
    >>> m = ToyModel(ToyConfig.preset("tiny"))
    >>> batch = next(iter(DataStream(m, seed=0)))
    >>> batch["gen_prompts"].shape, batch["gen_images"].shape, batch["und_ids"].shape[0]
    (torch.Size([4]), torch.Size([4, 16]), 4)
    """

    def __init__(self, model: ToyModel, *, seed: int, chunk: int = 50) -> None:
        self.model, self.world, self.cfg = model, model.world, model.config
        self.rng = random.Random(int(seed))
        self.chunk = chunk
        ps = model.prompts
        train = [i for i, m in enumerate(ps.meta) if m["split"] == "train"]
        self.train = torch.tensor(train)
        self.train_list = train
        self.by_cat = {c: [i for i in train if ps.tags[i] == c] for c in CATEGORIES}
        self.by_cat = {c: v for c, v in self.by_cat.items() if v}
        self.cats = list(self.by_cat)
        self.col_of = col_of = {p: j for j, p in enumerate(train)}  # a train prompt's column in the label tables
        # question columns as NumPy arrays: the question draws index single rows of small tables
        self.cat_cols = {cat: np.array([col_of[p] for p in ids], dtype=np.int64) for cat, ids in self.by_cat.items()}
        self.all_cols = np.arange(len(train), dtype=np.int64)
        # Shapes each train prompt mentions: a "near miss" is an unsatisfied prompt whose shapes are present.
        self.shape_need = torch.zeros(len(train), self.world.n_shapes, dtype=torch.bool)
        for j, i in enumerate(train):
            for o in ps.meta[i]["spec"]["objects"]:
                self.shape_need[j, o["shape"]] = True
        v = model.vocab
        self.q_prefix = v.encode("does this image describe")
        self.q_words = [v.encode(t) for t in ps.texts]
        self.qmark = v.index["?"]

    def _prompt(self, how: str) -> int:
        if how == "prompt":
            return self.train_list[self.rng.randrange(len(self.train_list))]
        return self.rng.choice(self.by_cat[self.rng.choice(self.cats)])

    def _und_scene(self, p: int) -> list[int]:
        c, w, r = self.cfg, self.world, self.rng.random()
        spec = self.model.prompts.meta[p]["spec"]
        if r < c.clutter_frac:
            lo = w.config.max_objects + 1
            return w.random_scene(self.rng, self.rng.randint(lo, min(w.cells, lo + 4)))
        r = (r - c.clutter_frac) / max(1e-9, 1 - c.clutter_frac)
        if r < 0.4:
            return w.canonical_scene(spec, self.rng)
        if r < 0.8:
            return w.canonical_scene(w.perturb(spec, self.rng), self.rng)
        return w.random_scene(self.rng, self.rng.randint(1, w.config.max_objects))

    def _chunk(self) -> list[dict]:
        c, w, rng, v = self.cfg, self.world, self.rng, self.model.vocab
        n_gen, n_und = c.gen_batch * self.chunk, c.und_batch * self.chunk
        # Generation targets (a share gen_noise of them the scene of a hard negative).
        gp = [self._prompt(c.prompt_sampling) for _ in range(n_gen)]
        gx = []
        for p in gp:
            spec = self.model.prompts.meta[p]["spec"]
            if c.gen_noise and rng.random() < c.gen_noise:
                spec = w.perturb(spec, rng)
            gx.append(w.canonical_scene(spec, rng))
        # Understanding images, labelled against every train prompt at once.
        up = [self._prompt(c.question_sampling) for _ in range(n_und)]
        ux = _long([self._und_scene(p) for p in up])
        sat = w.satisfies_all(ux)[:, self.train]  # (S, P_train)
        present = torch.zeros(n_und, w.n_shapes, dtype=torch.bool)
        shapes = torch.as_tensor(w.code_shape)[ux]  # (S, M), -1 for empty
        for s in range(w.n_shapes):
            present[:, s] = (shapes == s).any(1)
        near = ~sat & ~(self.shape_need.unsqueeze(0) & ~present.unsqueeze(1)).any(-1)
        # the per-question draws read single rows of small tables: NumPy, because indexing a tiny torch
        # tensor costs microseconds and this loop runs thousands of times a chunk
        sat_np, near_np, scenes = sat.numpy(), near.numpy(), ux.tolist()
        seqs, cells, qpos, labels = [], [], [], []
        for s in range(n_und):
            qs = [up[s]]
            for _ in range(c.questions - 1):
                # A yes, a near miss (the prompt's shapes are there) or any no, from a category
                # drawn uniformly (question_sampling "category") or from all train prompts.
                cols = self.cat_cols[rng.choice(self.cats)] if c.question_sampling == "category" else self.all_cols
                ys, nm = sat_np[s, cols], near_np[s, cols]
                ns = ~ys
                pool = ys if rng.random() < 0.5 and ys.any() else nm if rng.random() < 0.5 and nm.any() else ns
                if not pool.any():
                    pool = ys
                idx = cols[pool].tolist()
                qs.append(self.train_list[rng.choice(idx)])
            ids = [v.bos, v.boi] + [v.image_offset + k for k in scenes[s]] + [v.eoi]
            cell = [-1, -1] + list(range(w.cells)) + [-1]
            pos, lab = [], []
            for j, q in enumerate(qs):
                ids += (self.q_prefix if j == 0 or not c.compact_questions else []) + self.q_words[q] + [self.qmark]
                pos.append(len(ids) - 1)
                yes = bool(sat_np[s, self.col_of[q]])
                lab.append(0 if yes else 1)
                ids.append(v.yes if yes else v.no)
            cell += [-1] * (len(ids) - len(cell))
            seqs.append(ids)
            cells.append(cell)
            qpos.append(pos)
            labels.append(lab)
        out = []
        for k in range(self.chunk):
            gs, us = slice(k * c.gen_batch, (k + 1) * c.gen_batch), slice(k * c.und_batch, (k + 1) * c.und_batch)
            S = seqs[us]
            L = max(len(x) for x in S)
            pad = [L - len(x) for x in S]
            out.append({
                "gen_prompts": _long(gp[gs]),
                "gen_images": _long(gx[gs]),
                "und_ids": _long([[v.pad] * d + x for d, x in zip(pad, S)]),
                "und_cells": _long([[-1] * d + x for d, x in zip(pad, cells[us])]),
                "und_rows": _long([i for i, ps in enumerate(qpos[us]) for _ in ps]),
                "und_cols": _long([d + q for d, ps in zip(pad, qpos[us]) for q in ps]),
                "und_labels": _long([y for ls in labels[us] for y in ls]),
            })
        return out

    def __iter__(self):
        while True:
            yield from self._chunk()


def _losses(model: ToyModel, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean generation NLL per image token, mean understanding cross-entropy per question."""
    gen = -model._gen_token_logprobs(batch["gen_prompts"], batch["gen_images"]).mean()
    ids = batch["und_ids"]
    mask = ids != model.vocab.pad
    h = model._run(model._embed(ids, batch["und_cells"], "und"), mask, model._positions(mask)).last_hidden_state
    logits = model._yes_no_logits(h[batch["und_rows"], batch["und_cols"]])
    und = F.cross_entropy(logits, batch["und_labels"])
    return gen, und


def pretrain(config: ToyConfig | None = None, *, steps: int | None = None, seed: int = 0,
             cache_dir: str | os.PathLike | None = None, progress: bool = True,
             perturbation: float = 0.0) -> ToyModel:
    """Pre-train a :class:`ToyModel` for ``steps`` steps (default ``config.steps``) from ``seed``.
    ``perturbation > 0`` moves the initial weights by that relative amount first
    (:func:`dynamics.study.perturb`): a pre-training whose float rounding differs from the plain
    one's, as on another CPU (1,200 steps of Adam carry a 1e-6 difference to a different model).

    With ``cache_dir`` the checkpoint is stored as ``toy-<hash>.safetensors`` + ``.json`` (the hash of
    config, steps and seed: :func:`cache_key`) and reused by later calls. ``model.pretrain_info``
    records steps, seed, wall time, the loss curve and whether the cache was hit. Concurrent calls
    for the same checkpoint pre-train once (a file lock beside it); the others load the result.
    """
    config = config or ToyConfig()
    steps = config.steps if steps is None else int(steps)
    if steps < 0:
        raise ValueError(f"pretrain: steps must be >= 0, got {steps}")
    if cache_dir is None:
        return _pretrain(config, steps, seed, None, progress, perturbation)
    stem = Path(cache_dir) / f"toy-{cache_key(config, steps, seed, perturbation)}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    # one process pre-trains, concurrent ones (parallel seeds, test workers) wait and load its checkpoint
    with FileLock(str(stem.with_suffix(".lock"))):
        if stem.with_suffix(".json").exists() and stem.with_suffix(".safetensors").exists():
            model = load_checkpoint(stem)
            model.pretrain_info["cache_hit"] = True
            model.pretrain_info["path"] = str(stem.with_suffix(".safetensors"))
            return model
        return _pretrain(config, steps, seed, stem, progress, perturbation)


def _pretrain(config: ToyConfig, steps: int, seed: int, stem: Path | None, progress: bool,
              perturbation: float = 0.0) -> ToyModel:
    t0 = time.perf_counter()
    model = ToyModel(config, seed=seed)
    if perturbation:
        from dynamics.study import perturb

        perturb(model, rel=perturbation, seed=seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    def lr_at(step: int) -> float:
        if step < config.warmup:
            return (step + 1) / config.warmup
        t = (step - config.warmup) / max(1, steps - config.warmup)
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    stream = iter(DataStream(model, seed=seed))
    curve, acc = [], {"gen": 0.0, "und": 0.0, "n": 0}
    bar = progress_bar(range(steps), desc="pre-training toy model", enabled=progress, unit="step")
    for step in bar:
        batch = next(stream)
        gen, und = _losses(model, batch)
        loss = gen + und
        if not torch.isfinite(loss):
            raise FloatingPointError(f"pretrain: non-finite loss at step {step} (gen {gen.item()}, und {und.item()})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        opt.step()
        sched.step()
        acc["gen"] += gen.item()
        acc["und"] += und.item()
        acc["n"] += 1
        if acc["n"] == 50 or step == steps - 1:
            rec = {"step": step + 1, "gen_nll": acc["gen"] / acc["n"], "und_ce": acc["und"] / acc["n"]}
            curve.append(rec)
            bar.set_postfix(gen=f"{rec['gen_nll']:.3f}", und=f"{rec['und_ce']:.3f}")
            acc = {"gen": 0.0, "und": 0.0, "n": 0}
    model.eval()
    info = {"steps": steps, "seed": int(seed), "wall_s": time.perf_counter() - t0, "losses": curve,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "cache_hit": False,
            "perturbation": float(perturbation)}
    if stem is not None:
        save_checkpoint(model, stem, info)
        info["path"] = str(stem.with_suffix(".safetensors"))
    model.pretrain_info = info
    return model


# ---------------------------------------------------------------------- the gap
class GapError(RuntimeError):
    """The pre-trained model lacks the internal gap (understanding no better than generation)."""


def _rates(own: torch.Tensor, ext: torch.Tensor) -> dict:
    """The gap's rates of own verdicts ``own`` against exact ones ``ext`` (both ``(1, ...)``), all
    from :mod:`dynamics.metrics` (NaN where a rate has no case to rest on)."""
    return {
        "n": own.numel(),
        "gen_acc": metrics.accuracy(ext).item(),
        "non": metrics.non_unification(own).item(),
        "und_acc": metrics.accuracy(own == ext).item(),
        "fp_rate": metrics.false_positive_rate(own, ext).item(),
        "fn_rate": metrics.false_negative_rate(own, ext).item(),
        "attribution": metrics.weak_generation_attribution(own, ext).item(),
        "n_rejected": int((~own).sum()),
    }


@torch.no_grad()
def gap_report(model: ToyModel, prompt_ids=None, *, n: int = 8, seed: int = 0, threshold: float = 0.5,
               probe_seed: int = 1) -> dict:
    """The internal gap against the exact detector, overall and per category (``"tag:<category>"``).

    On the model's own samples (``n`` per prompt): ``gen_acc`` (exact pass rate), ``non`` (share the
    model's own understanding rejects), ``und_acc`` (agreement of own verdict and exact detector),
    ``fp_rate``/``fn_rate`` of the own verdict, ``attribution`` (weak-generation attribution: share
    of self-rejected samples the detector also rejects). On a balanced probe set (a canonical scene
    and a hard negative per prompt): ``und_acc_balanced``. The own verdict is the CLO loop's: yes where
    ``P(yes) >= threshold`` (:func:`dynamics.metrics.accepts`); every rate is a :mod:`dynamics.metrics`
    function (NaN where it has no case, e.g. ``attribution`` when nothing is rejected).

    >>> m = ToyModel(ToyConfig.preset("tiny"))
    >>> r = gap_report(m, n=1)
    >>> sorted(r["all"])[:4], "tag:counting" in r
    (['attribution', 'fn_rate', 'fp_rate', 'gen_acc'], True)
    """
    ps = model.prompts
    ids = torch.arange(len(ps)) if prompt_ids is None else torch.as_tensor(prompt_ids).long()
    judge = model.world.external_judge()
    x = model.sample(ids, n, seed=seed)
    own = metrics.accepts(model.judge(ids, x), threshold)  # (1, B, n): the loop's rule, P(yes) >= threshold
    ext = judge(ids, x).bool()
    # Balanced probes: a canonical scene and a scene of a perturbed prompt for every prompt.
    rng = random.Random(probe_seed)
    w = model.world
    probes = torch.tensor([[w.canonical_scene(ps.meta[i]["spec"], rng),
                            w.canonical_scene(w.perturb(ps.meta[i]["spec"], rng), rng)] for i in ids.tolist()])
    probes = probes.unsqueeze(0)
    pown = metrics.accepts(model.judge(ids, probes), threshold)
    pext = judge(ids, probes).bool()
    groups = {"all": list(range(len(ids)))}
    for j, i in enumerate(ids.tolist()):
        groups.setdefault(f"tag:{ps.tags[i]}", []).append(j)
        groups.setdefault(f"split:{ps.meta[i]['split']}", []).append(j)
    out = {}
    for g, rows in groups.items():
        r = torch.tensor(rows)
        out[g] = {**_rates(own[:, r], ext[:, r]),
                  "und_acc_balanced": metrics.accuracy(pown[:, r] == pext[:, r]).item(), "prompts": len(rows)}
    return out


def check_gap(model: ToyModel, report: dict | None = None, *, min_attribution: float = 0.5,
              min_balanced: float = 0.6, **kwargs) -> dict:
    """Raise :class:`GapError` unless understanding beats generation; return the :func:`gap_report`.

    Understanding beats generation when its agreement with the exact detector on the model's own
    samples exceeds the generation accuracy, the weak-generation attribution exceeds
    ``min_attribution`` (the self-rejected samples are mostly truly wrong), and its accuracy on the
    balanced probes (a canonical scene and a hard negative per prompt) exceeds ``min_balanced``: an
    understanding that answers "no" to everything agrees with the detector on a generator that
    never succeeds, but is at chance on balanced probes. ``kwargs`` (``n``, ``seed``, ``threshold``)
    go to :func:`gap_report` when no ``report`` is given.

    >>> m = ToyModel(ToyConfig.preset("tiny"))          # untrained: no gap to speak of
    >>> try:
    ...     check_gap(m, n=1)
    ... except GapError as e:
    ...     print(str(e).split(":")[0])
    the pre-trained toy model lacks the internal gap
    """
    report = report or gap_report(model, **kwargs)
    a = report["all"]
    problems = []
    if not a["und_acc"] > a["gen_acc"]:
        problems.append(f"understanding accuracy {a['und_acc']:.3f} does not exceed generation accuracy "
                        f"{a['gen_acc']:.3f}")
    if not a["attribution"] > min_attribution:
        problems.append(f"weak-generation attribution {a['attribution']:.3f} is not above {min_attribution}")
    if not a["und_acc_balanced"] > min_balanced:
        problems.append(f"understanding accuracy on balanced probes {a['und_acc_balanced']:.3f} is not above "
                        f"{min_balanced}")
    if problems:
        info = getattr(model, "pretrain_info", {})
        raise GapError(
            "the pre-trained toy model lacks the internal gap: " + "; ".join(problems)
            + f" (pre-training steps: {info.get('steps', 'unknown')}). CLO needs understanding stronger "
            "than generation: pre-train longer (ToyConfig.steps), or widen the gap (larger und_batch / "
            "gen_batch, or gen_noise > 0)."
        )
    return report
