"""The simulator's world: compositional prompts, image tokens and a ground-truth alignment table.

Every image token is an attribute triple (object, colour, position); every prompt is a constraint on
some of those attributes, so prompts and tokens share features. Four task tags:

===========  ===============================  =====================================
tag          the prompt names                 aligned tokens
===========  ===============================  =====================================
``object``   an object                        every token with that object
``colour``   an object and its colour         every token with both
``position`` an object and its position       every token with both
``binding``  object, colour and position      the one token with all three
===========  ===============================  =====================================

Attribute values come in look-alike clusters (their feature vectors have cosine about
``lookalike``), so a misaligned token can look almost like an aligned one: a *distractor*. A prompt's
difficulty score is the share of distractors among the tokens it could be confused with
(``distractors / (distractors + aligned)``); the tiers ``easy``/``medium``/``hard`` are its tertiles.

Example::

    >>> from dynamics.sim.world import SimWorld
    >>> w = SimWorld(prompts=64, tokens=64, seed=0)
    >>> w.aligned.shape, bool(w.aligned.any(1).all())
    (torch.Size([64, 64]), True)
    >>> sorted(set(w.prompts.tags))
    ['binding', 'colour', 'object', 'position']
    >>> w.prompt_features.shape, w.token_features.shape
    (torch.Size([64, 24]), torch.Size([64, 24]))
    >>> import torch
    >>> w.oracle(torch.tensor([0, 1]), w.aligned_examples(torch.tensor([0, 1]))[None, :, None, None]).all().item()
    True
"""

from __future__ import annotations

import itertools
import math

import torch

from dynamics.protocol import PromptSet, check_images

__all__ = ["TAGS", "TIERS", "SimWorld", "grid_shape"]

TAGS = ("object", "colour", "position", "binding")
TIERS = ("easy", "medium", "hard")
# which attribute slots (object, colour, position) each tag names
_SLOTS = {"object": (0,), "colour": (0, 1), "position": (0, 2), "binding": (0, 1, 2)}
_NAMES = ("obj", "col", "pos")


def grid_shape(tokens: int) -> tuple[int, int, int]:
    """The smallest near-cubic attribute grid ``(objects, colours, positions)`` holding ``tokens`` triples.

    >>> grid_shape(64), grid_shape(30), grid_shape(1)
    ((4, 4, 4), (4, 3, 3), (1, 1, 1))
    """
    if tokens < 1:
        raise ValueError(f"grid_shape: tokens must be >= 1, got {tokens}")
    base = max(1, round(tokens ** (1 / 3)))
    dims = [base, base, base]
    while math.prod(dims) < tokens:
        dims[dims.index(min(dims))] += 1
    while True:  # shrink while it still fits (keeps the grid tight)
        shrunk = False
        for i in (2, 1, 0):
            trial = list(dims)
            trial[i] -= 1
            if trial[i] >= 1 and math.prod(trial) >= tokens:
                dims = trial
                shrunk = True
                break
        if not shrunk:
            break
    return tuple(sorted(dims, reverse=True))


class SimWorld:
    """A seeded compositional world of ``prompts`` prompts and ``tokens`` image tokens.

    Args:
        prompts: ``P``, the number of prompts (at most the number of distinct constraints, see
            :attr:`max_prompts`).
        tokens: ``V``, the number of image tokens (distinct attribute triples).
        seed: seeds every random choice.
        grid: ``(objects, colours, positions)``; default :func:`grid_shape` of ``tokens``.
        attr_dim: feature dimension per attribute slot (features are ``3 * attr_dim`` wide).
        lookalike: cosine between the feature vectors of two values of one look-alike cluster.
        cluster_size: mean values per look-alike cluster (each value joins a random cluster).
        token_noise: standard deviation of the per-token feature noise (relative to unit slots).
        task_mix: relative weights of the tags ``object, colour, position, binding``.
        distractor_cos: feature cosine above which a misaligned token counts as a distractor of an
            aligned one (default: halfway between a look-alike and an unrelated one-slot change).

    Attributes:
        prompts: the :class:`~dynamics.protocol.PromptSet` (texts, tags, tiers, and per-prompt
            ``meta`` with the constraint, the aligned count, the distractor count and the score).
        aligned: ``(P, V)`` bool ground truth.
        prompt_features: ``(P, F)`` float32, the named attribute slots (unnamed slots are zero).
        token_features: ``(V, F)`` float32, the token's three attribute slots plus noise.
        token_attrs: ``(V, 3)`` long; prompt_attrs ``(P, 3)`` long with -1 for unnamed slots.
        distractor: ``(P, V)`` bool, misaligned tokens that look like an aligned one.
        distractors: ``(P,)`` long, their count per prompt.
        difficulty: ``(P,)`` float64 score in [0, 1].
    """

    def __init__(
        self,
        prompts: int = 64,
        tokens: int = 64,
        *,
        seed: int = 0,
        grid: tuple[int, int, int] | None = None,
        attr_dim: int = 8,
        lookalike: float = 0.8,
        cluster_size: int = 2,
        token_noise: float = 0.1,
        task_mix: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
        distractor_cos: float | None = None,
    ) -> None:
        if tokens < 2:
            raise ValueError(f"SimWorld: tokens must be >= 2, got {tokens}")
        if prompts < 1:
            raise ValueError(f"SimWorld: prompts must be >= 1, got {prompts}")
        if not 0.0 <= lookalike < 1.0:
            raise ValueError(f"SimWorld: lookalike must lie in [0, 1), got {lookalike}")
        if attr_dim < 1 or cluster_size < 1 or token_noise < 0:
            raise ValueError(
                f"SimWorld: attr_dim={attr_dim}, cluster_size={cluster_size} must be >= 1 and "
                f"token_noise={token_noise} >= 0"
            )
        if len(task_mix) != len(TAGS) or any(m < 0 for m in task_mix) or sum(task_mix) <= 0:
            raise ValueError(f"SimWorld: task_mix needs {len(TAGS)} non-negative weights, got {task_mix}")
        grid = tuple(grid) if grid is not None else grid_shape(tokens)
        if len(grid) != 3 or min(grid) < 1:
            raise ValueError(f"SimWorld: grid must be 3 positive sizes, got {grid}")
        if math.prod(grid) < tokens:
            raise ValueError(f"SimWorld: grid {grid} holds {math.prod(grid)} triples < tokens={tokens}")
        self.seed = int(seed)
        self.grid = grid
        self.attr_dim = attr_dim
        self.lookalike = float(lookalike)
        gen = torch.Generator().manual_seed(self.seed)

        # tokens: V distinct attribute triples
        triples = torch.tensor(list(itertools.product(*(range(g) for g in grid))), dtype=torch.long)
        pick = torch.randperm(len(triples), generator=gen)[:tokens]
        self.token_attrs = triples[pick.sort().values]  # (V, 3), in grid order

        # attribute value vectors with look-alike clusters: cosine ~ lookalike inside a cluster
        self.attr_vectors = []
        self.attr_clusters = []
        for g in grid:
            # random cluster sizes (singletons included), so prompts differ in their distractor counts
            n_clusters = max(1, math.ceil(g / cluster_size))
            cluster = torch.randint(n_clusters, (g,), generator=gen)
            centre = torch.randn(int(cluster.max()) + 1, attr_dim, generator=gen, dtype=torch.float64)
            own = torch.randn(g, attr_dim, generator=gen, dtype=torch.float64)
            centre = centre / centre.norm(dim=1, keepdim=True)
            own = own / own.norm(dim=1, keepdim=True)
            vec = math.sqrt(self.lookalike) * centre[cluster] + math.sqrt(1 - self.lookalike) * own
            self.attr_vectors.append(vec / vec.norm(dim=1, keepdim=True))
            self.attr_clusters.append(cluster)

        tok = torch.cat([self.attr_vectors[s][self.token_attrs[:, s]] for s in range(3)], dim=1)
        tok = tok + token_noise * torch.randn(tok.shape, generator=gen, dtype=torch.float64)
        self.token_features = (tok / math.sqrt(3)).to(torch.float32)  # (V, 3*attr_dim), ~unit rows

        # candidate prompts: every constraint some token satisfies, by tag
        candidates: dict[str, list[tuple[int, int, int]]] = {}
        for tag, slots in _SLOTS.items():
            seen = sorted({tuple(int(t[s]) if s in slots else -1 for s in range(3)) for t in self.token_attrs})
            candidates[tag] = seen
        self.max_prompts = sum(len(c) for c in candidates.values())
        if prompts > self.max_prompts:
            raise ValueError(
                f"SimWorld: prompts={prompts} exceeds the {self.max_prompts} distinct constraints of a "
                f"{grid} grid with {tokens} tokens; lower prompts or raise tokens/grid"
            )
        chosen = self._choose_prompts(prompts, candidates, task_mix, gen)
        self.prompt_attrs = torch.tensor([c for _, c in chosen], dtype=torch.long)  # (P, 3)
        tags = [t for t, _ in chosen]

        # ground truth: a token is aligned when it matches every named slot
        named = self.prompt_attrs >= 0  # (P, 3)
        match = (self.prompt_attrs[:, None, :] == self.token_attrs[None, :, :]) | ~named[:, None, :]
        self.aligned = match.all(-1)  # (P, V)
        assert bool(self.aligned.any(1).all()), "every prompt is built from a token"

        pf = torch.zeros(prompts, 3, attr_dim, dtype=torch.float64)
        for s in range(3):
            rows = named[:, s]
            pf[rows, s] = self.attr_vectors[s][self.prompt_attrs[rows, s]]
        self.prompt_features = (pf.reshape(prompts, -1) / math.sqrt(3)).to(torch.float32)

        # difficulty: distractors = misaligned tokens whose features look like an aligned token's
        feats = self.token_features.to(torch.float64)
        unit = feats / feats.norm(dim=1, keepdim=True)
        cos = unit @ unit.T  # (V, V)
        if distractor_cos is None:
            # halfway between a one-slot change to a look-alike value, (2 + lookalike) / 3, and to an
            # unrelated one, 2 / 3, shrunk by the expected norm the token noise adds
            distractor_cos = (2.0 + 0.5 * self.lookalike) / 3.0 / (1.0 + token_noise**2 * attr_dim)
        self.distractor_cos = float(distractor_cos)
        near = cos > self.distractor_cos
        n_aligned = self.aligned.sum(1)
        self.distractor = (near[None, :, :] & self.aligned[:, None, :]).any(-1) & ~self.aligned  # (P, V)
        distract = self.distractor.sum(1)
        self.distractors = distract
        self.difficulty = distract.to(torch.float64) / (distract + n_aligned).to(torch.float64)
        order = torch.argsort(self.difficulty + 1e-9 * torch.arange(prompts), stable=True)
        rank = torch.empty(prompts, dtype=torch.long)
        rank[order] = torch.arange(prompts)
        tiers = [TIERS[min(2, int(3 * int(r) // prompts))] for r in rank]

        texts, meta = [], []
        for i, (tag, c) in enumerate(chosen):
            words = [f"{_NAMES[s]}{c[s]}" for s in range(3) if c[s] >= 0]
            texts.append(" ".join(words))
            meta.append({
                "constraint": list(c),
                "aligned": int(n_aligned[i]),
                "distractors": int(distract[i]),
                "difficulty": float(self.difficulty[i]),
            })
        self.prompts = PromptSet(texts=texts, tags=tags, tiers=tiers, meta=meta)

    @staticmethod
    def _choose_prompts(prompts, candidates, task_mix, gen):
        """Draw ``prompts`` distinct constraints with tag shares near ``task_mix``."""
        weights = torch.tensor(task_mix, dtype=torch.float64)
        avail = torch.tensor([len(candidates[t]) for t in TAGS], dtype=torch.float64)
        weights = torch.where(avail > 0, weights, torch.zeros_like(weights))
        want = torch.zeros(len(TAGS), dtype=torch.long)
        # fill quotas tag by tag, each at most its availability, largest remaining share first
        remaining = prompts
        while remaining > 0:
            room = (avail - want.to(torch.float64)) > 0
            share = torch.where(room, weights, torch.zeros_like(weights))
            if share.sum() <= 0:  # the mix names only exhausted tags: take from any tag with room
                share = room.to(torch.float64)
            target = share / share.sum() * (want.sum() + remaining).to(torch.float64)
            deficit = torch.where(room, target - want.to(torch.float64), torch.full_like(target, -math.inf))
            k = int(torch.argmax(deficit))
            want[k] += 1
            remaining -= 1
        chosen = []
        for t, n in zip(TAGS, want.tolist()):
            perm = torch.randperm(len(candidates[t]), generator=gen)[:n]
            chosen.extend((t, candidates[t][int(j)]) for j in sorted(perm.tolist()))
        return chosen

    # ------------------------------------------------------------------ queries
    @property
    def num_prompts(self) -> int:
        """``P``."""
        return self.aligned.shape[0]

    @property
    def num_tokens(self) -> int:
        """``V``."""
        return self.aligned.shape[1]

    def oracle(self, prompt_ids: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """The external judge: ground-truth alignment of ``images`` ``(R, B, K, 1)`` with their prompts.

        Returns ``(R, B, K)`` bool (conforms to :class:`dynamics.protocol.ExternalJudge`).

        >>> import torch
        >>> w = SimWorld(prompts=8, tokens=8, seed=1)
        >>> w.oracle(torch.tensor([0]), torch.zeros(2, 1, 3, 1, dtype=torch.long)).shape
        torch.Size([2, 1, 3])
        """
        prompt_ids = self._check_ids(prompt_ids)
        images = check_images(images, replicas=images.shape[0] if images.dim() == 4 else -1,
                              batch=prompt_ids.numel())
        if images.shape[-1] != 1:
            raise ValueError(f"SimWorld.oracle: images must have M = 1 token, got M = {images.shape[-1]}")
        tok = images[..., 0]
        if tok.numel() and (int(tok.min()) < 0 or int(tok.max()) >= self.num_tokens):
            raise ValueError(f"SimWorld.oracle: token ids must lie in [0, {self.num_tokens}), got "
                             f"[{int(tok.min())}, {int(tok.max())}]")
        return self.aligned[prompt_ids.to(self.aligned.device)[None, :, None], tok.cpu()].to(images.device)

    __call__ = oracle

    @property
    def near_misses(self) -> torch.Tensor:
        """``(P, V)`` bool: the near misses of each prompt, misaligned tokens with every named attribute
        right but one that look like an aligned token (the :attr:`distractor` table restricted to
        attribute distance one). A ``lookalike`` or ``pr`` judge (:mod:`dynamics.judges`) accepts them.

        >>> w = SimWorld(prompts=48, tokens=48, seed=0)
        >>> bool((w.near_misses & w.aligned).any()), bool((w.near_misses <= w.distractor).all())
        (False, True)
        """
        named = self.prompt_attrs >= 0
        wrong = ((self.prompt_attrs[:, None, :] != self.token_attrs[None, :, :]) & named[:, None, :]).sum(-1)
        return self.distractor & (wrong == 1)

    def near_miss(self, prompt_ids: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Whether each of ``images`` ``(R, B, K, 1)`` is a near miss of its prompt (:attr:`near_misses`):
        ``(R, B, K)`` bool, checked like :meth:`oracle`.

        >>> w = SimWorld(prompts=8, tokens=8, seed=1)
        >>> w.near_miss(torch.tensor([0]), torch.zeros(2, 1, 3, 1, dtype=torch.long)).shape
        torch.Size([2, 1, 3])
        """
        self.oracle(prompt_ids, images)  # the same checks of ids and tokens
        table = self.near_misses
        return table[self._check_ids(prompt_ids)[None, :, None], images[..., 0].cpu()].to(images.device)

    def aligned_examples(self, prompt_ids: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        """One aligned token per prompt, drawn uniformly from its aligned set: ``(B,)`` long.

        >>> w = SimWorld(prompts=8, tokens=8, seed=1)
        >>> ids = torch.arange(8)
        >>> bool(w.aligned[ids, w.aligned_examples(ids)].all())
        True
        """
        prompt_ids = self._check_ids(prompt_ids)
        gen = torch.Generator().manual_seed(int(seed))
        rows = self.aligned[prompt_ids].to(torch.float64)
        return torch.multinomial(rows, 1, generator=gen)[:, 0]

    def prompt_similarity(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of the prompt features of ``a`` ``(n,)`` and ``b`` ``(m,)``: ``(n, m)`` float64.

        >>> w = SimWorld(prompts=8, tokens=8, seed=1)
        >>> s = w.prompt_similarity(torch.arange(3), torch.arange(3))
        >>> torch.allclose(s.diagonal(), torch.ones(3, dtype=torch.float64))
        True
        """
        a, b = self._check_ids(a), self._check_ids(b)
        f = self.prompt_features.to(torch.float64)
        f = f / f.norm(dim=1, keepdim=True)
        return f[a] @ f[b].T

    def _check_ids(self, prompt_ids) -> torch.Tensor:
        ids = torch.as_tensor(prompt_ids)
        if ids.dim() != 1 or ids.dtype not in (torch.long, torch.int32, torch.int64):
            raise ValueError(f"prompt_ids must be a 1-d integer tensor, got {tuple(ids.shape)} {ids.dtype}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_prompts):
            raise ValueError(f"prompt_ids must lie in [0, {self.num_prompts}), got "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        return ids.long()

    def __repr__(self) -> str:
        counts = {t: self.prompts.tags.count(t) for t in TAGS}
        return (f"SimWorld(prompts={self.num_prompts}, tokens={self.num_tokens}, grid={self.grid}, "
                f"seed={self.seed}, tags={counts})")
