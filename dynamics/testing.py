"""Small reference implementations of the model protocol, for tests and docstring examples.

:class:`TableModel` is the smallest unified model: per replica, a table of generation logits
``(P, V)`` behind a shared per-token embedding, and understanding logits that read the same
embedding (so generation-only training moves understanding, as in the aligned regime).
Single-token images (``M = 1``); a random ground-truth table is its external judge.

    >>> import torch
    >>> m = TableModel.random(prompts=3, tokens=5, replicas=2, seed=0)
    >>> m.sample(torch.arange(3), 4, seed=1).shape
    torch.Size([2, 3, 4, 1])
    >>> isinstance(m, __import__("dynamics.protocol", fromlist=["UnifiedModel"]).UnifiedModel)
    True
"""

from __future__ import annotations

import torch

from dynamics.protocol import PromptSet

__all__ = ["TableModel"]


class TableModel(torch.nn.Module):
    """A table-of-logits unified model with ``R`` replicas (see module docstring)."""

    image_length = 1

    def __init__(self, gen: torch.Tensor, und: torch.Tensor, token_emb: torch.Tensor, aligned: torch.Tensor,
                 prompts: PromptSet | None = None) -> None:
        super().__init__()
        self.gen = torch.nn.Parameter(gen.clone())  # (R, P, V) prompt-specific generation logits
        self.und = torch.nn.Parameter(und.clone())  # (R, P, V) understanding-only logits
        self.token_emb = torch.nn.Parameter(token_emb.clone())  # (R, V) shared token bias
        self.register_buffer("aligned", aligned.clone())  # (P, V) ground truth
        self.replicas = gen.shape[0]
        self.prompts = prompts or PromptSet(texts=[f"prompt {i}" for i in range(gen.shape[1])],
                                            tags=["even" if i % 2 == 0 else "odd" for i in range(gen.shape[1])])

    @classmethod
    def random(cls, *, prompts: int, tokens: int, replicas: int = 1, seed: int = 0) -> TableModel:
        g = torch.Generator().manual_seed(seed)
        aligned = torch.rand(prompts, tokens, generator=g) < 0.3
        aligned[torch.arange(prompts), torch.randint(0, tokens, (prompts,), generator=g)] = True
        gen = torch.randn(replicas, prompts, tokens, generator=g, dtype=torch.float64)
        und = 3.0 * (aligned.double() - 0.5) + 0.5 * torch.randn(replicas, prompts, tokens, generator=g,
                                                                 dtype=torch.float64)
        emb = 0.1 * torch.randn(replicas, tokens, generator=g, dtype=torch.float64)
        return cls(gen, und, emb, aligned)

    def gen_logits(self, prompt_ids: torch.Tensor) -> torch.Tensor:
        return self.gen[:, prompt_ids] + self.token_emb[:, None, :]  # (R, B, V)

    def sample(self, prompt_ids: torch.Tensor, n: int, *, seed) -> torch.Tensor:
        seeds = [seed] * self.replicas if isinstance(seed, int) else list(seed)
        with torch.no_grad():
            probs = torch.softmax(self.gen_logits(prompt_ids), -1)
        draws = [torch.multinomial(probs[r], n, replacement=True, generator=torch.Generator().manual_seed(s))
                 for r, s in enumerate(seeds)]
        return torch.stack(draws)[..., None]

    def judge(self, prompt_ids: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logit = self.und[:, prompt_ids] + 2.0 * self.token_emb[:, None, :]  # (R, B, V)
            return torch.sigmoid(logit.gather(2, images[..., 0]))

    def image_logprob(self, prompt_ids: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(self.gen_logits(prompt_ids), -1)
        return logp.gather(2, images[..., 0])

    def generation_parameters(self) -> list[torch.nn.Parameter]:
        return [self.gen, self.token_emb]

    def oracle(self, prompt_ids: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """The external judge: the ground-truth table, ``(R, B, K)`` bools."""
        R, B, K, _ = images.shape
        return self.aligned[prompt_ids][None, :, None, :].expand(R, B, K, -1).gather(3, images).squeeze(-1)
