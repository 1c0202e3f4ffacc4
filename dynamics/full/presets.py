"""Janus-Pro configs, tokenizers, processors and loading, all offline.

Three presets build a randomly initialised :class:`transformers.JanusForConditionalGeneration` from a config
(nothing is downloaded):

- ``tiny``: tiny shapes for tests (builds in well under 2 s); ``image_tokens`` (a perfect square, default
  16) sets the image-token grid, e.g. ``image_tokens=576`` for Janus-Pro's 24x24 grid on tiny layers;
- ``janus-pro-1b-shape`` / ``janus-pro-7b-shape``: the real shapes of Janus-Pro-1B / -7B (LLM, SigLIP-L
  encoder, VQ tokenizer, generation head) with random weights, for benchmarking without weights.

Presets come with a small word-level tokenizer trained on nothing (a fixed word list, the Janus special
tokens, unknown words mapping to ``<unk>``) and a :class:`transformers.JanusProcessor` around it, so the
prompt formatting, image placeholder expansion and pixel normalisation follow the real processor's code.
Real checkpoints (a hub id such as ``deepseek-community/Janus-Pro-1B`` or a local directory) load through
``from_pretrained``; with ``HF_HUB_OFFLINE=1`` an id missing from the local cache is refused up front.

Example::

    >>> model, processor = build_preset("tiny", seed=0)
    >>> model.config.vision_config.num_image_tokens, model.config.vq_config.num_embeddings
    (16, 64)
    >>> processor.tokenizer.boi_token
    '<begin_of_image>'
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

__all__ = [
    "CHAMELEON_UNSUPPORTED",
    "FAMILIES",
    "PRESETS",
    "build_from_config",
    "build_preset",
    "build_processor",
    "build_tokenizer",
    "checkpoint_source",
    "configure_generation",
    "load_janus",
    "model_family",
    "preset_config",
]

PRESETS: dict[str, str] = {
    "tiny": "tiny random Janus (2 LLM layers, hidden 32, 64 image-token codes) for tests",
    "janus-pro-1b-shape": "Janus-Pro-1B shapes (LLM 24x2048, SigLIP-L/16 @384, VQ 16384 codes), random weights",
    "janus-pro-7b-shape": "Janus-Pro-7B shapes (LLM 30x4096, SigLIP-L/16 @384, VQ 16384 codes), random weights",
}

# Janus's special-token strings (the DeepSeek tokenizer's spelling), reused by the offline tokenizer.
BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
UNK = "<unk>"
IMAGE = "<image_placeholder>"
BOI = "<begin_of_image>"
EOI = "<end_of_image>"
USER = "<|User|>"
ASSISTANT = "<|Assistant|>"
SPECIAL_TOKENS = [UNK, BOS, EOS, PAD, IMAGE, BOI, EOI, USER, ASSISTANT]

# Words the offline tokenizer knows: enough for GenEval/T2I-CompBench-style prompts and the judge's
# question/answer formats; anything else maps to <unk>.
DEFAULT_WORDS = [
    ":",
    "?",
    ".",
    ",",
    "'",
    '"',
    "(",
    ")",
    "-",
    "0",
    "1",
    "2",
    "3",
    "4",
    "5",
    "6",
    "7",
    "8",
    "9",
    "a",
    "an",
    "the",
    "A",
    "The",
    "of",
    "on",
    "in",
    "to",
    "and",
    "or",
    "with",
    "is",
    "are",
    "this",
    "that",
    "it",
    "its",
    "image",
    "photo",
    "picture",
    "Does",
    "does",
    "describe",
    "describes",
    "match",
    "matches",
    "Is",
    "Answer",
    "answer",
    "Yes",
    "yes",
    "No",
    "no",
    "Please",
    "please",
    "score",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "left",
    "right",
    "above",
    "below",
    "top",
    "bottom",
    "near",
    "next",
    "behind",
    "front",
    "side",
    "under",
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "purple",
    "pink",
    "brown",
    "black",
    "white",
    "gray",
    "grey",
    "cube",
    "sphere",
    "cat",
    "dog",
    "dogs",
    "cats",
    "car",
    "cars",
    "bird",
    "birds",
    "apple",
    "apples",
    "book",
    "books",
    "cup",
    "cups",
    "chair",
    "table",
    "person",
    "people",
    "tree",
    "trees",
    "house",
    "flower",
    "flowers",
    "bench",
    "bottle",
    "clock",
    "vase",
    "bowl",
    "banana",
    "horse",
    "cow",
    "sheep",
    "wooden",
    "metallic",
    "plastic",
    "glass",
    "fluffy",
    "rough",
    "smooth",
    "big",
    "small",
    "large",
    "tiny",
    "tall",
    "short",
    "round",
    "square",
    "You",
    "helpful",
    "language",
    "vision",
    "assistant",
    "able",
    "understand",
    "visual",
    "content",
    "user",
    "provides",
    "variety",
    "tasks",
    "using",
    "natural",
    "are",
    "can",
    "you",
    "description",
]

# The conversation format of Janus-Pro (``<|User|>: ...\n\n<|Assistant|>:``, images as placeholders);
# written here so offline presets format prompts the way the released processor does.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] | lower == 'user' %}<|User|>: {% elif message['role'] | lower == 'assistant' %}"
    "<|Assistant|>: {% else %}{{ message['role'] | capitalize }}: {% endif %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<image_placeholder>{% if not loop.last %}{{ '\\n' }}{% endif %}"
    "{% elif content['type'] == 'text' %}{{ content['text'] | trim }}{% endif %}"
    "{% endfor %}"
    "{% if message['role'] | lower == 'user' %}{{ '\\n\\n' }}{% else %}<｜end▁of▁sentence｜>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|Assistant|>:{% endif %}"
)


def _llama(**kw):
    from transformers import LlamaConfig

    return LlamaConfig(**kw)


def preset_config(name: str, *, image_tokens: int | None = None, vocab_size: int | None = None):
    """The :class:`transformers.JanusConfig` of a preset (no weights are built).

    ``image_tokens`` (a perfect square) overrides the image-token count of the ``tiny`` preset (real-shape
    presets keep Janus-Pro's 576). ``vocab_size`` overrides the text vocabulary of ``tiny``.

    >>> preset_config("janus-pro-1b-shape").text_config.hidden_size
    2048
    >>> preset_config("tiny", image_tokens=576).vision_config.image_size
    96
    >>> preset_config("janus-pro-3b")
    Traceback (most recent call last):
    ...
    ValueError: unknown Janus preset 'janus-pro-3b'; presets: janus-pro-1b-shape, janus-pro-7b-shape, tiny
    """
    from transformers import JanusConfig, JanusVisionConfig, JanusVQVAEConfig

    if name not in PRESETS:
        raise ValueError(f"unknown Janus preset {name!r}; presets: {', '.join(sorted(PRESETS))}")
    if name == "tiny":
        m = 16 if image_tokens is None else int(image_tokens)
        grid = math.isqrt(m)
        if m < 1 or grid * grid != m:
            raise ValueError(f"image_tokens must be a positive perfect square (a square token grid), got {m}")
        hidden, patch = 32, 4
        text = _llama(
            vocab_size=vocab_size or 256,
            hidden_size=hidden,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=max(1024, 2 * m + 256),
        )
        vision = JanusVisionConfig(
            hidden_size=hidden,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=grid * patch,
            patch_size=patch,
            mlp_ratio=2.0,
            projection_dim=hidden,
            depth=2,
            num_image_tokens=m,
        )
        # VQ decoder upsamples by 2^(len(channel_multiplier)-1) = 4 = patch size, so the decoded image
        # has the vision encoder's input size (as in Janus-Pro: 24 x 16 = 384).
        vq = JanusVQVAEConfig(
            embed_dim=4,
            num_embeddings=64,
            latent_channels=32,
            base_channels=32,
            channel_multiplier=[1, 1, 2],
            num_res_blocks=1,
            projection_dim=hidden,
            image_token_embed_dim=hidden,
            num_hidden_layers=2,
        )
    else:
        if image_tokens not in (None, 576):
            raise ValueError(
                f"preset {name!r} has Janus-Pro's 576 image tokens; got image_tokens={image_tokens}"
            )
        if name == "janus-pro-1b-shape":
            hidden, inter, layers, heads = 2048, 5632, 24, 16
        else:
            hidden, inter, layers, heads = 4096, 11008, 30, 32
        text = _llama(
            vocab_size=102400,
            hidden_size=hidden,
            intermediate_size=inter,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            max_position_embeddings=16384,
        )
        vision = JanusVisionConfig(projection_dim=hidden, depth=2)
        vq = JanusVQVAEConfig(projection_dim=hidden, image_token_embed_dim=hidden, num_hidden_layers=2)
    return JanusConfig(text_config=text, vision_config=vision, vq_config=vq)


def build_tokenizer(
    words=DEFAULT_WORDS,
    *,
    special_tokens=None,
    roles=None,
    extra_special_tokens=None,
    add_bos: bool = True,
    split_digits: bool = False,
):
    """A small word-level :class:`~transformers.PreTrainedTokenizerFast` with Janus's special tokens, offline.

    Words split on whitespace and punctuation; unknown words map to ``<unk>``; a BOS token is prepended and
    padding is on the left (as Janus's processor does). Other model families pass their own
    ``special_tokens`` (atomic added tokens, listed first, so their ids are ``0..``), ``roles`` (the
    ``bos_token``/``eos_token``/``pad_token``/``unk_token`` strings), ``extra_special_tokens`` (named
    tokens such as ``image_token``), ``add_bos=False`` (a processor that prepends BOS itself) and
    ``split_digits`` (each digit its own token, so sizes such as ``16*16`` encode).

    >>> tok = build_tokenizer()
    >>> tok.convert_ids_to_tokens(tok("a red cube")["input_ids"])
    ['<｜begin▁of▁sentence｜>', 'a', 'red', 'cube']
    >>> tok.image_token, tok.pad_token
    ('<image_placeholder>', '<｜▁pad▁｜>')
    """
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if special_tokens is None:
        special_tokens = SPECIAL_TOKENS
        roles = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": UNK}
        extra_special_tokens = {"image_token": IMAGE, "boi_token": BOI, "eoi_token": EOI}
    vocab: dict[str, int] = {}
    for w in [*special_tokens, *words]:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token=roles["unk_token"]))
    split = [pre_tokenizers.Whitespace()]
    if split_digits:
        split.append(pre_tokenizers.Digits(individual_digits=True))
    tk.pre_tokenizer = pre_tokenizers.Sequence(split) if len(split) > 1 else split[0]
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special_tokens])
    if add_bos:
        bos = roles["bos_token"]
        tk.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, **roles, extra_special_tokens=dict(extra_special_tokens or {}), padding_side="left"
    )


def build_processor(config, tokenizer=None):
    """A :class:`transformers.JanusProcessor` for ``config`` (a JanusConfig), with the PIL image processor.

    Pixel normalisation uses mean = std = 0.5 (Janus-Pro's), so decoded VQ images in [-1, 1] map to themselves.

    >>> p = build_processor(preset_config("tiny"))
    >>> p.num_image_tokens, p.image_processor.size["height"]
    (16, 16)
    """
    from transformers import JanusProcessor
    from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil

    tokenizer = build_tokenizer() if tokenizer is None else tokenizer
    size = int(config.vision_config.image_size)
    image_processor = JanusImageProcessorPil(
        size={"height": size, "width": size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        min_size=min(14, size),
    )
    return JanusProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
        use_default_system_prompt=False,
        num_image_tokens=int(config.vision_config.num_image_tokens),
    )


def configure_generation(model, tokenizer, *, guidance_scale: float = 5.0) -> None:
    """Set the token ids image generation needs on ``model.generation_config`` (bos, pad, begin-of-image).

    These are what transformers' ``generate(generation_mode="image")`` reads; released checkpoints ship them.

    >>> model, processor = build_preset("tiny")
    >>> gc = model.generation_config
    >>> (gc.bos_token_id, gc.pad_token_id, gc.generation_kwargs["boi_token_id"]) == (1, 3, 5)
    True
    """
    gc = model.generation_config
    gc.bos_token_id = tokenizer.bos_token_id
    gc.eos_token_id = tokenizer.eos_token_id
    gc.pad_token_id = tokenizer.pad_token_id
    gc.guidance_scale = guidance_scale
    gc.temperature = 1.0
    kwargs = dict(getattr(gc, "generation_kwargs", None) or {})
    kwargs["boi_token_id"] = tokenizer.convert_tokens_to_ids(tokenizer.boi_token)
    gc.generation_kwargs = kwargs


def build_from_config(
    config,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
):
    """A random-weight ``(model, processor)`` for any JanusConfig, with the offline tokenizer; eval mode.

    The config's image token id and the LLM's bos/eos/pad ids are set from the tokenizer.
    ``device="meta"`` builds the module tree without allocating weights (parameter counts of real shapes).

    >>> model, processor = build_from_config(preset_config("tiny", image_tokens=64), seed=3)
    >>> model.config.vq_config.num_patches
    8
    """
    from transformers import JanusForConditionalGeneration

    tokenizer = build_tokenizer()
    if len(tokenizer) > config.text_config.vocab_size:
        raise ValueError(
            f"tokenizer has {len(tokenizer)} tokens, config vocab is {config.text_config.vocab_size}"
        )
    config.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config.text_config, key, getattr(tokenizer, key))
    processor = build_processor(config, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            model = JanusForConditionalGeneration(config)
    if str(device) != "meta":
        model = model.to(dtype)
    model.eval()
    configure_generation(model, tokenizer)
    return model, processor


def build_preset(
    name: str,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    image_tokens: int | None = None,
):
    """Build a preset: ``(model, processor)`` with random weights drawn from ``seed``, in eval mode.

    >>> model, processor = build_preset("tiny", seed=1, dtype=torch.float64)
    >>> next(model.parameters()).dtype, model.training
    (torch.float64, False)
    >>> round(sum(p.numel() for p in build_preset("janus-pro-1b-shape", device="meta")[0].parameters()) / 1e9, 2)
    1.87
    """
    config = preset_config(name, image_tokens=image_tokens)
    return build_from_config(config, seed=seed, dtype=dtype, device=device)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def checkpoint_source(name_or_path: str, *, family: str = "Janus", presets=PRESETS) -> str:
    """The ``from_pretrained`` source of a checkpoint name: a local directory holding ``config.json``, or a hub
    id (``owner/name``) that, under ``HF_HUB_OFFLINE=1``, must be in the local cache. Anything else raises
    before any download or build: a missing directory (``FileNotFoundError``), a name that is neither one of
    ``presets`` (named in the message with ``family``) nor a directory nor a hub id (``ValueError``).

    >>> checkpoint_source("janus-pro-2b")
    Traceback (most recent call last):
    ...
    ValueError: 'janus-pro-2b' is not a Janus preset (janus-pro-1b-shape, janus-pro-7b-shape, tiny), a local directory or a hub id (owner/name)
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: no config.json, not a transformers checkpoint directory")
        return str(path)
    if name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1:
        raise FileNotFoundError(f"{name_or_path}: no such checkpoint directory")
    if "/" not in name_or_path or path.suffix:
        raise ValueError(
            f"{name_or_path!r} is not a {family} preset ({', '.join(sorted(presets))}), "
            "a local directory or a hub id (owner/name)"
        )
    if _offline():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name_or_path, "config.json")
        if not isinstance(cached, str):
            raise FileNotFoundError(
                f"model {name_or_path!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 "
                f"forbids downloading it; download it first (`hf download {name_or_path}`) or pass a "
                "local directory"
            )
    return name_or_path


#: The unified-model families the full scale runs, by transformers ``model_type``.
FAMILIES = ("janus", "emu3")

# Why Chameleon (the other one-VQ-vocabulary design) is refused: transformers' Chameleon cannot write images.
CHAMELEON_UNSUPPORTED = (
    "Chameleon cannot generate images through transformers: ChameleonVQVAE has an encoder and no decoder, "
    "and ChameleonForConditionalGeneration sets every image-token logit to the dtype's minimum"
)


def model_family(name_or_path: str) -> str:
    """The model family (one of :data:`FAMILIES`) of a preset name, a local checkpoint or a hub id, read from
    the preset registry or the checkpoint's ``config.json`` (``model_type``) without loading any weights.

    Raises a ``ValueError`` naming the cause for an unknown family (with the families supported; Chameleon
    with the reason it cannot generate), for a checkpoint without an image tokenizer (no ``vq_config``, or
    an Emu3 vocabulary without visual tokens), and the errors of :func:`checkpoint_source`.

    >>> model_family("tiny"), model_family("emu3-tiny")
    ('janus', 'emu3')
    >>> model_family("show-o-tiny")
    Traceback (most recent call last):
    ...
    ValueError: 'show-o-tiny' is not a Janus or Emu3 preset (emu3-8b-shape, emu3-tiny, janus-pro-1b-shape, janus-pro-7b-shape, tiny), a local directory or a hub id (owner/name)
    """
    import json

    from .emu3 import EMU3_PRESETS

    if name_or_path in PRESETS:
        return "janus"
    if name_or_path in EMU3_PRESETS:
        return "emu3"
    source = checkpoint_source(name_or_path, family="Janus or Emu3", presets=[*PRESETS, *EMU3_PRESETS])
    if Path(source).is_dir():
        config_file = Path(source) / "config.json"
    else:
        from huggingface_hub import hf_hub_download

        config_file = Path(hf_hub_download(source, "config.json"))  # cached (checked above when offline)
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{config_file}: not a readable JSON config ({e})") from None
    kind = config.get("model_type")
    if kind == "chameleon":
        raise ValueError(f"{name_or_path}: {CHAMELEON_UNSUPPORTED}")
    if kind == "emu3_text_model":
        raise ValueError(f"{name_or_path}: {config_file} is an Emu3 text model (model_type 'emu3_text_model'), "
                         "a checkpoint without an image tokenizer (no vq_config): it cannot generate or read images")
    if kind not in FAMILIES:
        raise ValueError(f"{name_or_path}: {config_file} has model_type {kind!r}, not a supported unified model "
                         f"family ({', '.join(FAMILIES)})")
    if not config.get("vq_config"):
        raise ValueError(f"{name_or_path}: {config_file} has no vq_config, a checkpoint without an image tokenizer: "
                         "it cannot generate or read images")
    if kind == "emu3" and not any(str(k).startswith("<|visual token") for k in config.get("vocabulary_map") or {}):
        raise ValueError(f"{name_or_path}: {config_file} has no visual tokens ('<|visual token...|>') in its "
                         "vocabulary_map, a checkpoint without an image tokenizer vocabulary")
    return kind


def load_janus(
    name_or_path: str,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    image_tokens: int | None = None,
    attn_implementation: str | None = None,
):
    """``(model, processor)`` from a preset name, a local checkpoint directory or a hub id.

    A hub id that is not in the local cache while ``HF_HUB_OFFLINE=1`` raises before anything is built; a
    name without ``/`` that is neither a preset nor a directory is reported with the list of presets.

    >>> load_janus("tiny")[0].config.vision_config.num_image_tokens
    16
    >>> load_janus("janus-pro-2b")
    Traceback (most recent call last):
    ...
    ValueError: 'janus-pro-2b' is not a Janus preset (janus-pro-1b-shape, janus-pro-7b-shape, tiny), a local directory or a hub id (owner/name)
    """
    if name_or_path in PRESETS:
        return build_preset(
            name_or_path,
            seed=seed,
            dtype=dtype or torch.float32,
            device=device or "cpu",
            image_tokens=image_tokens,
        )
    source = checkpoint_source(name_or_path)
    from transformers import JanusForConditionalGeneration, JanusProcessor

    kwargs = {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    model = JanusForConditionalGeneration.from_pretrained(source, **kwargs)
    processor = JanusProcessor.from_pretrained(source)
    if device is not None:
        model = model.to(device)
    model.eval()
    gc = model.generation_config
    if gc.pad_token_id is None or "boi_token_id" not in (getattr(gc, "generation_kwargs", None) or {}):
        configure_generation(model, processor.tokenizer, guidance_scale=gc.guidance_scale or 5.0)
    return model, processor
