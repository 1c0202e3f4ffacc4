"""The model protocol: the small interface every scale implements.

The theory's single-token simulator, the toy scene-world transformer and real unified MLLMs
(Janus-Pro) all expose the same five things, so that one CLO loop (:mod:`dynamics.clo`) and one
metric set (:mod:`dynamics.metrics`) serve all three scales:

1. ``sample(prompt_ids, n, seed=...)``: ``n`` image-token sequences per prompt from the generation
   branch ``pi_gen(x | y)``;
2. ``judge(prompt_ids, images)``: the model's own understanding, the probability that the image
   describes the prompt (``P(yes)``);
3. ``image_logprob(prompt_ids, images)``: teacher-forced ``log pi_gen(x | y)`` summed over the image
   positions, differentiable (the SFT and DPO objectives are built from it);
4. ``generation_parameters()``: the parameters a generation-only update may touch (the scope);
5. ``state_dict()`` / ``load_state_dict()`` for checkpoints and resume.

Shapes. Every tensor carries a leading *replica* axis ``R``: the simulator trains ``R`` independent
seeds side by side in one process (their parameters stacked on dim 0, so summing per-replica losses
gives per-replica gradients); the toy world and real models have ``R = 1``. Prompts are integer ids
into the model's :class:`PromptSet`.

========================  =====================  ===========================================
argument / result         shape                  meaning
========================  =====================  ===========================================
``prompt_ids``            ``(B,)`` long          rows of ``model.prompts``
``images``                ``(R, B, K, M)`` long  ``K`` image-token sequences of length ``M``
``sample(...)``           ``(R, B, n, M)`` long  candidates
``judge(...)``            ``(R, B, K)`` float    ``P(yes)`` in [0, 1], no gradient
``image_logprob(...)``    ``(R, B, K)`` float    ``sum_m log pi(x_m | y, x_<m)``, with gradient
external judge            ``(R, B, K)`` bool     ground truth (or the best judge available)
========================  =====================  ===========================================

Example (the protocol is structural: any object with these members conforms)::

    >>> import torch
    >>> from dynamics.protocol import PromptSet, check_images
    >>> ps = PromptSet(texts=["a red cube", "two dogs"], tags=["colors", "counting"])
    >>> len(ps), ps.tiers
    (2, ['medium', 'medium'])
    >>> check_images(torch.zeros(1, 2, 3, 4, dtype=torch.long), replicas=1, batch=2).shape
    torch.Size([1, 2, 3, 4])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

__all__ = [
    "COUPLINGS",
    "ExternalJudge",
    "PromptSet",
    "UnifiedModel",
    "check_coupling",
    "check_images",
]

# How a model's understanding reads its generation branch, from no transfer to the theory's
# idealisation; each scale builds the four (the simulator's model, the toy's networks).
COUPLINGS = ("decoupled", "trunk", "tied", "bayes")


def check_coupling(coupling: str) -> str:
    """``coupling`` if it is one of :data:`COUPLINGS` (``decoupled``: understanding on private copies
    of every parameter, BAGEL-like experts; ``trunk``: a shared trunk, images read through the
    understanding's own embeddings, Janus-like; ``tied``: one image vocabulary read and written through
    the same embeddings, Show-o / Emu3 / Chameleon-like; ``bayes``: understanding is the generator's
    posterior, the theory's idealisation), else a ``ValueError`` naming it.

    >>> check_coupling("trunk")
    'trunk'
    """
    if coupling not in COUPLINGS:
        raise ValueError(f"coupling must be one of {', '.join(COUPLINGS)}; got {coupling!r}")
    return coupling


@dataclass
class PromptSet:
    """A finite prompt set with a task tag and a difficulty tier per prompt.

    ``texts[i]`` is the prompt text (for the simulator, a readable name of the attribute tuple);
    ``tags[i]`` the task category (GenEval's ``single_object``, ``counting``, ... or T2I-CompBench's
    ``color``, ``spatial``, ...); ``tiers[i]`` a difficulty tier (``easy``/``medium``/``hard``).
    ``meta`` holds scale-specific structured data (GenEval ``include`` rules, scene specs).
    """

    texts: list[str]
    tags: list[str] | None = None
    tiers: list[str] | None = None
    meta: list[dict] | None = None

    def __post_init__(self) -> None:
        n = len(self.texts)
        if n == 0:
            raise ValueError("PromptSet: the prompt set is empty")
        if self.tags is None:
            self.tags = ["all"] * n
        if self.tiers is None:
            self.tiers = ["medium"] * n
        if self.meta is None:
            self.meta = [{} for _ in range(n)]
        for name in ("tags", "tiers", "meta"):
            got = len(getattr(self, name))
            if got != n:
                raise ValueError(f"PromptSet: {name} has {got} entries for {n} prompts")

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, ids) -> PromptSet:
        """The prompts at ``ids`` (a sequence of ints), as a new set."""
        ids = [int(i) for i in ids]
        return PromptSet(
            texts=[self.texts[i] for i in ids],
            tags=[self.tags[i] for i in ids],
            tiers=[self.tiers[i] for i in ids],
            meta=[self.meta[i] for i in ids],
        )

    def groups(self) -> dict[str, list[int]]:
        """Prompt ids by ``tag:<tag>`` and ``tier:<tier>``, for per-category metrics."""
        out: dict[str, list[int]] = {}
        for i, (tag, tier) in enumerate(zip(self.tags, self.tiers)):
            out.setdefault(f"tag:{tag}", []).append(i)
            out.setdefault(f"tier:{tier}", []).append(i)
        return out


@runtime_checkable
class UnifiedModel(Protocol):
    """A unified model seen through the five operations the CLO loop needs (see module docstring)."""

    replicas: int
    image_length: int
    prompts: PromptSet

    def sample(self, prompt_ids: torch.Tensor, n: int, *, seed: int | Sequence[int]) -> torch.Tensor:
        """``n`` candidates per prompt, ``(R, B, n, M)``; deterministic given ``seed``.

        With several replicas the loop passes one seed per replica (replica r's draws must depend
        only on ``seed[r]``, so a vectorised run equals a loop of one-replica runs); with one
        replica, an int."""
        ...

    def judge(self, prompt_ids: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Own-understanding ``P(yes)`` for each image and its prompt, ``(R, B, K)``."""
        ...

    def image_logprob(self, prompt_ids: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Teacher-forced ``log pi_gen(images | prompt)``, summed over positions, ``(R, B, K)``."""
        ...

    def generation_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters a generation-only update may change (the rest stays frozen)."""
        ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> object: ...


@runtime_checkable
class ExternalJudge(Protocol):
    """A judge that is not the model: ground truth at the theory and toy scales; a stronger VLM,
    a detector, or a file of human labels at the full scale. Returns ``(R, B, K)`` bools."""

    def __call__(self, prompt_ids: torch.Tensor, images: torch.Tensor) -> torch.Tensor: ...


@dataclass
class TrainBatch:
    """One minibatch of the generation objective, as the loop hands it to a training step.

    ``kind == "sft"``: ``images`` ``(R, B, K, M)`` with ``weights`` ``(R, B, K)`` (zero for
    candidates outside replica r's SFT set). ``kind == "dpo"``: ``chosen``/``rejected`` ``(R, B, 1, M)``,
    ``weights`` ``(R, B, 1)`` (zero where replica r has no pair for that prompt) and the reference
    log-probabilities ``ref_chosen``/``ref_rejected`` ``(R, B, 1)``.
    """

    kind: str
    prompt_ids: torch.Tensor
    weights: torch.Tensor
    images: torch.Tensor | None = None
    chosen: torch.Tensor | None = None
    rejected: torch.Tensor | None = None
    ref_chosen: torch.Tensor | None = None
    ref_rejected: torch.Tensor | None = None


def check_images(images: torch.Tensor, *, replicas: int, batch: int) -> torch.Tensor:
    """Validate an ``(R, B, K, M)`` image-token tensor; raise a ValueError naming the mismatch."""
    if images.dim() != 4:
        raise ValueError(f"images must be (R, B, K, M), got shape {tuple(images.shape)}")
    if images.shape[0] != replicas:
        raise ValueError(f"images have {images.shape[0]} replicas, the model has {replicas}")
    if images.shape[1] != batch:
        raise ValueError(f"images have {images.shape[1]} prompt rows for {batch} prompt ids")
    if images.dtype not in (torch.long, torch.int32, torch.int64):
        raise ValueError(f"images must hold integer token ids, got {images.dtype}")
    return images
