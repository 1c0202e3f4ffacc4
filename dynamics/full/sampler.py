"""Janus image-token sampling and teacher-forced scoring on transformers' native Janus classes, and the
pieces every real-model sampler shares (:class:`SamplingConfig`, :func:`guide`, :func:`warp`,
:func:`draw_rows`, :func:`position_ids`, :func:`row_seeds`, :func:`to_uint8`, :func:`save_png`; the Emu3
sampler, :mod:`dynamics.full.emu3`, is built from them).

The sampler reproduces Janus's generation rule step by step (the rule of DeepSeek's reference code and of
transformers' ``generate(generation_mode="image")``): each prompt row has an *unconditional* twin in which
every token except BOS and begin-of-image is replaced by the pad token (attention mask unchanged); the
next-token logits of the generation head are combined as ``uncond + g * (cond - uncond)``, divided by the
temperature, cut to the top-k, and one token is drawn from their softmax. What transformers' generate does
not do and this sampler does:

- ``g = 1`` works (the unconditional rows are skipped: the combination is then the conditional logits);
- left-padded prompts get position ids counted from their first real token (``cumsum(mask) - 1``), so a
  prompt's samples do not depend on how long the other prompts in its batch are;
- every row (prompt, candidate) draws from its own ``torch.Generator``: its tokens depend on its seed only,
  never on the batch it was sampled in. ``torch.multinomial`` with one sample draws one exponential per
  vocabulary entry from the generator, so a row with seed ``s`` reproduces transformers' generate of that
  prompt alone after ``torch.manual_seed(s)`` (tested: identical tokens);
- optional per-token log-probabilities of the distribution each token was drawn from, which the
  teacher-forced :class:`GenerationScorer` reproduces (tested).

:class:`GenerationScorer` is an ``nn.Module`` whose ``forward`` returns teacher-forced image-token
log-probabilities through the generation path (generation embeddings + aligner -> LLM trunk -> generation
head), with ``cfg_mode`` "none" (conditional logits) or "combined" (CFG-combined logits). Training calls
go through its ``forward`` so that a DDP/FSDP/accelerate wrapper around it stays synchronised.

Example (tiny random model; 16 image tokens)::

    >>> import torch
    >>> from dynamics.full.presets import build_preset
    >>> from dynamics.full.sampler import sample_image_tokens, prompt_batch
    >>> model, processor = build_preset("tiny", seed=0)
    >>> ids, mask = prompt_batch(processor, ["a red cube", "two dogs on a bench"])
    >>> tokens = sample_image_tokens(model, ids, mask, seeds=[1, 2], cfg_scale=5.0)
    >>> tokens.shape, tokens.dtype
    (torch.Size([2, 16]), torch.int64)
    >>> torch.equal(tokens[1], sample_image_tokens(model, ids[1:], mask[1:], seeds=[2], cfg_scale=5.0)[0])
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = [
    "GenerationScorer",
    "SamplingConfig",
    "decode_pixels",
    "draw_rows",
    "guide",
    "position_ids",
    "prompt_batch",
    "prompt_texts",
    "row_seeds",
    "sample_image_tokens",
    "save_png",
    "special_token_ids",
    "to_uint8",
    "unconditional_ids",
    "warp",
]


@dataclass(frozen=True)
class SamplingConfig:
    """Every sampling knob, recorded with each run.

    ``cfg_scale`` g (Janus's default 5; 1 = no guidance), ``temperature`` > 0, ``top_k`` (None or 0 = off),
    ``batch_size``: rows (prompt, candidate) per sampler call (None: all at once).

    >>> SamplingConfig(cfg_scale=5.0, top_k=4096)
    SamplingConfig(cfg_scale=5.0, temperature=1.0, top_k=4096, batch_size=None)
    >>> SamplingConfig(temperature=0)
    Traceback (most recent call last):
    ...
    ValueError: SamplingConfig.temperature must be > 0, got 0
    """

    cfg_scale: float = 5.0
    temperature: float = 1.0
    top_k: int | None = None
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.cfg_scale) and self.cfg_scale >= 0):
            raise ValueError(f"SamplingConfig.cfg_scale must be finite and >= 0, got {self.cfg_scale}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"SamplingConfig.temperature must be > 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"SamplingConfig.top_k must be None or >= 0, got {self.top_k}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"SamplingConfig.batch_size must be None or >= 1, got {self.batch_size}")


def special_token_ids(model) -> tuple[int, int, int]:
    """``(bos, pad, begin_of_image)`` token ids from ``model.generation_config`` (where Janus keeps them).

    >>> from dynamics.full.presets import build_preset
    >>> special_token_ids(build_preset("tiny")[0])
    (1, 3, 5)
    """
    gc = model.generation_config
    boi = (getattr(gc, "generation_kwargs", None) or {}).get("boi_token_id")
    missing = [
        n for n, v in (("bos_token_id", gc.bos_token_id), ("pad_token_id", gc.pad_token_id)) if v is None
    ]
    if boi is None:
        missing.append("generation_kwargs['boi_token_id']")
    if missing:
        raise ValueError(
            f"model.generation_config lacks {', '.join(missing)}; call "
            "dynamics.full.presets.configure_generation(model, tokenizer)"
        )
    return int(gc.bos_token_id), int(gc.pad_token_id), int(boi)


def prompt_texts(processor, prompts: Sequence[str]) -> list[str]:
    """Janus's image-generation prompt strings: the chat template with an empty assistant turn, then
    begin-of-image (what ``JanusProcessor(..., generation_mode="image")`` appends).

    >>> from dynamics.full.presets import build_preset
    >>> prompt_texts(build_preset("tiny")[1], ["a red cube"])
    ['<|User|>: a red cube\\n\\n<|Assistant|>:<begin_of_image>']
    """
    out = []
    for text in prompts:
        messages = [{"role": "user", "content": [{"type": "text", "text": text}]}]
        templated = processor.apply_chat_template(messages, add_generation_prompt=True)
        out.append(templated + processor.image_start_token)
    return out


def prompt_batch(processor, prompts: Sequence[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``(input_ids, attention_mask)``, each ``(B, L)`` long, for image generation.

    >>> from dynamics.full.presets import build_preset
    >>> ids, mask = prompt_batch(build_preset("tiny")[1], ["a cube", "two red dogs"])
    >>> mask.tolist()
    [[0, 1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1, 1]]
    """
    tok = processor.tokenizer
    enc = tok(prompt_texts(processor, prompts), padding=True, padding_side="left", return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    if device is not None:
        ids, mask = ids.to(device), mask.to(device)
    return ids, mask


def unconditional_ids(input_ids: torch.Tensor, *, bos_id: int, boi_id: int, pad_id: int) -> torch.Tensor:
    """Janus's unconditional prompt: every token except BOS and begin-of-image becomes pad.

    Left padding is pad already; the attention mask of the conditional row is reused unchanged.

    >>> unconditional_ids(torch.tensor([[3, 1, 9, 9, 5]]), bos_id=1, boi_id=5, pad_id=3)
    tensor([[3, 1, 3, 3, 5]])
    """
    keep = (input_ids == bos_id) | (input_ids == boi_id)
    return torch.where(keep, input_ids, torch.full_like(input_ids, pad_id))


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first attended token (0 on left padding), ``(B, L)`` long.

    >>> position_ids(torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]))
    tensor([[0, 0, 0, 1],
            [0, 1, 2, 3]])
    """
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp_min(0)


def guide(cond: torch.Tensor, uncond: torch.Tensor | None, cfg_scale: float) -> torch.Tensor:
    """Janus's classifier-free guidance ``uncond + g * (cond - uncond)``; ``cond`` when ``uncond`` is None.

    >>> guide(torch.tensor([2.0]), torch.tensor([1.0]), 5.0)
    tensor([6.])
    """
    if uncond is None:
        return cond
    return uncond + (cond - uncond) * cfg_scale


def warp(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None) -> torch.Tensor:
    """Temperature then top-k on ``(..., V)`` logits, in the order and with the tie rule of transformers'
    ``TemperatureLogitsWarper`` and ``TopKLogitsWarper`` (entries below the k-th largest become -inf).

    >>> warp(torch.tensor([1.0, 3.0, 2.0]), temperature=2.0, top_k=2)
    tensor([  -inf, 1.5000, 1.0000])
    """
    if temperature != 1.0:
        logits = logits / temperature
    if top_k:
        k = min(int(top_k), logits.shape[-1])
        kth = torch.topk(logits, k)[0][..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return logits


def row_seeds(seed: int, prompt_ids: Sequence[int], n: int) -> list[list[int]]:
    """One 63-bit seed per (prompt, candidate), a function of ``(seed, prompt id, candidate index)`` only.

    >>> s = row_seeds(0, [4, 7], 2)
    >>> len(s), len(s[0]), s[1] == row_seeds(0, [7], 2)[0]
    (2, 2, True)
    """
    out = []
    for pid in prompt_ids:
        row = []
        for j in range(n):
            words = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFF, int(pid), j]).generate_state(
                2, np.uint32
            )
            row.append(int(words[0]) << 31 | int(words[1]) >> 1)
        out.append(row)
    return out


def draw_rows(probs: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One token per row of ``(B, V)`` probabilities, row ``r`` drawn from ``generators[r]`` only: what
    ``torch.multinomial(probs[r:r+1], 1, generator=generators[r])`` returns (and so what transformers'
    generate draws for a single row after ``torch.manual_seed``), ``(B,)`` long.

    ``torch.multinomial(p, 1)`` is ``argmax(p / q)`` with ``q ~ Exp(1)`` drawn by ``exponential_`` on a tensor
    shaped like ``p`` (ATen's one-sample path); drawing ``q`` row by row from each row's generator reproduces
    it exactly (tested) at a fifth of the cost per row. A one-hot row returns its token and still consumes
    the generator's draws, as generate does at positions a constraint forces.

    >>> g = [torch.Generator().manual_seed(0)]
    >>> p = torch.tensor([[0.2, 0.5, 0.3]])
    >>> int(draw_rows(p, g)[0]) == int(torch.multinomial(p, 1, generator=torch.Generator().manual_seed(0)))
    True
    """
    if probs.dim() != 2 or probs.shape[0] != len(generators):
        raise ValueError(f"probs must be (B, V) with one generator per row; got {tuple(probs.shape)} and "
                         f"{len(generators)} generators")
    q = torch.empty_like(probs)
    for r, g in enumerate(generators):
        q[r].exponential_(generator=g)
    return (probs / q).argmax(-1)


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (float64 stays float64: theory checks run the model in float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _lm(model):
    return model.model.language_model


@torch.no_grad()
def sample_image_tokens(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    seeds: Sequence[int],
    cfg_scale: float = 5.0,
    temperature: float = 1.0,
    top_k: int | None = None,
    image_length: int | None = None,
    return_logprobs: bool = False,
    progress: bool = False,
):
    """Sample image tokens for ``B`` left-padded prompt rows, one generator per row.

    ``input_ids``/``attention_mask``: ``(B, L)`` (prompt + begin-of-image, as :func:`prompt_batch` builds);
    ``seeds``: ``B`` ints. Returns ``(B, M)`` long tokens, and with ``return_logprobs`` also ``(B, M)``
    log-probabilities (float32, or float64 for a float64 model) of each drawn token under the (guided, warped) distribution it was drawn from.
    KV cache: transformers' ``DynamicCache``; with ``cfg_scale != 1`` the batch holds 2B rows (conditional
    rows, then unconditional rows). Logits are combined, warped and softmaxed in float32 (float64 for a float64 model).

    >>> from dynamics.full.presets import build_preset
    >>> model, processor = build_preset("tiny", seed=0)
    >>> ids, mask = prompt_batch(processor, ["a red cube"])
    >>> tok, lp = sample_image_tokens(model, ids, mask, seeds=[0], cfg_scale=1.0, return_logprobs=True)
    >>> tok.shape, bool((lp <= 0).all())
    (torch.Size([1, 16]), True)
    """
    from transformers import DynamicCache

    if input_ids.dim() != 2 or input_ids.shape != attention_mask.shape:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} must be equal (B, L)"
        )
    batch = input_ids.shape[0]
    if len(seeds) != batch:
        raise ValueError(f"{len(seeds)} seeds for {batch} rows")
    SamplingConfig(cfg_scale=cfg_scale, temperature=temperature, top_k=top_k)  # validates the knobs
    m = int(image_length or model.config.vision_config.num_image_tokens)
    bos, pad, boi = special_token_ids(model)
    device = input_ids.device
    guided = cfg_scale != 1.0
    ids, mask = input_ids, attention_mask.long()
    if guided:
        ids = torch.cat([ids, unconditional_ids(ids, bos_id=bos, boi_id=boi, pad_id=pad)])
        mask = torch.cat([mask, mask])
    gens = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
    lm = _lm(model)
    embeds = model.get_input_embeddings()(ids)
    pos = position_ids(mask)
    cache = DynamicCache(config=lm.config)
    padded = not bool(mask.bool().all())  # without padding the causal mask alone is right (and faster)
    full_mask = torch.cat([mask, mask.new_ones(mask.shape[0], m)], dim=1) if padded else None
    length = mask.shape[1]
    tokens = torch.empty(batch, m, dtype=torch.long, device=device)
    logp_dtype = torch.promote_types(model.model.generation_head.vision_head.weight.dtype, torch.float32)
    logps = torch.empty(batch, m, dtype=logp_dtype, device=device) if return_logprobs else None
    steps = range(m)
    if progress:
        from dynamics.report import progress as progress_bar

        steps = progress_bar(steps, desc="image tokens", leave=False)
    for i in steps:
        out = lm(
            inputs_embeds=embeds,
            attention_mask=full_mask[:, : length + i] if padded else None,
            position_ids=pos,
            cache=cache,
            use_cache=True,
        )
        cache = out.cache
        logits = _upcast(model.model.generation_head(out.last_hidden_state[:, -1, :]))
        if guided:
            logits = guide(logits[:batch], logits[batch:], cfg_scale)
        logits = warp(logits, temperature, top_k)
        probs = torch.softmax(logits, dim=-1)
        tokens[:, i] = draw_rows(probs, gens)
        if return_logprobs:
            logps[:, i] = torch.log_softmax(logits, -1).gather(-1, tokens[:, i, None])[:, 0]
        nxt = tokens[:, i : i + 1]
        if guided:
            nxt = torch.cat([nxt, nxt])
        embeds = model.prepare_embeddings_for_image_generation(nxt)
        pos = pos[:, -1:] + 1
    return (tokens, logps) if return_logprobs else tokens


class GenerationScorer(nn.Module):
    """Teacher-forced image-token log-probabilities through Janus's generation path, as an ``nn.Module``.

    ``forward(input_ids, attention_mask, image_tokens, cfg_scale=1.0, temperature=1.0, per_token=False)``:
    ``input_ids``/``attention_mask`` ``(N, L)`` left-padded generation prompts (ending in begin-of-image),
    ``image_tokens`` ``(N, M)``; returns ``(N,)`` sums ``sum_m log pi(x_m | y, x_<m)`` (or ``(N, M)`` per
    token), float32 (float64 for a float64 model), differentiable. ``cfg_scale == 1`` scores with the conditional logits (``cfg_mode``
    "none"); otherwise with the CFG-combined logits ``uncond + g (cond - uncond)`` (``cfg_mode`` "combined"),
    the unconditional rows built by :func:`unconditional_ids`. These equal the log-probabilities the
    sampler drew from (same temperature, no top-k).

    Wrap this module (not the Janus model) in DDP/accelerate: every training forward is its ``forward``.

    >>> import torch
    >>> from dynamics.full.presets import build_preset
    >>> model, processor = build_preset("tiny", seed=0)
    >>> scorer = GenerationScorer(model)
    >>> ids, mask = prompt_batch(processor, ["a red cube"])
    >>> tok, lp = sample_image_tokens(model, ids, mask, seeds=[3], cfg_scale=1.0, return_logprobs=True)
    >>> torch.allclose(scorer(ids, mask, tok), lp.sum(-1), atol=1e-4)
    True
    """

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_tokens: torch.Tensor,
        cfg_scale: float = 1.0,
        temperature: float = 1.0,
        per_token: bool = False,
    ) -> torch.Tensor:
        model = self.model
        n, length = input_ids.shape
        if image_tokens.dim() != 2 or image_tokens.shape[0] != n:
            raise ValueError(f"image_tokens must be (N={n}, M), got {tuple(image_tokens.shape)}")
        vocab = model.config.vq_config.num_embeddings
        if image_tokens.numel() and (int(image_tokens.min()) < 0 or int(image_tokens.max()) >= vocab):
            raise ValueError(
                f"image tokens must lie in [0, {vocab}), got range "
                f"[{int(image_tokens.min())}, {int(image_tokens.max())}]"
            )
        m = image_tokens.shape[1]
        guided = cfg_scale != 1.0
        ids, mask, tok = input_ids, attention_mask.long(), image_tokens
        if guided:
            bos, pad, boi = special_token_ids(model)
            ids = torch.cat([ids, unconditional_ids(ids, bos_id=bos, boi_id=boi, pad_id=pad)])
            mask = torch.cat([mask, mask])
            tok = torch.cat([tok, tok])
        text = model.get_input_embeddings()(ids)
        image = model.prepare_embeddings_for_image_generation(tok[:, :-1]).to(text.dtype)
        embeds = torch.cat([text, image], dim=1)
        full_mask = torch.cat([mask, mask.new_ones(mask.shape[0], m - 1)], dim=1)
        hidden = _lm(model)(
            inputs_embeds=embeds,
            attention_mask=full_mask,
            position_ids=position_ids(full_mask),
            use_cache=False,
        ).last_hidden_state[:, length - 1 :]
        logits = _upcast(model.model.generation_head(hidden))
        if guided:
            logits = guide(logits[:n], logits[n:], cfg_scale)
        logits = warp(logits, temperature)
        logp = torch.log_softmax(logits, -1).gather(-1, image_tokens[..., None])[..., 0]
        return logp if per_token else logp.sum(-1)


@torch.no_grad()
def decode_pixels(model, image_tokens: torch.Tensor, *, batch_size: int = 16) -> torch.Tensor:
    """VQ-decode ``(N, M)`` image tokens to float pixels ``(N, 3, H, W)`` (Janus's range is about [-1, 1]).

    >>> from dynamics.full.presets import build_preset
    >>> model = build_preset("tiny")[0]
    >>> decode_pixels(model, torch.zeros(2, 16, dtype=torch.long)).shape
    torch.Size([2, 3, 16, 16])
    """
    vq = model.model.vqmodel
    outs = [vq.decode(chunk) for chunk in image_tokens.split(max(1, batch_size))]
    return torch.cat(outs) if outs else torch.empty(0, 3, 0, 0)


def to_uint8(pixels: torch.Tensor, *, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5)) -> torch.Tensor:
    """Decoded pixels ``(N, 3, H, W)`` to ``uint8`` ``(N, H, W, 3)``: ``255 (x * std + mean)``, clipped and
    truncated, exactly as ``JanusImageProcessor.postprocess`` (and DeepSeek's reference code) produce PNGs.

    >>> to_uint8(torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1)).flatten().tolist()
    [0, 127, 255]
    """
    mean = torch.tensor(image_mean, dtype=torch.float32, device=pixels.device).view(1, -1, 1, 1)
    std = torch.tensor(image_std, dtype=torch.float32, device=pixels.device).view(1, -1, 1, 1)
    x = (pixels.float() * std + mean) * 255.0
    return x.clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def save_png(images_uint8: torch.Tensor, paths: Sequence[str | Path]) -> list[Path]:
    """Write ``(N, H, W, 3)`` uint8 images to PNG files (PIL), creating parent folders; returns the paths.

    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> [p.name for p in save_png(torch.zeros(1, 4, 4, 3, dtype=torch.uint8), [os.path.join(d, "x.png")])]
    ['x.png']
    """
    from PIL import Image

    if images_uint8.dim() != 4 or images_uint8.shape[-1] != 3 or images_uint8.dtype != torch.uint8:
        raise ValueError(
            f"images must be (N, H, W, 3) uint8, got {tuple(images_uint8.shape)} {images_uint8.dtype}"
        )
    if len(paths) != images_uint8.shape[0]:
        raise ValueError(f"{len(paths)} paths for {images_uint8.shape[0]} images")
    out = []
    for img, path in zip(images_uint8.cpu().numpy(), paths):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path)
        out.append(path)
    return out
