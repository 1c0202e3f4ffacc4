"""Emu3 as a :class:`dynamics.protocol.UnifiedModel`, through transformers' native Emu3 classes.

Emu3 is the *tied* design of the paper's contrast (:data:`dynamics.protocol.COUPLINGS`): one VQ vocabulary,
read and written through the same token embeddings and LLM (``Emu3ForConditionalGeneration`` with its
``Emu3VQVAE``), where Janus reads pixels through SigLIP and writes VQ codes through separate heads.

An image of ``h x w`` VQ codes is written in a row/column layout: the visual tokens of each row, then an
end-of-line token (``<|extra_200|>``), ``h`` times, then end-of-frame, end-of-image, end-of-sequence. A
generation prompt is ``BOS + text + <|image start|> + "h*w" + <|image token|>`` (what ``Emu3Processor(...,
return_for_image_generation=True)`` builds). Protocol images are the ``M = h * w`` VQ codes in
``[0, codebook_size)``, row-major.

- ``sample``: :func:`sample_image_tokens`, transformers' generation rule for Emu3 step by step (the rule of
  ``generate`` with ``negative_prompt_ids`` and the ``prefix_allowed_tokens_fn`` of transformers' Emu3
  example): classifier-free guidance ``g * (log_softmax(cond) - log_softmax(uncond)) + log_softmax(uncond)``
  with the unconditional branch on its own KV cache (the negative prompt, default empty text, then the
  sampled tokens), the layout constraint (visual tokens only inside a row; the end-of-line token forced at
  each row's end, its draw still consumed as generate consumes it), temperature, top-k, one
  ``torch.Generator`` per (prompt, candidate) row (:func:`~dynamics.full.sampler.row_seeds`): tested token
  for token against ``generate``; a left-padded batch gives each row the tokens it gets alone;
- ``judge``: the real pixel path. VQ decode, 8-bit quantisation as a saved PNG, then ``Emu3Processor``
  (resize to the VQ grid, normalisation, the image placeholder expanded to its token layout) and the
  model's own understanding forward (which re-encodes the pixels with the VQ encoder). ``P(yes)`` from the
  first answer token's logits over the yes/no token sets, as for Janus (:class:`~dynamics.full.janus.JudgeConfig`);
- ``image_logprob``: teacher-forced ``sum_m log pi_gen(x_m | y, x_<m)`` over the visual positions of the
  layout (the forced end-of-line tokens have probability one) by ``self.module``, an :class:`Emu3Scorer`,
  with ``cfg_mode`` "none" or "combined"; equal to the log-probabilities the sampler drew with (tested);
- ``generation_parameters``: scope "trunk" (decoder layers and final norm), "trunk+gen" (+ the token
  embeddings and the output head: in Emu3 these serve reading and writing alike) or "lora" (peft LoRA on
  the trunk's linear layers); the VQ model is always frozen;
- ``state_dict``/``load_state_dict``, ``judge_logprob``, ``save_images`` and the prompt checks are
  :class:`~dynamics.full.janus.JanusUnified`'s (this adapter overrides the model-specific paths only), so
  :func:`~dynamics.full.janus.entk_probe` runs on it too.

Presets (:data:`EMU3_PRESETS`): ``emu3-tiny`` (built offline from a config with a word-level tokenizer and an
``Emu3Processor`` around it; 4 x 4 codes) and ``emu3-8b-shape`` (Emu3-8B's shapes with random weights, for
benchmarks). Checkpoints (a local directory or a hub id in the cache) load through ``from_pretrained``.

Chameleon, the other one-vocabulary design, is not offered: :data:`~dynamics.full.presets.CHAMELEON_UNSUPPORTED`.

Example::

    >>> import torch
    >>> from dynamics.protocol import PromptSet, UnifiedModel
    >>> em = Emu3Unified.from_pretrained("emu3-tiny", PromptSet(["a red cube", "two dogs"]))
    >>> isinstance(em, UnifiedModel), em.image_length, (em.height, em.width)
    (True, 16, (4, 4))
    >>> x = em.sample(torch.tensor([0, 1]), 2, seed=0)
    >>> x.shape
    torch.Size([1, 2, 2, 16])
    >>> p = em.judge(torch.tensor([0, 1]), x)
    >>> p.shape, bool(((p >= 0) & (p <= 1)).all())
    (torch.Size([1, 2, 2]), True)
    >>> em.image_logprob(torch.tensor([0, 1]), x).requires_grad
    True
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dynamics.protocol import PromptSet

from .janus import JanusUnified, JudgeConfig, _checkpoint_activations
from .presets import DEFAULT_WORDS, build_tokenizer, checkpoint_source
from .sampler import SamplingConfig, draw_rows, guide, position_ids, row_seeds, to_uint8, warp

__all__ = [
    "EMU3_PRESETS",
    "Emu3Scorer",
    "Emu3Unified",
    "ImageLayout",
    "build_emu3",
    "build_emu3_processor",
    "build_emu3_tokenizer",
    "emu3_config",
    "load_emu3",
    "sample_image_tokens",
]

EMU3_PRESETS: dict[str, str] = {
    "emu3-tiny": "tiny random Emu3 (2 LLM layers, hidden 32, 64 VQ codes, 4x4 code grid = 32x32 pixels) for tests",
    "emu3-8b-shape": "Emu3-8B shapes (LLM 32x4096, vocabulary 184622 with 32768 VQ codes, 90x90 code grid), "
    "random weights",
}

# Emu3's special-token strings (the released tokenizer's spelling).
BOS, EOS, PAD, UNK = "<|extra_203|>", "<|extra_204|>", "<|endoftext|>", "<unk>"
IMAGE, BOI, EOI, WRAPPER = "<image>", "<|image start|>", "<|image end|>", "<|image token|>"
EOL, EOF = "<|extra_200|>", "<|extra_201|>"
SPECIAL_TOKENS = [UNK, BOS, EOS, PAD, IMAGE, BOI, EOI, WRAPPER, EOF, EOL]

# The conversation format of Emu3-Chat (``[system text] USER: <image>question ASSISTANT:``), written here
# so the offline preset formats understanding prompts as the released processor does.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
SYSTEM_PROMPT = "You are a helpful assistant."
# The VQ grid's downsampling, fixed at 8 by Emu3Processor (its ``downsample_ratio``).
SPATIAL_FACTOR = 8

_TRUNK = re.compile(r"^model\.text_model\.(layers\.\d+\.|norm\.)")
_GEN = re.compile(r"^(model\.text_model\.embed_tokens\.|lm_head\.)")
_LORA_TARGETS = r"model\.text_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"


# ---------------------------------------------------------------------- presets


def _visual(i: int) -> str:
    return f"<|visual token{i:06d}|>"


def build_emu3_tokenizer(codebook_size: int):
    """The offline word-level tokenizer of the ``emu3-tiny`` preset: Emu3's special tokens (ids 0-9), one
    atomic token per VQ code (``<|visual token000000|>``, ...), the preset word list, digits split (sizes
    such as ``4*4`` encode). No BOS is added: ``Emu3Processor`` prepends it.

    >>> tok = build_emu3_tokenizer(64)
    >>> tok.convert_ids_to_tokens(tok("a red cube 4*4")["input_ids"])
    ['a', 'red', 'cube', '4', '*', '4']
    >>> tok.convert_tokens_to_ids(["<|visual token000000|>", "<|extra_200|>"])
    [10, 9]
    """
    return build_tokenizer(
        [*DEFAULT_WORDS, "*", "USER", "ASSISTANT"],
        special_tokens=[*SPECIAL_TOKENS, *(_visual(i) for i in range(codebook_size))],
        roles={"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": UNK},
        extra_special_tokens={"image_token": IMAGE, "boi_token": BOI, "eoi_token": EOI,
                              "image_wrapper_token": WRAPPER, "eof_token": EOF},
        add_bos=False,
        split_digits=True,
    )


def emu3_config(name: str, *, image_tokens: int | None = None, vocabulary_map: dict | None = None):
    """The :class:`transformers.Emu3Config` of a preset (no weights are built).

    ``image_tokens`` (a perfect square) sets the code grid of ``emu3-tiny`` (default 16 = 4 x 4); the
    ``emu3-8b-shape`` preset has Emu3's 90 x 90 grid (720 x 720 pixels). ``vocabulary_map``: the token-to-id
    map (default: the offline tokenizer's for ``emu3-tiny``; a map with Emu3's 32768 visual-token ids
    151854..184621 for ``emu3-8b-shape``).

    >>> c = emu3_config("emu3-8b-shape")
    >>> c.text_config.hidden_size, c.text_config.vocab_size, c.vq_config.codebook_size
    (4096, 184622, 32768)
    >>> emu3_config("emu3-2b")
    Traceback (most recent call last):
    ...
    ValueError: unknown Emu3 preset 'emu3-2b'; presets: emu3-8b-shape, emu3-tiny
    """
    from transformers import Emu3Config, Emu3TextConfig

    if name not in EMU3_PRESETS:
        raise ValueError(f"unknown Emu3 preset {name!r}; presets: {', '.join(sorted(EMU3_PRESETS))}")
    if name == "emu3-tiny":
        m = 16 if image_tokens is None else int(image_tokens)
        grid = math.isqrt(max(m, 0))
        if m < 1 or grid * grid != m:
            raise ValueError(f"image_tokens must be a positive perfect square (a square code grid), got {m}")
        codebook = 64  # build_emu3 builds its tokenizer with this codebook
        vocab = vocabulary_map or build_emu3_tokenizer(codebook).get_vocab()
        tok_ids = {"pad_token_id": vocab[PAD], "bos_token_id": vocab[BOS], "eos_token_id": vocab[EOS]}
        text = Emu3TextConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, attention_dropout=0.0,
                              max_position_embeddings=max(1024, 2 * grid * (grid + 1) + 256), **tok_ids)
        # four stages: the VQ grid is 8x smaller than the image, as Emu3Processor assumes
        vq = {"codebook_size": codebook, "embed_dim": 4, "latent_channels": 4, "temporal_downsample_factor": 1,
              "base_channels": 32, "channel_multiplier": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [],
              "hidden_size": 32, "num_attention_heads": 1}
    else:
        if image_tokens not in (None, 8100):
            raise ValueError(f"preset {name!r} has Emu3's 90x90 = 8100 image tokens; got image_tokens={image_tokens}")
        codebook, first = 32768, 151854
        if vocabulary_map is None:
            vocab = {_visual(i): first + i for i in range(codebook)}
            vocab.update({PAD: 151643, IMAGE: 151646, EOL: 151846, EOF: 151847, BOS: 151849, EOS: 151850,
                          WRAPPER: 151851, BOI: 151852, EOI: 151853})
        else:
            vocab = vocabulary_map
        text = Emu3TextConfig(vocab_size=first + codebook, hidden_size=4096, intermediate_size=14336,
                              num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                              max_position_embeddings=9216, pad_token_id=vocab[PAD], bos_token_id=vocab[BOS],
                              eos_token_id=vocab[EOS])
        vq = {"codebook_size": codebook}  # Emu3-VisionTokenizer: Emu3VQVAEConfig's defaults
    return Emu3Config(text_config=text, vq_config=vq, vocabulary_map=dict(vocab))


def build_emu3_processor(config, tokenizer=None):
    """An :class:`transformers.Emu3Processor` for ``config`` with Emu3's image processor (mean = std = 0.5,
    so VQ-decoded pixels in [-1, 1] map to themselves; pixel bounds that keep the preset's images at their
    size) and the Emu3-Chat conversation format.

    >>> p = build_emu3_processor(emu3_config("emu3-tiny"))
    >>> p.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is it?"}]}],
    ...                       add_generation_prompt=True)
    'USER: <image>Is it? ASSISTANT:'
    """
    from transformers import Emu3Processor
    from transformers.models.emu3.image_processing_emu3 import Emu3ImageProcessor

    tokenizer = build_emu3_tokenizer(int(config.vq_config.codebook_size)) if tokenizer is None else tokenizer
    image_processor = Emu3ImageProcessor(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
                                         min_pixels=SPATIAL_FACTOR**2, max_pixels=1024 * 1024,
                                         spatial_factor=SPATIAL_FACTOR)
    return Emu3Processor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def build_emu3(
    name: str,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    image_tokens: int | None = None,
):
    """A preset's ``(model, processor)``, random weights drawn from ``seed``, eval mode. The code grid is
    recorded as ``model.config.image_area`` (pixels; saved in config.json), which the adapter reads.
    ``device="meta"`` builds the module tree without allocating weights (parameter counts of real shapes).

    >>> model, processor = build_emu3("emu3-tiny", seed=1, dtype=torch.float64)
    >>> next(model.parameters()).dtype, model.training, model.config.image_area
    (torch.float64, False, 1024)
    """
    from transformers import Emu3ForConditionalGeneration

    tokenizer = build_emu3_tokenizer(64) if name == "emu3-tiny" else None
    config = emu3_config(name, image_tokens=image_tokens, vocabulary_map=tokenizer.get_vocab() if tokenizer else None)
    processor = build_emu3_processor(config, tokenizer) if tokenizer is not None else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            model = Emu3ForConditionalGeneration(config)
    if str(device) != "meta":
        model = model.to(dtype)
    model.eval()
    grid = math.isqrt(image_tokens or 16) if name == "emu3-tiny" else 90
    model.config.image_area = (grid * SPATIAL_FACTOR) ** 2  # saved with the checkpoint, as Emu3-Gen did
    return model, processor


def load_emu3(
    name_or_path: str,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    image_tokens: int | None = None,
):
    """``(model, processor)`` from an Emu3 preset, a local checkpoint directory or a hub id (offline: in the
    cache; see :func:`dynamics.full.presets.checkpoint_source`). ``emu3-8b-shape`` has no tokenizer offline
    (processor None): it is for shape benchmarks, not for :class:`Emu3Unified`.

    >>> load_emu3("emu3-tiny")[0].config.vq_config.codebook_size
    64
    """
    if name_or_path in EMU3_PRESETS:
        return build_emu3(name_or_path, seed=seed, dtype=dtype or torch.float32, device=device or "cpu",
                          image_tokens=image_tokens)
    source = checkpoint_source(name_or_path, family="Emu3", presets=EMU3_PRESETS)
    from transformers import Emu3ForConditionalGeneration, Emu3Processor

    model = Emu3ForConditionalGeneration.from_pretrained(source, **({"dtype": dtype} if dtype is not None else {}))
    processor = Emu3Processor.from_pretrained(source)
    if device is not None:
        model = model.to(device)
    return model.eval(), processor


# ---------------------------------------------------------------------- layout, sampler, scorer


class ImageLayout:
    """The row/column token layout of an ``height x width`` code grid in a model's vocabulary.

    ``visual_ids``: the visual-token ids in code order (``visual_ids[c]`` writes code ``c``); ``eol_id``: the
    end-of-line token; ``length``: ``height * (width + 1)`` layout tokens; ``visual_positions``: the layout
    positions of the ``height * width`` codes (row-major).

    >>> from dynamics.full.emu3 import build_emu3
    >>> lay = ImageLayout(build_emu3("emu3-tiny")[0], 2, 2)
    >>> lay.length, lay.visual_positions.tolist()
    (6, [0, 1, 3, 4])
    >>> lay.to_layout(torch.tensor([[0, 1, 2, 3]])).tolist()
    [[10, 11, 9, 12, 13, 9]]
    """

    def __init__(self, model, height: int, width: int) -> None:
        vm = model.model.vocabulary_mapping
        self.height, self.width = int(height), int(width)
        if self.height < 1 or self.width < 1:
            raise ValueError(f"the code grid must be at least 1x1, got {height}x{width}")
        codes = sorted(vm.img2bpe)
        if codes != list(range(len(codes))):
            raise ValueError("the vocabulary map's visual tokens must number the codes 0..K-1")
        size = int(model.config.vq_config.codebook_size)
        if len(codes) != size:
            raise ValueError(f"the vocabulary map has {len(codes)} visual tokens for a codebook of {size}")
        if vm.eol_token_id is None:
            raise ValueError(f"the vocabulary map has no end-of-line token {EOL!r}")
        self.codebook_size = size
        self.visual_ids = torch.tensor([vm.img2bpe[c] for c in codes], dtype=torch.long)
        self.eol_id = int(vm.eol_token_id)
        self.length = self.height * (self.width + 1)
        self.visual_positions = torch.tensor(
            [j for j in range(self.length) if (j + 1) % (self.width + 1) != 0], dtype=torch.long
        )

    def is_eol(self, position: int) -> bool:
        """Whether layout position ``position`` (0-based) is a row's end-of-line token."""
        return (position + 1) % (self.width + 1) == 0

    def to_layout(self, codes: torch.Tensor) -> torch.Tensor:
        """``(N, height * width)`` codes -> ``(N, length)`` layout token ids (end-of-line after each row)."""
        n = codes.shape[0]
        rows = self.visual_ids.to(codes.device)[codes].view(n, self.height, self.width)
        eol = torch.full((n, self.height, 1), self.eol_id, dtype=torch.long, device=codes.device)
        return torch.cat([rows, eol], dim=-1).reshape(n, self.length)

    def check_codes(self, codes: torch.Tensor) -> None:
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"image tokens must lie in [0, {self.codebook_size}), got range "
                             f"[{int(codes.min())}, {int(codes.max())}]")


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


@torch.no_grad()
def sample_image_tokens(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    seeds: Sequence[int],
    height: int,
    width: int,
    negative_ids: torch.Tensor | None = None,
    cfg_scale: float = 3.0,
    temperature: float = 1.0,
    top_k: int | None = None,
    return_logprobs: bool = False,
    progress: bool = False,
):
    """Sample ``height x width`` VQ codes for ``B`` left-padded Emu3 generation prompts, one generator per row.

    ``input_ids``/``attention_mask``: ``(B, L)``, each prompt ending in the image wrapper token
    (:meth:`Emu3Unified.generation_inputs`); ``negative_ids``: the unconditional prompt, ``(1, Ln)`` or
    ``(B, Ln)`` without padding (None: the last prompt token alone, transformers' default); ``seeds``: ``B``
    ints. The rule is transformers' ``generate`` for Emu3 (module docstring): with ``cfg_scale == 1`` the
    unconditional branch is skipped and the raw logits are used. Returns ``(B, height * width)`` long codes,
    and with ``return_logprobs`` the ``(B, height * width)`` log-probabilities (float32, float64 for a
    float64 model) of each code under the guided, constrained, warped distribution it was drawn from.

    >>> from dynamics.full.emu3 import Emu3Unified
    >>> em = Emu3Unified.from_pretrained("emu3-tiny", ["a red cube"])
    >>> ids, mask = em.generation_inputs([0])
    >>> codes, lp = sample_image_tokens(em.model, ids, mask, seeds=[0], height=4, width=4, return_logprobs=True)
    >>> codes.shape, bool((lp <= 0).all())
    (torch.Size([1, 16]), True)
    """
    from transformers import DynamicCache

    if input_ids.dim() != 2 or input_ids.shape != attention_mask.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} "
                         "must be equal (B, L)")
    batch, length = input_ids.shape
    if len(seeds) != batch:
        raise ValueError(f"{len(seeds)} seeds for {batch} rows")
    SamplingConfig(cfg_scale=cfg_scale, temperature=temperature, top_k=top_k)  # validates the knobs
    lay = ImageLayout(model, height, width)
    device = input_ids.device
    text, head = model.model.text_model, model.lm_head
    guided = cfg_scale != 1.0
    gens = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
    mask = attention_mask.long()
    pos = position_ids(mask)
    padded = not bool(mask.bool().all())  # without padding the causal mask alone is right (as generate drops it)
    steps = lay.length - 1  # the last end-of-line token is implied
    full_mask = torch.cat([mask, mask.new_ones(batch, steps)], dim=1) if padded else None
    cache = DynamicCache(config=text.config)
    step_ids = input_ids
    if guided:
        neg = input_ids[:, -1:] if negative_ids is None else negative_ids.to(device)
        if neg.dim() != 2 or neg.shape[0] not in (1, batch):
            raise ValueError(f"negative_ids must be (1, Ln) or (B={batch}, Ln), got {tuple(neg.shape)}")
        neg_ids = neg.expand(batch, -1)
        neg_pos = torch.arange(neg_ids.shape[1], device=device).expand(batch, -1)
        neg_cache = DynamicCache(config=text.config)
    vocab = head.out_features
    allowed = torch.full((vocab,), float("-inf"), device=device)
    allowed[lay.visual_ids.to(device)] = 0.0
    visual_pos = set(lay.visual_positions.tolist())
    layout = torch.empty(batch, lay.length, dtype=torch.long, device=device)
    logp_dtype = torch.promote_types(head.weight.dtype, torch.float32)
    logps = torch.zeros(batch, lay.length, dtype=logp_dtype, device=device)
    it = range(steps)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="image tokens", leave=False)
    for i in it:
        out = text(input_ids=step_ids, attention_mask=full_mask[:, : length + i] if padded else None,
                   position_ids=pos, cache=cache, use_cache=True)
        cache = out.cache
        if guided:
            u = text(input_ids=neg_ids, position_ids=neg_pos, cache=neg_cache, use_cache=True)
            neg_cache = u.cache
        if i in visual_pos:
            logits = _upcast(head(out.last_hidden_state[:, -1]))
            if guided:
                uncond = _upcast(head(u.last_hidden_state[:, -1]))
                logits = guide(F.log_softmax(logits, -1), F.log_softmax(uncond, -1), cfg_scale)
            logits = warp(logits + allowed.to(logits.dtype), temperature, top_k)
            nxt = draw_rows(torch.softmax(logits, dim=-1), gens)
            if return_logprobs:
                logps[:, i] = torch.log_softmax(logits, -1).gather(-1, nxt[:, None])[:, 0]
        else:  # the forced end-of-line token: a one-hot draw, consuming the generators as generate does
            onehot = torch.zeros(batch, vocab, dtype=logp_dtype, device=device)
            onehot[:, lay.eol_id] = 1.0
            nxt = draw_rows(onehot, gens)
        layout[:, i] = nxt
        step_ids = nxt[:, None]
        pos = pos[:, -1:] + 1
        if guided:
            neg_ids, neg_pos = step_ids, neg_pos[:, -1:] + 1
    vis = lay.visual_positions.to(device)
    codes = _codes(model, layout[:, vis])
    return (codes, logps[:, vis]) if return_logprobs else codes


def _codes(model, visual_ids: torch.Tensor) -> torch.Tensor:
    return model.model.vocabulary_mapping.bpe2img_mapping_tensor.to(visual_ids.device)[visual_ids].long()


class Emu3Scorer(nn.Module):
    """Teacher-forced code log-probabilities through Emu3's generation path, as an ``nn.Module``.

    ``forward(input_ids, attention_mask, image_tokens, cfg_scale=1.0, temperature=1.0, per_token=False)``:
    left-padded generation prompts ``(N, L)`` (ending in the image wrapper token) and ``(N, M)`` codes;
    returns ``(N,)`` sums ``sum_m log pi(x_m | y, x_<m)`` over the visual positions (or ``(N, M)`` per code),
    float32 (float64 for a float64 model), differentiable. The codes are written in their layout (end-of-line
    tokens included) and fed in one forward; ``cfg_scale == 1`` scores the conditional logits (``cfg_mode``
    "none"), otherwise the guided ones with the unconditional branch on ``negative_ids`` (``cfg_mode``
    "combined"). Logits are computed for the visual tokens only: the layout constraint gives every other
    token probability zero, and the log-softmax normalisers of guidance cancel in the constrained softmax,
    so these equal the sampler's log-probabilities (same temperature, no top-k; tested to 1e-9 in float64).

    Wrap this module (not the Emu3 model) in DDP/accelerate: every training forward is its ``forward``.
    """

    def __init__(self, model, *, height: int, width: int, negative_ids: torch.Tensor | None = None) -> None:
        super().__init__()
        self.model = model
        self.layout = ImageLayout(model, height, width)
        self.negative_ids = negative_ids

    def _hidden(self, ids: torch.Tensor, mask: torch.Tensor | None, first: int) -> torch.Tensor:
        text = self.model.model.text_model
        if mask is None:
            pos = torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
        else:
            pos = position_ids(mask)
        hidden = text(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state
        return hidden[:, first:][:, self.layout.visual_positions.to(ids.device)]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_tokens: torch.Tensor,
        cfg_scale: float = 1.0,
        temperature: float = 1.0,
        per_token: bool = False,
    ) -> torch.Tensor:
        lay = self.layout
        n, length = input_ids.shape
        m = lay.height * lay.width
        if image_tokens.dim() != 2 or image_tokens.shape != (n, m):
            raise ValueError(f"image_tokens must be (N={n}, M={m}), got {tuple(image_tokens.shape)}")
        lay.check_codes(image_tokens)
        layout = lay.to_layout(image_tokens)[:, : lay.length - 2]  # inputs up to the last code's predecessor
        mask = attention_mask.long()
        full_mask = torch.cat([mask, mask.new_ones(n, layout.shape[1])], dim=1)
        weight = self.model.lm_head.weight[lay.visual_ids.to(input_ids.device)]
        hidden = self._hidden(torch.cat([input_ids, layout], dim=1), full_mask, length - 1)
        logits = _upcast(hidden @ weight.T)
        if cfg_scale != 1.0:
            neg = input_ids[:, -1:] if self.negative_ids is None else self.negative_ids.to(input_ids.device)
            neg = neg.expand(n, -1)
            uh = self._hidden(torch.cat([neg, layout], dim=1), None, neg.shape[1] - 1)
            logits = guide(logits, _upcast(uh @ weight.T), cfg_scale)
        logits = warp(logits, temperature)
        logp = torch.log_softmax(logits, -1).gather(-1, image_tokens[..., None])[..., 0]
        return logp if per_token else logp.sum(-1)


# ---------------------------------------------------------------------- adapter


class Emu3Unified(JanusUnified):
    """An Emu3 model seen through the model protocol (see the module docstring). ``R = 1``.

    Arguments: ``model`` (an ``Emu3ForConditionalGeneration``), ``processor`` (its ``Emu3Processor``),
    ``prompts``; keywords as :class:`~dynamics.full.janus.JanusUnified` (``sampling``, ``judge``, ``cfg_mode``,
    ``scope``, ``lora_rank``/``lora_alpha``/``lora_dropout``, ``logprob_batch_size``,
    ``gradient_checkpointing``, ``progress``) plus ``negative_prompt`` (the unconditional branch's text,
    default empty: BOS and the image header; Emu3's released example uses a list of defects) and
    ``image_area``/``ratio`` (the generated image's pixel area and aspect ratio, which set the code grid
    through ``Emu3Processor.calculate_generate_size``; default area: ``model.config.image_area``
    if recorded, else the processor's). ``judge.png_roundtrip`` must stay True: Emu3 reads 8-bit images.
    """

    _trunk, _gen, _lora_targets = _TRUNK, _GEN, _LORA_TARGETS

    def __init__(
        self,
        model,
        processor,
        prompts: PromptSet | Sequence[str],
        *,
        sampling: SamplingConfig | None = None,
        judge: JudgeConfig | None = None,
        cfg_mode: str = "none",
        scope: str = "trunk",
        lora_rank: int = 16,
        lora_alpha: float = 32.0,
        lora_dropout: float = 0.0,
        logprob_batch_size: int | None = None,
        gradient_checkpointing: bool = False,
        progress: bool = False,
        negative_prompt: str = "",
        image_area: int | None = None,
        ratio: str = "1:1",
    ) -> None:
        if processor is None:
            raise ValueError("Emu3Unified needs an Emu3Processor (a shape preset has none: it is for benchmarks)")
        prompts, sampling, judge = self._settings(prompts, sampling, judge, cfg_mode, scope, logprob_batch_size)
        if not judge.png_roundtrip:
            raise ValueError("JudgeConfig.png_roundtrip=False is not available for Emu3: it reads 8-bit images "
                             "through its processor and VQ encoder")
        self.model, self.processor, self.prompts = model, processor, prompts
        self.sampling, self.judge_config, self.cfg_mode, self.scope = sampling, judge, cfg_mode, scope
        self.logprob_batch_size, self.progress = logprob_batch_size, progress
        self.negative_prompt = negative_prompt
        area = image_area or getattr(model.config, "image_area", None) or processor.image_area
        self.image_area, self.ratio = int(area), ratio
        self.height, self.width = processor.calculate_generate_size(ratio, self.image_area, SPATIAL_FACTOR)
        self.image_length = self.height * self.width
        self.layout = ImageLayout(model, self.height, self.width)  # raises on a vocabulary without the layout
        self._answer_ids(processor.tokenizer, judge)
        self._apply_scope(lora_rank, lora_alpha, lora_dropout)
        if gradient_checkpointing:
            text = model.model.text_model
            _checkpoint_activations(text)
            for module in text.modules():  # Emu3's attention dropout zeroed: training mode changes nothing else
                if hasattr(module, "attention_dropout"):
                    module.attention_dropout = 0.0
        self.gradient_checkpointing = bool(gradient_checkpointing)
        neg = self._generation_encoding([negative_prompt])["input_ids"]
        self.scorer = Emu3Scorer(model, height=self.height, width=self.width, negative_ids=neg.to(self.device))
        self.module: torch.nn.Module = self.scorer

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        prompts: PromptSet | Sequence[str],
        *,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        seed: int = 0,
        image_tokens: int | None = None,
        **kwargs,
    ) -> Emu3Unified:
        """Load (or build, for a preset) with :func:`load_emu3` and wrap.

        >>> Emu3Unified.from_pretrained("emu3-tiny", ["a cube"], scope="lora").scope
        'lora'
        """
        if name_or_path == "emu3-8b-shape":  # refused before 8B parameters are built
            raise ValueError("emu3-8b-shape has no tokenizer or processor offline (random weights at Emu3-8B's "
                             "shapes, for benchmarks: dynamics.full.emu3.build_emu3); use emu3-tiny or a checkpoint")
        model, processor = load_emu3(name_or_path, dtype=dtype, device=device, seed=seed, image_tokens=image_tokens)
        return cls(model, processor, prompts, **kwargs)

    # ------------------------------------------------------------------ generation
    def _generation_encoding(self, texts: Sequence[str]):
        return self.processor(text=list(texts), return_for_image_generation=True, image_area=self.image_area,
                              ratio=self.ratio, padding=True, padding_side="left", return_tensors="pt")

    def generation_inputs(self, pids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ``(input_ids, attention_mask)`` of the generation prompts of ``pids`` (``Emu3Processor``
        with ``return_for_image_generation``: BOS, text, image start, ``"h*w"``, image wrapper token)."""
        enc = self._generation_encoding([self.prompts.texts[i] for i in pids])
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    _gen_inputs = generation_inputs

    def sample(self, prompt_ids: torch.Tensor, n: int, *, seed: int) -> torch.Tensor:
        """``n`` candidates per prompt, ``(1, B, n, M)`` long codes (CPU). Row (prompt p, candidate j) uses the
        seed :func:`~dynamics.full.sampler.row_seeds` derives from ``(seed, p, j)``: a candidate does not
        depend on the other rows of its batch or on ``sampling.batch_size``."""
        pids = self._check_prompt_ids(prompt_ids)
        if int(n) < 1:
            raise ValueError(f"n (candidates per prompt) must be >= 1, got {n}")
        n = int(n)
        seeds = row_seeds(seed, pids, n)
        rows = [(b, j) for b in range(len(pids)) for j in range(n)]
        out = torch.empty(len(pids), n, self.image_length, dtype=torch.long)
        size = self.sampling.batch_size or max(1, len(rows))
        s = self.sampling
        for start in self._bar(range(0, len(rows), size), "sampling"):
            chunk = rows[start : start + size]
            ids, mask = self.generation_inputs([pids[b] for b, _ in chunk])
            codes = sample_image_tokens(
                self.model, ids, mask, seeds=[seeds[b][j] for b, j in chunk], height=self.height, width=self.width,
                negative_ids=self.scorer.negative_ids, cfg_scale=s.cfg_scale, temperature=s.temperature,
                top_k=s.top_k)
            for (b, j), t in zip(chunk, codes.cpu()):
                out[b, j] = t
        return out.unsqueeze(0)

    # ------------------------------------------------------------------ understanding
    def understanding_texts(self, pids: Sequence[int]) -> list[str]:
        """The understanding prompts (chat template with one image placeholder, optional system text, answer
        prefix); ``Emu3Processor`` expands the placeholder to the image's token layout."""
        proc, jc = self.processor, self.judge_config
        out = []
        for pid in pids:
            question = jc.question.replace("{prompt}", self.prompts.texts[pid])
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            if jc.system_prompt:
                messages.insert(0, {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]})
            text = proc.apply_chat_template(messages, add_generation_prompt=True)
            if text.count(proc.image_token) != 1:
                raise ValueError(f"the chat template produced {text.count(proc.image_token)} image placeholders")
            out.append(text + jc.answer_prefix)
        return out

    def _und_inputs(self, pids: Sequence[int], tokens: torch.Tensor) -> dict:
        """The processor's inputs for ``pids`` and their ``(N, M)`` codes: decoded, quantised to 8 bits (the
        saved PNG's bytes), then ``Emu3Processor`` (``input_ids``, ``attention_mask``, ``pixel_values``,
        ``image_sizes``), on the model's device."""
        u8 = self.decode(tokens.reshape(1, 1, -1, self.image_length))[0, 0]
        enc = self.processor(text=self.understanding_texts(pids), images=list(u8.numpy()), padding=True,
                             padding_side="left", return_tensors="pt")
        dtype = next(self.model.parameters()).dtype
        enc = {k: v.to(self.device) for k, v in enc.items()}
        enc["pixel_values"] = enc["pixel_values"].to(dtype)
        return enc

    def _yes_logprob_rows(self, pids: Sequence[int], tokens: torch.Tensor) -> torch.Tensor:
        enc = self._und_inputs(pids, tokens)
        logits = self.model(**enc, position_ids=position_ids(enc["attention_mask"]), logits_to_keep=1).logits[:, -1]
        logits = _upcast(logits)
        yes = torch.logsumexp(logits[:, self._yes_ids], -1)
        no = torch.logsumexp(logits[:, self._no_ids], -1)
        return F.logsigmoid(yes - no)

    @torch.no_grad()
    def generate_answers(self, pids: Sequence[int], tokens: torch.Tensor) -> list[str]:
        """Greedy text answers of the understanding branch (transformers' generate) for each row."""
        enc = self._und_inputs(pids, tokens)
        tok = self.processor.tokenizer
        out = self.model.generate(**enc, do_sample=False, max_new_tokens=self.judge_config.max_new_tokens,
                                  pad_token_id=tok.pad_token_id)
        return tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)

    # ------------------------------------------------------------------ images
    @torch.no_grad()
    def decode_pixels(self, codes: torch.Tensor) -> torch.Tensor:
        """``(N, M)`` codes -> the VQ decoder's pixels ``(N, 3, 8h, 8w)`` (about [-1, 1]), in chunks of
        ``judge.batch_size`` (what ``Emu3Model.decode_image_tokens`` computes after its layout unwrapping)."""
        self.layout.check_codes(codes)
        vq = self.model.model.vqmodel
        grids = codes.to(self.device).view(-1, self.height, self.width)
        parts = [vq.decode(c) for c in grids.split(max(1, self.judge_config.batch_size))]
        return torch.cat(parts)

    def decode(self, images: torch.Tensor) -> torch.Tensor:
        """``(R, B, K, M)`` codes -> ``(R, B, K, H, W, 3)`` uint8 images (CPU): the processor's postprocess
        (``255 (x * std + mean)``, clipped, truncated), the bytes a saved PNG holds."""
        images = torch.as_tensor(images)
        if images.dim() != 4 or images.shape[-1] != self.image_length:
            raise ValueError(f"images must be (R, B, K, {self.image_length}), got {tuple(images.shape)}")
        ip = self.processor.image_processor
        px = self.decode_pixels(images.reshape(-1, self.image_length))
        u8 = to_uint8(px, image_mean=ip.image_mean, image_std=ip.image_std).cpu()
        return u8.reshape(*images.shape[:3], *u8.shape[1:])

    def pixel_values(self, tokens: torch.Tensor) -> torch.Tensor:
        """The processor's ``pixel_values`` for ``(N, M)`` codes (through the 8-bit images), no gradient."""
        pids = [0] * tokens.shape[0]
        return self._und_inputs(pids, tokens)["pixel_values"]
