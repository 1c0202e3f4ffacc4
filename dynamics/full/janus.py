"""Janus-Pro as a :class:`dynamics.protocol.UnifiedModel`, and first-order (eNTK) probes on it.

:class:`JanusUnified` wraps a transformers :class:`~transformers.JanusForConditionalGeneration` and its
:class:`~transformers.JanusProcessor` with the five protocol operations (``R = 1``):

- ``sample``: Janus's CFG sampler (:mod:`dynamics.full.sampler`), one seed per (prompt, candidate);
- ``judge``: the model's own understanding. The image tokens are decoded by the VQ model to pixels,
  quantised to 8 bits exactly as a saved PNG would be, normalised by the processor's mean/std, and read by
  the SigLIP encoder: Janus understands pixels, never VQ ids, so this is the path a user's saved images
  take (tested against ``JanusProcessor`` on the PNG). The question template is configurable; ``P(yes)``
  comes from the next-token logits after the assistant prefix (plus an optional answer prefix), restricted
  to configurable yes/no token sets in log space: ``sigmoid(logsumexp(z_yes) - logsumexp(z_no))``. An
  optional generate-and-parse mode reads answers such as "The score is 1";
- ``image_logprob``: teacher-forced ``sum_m log pi_gen(x_m | y, x_<m)`` through the generation path, with
  ``cfg_mode`` "none" (conditional logits) or "combined" (CFG-combined logits at the sampler's scale),
  computed by ``self.module`` (a :class:`~dynamics.full.sampler.GenerationScorer`): wrap that attribute
  in DDP/accelerate and every training forward goes through the wrapper;
- ``generation_parameters``: scope "trunk" (LLM decoder layers + final norm: the paper's default; the text
  embedding, tied to the understanding output head, stays frozen), "trunk+gen" (+ generation
  embeddings, aligner and head) or "lora" (peft LoRA adapters on the trunk's linear layers). The SigLIP
  encoder, its aligner and the VQ model are always frozen;
- ``state_dict``/``load_state_dict``: the scope's parameters only (everything else is frozen).

:func:`entk_probe` checks the theory on the real architecture: for probe pairs ``o`` and a training pair
``u``, ``eta <grad log pi_gen(o), grad log pi_gen(u)>`` and ``eta <grad log P_und(yes|o), grad log pi_gen(u)>``
(the study layer's one-step check, :func:`dynamics.study.first_order.one_step`) against the changes
measured after one plain-SGD step on u.

Example::

    >>> import torch
    >>> from dynamics.protocol import PromptSet, UnifiedModel
    >>> jm = JanusUnified.from_pretrained("tiny", PromptSet(["a red cube", "two dogs"]))
    >>> isinstance(jm, UnifiedModel), jm.image_length
    (True, 16)
    >>> x = jm.sample(torch.tensor([0, 1]), 3, seed=0)
    >>> x.shape
    torch.Size([1, 2, 3, 16])
    >>> p = jm.judge(torch.tensor([0, 1]), x)
    >>> p.shape, bool(((p > 0) & (p < 1)).all())
    (torch.Size([1, 2, 3]), True)
    >>> jm.image_logprob(torch.tensor([0, 1]), x).requires_grad
    True
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from dynamics.protocol import PromptSet, check_images

from .sampler import (
    GenerationScorer,
    SamplingConfig,
    decode_pixels,
    position_ids,
    prompt_batch,
    row_seeds,
    sample_image_tokens,
    save_png,
    special_token_ids,
    to_uint8,
)

__all__ = ["CFG_MODES", "SCOPES", "JanusUnified", "JudgeConfig", "ProbeResult", "entk_probe"]

SCOPES = ("trunk", "trunk+gen", "lora")
CFG_MODES = ("none", "combined")

_TRUNK = re.compile(r"^model\.language_model\.(layers\.\d+\.|norm\.)")
_GEN = re.compile(r"^model\.generation_(embeddings|aligner|head)\.")
_LORA_TARGETS = r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"


@dataclass(frozen=True)
class JudgeConfig:
    """How the model's own understanding is asked whether an image describes its prompt.

    ``question``: the user turn after the image; ``{prompt}`` is replaced by the prompt text.
    ``answer_prefix``: text appended after the assistant tag before reading the next token (e.g.
    ``" The score is"``). ``yes``/``no``: answer strings; those that encode to a single token form the two
    token sets (at least one each). ``mode``: "logits" (``P(yes)`` from the next-token logits) or
    "generate" (greedy decoding of up to ``max_new_tokens`` tokens, parsed by ``pattern``: its first group
    ``1``/``yes`` scores 1, ``0``/``no`` scores 0, anything else scores ``unparsed``). ``system_prompt``:
    prepend transformers' default Janus system prompt (None: as the processor is configured).
    ``png_roundtrip``: quantise decoded pixels to 8 bits as a saved PNG would be. ``batch_size``: images
    per understanding forward.

    >>> JudgeConfig().question
    'Does this image describe "{prompt}"? Please answer yes or no.'
    >>> JudgeConfig.score_format().answer_prefix
    ' The score is'
    >>> JudgeConfig(mode="vote")
    Traceback (most recent call last):
    ...
    ValueError: JudgeConfig.mode must be 'logits' or 'generate', got 'vote'
    """

    question: str = 'Does this image describe "{prompt}"? Please answer yes or no.'
    answer_prefix: str = ""
    yes: tuple[str, ...] = ("Yes", "yes", " Yes", " yes")
    no: tuple[str, ...] = ("No", "no", " No", " no")
    mode: str = "logits"
    max_new_tokens: int = 12
    pattern: str = r"(?i)\b(yes|no|[01])\b"
    unparsed: float = 0.0
    system_prompt: bool | None = None
    png_roundtrip: bool = True
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.mode not in ("logits", "generate"):
            raise ValueError(f"JudgeConfig.mode must be 'logits' or 'generate', got {self.mode!r}")
        if "{prompt}" not in self.question:
            raise ValueError(f"JudgeConfig.question must contain '{{prompt}}', got {self.question!r}")
        if not self.yes or not self.no:
            raise ValueError("JudgeConfig.yes and JudgeConfig.no must each list at least one answer string")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError(
                f"JudgeConfig.batch_size and max_new_tokens must be >= 1, got "
                f"{self.batch_size}, {self.max_new_tokens}"
            )
        if not 0.0 <= self.unparsed <= 1.0:
            raise ValueError(f"JudgeConfig.unparsed must lie in [0, 1], got {self.unparsed}")
        re.compile(self.pattern)

    @classmethod
    def score_format(cls, **overrides) -> JudgeConfig:
        """The paper's answer format: the model is asked to answer "The score is 1" (the image describes
        the prompt) or "The score is 0"; ``P(yes)`` is read at the digit after the forced prefix
        ``" The score is"`` (``mode="generate"`` parses the generated answer instead)."""
        base = {
            "question": (
                'Does this image describe "{prompt}"? If it does, answer "The score is 1"; '
                'if it does not, answer "The score is 0".'
            ),
            "answer_prefix": " The score is",
            "yes": ("1", " 1"),
            "no": ("0", " 0"),
            "pattern": r"(?i)score\s*is\s*([01])",
        }
        base.update(overrides)
        if base.get("mode") == "generate" and "answer_prefix" not in overrides:
            base["answer_prefix"] = ""
        return cls(**base)


def _single_token_ids(tokenizer, words: Sequence[str]) -> list[int]:
    out: list[int] = []
    for w in words:
        ids = tokenizer.encode(w, add_special_tokens=False)
        if len(ids) == 1 and ids[0] != tokenizer.unk_token_id and ids[0] not in out:
            out.append(int(ids[0]))
    return out


def _checkpoint_activations(lm) -> None:
    """Recompute the activations of the language model ``lm`` in backward (less memory). transformers
    checkpoints only in training mode, so ``lm`` is put in it."""
    if hasattr(lm, "activation_checkpointing_enable"):
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:  # transformers < 5.2x
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lm.train()


class JanusUnified:
    """A Janus model seen through the model protocol (see the module docstring). ``R = 1``.

    Arguments: ``model`` (a ``JanusForConditionalGeneration``), ``processor`` (its ``JanusProcessor``),
    ``prompts`` (a :class:`~dynamics.protocol.PromptSet` or a list of strings); keywords ``sampling``
    (:class:`~dynamics.full.sampler.SamplingConfig`; None: defaults), ``judge`` (:class:`JudgeConfig`;
    None: defaults), ``cfg_mode``
    ("none" | "combined": which logits ``image_logprob`` scores), ``scope`` ("trunk" | "trunk+gen" |
    "lora"), ``lora_rank``/``lora_alpha``/``lora_dropout``, ``logprob_batch_size`` (rows per scorer
    forward; None: all), ``gradient_checkpointing`` (recompute LLM activations in backward: less memory
    for 1B/7B training), ``progress`` (tqdm bars). Construction freezes every parameter outside the scope.

    Outputs of ``sample`` and ``judge`` are on the CPU; ``image_logprob`` is on the model's device.
    """

    replicas = 1
    # parameter names of the scopes (a subclass for another family sets its own)
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
    ) -> None:
        prompts, sampling, judge = self._settings(prompts, sampling, judge, cfg_mode, scope, logprob_batch_size)
        self.model = model
        self.processor = processor
        self.prompts = prompts
        self.sampling = sampling
        self.judge_config = judge
        self.cfg_mode = cfg_mode
        self.scope = scope
        self.logprob_batch_size = logprob_batch_size
        self.progress = progress
        cfg = model.config
        self.image_length = int(cfg.vision_config.num_image_tokens)
        grid = int(cfg.vq_config.num_patches)
        if grid * grid != self.image_length:
            raise ValueError(
                f"config mismatch: {self.image_length} image tokens but a {grid}x{grid} VQ grid "
                "(vision_config.num_image_tokens must be (image_size // patch_size) ** 2)"
            )
        special_token_ids(model)  # raises early if the generation token ids are missing
        self._answer_ids(processor.tokenizer, judge)
        self._apply_scope(lora_rank, lora_alpha, lora_dropout)
        if gradient_checkpointing:
            # the Llama trunk has no dropout, so training mode changes nothing else
            _checkpoint_activations(model.model.language_model)
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.scorer = GenerationScorer(model)
        self.module: torch.nn.Module = self.scorer

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _settings(prompts, sampling, judge, cfg_mode, scope, logprob_batch_size):
        """The constructor's settings checked (ValueError naming the setting), with their defaults filled:
        ``(prompts as a PromptSet, sampling, judge)``."""
        if not isinstance(prompts, PromptSet):
            prompts = PromptSet(texts=list(prompts))
        if cfg_mode not in CFG_MODES:
            raise ValueError(f"cfg_mode must be one of {CFG_MODES}, got {cfg_mode!r}")
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        if logprob_batch_size is not None and logprob_batch_size < 1:
            raise ValueError(f"logprob_batch_size must be None or >= 1, got {logprob_batch_size}")
        return prompts, SamplingConfig() if sampling is None else sampling, JudgeConfig() if judge is None else judge

    def _answer_ids(self, tok, judge: JudgeConfig) -> None:
        """The single-token ids of the yes and no answers (``self._yes_ids``, ``self._no_ids``), checked
        usable for reading P(yes) from logits."""
        self._yes_ids = _single_token_ids(tok, judge.yes)
        self._no_ids = _single_token_ids(tok, judge.no)
        if judge.mode == "logits":
            if not self._yes_ids or not self._no_ids:
                raise ValueError(
                    f"no single-token answer among yes={judge.yes!r} / no={judge.no!r} for this tokenizer; "
                    "give answer strings that encode to one token"
                )
            if set(self._yes_ids) & set(self._no_ids):
                raise ValueError(
                    f"yes and no answers share token ids {sorted(set(self._yes_ids) & set(self._no_ids))}"
                )

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
    ) -> JanusUnified:
        """Load (or build, for a preset) with :func:`dynamics.full.presets.load_janus` and wrap.

        >>> JanusUnified.from_pretrained("tiny", ["a cube"], scope="lora").scope
        'lora'
        """
        from .presets import load_janus

        if not isinstance(prompts, PromptSet):
            prompts = PromptSet(texts=list(prompts))
        model, processor = load_janus(
            name_or_path, dtype=dtype, device=device, seed=seed, image_tokens=image_tokens
        )
        return cls(model, processor, prompts, **kwargs)

    def _apply_scope(self, rank: int, alpha: float, dropout: float) -> None:
        model = self.model
        if self.scope == "lora":
            from peft import LoraConfig, inject_adapter_in_model

            if rank < 1:
                raise ValueError(f"lora_rank must be >= 1, got {rank}")
            config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=self._lora_targets)
            if not any("lora_" in n for n, _ in model.named_parameters()):  # adapters already there: reuse
                inject_adapter_in_model(config, model)
        for name, p in model.named_parameters():
            if self.scope == "lora":
                keep = "lora_" in name
            else:
                keep = bool(self._trunk.match(name)) or (self.scope == "trunk+gen" and bool(self._gen.match(name)))
            p.requires_grad_(keep)
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError(f"scope {self.scope!r} selects no parameter of this model")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ protocol
    def _check_prompt_ids(self, prompt_ids) -> list[int]:
        ids = torch.as_tensor(prompt_ids)
        if ids.dim() != 1:
            raise ValueError(f"prompt_ids must be 1-D (B,), got shape {tuple(ids.shape)}")
        out = [int(i) for i in ids.tolist()]
        bad = [i for i in out if not 0 <= i < len(self.prompts)]
        if bad:
            raise ValueError(f"prompt ids {bad[:5]} out of range for {len(self.prompts)} prompts")
        return out

    def _gen_inputs(self, pids: Sequence[int]):
        return prompt_batch(self.processor, [self.prompts.texts[i] for i in pids], device=self.device)

    def _bar(self, it, desc: str):
        if not self.progress:
            return it
        from dynamics.report import progress as progress_bar

        return progress_bar(it, desc=desc)

    def sample(self, prompt_ids: torch.Tensor, n: int, *, seed: int) -> torch.Tensor:
        """``n`` candidates per prompt, ``(1, B, n, M)`` long (CPU). Row (prompt p, candidate j) uses the
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
            ids, mask = self._gen_inputs([pids[b] for b, _ in chunk])
            tokens = sample_image_tokens(
                self.model,
                ids,
                mask,
                seeds=[seeds[b][j] for b, j in chunk],
                cfg_scale=s.cfg_scale,
                temperature=s.temperature,
                top_k=s.top_k,
                image_length=self.image_length,
            )
            for (b, j), t in zip(chunk, tokens.cpu()):
                out[b, j] = t
        return out.unsqueeze(0)

    def image_logprob(self, prompt_ids: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Teacher-forced ``log pi_gen(images | prompt)`` summed over positions, ``(1, B, K)`` float32 with
        gradient, computed by ``self.module`` (``cfg_mode`` "combined" scores the CFG-combined logits at
        ``sampling.cfg_scale``, temperature 1)."""
        pids, k, rows, flat = self._rows(prompt_ids, images)
        flat = flat.to(self.device, torch.long)
        scale = self.sampling.cfg_scale if self.cfg_mode == "combined" else 1.0
        size = self.logprob_batch_size or max(1, len(rows))
        parts = []
        for start in range(0, len(rows), size):
            ids, mask = self._gen_inputs(rows[start : start + size])
            parts.append(self.module(ids, mask, flat[start : start + size], cfg_scale=scale))
        return torch.cat(parts).reshape(1, len(pids), k)

    def generation_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters of the scope (those with ``requires_grad``), in module order.

        >>> jm = JanusUnified.from_pretrained("tiny", ["a cube"])
        >>> sum(p.numel() for p in jm.generation_parameters()) < sum(p.numel() for p in jm.model.parameters())
        True
        """
        return [p for p in self.model.parameters() if p.requires_grad]

    def generation_parameter_names(self) -> list[str]:
        """Names (in ``self.model``) of :meth:`generation_parameters`."""
        return [n for n, p in self.model.named_parameters() if p.requires_grad]

    def state_dict(self) -> dict:
        """The scope's parameters (CPU copies) with the scope name; the frozen rest is the base model's."""
        return {
            "scope": self.scope,
            "parameters": {
                n: p.detach().cpu().clone() for n, p in self.model.named_parameters() if p.requires_grad
            },
        }

    def load_state_dict(self, state: dict) -> JanusUnified:
        """Restore :meth:`state_dict` output; the scope and parameter names must match."""
        if state.get("scope") != self.scope:
            raise ValueError(f"checkpoint scope {state.get('scope')!r} != model scope {self.scope!r}")
        params = dict(self.model.named_parameters())
        saved = state["parameters"]
        missing = [n for n in self.generation_parameter_names() if n not in saved]
        unknown = [n for n in saved if n not in params]
        if missing or unknown:
            raise ValueError(f"checkpoint parameters differ: missing {missing[:3]}, unknown {unknown[:3]}")
        with torch.no_grad():
            for n, v in saved.items():
                if params[n].shape != v.shape:
                    raise ValueError(f"checkpoint {n}: shape {tuple(v.shape)} != {tuple(params[n].shape)}")
                params[n].copy_(v.to(params[n].device, params[n].dtype))
        return self

    # ------------------------------------------------------------------ understanding
    def understanding_texts(self, pids: Sequence[int]) -> list[str]:
        """The understanding prompt strings (chat template, optional system prompt, answer prefix), with
        one image placeholder expanded to begin-of-image + ``M`` image tokens + end-of-image."""
        from transformers.models.janus.processing_janus import DEFAULT_SYSTEM_PROMPT

        proc, jc = self.processor, self.judge_config
        system = proc.use_default_system_prompt if jc.system_prompt is None else jc.system_prompt
        image_block = proc.image_start_token + proc.image_token * self.image_length + proc.image_end_token
        out = []
        for pid in pids:
            question = jc.question.replace("{prompt}", self.prompts.texts[pid])
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            text = proc.apply_chat_template(messages, add_generation_prompt=True)
            if text.count(proc.image_token) != 1:
                raise ValueError(
                    f"the chat template produced {text.count(proc.image_token)} image placeholders"
                )
            text = (DEFAULT_SYSTEM_PROMPT if system else "") + text + jc.answer_prefix
            out.append(text.replace(proc.image_token, image_block))
        return out

    def pixel_values(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(N, M)`` image tokens -> the vision encoder's ``pixel_values`` ``(N, 3, S, S)`` (no gradient):
        VQ decode, 8-bit quantisation (``judge.png_roundtrip``), the processor's rescale and normalisation;
        a decoded size other than the encoder's goes through the image processor itself (resize + pad)."""
        ip = self.processor.image_processor
        mean = torch.tensor(ip.image_mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(ip.image_std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        dtype = next(self.model.model.vision_model.parameters()).dtype
        with torch.no_grad():
            px = decode_pixels(self.model, tokens.to(self.device), batch_size=self.judge_config.batch_size)
            size = int(self.model.config.vision_config.image_size)
            if self.judge_config.png_roundtrip or px.shape[-1] != size:
                u8 = to_uint8(px)  # the PNG's bytes
                if px.shape[-1] != size:
                    out = ip(images=list(u8.cpu().numpy()), return_tensors="pt")["pixel_values"]
                    return out.to(self.device, dtype)
                x = u8.permute(0, 3, 1, 2).float() * float(ip.rescale_factor)
            else:
                x = (px.float().clamp(-1, 1) + 1) / 2  # Janus's [-1, 1] pixels, unquantised
            return ((x - mean) / std).to(dtype)

    def _und_inputs(self, pids: Sequence[int], tokens: torch.Tensor):
        enc = self.processor.tokenizer(
            self.understanding_texts(pids), padding=True, padding_side="left", return_tensors="pt"
        )
        return (
            enc["input_ids"].to(self.device),
            enc["attention_mask"].to(self.device),
            self.pixel_values(tokens),
        )

    def _yes_logprob_rows(self, pids: Sequence[int], tokens: torch.Tensor) -> torch.Tensor:
        ids, mask, pixels = self._und_inputs(pids, tokens)
        logits = self.model(
            input_ids=ids,
            attention_mask=mask,
            pixel_values=pixels,
            position_ids=position_ids(mask),
            logits_to_keep=1,
        ).logits[:, -1]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        yes = torch.logsumexp(logits[:, self._yes_ids], -1)
        no = torch.logsumexp(logits[:, self._no_ids], -1)
        return F.logsigmoid(yes - no)

    def _rows(self, prompt_ids, images):
        pids = self._check_prompt_ids(prompt_ids)
        images = check_images(torch.as_tensor(images), replicas=1, batch=len(pids))
        if images.shape[-1] != self.image_length:
            raise ValueError(
                f"images have {images.shape[-1]} tokens, the model generates {self.image_length}"
            )
        k = images.shape[2]
        return pids, k, [p for p in pids for _ in range(k)], images[0].reshape(-1, self.image_length)

    def judge_logprob(self, prompt_ids: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """``log P_und(yes | image, q(prompt))`` over the yes/no token sets, ``(1, B, K)`` with gradient
        (logits mode only). The understanding forward uses the model directly: it is not a training path."""
        if self.judge_config.mode != "logits":
            raise ValueError("judge_logprob needs JudgeConfig.mode == 'logits'")
        pids, k, rows, flat = self._rows(prompt_ids, images)
        size = self.judge_config.batch_size
        parts = [
            self._yes_logprob_rows(rows[s : s + size], flat[s : s + size]) for s in range(0, len(rows), size)
        ]
        return torch.cat(parts).reshape(1, len(pids), k)

    @torch.no_grad()
    def judge(self, prompt_ids: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Own-understanding ``P(yes)``, ``(1, B, K)`` float32 on the CPU, no gradient."""
        pids, k, rows, flat = self._rows(prompt_ids, images)
        size = self.judge_config.batch_size
        parts = []
        for s in self._bar(range(0, len(rows), size), "judging"):
            if self.judge_config.mode == "logits":
                parts.append(self._yes_logprob_rows(rows[s : s + size], flat[s : s + size]).exp().cpu())
            else:
                answers = self.generate_answers(rows[s : s + size], flat[s : s + size])
                parts.append(torch.tensor([self.parse_answer(a) for a in answers], dtype=torch.float32))
        return torch.cat(parts).float().reshape(1, len(pids), k)

    @torch.no_grad()
    def generate_answers(self, pids: Sequence[int], tokens: torch.Tensor) -> list[str]:
        """Greedy text answers of the understanding branch (transformers' text generation) for each row."""
        ids, mask, pixels = self._und_inputs(pids, tokens)
        pad = self.processor.tokenizer.pad_token_id
        out = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            pixel_values=pixels,
            generation_mode="text",
            do_sample=False,
            max_new_tokens=self.judge_config.max_new_tokens,
            pad_token_id=pad,
        )
        return self.processor.tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)

    def parse_answer(self, answer: str) -> float:
        """1.0 / 0.0 from an answer by ``judge.pattern`` (first group: 1/yes vs 0/no); else ``judge.unparsed``.

        >>> jm = JanusUnified.from_pretrained("tiny", ["a cube"], judge=JudgeConfig.score_format(mode="generate"))
        >>> jm.parse_answer("The score is 1."), jm.parse_answer("The score is 0"), jm.parse_answer("maybe")
        (1.0, 0.0, 0.0)
        """
        m = re.search(self.judge_config.pattern, answer)
        if m is None:
            return float(self.judge_config.unparsed)
        word = (m.group(1) if m.groups() else m.group(0)).strip().lower()
        if word in ("1", "yes"):
            return 1.0
        if word in ("0", "no"):
            return 0.0
        return float(self.judge_config.unparsed)

    # ------------------------------------------------------------------ images
    def decode(self, images: torch.Tensor) -> torch.Tensor:
        """``(R, B, K, M)`` tokens -> ``(R, B, K, H, W, 3)`` uint8 images (CPU)."""
        images = torch.as_tensor(images)
        if images.dim() != 4 or images.shape[-1] != self.image_length:
            raise ValueError(f"images must be (R, B, K, {self.image_length}), got {tuple(images.shape)}")
        flat = images.reshape(-1, self.image_length).to(self.device)
        u8 = to_uint8(decode_pixels(self.model, flat, batch_size=self.judge_config.batch_size)).cpu()
        return u8.reshape(*images.shape[:3], *u8.shape[1:])

    def save_images(self, prompt_ids, images: torch.Tensor, out_dir: str | Path) -> list[Path]:
        """Decode and write ``out_dir/p{prompt}_c{candidate}.png`` for each ``(1, B, K, M)`` image."""
        pids = self._check_prompt_ids(prompt_ids)
        u8 = self.decode(check_images(torch.as_tensor(images), replicas=1, batch=len(pids)))[0]
        k = u8.shape[1]
        paths = [Path(out_dir) / f"p{p}_c{j}.png" for p in pids for j in range(k)]
        return save_png(u8.reshape(-1, *u8.shape[2:]), paths)


# ---------------------------------------------------------------------- eNTK probes


@dataclass
class ProbeResult:
    """First-order predictions and measured one-step changes for ``P`` probes (float64, ``(P,)`` each).

    ``gen``: ``Delta log pi_gen(o)``; ``und``: ``Delta log P_und(yes | o)``; after one plain-SGD step of
    size ``lr`` that increases ``log pi_gen(u)``.
    """

    predicted_gen: torch.Tensor
    measured_gen: torch.Tensor
    predicted_und: torch.Tensor
    measured_und: torch.Tensor
    lr: float
    parameter_count: int
    extras: dict = field(default_factory=dict)

    def relative_error(self) -> dict[str, float]:
        """Per branch, the one-step check's error :func:`dynamics.study.first_order.relative_error`
        (``||measured - predicted|| / ||predicted||`` over the probes).

        >>> r = ProbeResult(torch.tensor([1.0, 2.0]), torch.tensor([1.1, 2.0]), torch.tensor([1.0]),
        ...                 torch.tensor([1.0]), lr=0.1, parameter_count=3)
        >>> r.relative_error()
        {'gen': 0.0447..., 'und': 0.0}
        """
        from dynamics.study.first_order import relative_error

        return {key: relative_error(getattr(self, f"measured_{key}"), getattr(self, f"predicted_{key}"))
                for key in ("gen", "und")}


def entk_probe(
    jm: JanusUnified,
    probe_prompt_ids: Sequence[int],
    probe_images: torch.Tensor,
    train_prompt_id: int,
    train_image: torch.Tensor,
    *,
    lr: float,
    parameters: Sequence[torch.nn.Parameter] | None = None,
) -> ProbeResult:
    """Real-model eNTK probe: first-order predictions vs one measured plain-SGD step.

    ``probe_images``: ``(P, M)`` tokens, probe p paired with ``probe_prompt_ids[p]``; ``train_image``:
    ``(M,)`` for ``train_prompt_id``. Predictions (by :func:`dynamics.kernels.first_order_probe`, over
    ``parameters``, default the scope's): ``lr <grad log pi_gen(o), grad log pi_gen(u)>`` and
    ``lr <grad log P_und(yes|o), grad log pi_gen(u)>``. Measured: the same quantities after the step
    ``theta += lr * grad log pi_gen(u)`` on those parameters (SFT on u), which is then undone. ``log pi_gen``
    is :meth:`JanusUnified.image_logprob` (so ``cfg_mode`` applies); ``log P_und`` is
    :meth:`JanusUnified.judge_logprob`.
    """
    from dynamics.study.first_order import one_step

    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr}")
    params = list(jm.generation_parameters() if parameters is None else parameters)
    pids = torch.as_tensor(list(probe_prompt_ids), dtype=torch.long)
    probe_images = torch.as_tensor(probe_images)
    if probe_images.dim() != 2 or probe_images.shape[0] != pids.numel():
        raise ValueError(f"probe_images must be (P={pids.numel()}, M), got {tuple(probe_images.shape)}")
    train_image = torch.as_tensor(train_image).reshape(1, 1, 1, -1)
    images_o = probe_images[None, :, None, :]
    u_ids = torch.tensor([int(train_prompt_id)])
    n = pids.numel()

    def log_o():  # both branches in one vector: generation probes first, then understanding
        return torch.cat([jm.image_logprob(pids, images_o).reshape(-1), jm.judge_logprob(pids, images_o).reshape(-1)])

    res = one_step(log_o, lambda: jm.image_logprob(u_ids, train_image).sum(), params, lrs=[lr])
    pred, meas = res.predicted_at(lr), res.measured[float(lr)]
    return ProbeResult(
        predicted_gen=pred[:n],
        measured_gen=meas[:n],
        predicted_und=pred[n:],
        measured_und=meas[n:],
        lr=float(lr),
        parameter_count=sum(p.numel() for p in params),
    )
