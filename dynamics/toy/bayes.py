"""The toy generator with its understanding read through the Bayes link: the strongest sharing.

The paper's theory ties understanding to generation by Bayes' rule: ``P(yes | x, c)`` grows with the
posterior of the prompt ``c`` given the image ``x`` under the generator. :class:`BayesLinked` wraps a
pre-trained :class:`~dynamics.toy.model.ToyModel` and answers "does this image describe c?" from its
*generation* branch alone, against a fixed set of alternative prompts ``A(c)`` (the hard negatives of
``c`` in the prompt set, plus a few other prompts)::

    pmi(x, c)  = log pi(x | c) - logsumexp_{c' in {c} + A(c)} log pi(x | c') + log(1 + |A(c)|)
    P(yes)     = sigmoid(scale * (pmi - offset))

(the pointwise mutual information of ``c`` and ``x`` under a uniform prior over ``{c} + A(c)``; the
simulator's ``bayes`` understanding, at multi-token scale). Understanding has no parameter of its
own, so a generation-only update moves it as far as the theory allows; the trained yes/no head of the
wrapped model is not used. ``offset`` is calibrated by :meth:`BayesLinked.calibrate` on balanced
probes of the pre-training prompts (a canonical scene and a hard negative each).

Cost: ``1 + |A(c)|`` teacher-forced generation passes per judged image (``|A(c)| <= 8`` here).

Example (the tiny preset, random weights)::

    >>> import torch
    >>> from dynamics.toy.model import ToyConfig, ToyModel
    >>> from dynamics.toy.bayes import BayesLinked
    >>> m = BayesLinked(ToyModel(ToyConfig.preset("tiny"), seed=0))
    >>> x = m.sample(torch.tensor([0, 5]), 2, seed=0)
    >>> p = m.judge(torch.tensor([0, 5]), x)
    >>> p.shape, bool(((p > 0) & (p < 1)).all())
    (torch.Size([1, 2, 2]), True)
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F
from torch import nn

from dynamics.toy.model import ToyModel

__all__ = ["BayesLinked", "alternative_prompts"]


def alternative_prompts(model: ToyModel, *, hard: int = 5, others: int = 3, seed: int = 0) -> torch.Tensor:
    """``(P, A)`` alternative prompt ids per prompt (``-1`` padded): up to ``hard`` hard negatives (the
    world's perturbations that are prompts of the set) and ``others`` other prompts drawn at random
    (fixed by ``seed``), never the prompt itself.

    >>> from dynamics.toy.model import ToyConfig
    >>> alts = alternative_prompts(ToyModel(ToyConfig.preset("tiny")), hard=2, others=1)
    >>> alts.shape[0] == 126 and bool((alts != torch.arange(126)[:, None]).all())
    True
    """
    ps, w = model.prompts, model.world
    index = {t: i for i, t in enumerate(ps.texts)}
    rng = random.Random(seed)
    rows = []
    for i, meta in enumerate(ps.meta):
        found: list[int] = []
        for t in range(64):  # the perturbations are random; 64 draws find every one of this grammar's
            j = index.get(w.spec_text(w.perturb(meta["spec"], random.Random(seed * 1000003 + i * 97 + t))))
            if j is not None and j != i and j not in found:
                found.append(j)
        found = found[:hard]
        pool = [j for j in range(len(ps)) if j != i and j not in found]
        rows.append(found + rng.sample(pool, min(others, len(pool))))
    A = max(len(r) for r in rows)
    return torch.tensor([r + [-1] * (A - len(r)) for r in rows], dtype=torch.long)


class BayesLinked(nn.Module):
    """A :class:`~dynamics.toy.model.ToyModel` whose understanding is its generator's posterior (see
    the module docstring). Implements the model protocol: sampling, ``image_logprob`` and the
    generation parameters are the wrapped model's; ``judge``/``log_p_yes`` read the Bayes link."""

    def __init__(self, model: ToyModel, *, hard: int = 5, others: int = 3, scale: float = 1.0,
                 offset: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        if not (math.isfinite(scale) and scale > 0 and math.isfinite(offset)):
            raise ValueError(f"BayesLinked: scale={scale} must be > 0 and offset={offset} finite")
        self.toy = model
        self.prompts, self.world, self.replicas = model.prompts, model.world, model.replicas
        self.image_length, self.config = model.image_length, model.config
        self.scale, self.offset = float(scale), float(offset)
        self.register_buffer("alternatives", alternative_prompts(model, hard=hard, others=others, seed=seed),
                             persistent=False)

    # the generation branch is the wrapped model's
    def generation_parameters(self) -> list[nn.Parameter]:
        return self.toy.generation_parameters()

    def named_generation_parameters(self) -> dict[str, torch.Tensor]:
        return self.toy.named_generation_parameters()

    def image_logprob(self, prompt_ids: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return self.toy.image_logprob(prompt_ids, images)

    def sample(self, prompt_ids: torch.Tensor, n: int, **kw):
        return self.toy.sample(prompt_ids, n, **kw)

    @property
    def pretrain_info(self) -> dict:
        return getattr(self.toy, "pretrain_info", {})

    # understanding through the Bayes link
    def pmi(self, prompt_ids: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """``pmi(x, c)`` ``(R, B, K)`` (with gradient through the generation branch)."""
        prompt_ids, images = self.toy._check(prompt_ids, images)
        R, B, K, M = images.shape
        cand = torch.cat([prompt_ids[:, None], self.alternatives[prompt_ids]], 1)  # (B, 1 + A)
        valid = (cand >= 0)[None, :, :, None].expand(R, B, cand.shape[1], K)
        pid = cand.clamp(min=0)[None, :, :, None].expand(R, B, cand.shape[1], K)[valid]
        imgs = images[:, :, None].expand(R, B, cand.shape[1], K, M)[valid]
        lp = torch.full(valid.shape, -math.inf, dtype=self._dtype())
        lp = lp.masked_scatter(valid, self.toy.image_logprob(pid, imgs.view(1, -1, 1, M)).reshape(-1).to(lp.dtype))
        n = valid.sum(2).to(lp.dtype)
        return lp[:, :, 0] - torch.logsumexp(lp, 2) + torch.log(n)

    def _dtype(self) -> torch.dtype:
        return next(iter(self.toy.parameters())).dtype

    def log_p_yes(self, prompt_ids: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """``log P(yes | x, c)`` ``(R, B, K)``, with gradient."""
        return F.logsigmoid(self.scale * (self.pmi(prompt_ids, images) - self.offset))

    @torch.no_grad()
    def judge(self, prompt_ids: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """``P(yes)`` ``(R, B, K)`` in [0, 1], no gradient."""
        return self.log_p_yes(prompt_ids, images).exp()

    def forward(self, prompt_ids: torch.Tensor, images: torch.Tensor, what: str = "gen") -> torch.Tensor:
        if what == "gen":
            return self.image_logprob(prompt_ids, images)
        if what == "yes":
            return self.log_p_yes(prompt_ids, images)
        raise ValueError(f"BayesLinked.forward: what must be 'gen' or 'yes', got {what!r}")

    def probe_logprob(self, prompt_id: int, image: torch.Tensor, what: str = "gen") -> torch.Tensor:
        """As :meth:`ToyModel.probe_logprob`, with the Bayes-linked understanding."""
        image = torch.as_tensor(image).long()
        return self.forward(torch.tensor([int(prompt_id)]), image.view(1, 1, 1, -1), what).reshape(())

    @torch.no_grad()
    def _probes(self, seed: int, prompt_ids):
        """``(pmi, truth)`` on balanced probes: a canonical scene and a hard negative per prompt (the
        pre-training prompts by default)."""
        ps, w = self.prompts, self.world
        ids = torch.as_tensor(w.split_ids()[0] if prompt_ids is None else prompt_ids).long()
        rng = random.Random(seed)
        scenes = [[w.canonical_scene(ps.meta[i]["spec"], rng),
                   w.canonical_scene(w.perturb(ps.meta[i]["spec"], rng), rng)] for i in ids.tolist()]
        probes = torch.tensor(scenes).unsqueeze(0)
        truth = w.external_judge()(ids, probes)[0].bool().flatten()
        return self.pmi(ids, probes)[0].flatten().double(), truth

    @staticmethod
    def _balanced(pmi: torch.Tensor, truth: torch.Tensor, cuts: torch.Tensor) -> torch.Tensor:
        yes = pmi[None, :] > cuts[:, None]
        tpr = (yes & truth).sum(1) / truth.sum().clamp(min=1)
        tnr = (~yes & ~truth).sum(1) / (~truth).sum().clamp(min=1)
        return (tpr + tnr) / 2

    def probe_accuracy(self, *, seed: int = 0, prompt_ids=None) -> float:
        """Balanced accuracy of the current ``offset`` on the calibration probes."""
        pmi, truth = self._probes(seed, prompt_ids)
        return float(self._balanced(pmi, truth, torch.tensor([self.offset], dtype=pmi.dtype))[0])

    def calibrate(self, *, seed: int = 0, prompt_ids=None) -> dict:
        """Set ``offset`` to the midpoint threshold of best balanced accuracy on balanced probes (a
        canonical scene and a hard negative for each pre-training prompt); return what it found."""
        pmi, truth = self._probes(seed, prompt_ids)
        order = torch.sort(pmi).values
        cuts = torch.cat([order[:1] - 1, (order[1:] + order[:-1]) / 2, order[-1:] + 1])
        bal = self._balanced(pmi, truth, cuts)
        best = int(torch.argmax(bal))
        self.offset = float(cuts[best])
        return {"offset": self.offset, "balanced_accuracy": float(bal[best]), "probes": len(pmi)}

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}, offset={self.offset:.3f}, alternatives={self.alternatives.shape[1]}"
