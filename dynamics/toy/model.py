"""A small unified transformer over the scene world: one Llama trunk that generates and understands.

Sequences (one vocabulary of specials, words and image tokens, :class:`dynamics.toy.world.Vocab`):

- generation: ``<bos> {prompt} <boi> x_1 ... x_M``; ``x_m`` is predicted from the hidden state of the
  token before it, over the ``n_codes`` image tokens only;
- understanding: ``<bos> <boi> x_1 ... x_M <eoi> does this image describe {prompt} ?`` then the answer;
  ``P(yes)`` is the softmax over the logits of ``yes`` and ``no`` at the last position (log space).

Every image token carries a learned per-cell position embedding (added to its token embedding) on top
of the trunk's rotary positions. Batches are left-padded, with position ids counted from ``<bos>``.

Coupling (``ToyConfig.coupling``), the network's half of :data:`dynamics.sim.COUPLINGS` (the
``bayes`` coupling reads a ``tied`` network through the Bayes link, :mod:`dynamics.toy.bayes`):

- ``"tied"``: one embedding table over the whole vocabulary (tied with the output head) and one
  trunk, as in Chameleon, Show-o or Emu3; both branches read and write image tokens through it.
- ``"trunk"``: a shared trunk and word embeddings, but generation has its own image-token embeddings,
  cell positions and head, and understanding reads images through its own image embeddings and cell
  positions (as Janus separates its VQ path from its SigLIP path).
- ``"decoupled"``: the ``trunk`` layout, and understanding runs on its own copy of the trunk (word
  embeddings and yes/no head included): no parameter on the understanding path is generation's
  (BAGEL-like experts). The copy starts equal to the generation trunk.

Example (the tiny preset, random weights)::

    >>> import torch
    >>> from dynamics.toy.model import ToyConfig, ToyModel
    >>> model = ToyModel(ToyConfig.preset("tiny"), seed=0)
    >>> ids = torch.tensor([0, 5])
    >>> x = model.sample(ids, 3, seed=1)
    >>> x.shape, model.judge(ids, x).shape, model.image_logprob(ids, x).shape
    (torch.Size([1, 2, 3, 16]), torch.Size([1, 2, 3]), torch.Size([1, 2, 3]))
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaModel

from dynamics.protocol import check_images
from dynamics.toy.world import SceneWorld, WorldConfig

__all__ = ["NETWORK_COUPLINGS", "SCOPES", "ToyConfig", "ToyModel"]

NETWORK_COUPLINGS = ("decoupled", "trunk", "tied")
# The trainable parts of a generation-only update (the paper's trainable-parts ablation), each a subset of the
# coupling's generation parameters: ``all`` of them; ``trunk``: the transformer layers and the final norm;
# ``trunk+heads``: those and the image-logit head (in the tied coupling the head is the token-embedding table);
# ``embeddings``: the input side, token embeddings (the tied head with them), cell positions, image embeddings.
SCOPES = ("all", "trunk", "trunk+heads", "embeddings")


@dataclass(frozen=True)
class ToyConfig:
    """The toy model and its pre-training recipe (one config, hashed as a whole for the cache).

    Model: ``hidden``/``layers``/``heads``/``intermediate`` of the Llama trunk;
    ``initializer_range`` 0.1 (with the Llama default 0.02, understanding stays at chance for hundreds
    of steps); ``coupling`` ``"tied"``, ``"trunk"`` or ``"decoupled"``; ``temperature``/``top_k`` the sampler's defaults
    (``top_k = 0``: no truncation); ``chunk`` the rows per forward pass in ``judge``/``sample``.

    Pre-training (see :func:`dynamics.toy.pretrain.pretrain`): ``steps`` (a step budget, never wall
    time); AdamW ``lr`` with ``warmup`` linear steps then cosine to ``min_lr_ratio * lr``,
    ``weight_decay``, gradient clipping ``clip``; per step ``gen_batch`` generation sequences and
    ``und_batch`` understanding images with ``questions`` yes/no questions each (the first in the
    judge's format); ``clutter_frac`` of understanding images are cluttered (more than
    ``max_objects`` objects: "no" to everything); ``prompt_sampling`` draws generation prompts uniformly
    (``"prompt"``) or a category first (``"category"``), ``question_sampling`` likewise the
    understanding questions (category-balanced questions let the few easy prompts be learned too);
    ``compact_questions`` drops "does this image describe" from the packed questions after the first
    (``{prompt} ? {answer}``), a fifth fewer tokens for the same number of labels.

    The *gap* between the branches is set by ``und_batch / gen_batch`` and ``gen_noise``: the share
    of generation targets replaced by the scene of a hard negative (a perturbed prompt), which teaches
    the generator the mistakes the understanding is trained to catch.

    Calibration of the defaults: understanding learns through a plateau (answers near chance, then a
    fast rise) whose length is set by the number of labelled questions seen; with 8 generation
    sequences and 28 images x 6 questions per step it ends within about 1,000 steps, and 1,200 steps
    leave understanding clearly ahead of generation. Generation is learned earlier and faster, which is
    why the understanding side gets most of the batch.
    """

    world: WorldConfig = field(default_factory=WorldConfig)
    coupling: str = "tied"
    hidden: int = 64
    layers: int = 4
    heads: int = 4
    intermediate: int = 128
    initializer_range: float = 0.1
    temperature: float = 1.0
    top_k: int = 0
    chunk: int = 4096
    steps: int = 1200
    lr: float = 3e-3
    warmup: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    clip: float = 1.0
    gen_batch: int = 8
    und_batch: int = 28
    questions: int = 6
    clutter_frac: float = 0.1
    gen_noise: float = 0.0
    prompt_sampling: str = "prompt"
    question_sampling: str = "category"
    compact_questions: bool = True

    def __post_init__(self) -> None:
        if self.coupling not in NETWORK_COUPLINGS:
            raise ValueError(f"ToyConfig.coupling must be one of {', '.join(NETWORK_COUPLINGS)} (bayes reads a tied "
                             f"network through dynamics.toy.bayes), got {self.coupling!r}")
        for name in ("hidden", "layers", "heads", "intermediate", "chunk", "gen_batch", "und_batch", "questions"):
            if getattr(self, name) < 1:
                raise ValueError(f"ToyConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden % self.heads:
            raise ValueError(f"ToyConfig.hidden={self.hidden} must be divisible by heads={self.heads}")
        if self.steps < 0 or self.warmup < 0:
            raise ValueError(f"ToyConfig.steps and warmup must be >= 0, got {self.steps}, {self.warmup}")
        if not self.lr > 0 or not self.initializer_range > 0:
            raise ValueError(f"ToyConfig.lr and initializer_range must be > 0, got {self.lr}, {self.initializer_range}")
        if not self.temperature > 0 or self.top_k < 0:
            raise ValueError(f"ToyConfig: temperature must be > 0 and top_k >= 0, got {self.temperature}, {self.top_k}")
        for name in ("prompt_sampling", "question_sampling"):
            if getattr(self, name) not in ("prompt", "category"):
                raise ValueError(f"ToyConfig.{name} must be 'prompt' or 'category', got {getattr(self, name)!r}")
        for name in ("min_lr_ratio", "clutter_frac", "gen_noise"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"ToyConfig.{name} must lie in [0, 1], got {getattr(self, name)}")

    @classmethod
    def preset(cls, name: str, **overrides) -> ToyConfig:
        """``"default"`` (the calibrated recipe) or ``"tiny"`` (for tests: a 1-layer width-16 trunk,
        a few steps), with field overrides.

        >>> ToyConfig.preset("tiny").hidden, ToyConfig.preset("default", coupling="trunk").coupling
        (16, 'trunk')
        """
        presets = {
            "default": {},
            "tiny": {"hidden": 16, "layers": 1, "heads": 2, "intermediate": 32, "steps": 20, "warmup": 2,
                     "gen_batch": 4, "und_batch": 4, "questions": 2},
        }
        if name not in presets:
            raise ValueError(f"ToyConfig.preset: unknown preset {name!r} (known: {sorted(presets)})")
        return dataclasses.replace(cls(), **{**presets[name], **overrides})

    def to_dict(self) -> dict:
        """A JSON-ready dict (tuples as lists).

        >>> ToyConfig.from_dict(ToyConfig().to_dict()) == ToyConfig()
        True
        """
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> ToyConfig:
        """Inverse of :meth:`to_dict`; raise a ValueError naming unknown fields."""
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"ToyConfig.from_dict: unknown fields {unknown}")
        w = d.pop("world", {})
        wknown = {f.name for f in dataclasses.fields(WorldConfig)}
        wunknown = sorted(set(w) - wknown)
        if wunknown:
            raise ValueError(f"ToyConfig.from_dict: unknown world fields {wunknown}")
        world = WorldConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in w.items()})
        return cls(world=world, **d)


class ToyModel(nn.Module):
    """The toy unified model; implements :class:`dynamics.protocol.UnifiedModel` with ``R = 1``.

    Images are cell codes ``(R, B, K, M)`` (see :mod:`dynamics.toy.world`); prompts are ids into
    ``self.prompts`` (every prompt of the world's grammar). Parameter groups (``parameter_groups()``):
    ``shared`` (trunk and word embeddings; in the ``tied`` coupling also image embeddings, cell
    positions and the tied head; empty when ``decoupled``), ``generation`` and ``understanding``.
    ``generation_parameters()`` is ``shared + generation``: never an understanding-only parameter.

    >>> m = ToyModel(ToyConfig.preset("tiny", coupling="trunk"))
    >>> sorted(m.parameter_groups()), len(m.parameter_groups()["understanding"])
    (['generation', 'shared', 'understanding'], 2)
    >>> groups = ToyModel(ToyConfig.preset("tiny", coupling="decoupled")).parameter_groups()
    >>> len(groups["shared"]), len(groups["understanding"]) == 2 + len(list(m.trunk.parameters()))
    (0, True)
    """

    def __init__(self, config: ToyConfig | None = None, *, seed: int = 0) -> None:
        super().__init__()
        self.config = config = config or ToyConfig()
        self.world = SceneWorld(config.world)
        self.vocab = self.world.vocab
        self.prompts = self.world.prompt_set()
        self.replicas = 1
        self.image_length = self.world.cells
        V, C, M, H = self.vocab.size, self.world.n_codes, self.world.cells, config.hidden
        self.coupling = config.coupling
        self.scope = "all"  # the trainable parts of generation_parameters (set_scope)
        self.separate_images = config.coupling != "tied"  # separate image paths for reading and writing
        llama = LlamaConfig(
            vocab_size=self.vocab.text_size if self.separate_images else V,
            hidden_size=H,
            intermediate_size=config.intermediate,
            num_hidden_layers=config.layers,
            num_attention_heads=config.heads,
            num_key_value_heads=config.heads,
            max_position_embeddings=256,
            initializer_range=config.initializer_range,
            pad_token_id=self.vocab.pad,
            bos_token_id=self.vocab.bos,
            eos_token_id=self.vocab.eoi,
            tie_word_embeddings=False,
            attn_implementation="eager",  # 1.7x faster than sdpa at this size
        )
        gen = torch.Generator().manual_seed(int(seed))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            self.trunk = LlamaModel(llama)
        # decoupled: understanding's own trunk, starting equal to generation's
        self.und_trunk = copy.deepcopy(self.trunk) if config.coupling == "decoupled" else None
        std = config.initializer_range

        def param(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape, generator=gen) * std)

        if self.separate_images:
            self.gen_image_embed = param(C, H)
            self.gen_cell_pos = param(M, H)
            self.gen_head = param(C, H)
            self.und_image_embed = param(C, H)
            self.und_cell_pos = param(M, H)
        else:
            self.cell_pos = param(M, H)
        self._build_templates()

    # ------------------------------------------------------------------ parameters
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``{"shared", "generation", "understanding"}`` lists of parameters (the last two empty in the
        ``tied`` coupling, the first empty when ``decoupled``)."""
        if self.und_trunk is not None:
            return {"shared": [],
                    "generation": list(self.trunk.parameters()) + [self.gen_image_embed, self.gen_cell_pos,
                                                                   self.gen_head],
                    "understanding": [self.und_image_embed, self.und_cell_pos] + list(self.und_trunk.parameters())}
        if self.separate_images:
            return {"shared": list(self.trunk.parameters()),
                    "generation": [self.gen_image_embed, self.gen_cell_pos, self.gen_head],
                    "understanding": [self.und_image_embed, self.und_cell_pos]}
        return {"shared": list(self.trunk.parameters()) + [self.cell_pos], "generation": [], "understanding": []}

    def generation_parameters(self) -> list[nn.Parameter]:
        """The parameters a generation-only update may change: the generation trunk (with word
        embeddings; in the ``tied`` coupling the whole model) plus, in the ``trunk`` and ``decoupled``
        couplings, the generation image embeddings and head; restricted to the parts of :attr:`scope`
        (:meth:`set_scope`)."""
        g = self.parameter_groups()
        params = g["shared"] + g["generation"]
        if self.scope == "all":
            return params
        names = {id(p): n for n, p in self.named_parameters()}
        return [p for p in params if self._in_scope(names[id(p)])]

    def _in_scope(self, name: str) -> bool:
        trunk = name.startswith(("trunk.layers.", "trunk.norm."))
        embed = name in ("trunk.embed_tokens.weight", "cell_pos", "gen_image_embed", "gen_cell_pos")
        head = name == ("gen_head" if self.separate_images else "trunk.embed_tokens.weight")
        return {"trunk": trunk, "trunk+heads": trunk or head, "embeddings": embed}[self.scope]

    def set_scope(self, scope: str) -> ToyModel:
        """Train only the parts ``scope`` of :data:`SCOPES` of the generation parameters from now on
        (the model itself is unchanged); returns the model.

        >>> m = ToyModel(ToyConfig.preset("tiny"))
        >>> n = {s: sum(p.numel() for p in m.set_scope(s).generation_parameters()) for s in SCOPES}
        >>> n["trunk"] + n["embeddings"] == n["all"], n["trunk"] < n["trunk+heads"]
        (True, True)
        """
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        self.scope = scope
        return self

    def named_generation_parameters(self) -> dict[str, torch.Tensor]:
        """``name -> parameter`` of :meth:`generation_parameters` (for :mod:`dynamics.kernels`)."""
        ids = {id(p) for p in self.generation_parameters()}
        return {n: p for n, p in self.named_parameters() if id(p) in ids}

    # ------------------------------------------------------------------ sequences
    def _build_templates(self) -> None:
        """Left-padded token templates of every prompt, for generation and for understanding."""
        v, M = self.vocab, self.world.cells
        words = [v.encode(t) for t in self.prompts.texts]
        gen = [[v.bos] + w + [v.boi] for w in words]
        und = [[v.bos, v.boi] + [-1] * M + [v.eoi] + v.encode("does this image describe") + w + [v.index["?"]]
               for w in words]
        und_t = self._left_pad(und)  # (P, Lu); -1 marks image slots
        und_slot = torch.full_like(und_t, -1)
        for p in range(und_t.shape[0]):  # cell index of each image slot
            slots = (und_t[p] == -1).nonzero().flatten()
            und_slot[p, slots] = torch.arange(M)
        self.register_buffer("_gen_prefix", self._left_pad(gen), persistent=False)  # (P, Lg)
        self.register_buffer("_und_template", und_t.clamp(min=0), persistent=False)  # (P, Lu)
        self.register_buffer("_und_slot", und_slot, persistent=False)

    def _left_pad(self, seqs: list[list[int]]) -> torch.Tensor:
        L = max(len(s) for s in seqs)
        return torch.tensor([[self.vocab.pad] * (L - len(s)) + s for s in seqs], dtype=torch.long)

    @staticmethod
    def _positions(mask: torch.Tensor) -> torch.Tensor:
        return (mask.long().cumsum(-1) - 1).clamp(min=0)

    def _image_table(self, branch: str) -> torch.Tensor:
        """The ``(C, H)`` input embeddings of the image codes read by ``branch`` (``"gen"``/``"und"``)."""
        if self.separate_images:
            return self.gen_image_embed if branch == "gen" else self.und_image_embed
        return self.trunk.embed_tokens.weight[self.vocab.image_offset:]

    def _embed(self, ids: torch.Tensor, cell: torch.Tensor, branch: str) -> torch.Tensor:
        """Input embeddings of vocabulary ids ``(N, L)`` whose image tokens sit at cells ``cell (N, L)``
        (``-1`` elsewhere), read by ``branch`` ``"gen"`` or ``"und"``."""
        off = self.vocab.image_offset
        if self.separate_images:
            is_img = ids >= off
            e = self._trunk(branch).embed_tokens(ids.masked_fill(is_img, self.vocab.pad))
            e = torch.where(is_img.unsqueeze(-1), self._image_table(branch)[(ids - off).clamp(min=0)], e)
            pos = self.gen_cell_pos if branch == "gen" else self.und_cell_pos
        else:
            e = self.trunk.embed_tokens(ids)
            pos = self.cell_pos
        return e + torch.where((cell >= 0).unsqueeze(-1), pos[cell.clamp(min=0)], 0.0)

    def _trunk(self, branch: str) -> nn.Module:
        """The trunk ``branch`` (``"gen"``/``"und"``) runs on: one, or two when ``decoupled``."""
        return self.und_trunk if branch == "und" and self.und_trunk is not None else self.trunk

    def _gen_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Image-code logits ``(..., C)`` from hidden states ``(..., H)``: the generation head (janus) or
        the tied image embeddings (full sharing)."""
        if self.separate_images:
            return h @ self.gen_head.T
        return h @ self._image_table("gen").T

    def _yes_no_logits(self, h: torch.Tensor) -> torch.Tensor:
        """``(..., 2)`` logits of ``yes`` and ``no`` (the tied word head of the understanding's trunk)."""
        w = self._trunk("und").embed_tokens.weight[[self.vocab.yes, self.vocab.no]]
        return h @ w.T

    def _run(self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache=None,
             branch: str = "gen"):
        """``branch``'s trunk on ``embeds (N, L, H)``; ``mask (N, L_kv)`` marks the non-pad keys (cached
        ones first, then the ``L`` new positions)."""
        return self._trunk(branch)(inputs_embeds=embeds, attention_mask=self._additive_mask(mask, embeds.shape[1], embeds.dtype),
                          position_ids=positions, cache=cache, use_cache=cache is not None)

    @staticmethod
    def _additive_mask(keys: torch.Tensor, q_len: int, dtype: torch.dtype) -> torch.Tensor:
        """A causal padding mask ``(N, 1, q_len, L_kv)`` to add to attention scores.

        Own mask, not transformers' 2-D padding mask: that one fully masks a pad query's row with the
        dtype's minimum, which overflows to -inf in float64 and makes NaN gradients (probes run in
        float64). Here a pad query attends to itself, and the fill is a finite -1e9.
        """
        N, L = keys.shape
        q = torch.arange(L - q_len, L).view(q_len, 1)
        k = torch.arange(L).view(1, L)
        allowed = (k <= q) & (keys.view(N, 1, 1, L) | (k == q))
        return torch.zeros(N, 1, q_len, L, dtype=dtype).masked_fill(~allowed, -1e9)

    def _check(self, prompt_ids, images=None):
        prompt_ids = torch.as_tensor(prompt_ids)
        if prompt_ids.dim() != 1 or prompt_ids.dtype not in (torch.long, torch.int32, torch.int64):
            raise ValueError(f"prompt_ids must be a (B,) integer tensor, got {prompt_ids.dtype} {tuple(prompt_ids.shape)}")
        P = len(self.prompts)
        if prompt_ids.numel() and (int(prompt_ids.min()) < 0 or int(prompt_ids.max()) >= P):
            raise ValueError(f"prompt_ids must lie in [0, {P}), got min {int(prompt_ids.min())} max {int(prompt_ids.max())}")
        prompt_ids = prompt_ids.long()
        if images is None:
            return prompt_ids
        images = check_images(torch.as_tensor(images), replicas=self.replicas, batch=prompt_ids.shape[0])
        if images.shape[-1] != self.image_length:
            raise ValueError(f"images have {images.shape[-1]} cells, the model's world has {self.image_length}")
        if images.numel() and (int(images.min()) < 0 or int(images.max()) >= self.world.n_codes):
            raise ValueError(f"image codes must lie in [0, {self.world.n_codes}), got [{int(images.min())}, "
                             f"{int(images.max())}]")
        return prompt_ids, images.long()

    # ------------------------------------------------------------------ log-probabilities
    def _gen_token_logprobs(self, pid: torch.Tensor, imgs: torch.Tensor) -> torch.Tensor:
        """Teacher-forced ``log pi(x_m | y, x_<m)`` ``(N, M)`` for prompt ids ``(N,)``, codes ``(N, M)``."""
        prefix = self._gen_prefix[pid]
        Lp, M = prefix.shape[1], imgs.shape[1]
        ids = torch.cat([prefix, imgs + self.vocab.image_offset], 1)
        cell = torch.cat([torch.full_like(prefix, -1), torch.arange(M).expand(len(pid), M)], 1)
        mask = ids != self.vocab.pad
        h = self._run(self._embed(ids, cell, "gen"), mask, self._positions(mask)).last_hidden_state
        logp = F.log_softmax(self._gen_logits(h[:, Lp - 1: Lp - 1 + M]), -1)
        return logp.gather(-1, imgs.unsqueeze(-1)).squeeze(-1)

    def _und_sequences(self, pid: torch.Tensor, imgs: torch.Tensor):
        slot = self._und_slot[pid]
        ids = torch.where(slot >= 0, imgs.gather(1, slot.clamp(min=0)) + self.vocab.image_offset,
                          self._und_template[pid])
        return ids, slot

    def _log_yes_no(self, pid: torch.Tensor, imgs: torch.Tensor) -> torch.Tensor:
        """``log [P(yes), P(no)]`` ``(N, 2)`` in the judge's format."""
        ids, slot = self._und_sequences(pid, imgs)
        mask = ids != self.vocab.pad
        h = self._run(self._embed(ids, slot, "und"), mask, self._positions(mask), branch="und").last_hidden_state
        return F.log_softmax(self._yes_no_logits(h[:, -1]), -1)

    def _flat(self, prompt_ids, images):
        prompt_ids, images = self._check(prompt_ids, images)
        R, B, K, M = images.shape
        pid = prompt_ids.view(1, B, 1).expand(R, B, K).reshape(-1)
        return pid, images.reshape(-1, M), (R, B, K)

    def _chunked(self, fn, pid, imgs):
        n = self.config.chunk
        if len(pid) <= n:
            return fn(pid, imgs)
        return torch.cat([fn(pid[i:i + n], imgs[i:i + n]) for i in range(0, len(pid), n)])

    def image_logprob(self, prompt_ids: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Teacher-forced ``log pi_gen(x | y)`` summed over the ``M`` cells, ``(R, B, K)``, with gradient.

        >>> m = ToyModel(ToyConfig.preset("tiny"))
        >>> lp = m.image_logprob(torch.tensor([0]), torch.zeros(1, 1, 2, 16, dtype=torch.long))
        >>> lp.shape, bool((lp < 0).all()), lp.requires_grad
        (torch.Size([1, 1, 2]), True, True)
        """
        pid, imgs, shape = self._flat(prompt_ids, images)
        return self._chunked(lambda p, x: self._gen_token_logprobs(p, x).sum(-1), pid, imgs).view(shape)

    def log_p_yes(self, prompt_ids: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """``log P(yes | image, "does this image describe {prompt} ?")`` ``(R, B, K)``, with gradient."""
        pid, imgs, shape = self._flat(prompt_ids, images)
        return self._chunked(lambda p, x: self._log_yes_no(p, x)[:, 0], pid, imgs).view(shape)

    @torch.no_grad()
    def judge(self, prompt_ids: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Own-understanding ``P(yes)`` ``(R, B, K)`` in [0, 1], no gradient.

        >>> m = ToyModel(ToyConfig.preset("tiny"))
        >>> p = m.judge(torch.tensor([0, 1]), torch.zeros(1, 2, 1, 16, dtype=torch.long))
        >>> p.shape, bool(((p > 0) & (p < 1)).all())
        (torch.Size([1, 2, 1]), True)
        """
        return self.log_p_yes(prompt_ids, images).exp()

    def forward(self, prompt_ids: torch.Tensor, images: torch.Tensor, what: str = "gen") -> torch.Tensor:
        """``image_logprob`` (``what="gen"``) or ``log_p_yes`` (``what="yes"``): the module's call, so
        that ``torch.func.functional_call`` can evaluate either with substituted parameters."""
        if what == "gen":
            return self.image_logprob(prompt_ids, images)
        if what == "yes":
            return self.log_p_yes(prompt_ids, images)
        raise ValueError(f"ToyModel.forward: what must be 'gen' or 'yes', got {what!r}")

    # ------------------------------------------------------------------ probes
    def probe_logprob(self, prompt_id: int, image: torch.Tensor, what: str = "gen") -> torch.Tensor:
        """A differentiable scalar for one probe pair: ``log pi_gen(image | prompt)`` (``"gen"``) or
        ``log P(yes | image, prompt)`` (``"yes"``). For :func:`dynamics.kernels.first_order_probe`.

        >>> m = ToyModel(ToyConfig.preset("tiny"))
        >>> m.probe_logprob(3, torch.zeros(16, dtype=torch.long), "yes").shape
        torch.Size([])
        """
        image = torch.as_tensor(image).long()
        if image.shape != (self.image_length,):
            raise ValueError(f"probe_logprob: image must be ({self.image_length},) codes, got {tuple(image.shape)}")
        return self.forward(torch.tensor([int(prompt_id)]), image.view(1, 1, 1, -1), what).reshape(())

    def probe_fn(self, prompt_id: int, image: torch.Tensor, what: str = "gen"):
        """``f(params) -> scalar``: :meth:`probe_logprob` with the parameters in ``params`` (a dict
        ``name -> tensor``, e.g. :meth:`named_generation_parameters`) substituted, for
        :func:`dynamics.kernels.grad_inner_product`.

        >>> m = ToyModel(ToyConfig.preset("tiny"))
        >>> f = m.probe_fn(0, torch.zeros(16, dtype=torch.long))
        >>> torch.allclose(f(m.named_generation_parameters()), m.probe_logprob(0, torch.zeros(16, dtype=torch.long)))
        True
        """
        image = torch.as_tensor(image).long()
        if image.shape != (self.image_length,):
            raise ValueError(f"probe_fn: image must be ({self.image_length},) codes, got {tuple(image.shape)}")
        pid, img = torch.tensor([int(prompt_id)]), image.view(1, 1, 1, -1)
        return lambda params: torch.func.functional_call(self, dict(params), (pid, img), {"what": what}).reshape(())

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, prompt_ids: torch.Tensor, n: int, *, seed: int, temperature: float | None = None,
               top_k: int | None = None, return_logprob: bool = False):
        """``n`` candidates per prompt, ``(R, B, n, M)`` codes, by ancestral sampling with a KV cache.

        Deterministic given ``seed`` (and the batch). ``temperature``/``top_k`` default to the
        config's. With ``return_logprob`` also the per-cell ``log pi(x_m | y, x_<m)`` ``(R, B, n, M)``
        of the untempered, untruncated model (at temperature 1 and no top-k, the sampling law).

        >>> m = ToyModel(ToyConfig.preset("tiny"))
        >>> a = m.sample(torch.tensor([0, 1]), 2, seed=7)
        >>> torch.equal(a, m.sample(torch.tensor([0, 1]), 2, seed=7)), a.shape
        (True, torch.Size([1, 2, 2, 16]))
        """
        prompt_ids = self._check(prompt_ids)
        if int(n) < 1:
            raise ValueError(f"sample: n must be >= 1, got {n}")
        T = self.config.temperature if temperature is None else float(temperature)
        k = self.config.top_k if top_k is None else int(top_k)
        if not T > 0 or k < 0:
            raise ValueError(f"sample: temperature must be > 0 and top_k >= 0, got {T}, {k}")
        gen = torch.Generator().manual_seed(int(seed))
        B, M = prompt_ids.shape[0], self.image_length
        pid = prompt_ids.repeat_interleave(int(n))
        chunk = self.config.chunk
        outs, lps = [], []
        for i in range(0, len(pid), chunk):
            x, lp = self._sample_rows(pid[i:i + chunk], T, k, gen)
            outs.append(x)
            lps.append(lp)
        x = torch.cat(outs).view(1, B, int(n), M)
        if return_logprob:
            return x, torch.cat(lps).view(1, B, int(n), M)
        return x

    def _sample_rows(self, pid: torch.Tensor, T: float, k: int, gen: torch.Generator):
        from transformers import DynamicCache

        N, M = len(pid), self.image_length
        prefix = self._gen_prefix[pid]
        mask = prefix != self.vocab.pad
        pos = self._positions(mask)
        cache = DynamicCache(config=self.trunk.config)
        h = self._run(self._embed(prefix, torch.full_like(prefix, -1), "gen"), mask, pos, cache).last_hidden_state[:, -1]
        x = torch.empty(N, M, dtype=torch.long)
        lp = torch.empty(N, M)
        last = pos[:, -1:]
        for m in range(M):
            logp = F.log_softmax(self._gen_logits(h), -1)
            scores = logp / T
            if 0 < k < scores.shape[-1]:
                kth = scores.topk(k, -1).values[:, -1:]
                scores = scores.masked_fill(scores < kth, float("-inf"))
            tok = torch.multinomial(F.softmax(scores, -1), 1, generator=gen)  # (N, 1)
            x[:, m] = tok[:, 0]
            lp[:, m] = logp.gather(-1, tok)[:, 0]
            if m == M - 1:
                break
            mask = torch.cat([mask, torch.ones(N, 1, dtype=torch.bool)], 1)
            last = last + 1
            e = self._embed(tok + self.vocab.image_offset, torch.full_like(tok, m), "gen")
            h = self._run(e, mask, last, cache).last_hidden_state[:, -1]
        return x, lp

    # ------------------------------------------------------------------ persistence
    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        return f"coupling={self.config.coupling}, parameters={n}"
