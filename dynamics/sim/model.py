"""The single-token unified model: a shared trunk, a generation head and an understanding branch.

``R`` replicas (independent seeds) are trained side by side: every parameter carries a leading
replica axis, every forward pass is one batched ``einsum`` over it, and the sum of the per-replica
losses gives each replica its own gradient. Images are single tokens (``image_length == 1``).

Generation. A prompt ``y`` is embedded as ``e_y = phi_y W_y + m E_y[y]`` (its attribute features
``phi_y`` through a projection plus a free embedding scaled by ``m = memory``), passed through the
trunk ``h(y) = tanh((e_y + r_gen) W_1 + b_1) W_2`` and scored against the image-token embeddings
``e_x = phi_x W_x + m E_x[x]``: ``z_x(y) = <h(y), e_x> / sqrt(D) + b_x``. The image-token
embeddings serve as the generation's output embeddings and as the understanding's image input.

Coupling: how the understanding branch reads the generation branch's parameters, one knob from no
transfer to the theory's idealisation, each the architecture of a family of unified models:

- ``decoupled``: a yes/no head on the understanding's private copy of the trunk and every embedding
  (BAGEL-like experts): no parameter shared on the understanding path, so a generation-only update
  cannot move it;
- ``trunk``: a yes/no head on the shared trunk and prompt embeddings, but images read through the
  understanding's own image-token embeddings (Janus-like: separate encoders for reading and writing
  images);
- ``tied``: a yes/no head on the shared trunk that reads images through the very image-token embeddings
  generation scores against (its output embeddings): one image vocabulary for reading and writing
  (Show-o / Emu3 / Chameleon-like);
- ``bayes`` (the paper's assumption): the posterior of the generation branch over the prompt set,
  ``log pi(y | x) = log pi(x | y) - logsumexp_{y'} log pi(x | y')`` (uniform prompt prior), and
  ``P(yes | x, y) = sigmoid(a * (log pi(y | x) + log P - c))``: a fixed monotone calibration
  (``a = bayes_scale``, ``c = bayes_offset``) of the pointwise mutual information
  ``log pi(y|x) - log p(y)``: yes when the image makes the asked prompt ``e^c`` times likelier than
  the prior. No parameter of its own: the understanding is a function of the generation branch
  (token bias included). A prompt-independent preference of the generator (for "generic" images)
  raises ``pi(x | y)`` for every prompt alike, so it hardly moves the posterior: the understanding
  rejects such samples while generation keeps producing them.

The yes/no head (``decoupled``, ``trunk``, ``tied``) is
``P(yes | x, y) = sigmoid(<tanh((e_y + e_x + r_und) W_1 + b_1) W_2, w_u> + b_u)`` with ``e_y``, ``e_x``,
``W_1``, ``b_1``, ``W_2`` read from the shared or the private tensors as the coupling says
(:data:`PRIVATE_KEYS`). A private copy starts equal to the shared tensor (both branches start from one
network) and drifts apart only where the two are trained differently.

Example::

    >>> import torch
    >>> from dynamics.sim import SimWorld, SimModel
    >>> w = SimWorld(prompts=16, tokens=16, seed=0)
    >>> m = SimModel(w, replicas=2, seed=0, coupling="tied")
    >>> ids = torch.tensor([0, 3])
    >>> x = m.sample(ids, 5, seed=1)
    >>> x.shape, m.judge(ids, x).shape, m.image_logprob(ids, x).shape
    (torch.Size([2, 2, 5, 1]), torch.Size([2, 2, 5]), torch.Size([2, 2, 5]))
    >>> m.understanding_table().shape, m.expected_aligned_mass(w.aligned).shape
    (torch.Size([2, 16, 16]), torch.Size([2]))
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from dynamics.protocol import COUPLINGS, check_coupling, check_images

__all__ = ["COUPLINGS", "PRIVATE_KEYS", "SHARED_KEYS", "SimModel", "check_coupling"]

# the trunk and embedding tensors of the generation branch
SHARED_KEYS = ("prompt_proj", "prompt_emb", "image_proj", "image_emb", "gen_role", "w1", "b1", "w2")
# per coupling, the trunk and embedding tensors the understanding reads from its private copy
PRIVATE_KEYS = {
    "decoupled": SHARED_KEYS,
    "trunk": ("image_proj", "image_emb"),
    "tied": (),
    "bayes": (),
}


class _RowBroadcast(torch.autograd.Function):
    """``x`` ``(R, 1, V)`` broadcast to ``index.shape`` ``(R, B, V)`` (``index`` all zeros) with the backward of
    ``torch.gather(x, 1, index)``: a scatter-add that sums the rows' gradients one after another.

    Written out because neither torch op fits: a gather gives these numbers but copies the rows in
    the forward pass; a plain broadcast's backward sums the rows in another order (rounds differently).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, index):
        return x.expand(index.shape)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])
        ctx.x_shape, ctx.out_shape = inputs[0].shape, output.shape

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        return grad.new_zeros(ctx.x_shape).scatter_add_(1, index, grad), None  # as torch's gather backward

    @staticmethod
    def jvp(ctx, x_t, _index_t):
        return x_t.expand(ctx.out_shape)


class SimModel(nn.Module):
    """``R`` single-token unified models over a :class:`~dynamics.sim.world.SimWorld`.

    Implements :class:`dynamics.protocol.UnifiedModel` with ``image_length == 1``.

    Args:
        world: the world (prompt and token features, the prompt set).
        replicas: ``R``, independent seeds stacked on dim 0 of every parameter.
        seed: replica ``r`` is initialised from ``seed + r``.
        coupling: ``"decoupled" | "trunk" | "tied" | "bayes"`` (see the module docstring).
        dim: ``D``, embedding width; hidden: ``H``, trunk hidden width.
        bayes_scale, bayes_offset: the calibration ``a``, ``c`` of the ``bayes`` coupling.
        memory: scale of the free per-prompt and per-token embeddings against the feature
            projections (small: the model generalises through features, so prompts that share
            attributes move together).
        dtype: parameter dtype (float32 by default; float64 for theory checks).

    Parameter groups (``nn.ParameterDict``, each tensor ``(R, ...)``):
        ``shared``: the trunk and embeddings of the generation branch (``SHARED_KEYS``);
        ``gen_head``: ``bias`` ``(R, V)``;
        ``und_head``: ``role``, ``w``, ``b`` (the yes/no head; empty for ``bayes``);
        ``und_private``: the understanding branch's private tensors (:data:`PRIVATE_KEYS`).

    ``understanding`` is ``"bayes"`` for the ``bayes`` coupling and ``"head"`` for the others.
    """

    image_length = 1

    def __init__(
        self,
        world,
        *,
        replicas: int = 1,
        seed: int = 0,
        coupling: str = "bayes",
        dim: int = 32,
        hidden: int = 32,
        bayes_scale: float = 2.0,
        bayes_offset: float = 0.5,
        memory: float = 0.1,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if replicas < 1:
            raise ValueError(f"SimModel: replicas must be >= 1, got {replicas}")
        check_coupling(coupling)
        if dim < 1 or hidden < 1:
            raise ValueError(f"SimModel: dim={dim} and hidden={hidden} must be >= 1")
        if not (math.isfinite(bayes_scale) and bayes_scale > 0 and math.isfinite(bayes_offset)):
            raise ValueError(f"SimModel: bayes_scale={bayes_scale} must be > 0 and bayes_offset={bayes_offset} finite")
        self.replicas = int(replicas)
        self.seed = int(seed)
        self.coupling = coupling
        self.understanding = understanding = "bayes" if coupling == "bayes" else "head"
        self._private = PRIVATE_KEYS[coupling]
        self.dim, self.hidden = int(dim), int(hidden)
        self.bayes_scale, self.bayes_offset = float(bayes_scale), float(bayes_offset)
        if not (math.isfinite(memory) and memory >= 0):
            raise ValueError(f"SimModel: memory must be a finite number >= 0, got {memory}")
        self.memory = float(memory)
        self.prompts = world.prompts
        self.register_buffer("prompt_features", world.prompt_features.clone().to(dtype))
        self.register_buffer("token_features", world.token_features.clone().to(dtype))
        P, F = self.prompt_features.shape
        V, Fx = self.token_features.shape
        self.num_prompts, self.num_tokens = P, V

        D, H, R = self.dim, self.hidden, self.replicas
        init: dict[str, list[torch.Tensor]] = {}
        for r in range(R):
            g = torch.Generator().manual_seed(self.seed + r)

            def rnd(*shape, std, g=g):
                return torch.randn(*shape, generator=g, dtype=torch.float64) * std

            tensors = {
                "prompt_proj": rnd(F, D, std=1.0),
                "prompt_emb": rnd(P, D, std=1.0),
                "image_proj": rnd(Fx, D, std=1.0),
                "image_emb": rnd(V, D, std=1.0),
                "gen_role": rnd(D, std=0.3),
                "w1": rnd(D, H, std=1.0 / math.sqrt(D)),
                "b1": torch.zeros(H, dtype=torch.float64),
                "w2": rnd(H, D, std=1.0 / math.sqrt(H)),
                "bias": torch.zeros(V, dtype=torch.float64),
                "role": rnd(D, std=0.3),
                "w": rnd(D, std=1.0 / math.sqrt(D)),
                "b": torch.zeros((), dtype=torch.float64),
            }
            for k, t in tensors.items():
                init.setdefault(k, []).append(t)
        stack = {k: torch.stack(v).to(dtype) for k, v in init.items()}

        self.shared = nn.ParameterDict({k: nn.Parameter(stack[k].clone()) for k in SHARED_KEYS})
        self.gen_head = nn.ParameterDict({"bias": nn.Parameter(stack["bias"].clone())})
        self.und_head = nn.ParameterDict(
            {k: nn.Parameter(stack[k].clone()) for k in ("role", "w", "b")} if understanding == "head" else {}
        )
        # the tensors the understanding reads: for bayes, a whole generation-like scorer (token bias
        # included); the private ones are its own copies
        self._scorer_keys = SHARED_KEYS + (("bias",) if understanding == "bayes" else ())
        self.und_private = nn.ParameterDict({k: nn.Parameter(stack[k].clone()) for k in self._private})

    # ------------------------------------------------------------------ parameter groups
    def generation_parameters(self) -> list[nn.Parameter]:
        """The shared trunk and embeddings and the generation head: what a generation-only update may touch.

        >>> from dynamics.sim import SimWorld
        >>> m = SimModel(SimWorld(8, 8), coupling="decoupled")
        >>> len(m.generation_parameters()), len(m.understanding_parameters())
        (9, 11)
        >>> len(SimModel(SimWorld(8, 8), coupling="trunk").understanding_parameters())
        5
        """
        return list(self.shared.values()) + list(self.gen_head.values())

    def understanding_parameters(self) -> list[nn.Parameter]:
        """The parameters only the understanding branch reads (head and private copies)."""
        return list(self.und_head.values()) + list(self.und_private.values())

    def param_blocks(self) -> dict[str, list[str]]:
        """Names of the :meth:`functional_params` entries by block: ``shared``, ``gen_head``,
        ``und_head``, ``und_private`` (for eNTK blocks with the shared part explicit).

        >>> from dynamics.sim import SimWorld
        >>> SimModel(SimWorld(8, 8)).param_blocks()["gen_head"]
        ['gen_head.bias']
        """
        return {
            group: [f"{group}.{k}" for k in getattr(self, group)]
            for group in ("shared", "gen_head", "und_head", "und_private")
        }

    def functional_params(self, replica: int = 0, *, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """Detached copies of one replica's parameters, keyed ``"<group>.<name>"`` (no replica axis).

        These are the ``params`` of :meth:`functional_logits`.

        >>> from dynamics.sim import SimWorld
        >>> p = SimModel(SimWorld(8, 8), replicas=3).functional_params(2, dtype=torch.float64)
        >>> p["shared.w1"].shape, p["shared.w1"].dtype
        (torch.Size([32, 32]), torch.float64)
        """
        if not 0 <= replica < self.replicas:
            raise ValueError(f"functional_params: replica must lie in [0, {self.replicas}), got {replica}")
        out = {}
        for group, names in self.param_blocks().items():
            for name in names:
                t = getattr(self, group)[name.split(".", 1)[1]][replica].detach().clone()
                out[name] = t.to(dtype) if dtype is not None else t
        return out

    def _groups(self) -> dict[str, torch.Tensor]:
        """The live parameters, keyed like :meth:`functional_params` but with the replica axis."""
        out = {}
        for group in ("shared", "gen_head", "und_head", "und_private"):
            for k, v in getattr(self, group).items():
                out[f"{group}.{k}"] = v
        return out

    # ------------------------------------------------------------------ batched core (leading R axis)
    def _features(self, dtype):
        return self.prompt_features.to(dtype), self.token_features.to(dtype)

    def _und_view(self, p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Trunk and embedding tensors the understanding branch reads: private where the coupling says."""
        gen = self._gen_view(p)
        return {k: p[f"und_private.{k}"] if k in self._private else gen[k] for k in self._scorer_keys}

    @staticmethod
    def _gen_view(p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The generation branch: the shared trunk and embeddings and the token bias."""
        return {**{k: p[f"shared.{k}"] for k in SHARED_KEYS}, "bias": p["gen_head.bias"]}

    def _all_prompts(self, prompt_ids) -> bool:
        """Whether ``prompt_ids`` is ``0, 1, ..., P - 1`` (whole tables then need no gathers)."""
        return prompt_ids.numel() == self.num_prompts and torch.equal(
            prompt_ids, torch.arange(self.num_prompts, device=prompt_ids.device))

    def _prompt_embed(self, t, prompt_ids):
        """``(R, B, D)`` prompt embeddings."""
        fy, _ = self._features(t["w1"].dtype)
        if self._all_prompts(prompt_ids):  # every row in order: the same numbers without a gather
            return torch.einsum("bf,rfd->rbd", fy, t["prompt_proj"]) + self.memory * t["prompt_emb"]
        return torch.einsum("bf,rfd->rbd", fy[prompt_ids], t["prompt_proj"]) + self.memory * t["prompt_emb"][:, prompt_ids]

    def _token_embed(self, t):
        """``(R, V, D)`` image-token embeddings."""
        _, fx = self._features(t["w1"].dtype)
        return torch.einsum("vf,rfd->rvd", fx, t["image_proj"]) + self.memory * t["image_emb"]

    @staticmethod
    def _trunk(t, x):
        """``(R, ..., D) -> (R, ..., D)``: ``tanh(x W_1 + b_1) W_2``, one weight set per replica."""
        shape = x.shape
        x = x.reshape(shape[0], -1, shape[-1])
        h = torch.tanh(torch.einsum("rnd,rdh->rnh", x, t["w1"]) + t["b1"][:, None, :])
        return torch.einsum("rnh,rhd->rnd", h, t["w2"]).reshape(shape)

    def _gen_logits(self, t, prompt_ids):
        """``(R, B, V)`` generation logits of view ``t`` (trunk, embeddings, token bias)."""
        h = self._trunk(t, self._prompt_embed(t, prompt_ids) + t["gen_role"][:, None, :])
        z = torch.einsum("rbd,rvd->rbv", h, self._token_embed(t)) / math.sqrt(self.dim)
        return z + t["bias"][:, None, :]

    def _posterior_logp(self, t, prompt_ids, tokens):
        """``log pi(y | x)`` under view ``t`` for ``prompt_ids`` ``(B,)`` and ``tokens`` ``(R, B, K)``."""
        all_ids = torch.arange(self.num_prompts, device=tokens.device)
        logp = torch.log_softmax(self._gen_logits(t, all_ids), dim=-1)  # (R, P, V)
        log_marg = torch.logsumexp(logp, dim=1)  # (R, V)
        r = torch.arange(tokens.shape[0], device=tokens.device)[:, None, None]
        own = logp[r, prompt_ids[None, :, None], tokens]
        return own - log_marg[r, tokens]

    def bayes_logit(self, logp: torch.Tensor, prompt_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logit of the ``bayes`` understanding's ``P(yes)`` for every token, ``(R, B, V)``, from ``logp``
        ``(R, P, V)``: the log-softmax of its scorer's generation logits over every prompt (for ``bayes``
        the generation branch's own, :meth:`gen_logits` of ``arange(P)``). Differentiable.

        :meth:`und_logit` without images is this of its own forward pass; a caller that already has
        the generation log-probs (pre-training, which trains both) saves that forward.
        ``prompt_ids``: the rows ``B`` (every prompt, ``B = P``, if ``None``).

        >>> from dynamics.sim import SimWorld
        >>> m = SimModel(SimWorld(8, 8), replicas=2)
        >>> logp = torch.log_softmax(m.gen_logits(torch.arange(8)), -1)
        >>> torch.equal(m.bayes_logit(logp), m.und_logit(torch.arange(8)))
        True
        """
        if self.understanding != "bayes":
            raise ValueError(f"bayes_logit: the {self.coupling!r} coupling's understanding is a yes/no head, not bayes")
        if prompt_ids is None:
            prompt_ids = torch.arange(self.num_prompts, device=logp.device)
        log_marg = torch.logsumexp(logp, dim=1)  # (R, V)
        own = logp if self._all_prompts(prompt_ids) else logp[:, prompt_ids]
        # a gather's backward, not a broadcast's: it sums over the prompts one after another, as the
        # gather of the general path of _und_logit does (a broadcast's backward sums in another order)
        rows = torch.zeros((), dtype=torch.long, device=prompt_ids.device).expand(*own.shape)
        pmi = own - _RowBroadcast.apply(log_marg[:, None, :], rows) + math.log(self.num_prompts)
        return self.bayes_scale * (pmi - self.bayes_offset)

    def _und_logit(self, p, prompt_ids, tokens):
        """``(R, B, K)`` logit of ``P(yes)`` for ``tokens`` ``(R, B, K)`` and their prompts
        (``tokens=None``: every token, ``(R, B, V)``)."""
        t = self._und_view(p)
        if tokens is None and self.understanding == "bayes":  # the full table, without per-token gathers
            all_ids = torch.arange(self.num_prompts, device=prompt_ids.device)
            return self.bayes_logit(torch.log_softmax(self._gen_logits(t, all_ids), dim=-1), prompt_ids)
        if self.understanding == "bayes":
            pmi = self._posterior_logp(t, prompt_ids, tokens) + math.log(self.num_prompts)
            return self.bayes_scale * (pmi - self.bayes_offset)
        # the trunk's first layer is linear, so (e_y + e_x + r) W_1 splits into a prompt and a token
        # part: the (R, B, K, H) pre-activation is a sum of gathered rows, not a (B*K, D) matmul
        w1 = t["w1"]
        a = torch.einsum("rbd,rdh->rbh", self._prompt_embed(t, prompt_ids), w1)  # (R, B, H)
        b = torch.einsum("rvd,rdh->rvh", self._token_embed(t), w1)  # (R, V, H)
        c = torch.einsum("rd,rdh->rh", p["und_head.role"], w1) + t["b1"]  # (R, H)
        if tokens is None:  # the full table: every token for every prompt, by broadcasting
            h = torch.tanh(a[:, :, None, :] + b[:, None, :, :] + c[:, None, None, :])  # (R, B, V, H)
        else:
            r = torch.arange(tokens.shape[0], device=tokens.device)[:, None, None]
            h = torch.tanh(a[:, :, None, :] + b[r, tokens] + c[:, None, None, :])  # (R, B, K, H)
        u = torch.einsum("rhd,rd->rh", t["w2"], p["und_head.w"])  # W_2 w_u: the head is linear
        return torch.einsum("rbkh,rh->rbk", h, u) + p["und_head.b"][:, None, None]

    def forward(self, prompt_ids: torch.Tensor, what: str = "gen") -> torch.Tensor:
        """Whole-row outputs for ``prompt_ids`` ``(B,)``, each ``(R, B, V)`` (for ``torch.func.functional_call``).

        ``what``: ``"gen"`` the generation logits; ``"und_view"`` the generation logits of the
        understanding branch's view (the ``bayes`` scorer); ``"und"`` the logit of
        ``P(yes)`` for every token.

        >>> from dynamics.sim import SimWorld
        >>> m = SimModel(SimWorld(8, 8), replicas=2)
        >>> [tuple(m(torch.arange(3), w).shape) for w in ("gen", "und_view", "und")]
        [(2, 3, 8), (2, 3, 8), (2, 3, 8)]
        """
        ids = self._check_ids(prompt_ids)
        p = self._groups()
        if what == "gen":
            return self._gen_logits(self._gen_view(p), ids)
        if what == "und_view":
            if self.understanding != "bayes":
                raise ValueError("forward: 'und_view' is the bayes scorer; this model's understanding is 'head'")
            return self._gen_logits(self._und_view(p), ids)
        if what == "und":
            return self._und_logit(p, ids, None)
        raise ValueError(f"forward: what must be 'gen', 'und_view' or 'und', got {what!r}")

    # ------------------------------------------------------------------ protocol
    def _check_ids(self, prompt_ids) -> torch.Tensor:
        ids = torch.as_tensor(prompt_ids)
        if ids.dim() != 1 or ids.dtype not in (torch.long, torch.int32, torch.int64):
            raise ValueError(f"prompt_ids must be a 1-d integer tensor, got shape {tuple(ids.shape)} {ids.dtype}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_prompts):
            raise ValueError(f"prompt_ids must lie in [0, {self.num_prompts}), got [{int(ids.min())}, {int(ids.max())}]")
        return ids.long().to(self.prompt_features.device)

    def _check_tokens(self, prompt_ids, images) -> torch.Tensor:
        images = check_images(images, replicas=self.replicas, batch=prompt_ids.numel())
        if images.shape[-1] != 1:
            raise ValueError(f"images must have M = 1 token (image_length), got M = {images.shape[-1]}")
        tok = images[..., 0].long()
        if tok.numel() and (int(tok.min()) < 0 or int(tok.max()) >= self.num_tokens):
            raise ValueError(f"image token ids must lie in [0, {self.num_tokens}), got [{int(tok.min())}, {int(tok.max())}]")
        return tok

    def gen_logits(self, prompt_ids: torch.Tensor) -> torch.Tensor:
        """Generation logits ``z(y)`` ``(R, B, V)``, differentiable.

        >>> from dynamics.sim import SimWorld
        >>> SimModel(SimWorld(8, 8), replicas=2).gen_logits(torch.tensor([1, 2, 3])).shape
        torch.Size([2, 3, 8])
        """
        ids = self._check_ids(prompt_ids)
        p = self._groups()
        return self._gen_logits(self._gen_view(p), ids)

    def sample(self, prompt_ids: torch.Tensor, n: int, *, seed) -> torch.Tensor:
        """``n`` candidates per prompt from ``pi_gen(. | y)``: ``(R, B, n, 1)`` long; deterministic in ``seed``.

        ``seed``: one int per replica (a list), or an int ``s`` meaning ``[s, s + 1, ..., s + R - 1]``;
        replica r draws from its own generator, so its samples do not depend on the other replicas.

        >>> from dynamics.sim import SimWorld
        >>> m = SimModel(SimWorld(8, 8), replicas=2)
        >>> torch.equal(m.sample(torch.tensor([0, 1]), 4, seed=3), m.sample(torch.tensor([0, 1]), 4, seed=[3, 4]))
        True
        """
        if int(n) < 1:
            raise ValueError(f"sample: n must be >= 1, got {n}")
        ids = self._check_ids(prompt_ids)
        seeds = list(seed) if isinstance(seed, (list, tuple)) else [int(seed) + r for r in range(self.replicas)]
        if len(seeds) != self.replicas:
            raise ValueError(f"sample: got {len(seeds)} seeds for {self.replicas} replicas")
        with torch.no_grad():
            probs = torch.softmax(self.gen_logits(ids).to(torch.float64), dim=-1).cpu()
        draws = [torch.multinomial(probs[r], int(n), replacement=True,
                                   generator=torch.Generator().manual_seed(int(seeds[r])))
                 for r in range(self.replicas)]
        return torch.stack(draws).unsqueeze(-1).to(self.prompt_features.device)

    def image_logprob(self, prompt_ids: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Teacher-forced ``log pi_gen(x | y)`` ``(R, B, K)``, differentiable.

        >>> from dynamics.sim import SimWorld
        >>> m = SimModel(SimWorld(8, 8))
        >>> lp = m.image_logprob(torch.tensor([0]), torch.arange(8).reshape(1, 1, 8, 1))
        >>> round(float(lp.detach().exp().sum()), 5)
        1.0
        """
        ids = self._check_ids(prompt_ids)
        tok = self._check_tokens(ids, images)
        logp = torch.log_softmax(self.gen_logits(ids), dim=-1)
        return torch.gather(logp, 2, tok)

    def und_logit(self, prompt_ids: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
        """Logit of the understanding's ``P(yes)`` ``(R, B, K)``, differentiable (for pre-training).

        ``images=None`` scores every token for every prompt: ``(R, B, V)``.
        """
        ids = self._check_ids(prompt_ids)
        tok = None if images is None else self._check_tokens(ids, images)
        return self._und_logit(self._groups(), ids, tok)

    def judge(self, prompt_ids: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Own-understanding ``P(yes)`` ``(R, B, K)`` in [0, 1], without gradient.

        >>> from dynamics.sim import SimWorld
        >>> m = SimModel(SimWorld(8, 8), coupling="tied")
        >>> p = m.judge(torch.tensor([0, 1]), torch.zeros(1, 2, 3, 1, dtype=torch.long))
        >>> p.shape, bool(((p >= 0) & (p <= 1)).all())
        (torch.Size([1, 2, 3]), True)
        """
        with torch.no_grad():
            return torch.sigmoid(self.und_logit(prompt_ids, images))

    def posterior_logprob(self, prompt_ids: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """``log pi(y | x)`` ``(R, B, K)``: the posterior of the ``bayes`` scorer (the paper's ``U``), or of
        the generation branch for ``head`` understanding. Differentiable.

        >>> from dynamics.sim import SimWorld
        >>> m = SimModel(SimWorld(8, 8))
        >>> lp = m.posterior_logprob(torch.arange(8), torch.zeros(1, 8, 1, 1, dtype=torch.long))
        >>> round(float(lp.detach().exp().sum()), 5)
        1.0
        """
        ids = self._check_ids(prompt_ids)
        tok = self._check_tokens(ids, images)
        p = self._groups()
        return self._posterior_logp(self._und_view(p) if self.understanding == "bayes" else self._gen_view(p), ids, tok)

    def understanding_table(self) -> torch.Tensor:
        """``P(yes)`` for every (prompt, token) pair: ``(R, P, V)``, without gradient.

        >>> from dynamics.sim import SimWorld
        >>> SimModel(SimWorld(8, 8), replicas=2).understanding_table().shape
        torch.Size([2, 8, 8])
        """
        ids = torch.arange(self.num_prompts, device=self.prompt_features.device)
        with torch.no_grad():
            return torch.sigmoid(self._und_logit(self._groups(), ids, None))

    def gen_table(self) -> torch.Tensor:
        """``pi_gen(x | y)`` for every prompt: ``(R, P, V)``, without gradient."""
        with torch.no_grad():
            return torch.softmax(self.gen_logits(torch.arange(self.num_prompts)), dim=-1)

    def expected_aligned_mass(self, aligned: torch.Tensor) -> torch.Tensor:
        """Exact ground-truth generation accuracy ``E_y sum_x pi(x|y) 1[aligned]``: ``(R,)`` float64.

        >>> from dynamics.sim import SimWorld
        >>> w = SimWorld(8, 8)
        >>> float(SimModel(w).expected_aligned_mass(torch.ones(8, 8, dtype=torch.bool))[0])
        1.0
        """
        aligned = torch.as_tensor(aligned)
        if tuple(aligned.shape) != (self.num_prompts, self.num_tokens):
            raise ValueError(f"aligned must be (P, V) = {(self.num_prompts, self.num_tokens)}, got {tuple(aligned.shape)}")
        probs = self.gen_table().to(torch.float64)
        return (probs * aligned.to(probs.device, torch.float64)).sum(-1).mean(-1)

    # ------------------------------------------------------------------ functional form (one example)
    def functional_logits(self, params: dict[str, torch.Tensor], x: torch.Tensor, *, branch: str = "gen") -> torch.Tensor:
        """Logits of ONE example under ``params`` (a :meth:`functional_params` dict, no replica axis).

        ``branch="gen"``: ``x`` a 0-d prompt id; returns ``z(y)`` ``(V,)``.
        ``branch="und"``: ``x = tensor([token, prompt])``; returns, for ``head``, the two logits
        ``[0, logit P(yes)]`` ``(2,)`` (so ``log_softmax`` gives ``log P(no), log P(yes)``) and, for
        ``bayes``, the ``(P,)`` posterior logits ``log pi(x | y')`` over the prompt set (their
        ``log_softmax`` is ``log pi(y' | x)``, the paper's ``U``).

        Usable under ``torch.func`` transforms (``vmap``, ``jacrev``), in any float dtype.

        >>> from dynamics.sim import SimWorld
        >>> m = SimModel(SimWorld(8, 8), coupling="tied")
        >>> p = m.functional_params(0, dtype=torch.float64)
        >>> m.functional_logits(p, torch.tensor(2)).shape, m.functional_logits(p, torch.tensor([5, 2]), branch="und").shape
        (torch.Size([8]), torch.Size([2]))
        >>> torch.allclose(m.functional_logits(p, torch.tensor(2)), m.gen_logits(torch.tensor([2]))[0, 0].double(), atol=1e-5)
        True
        """
        p = {k: v.unsqueeze(0) for k, v in params.items()}
        if branch == "gen":
            ids = x.reshape(1)
            return self._gen_logits(self._gen_view(p), ids)[0, 0]
        if branch == "und":
            tok, ids = x[0].reshape(1, 1, 1), x[1].reshape(1)
            if self.understanding == "bayes":
                t = self._und_view(p)
                all_ids = torch.arange(self.num_prompts, device=x.device)
                logp = torch.log_softmax(self._gen_logits(t, all_ids), dim=-1)[0]  # (P, V)
                return torch.index_select(logp, 1, x[0].reshape(1))[:, 0]
            logit = self._und_logit(p, ids, tok).reshape(1)
            return torch.cat([torch.zeros_like(logit), logit])
        raise ValueError(f"functional_logits: branch must be 'gen' or 'und', got {branch!r}")

    def gen_logits_fn(self) -> Callable:
        """``fn(params, prompt_id) -> (V,)``: the generation branch as a function of one example."""
        return lambda params, x: self.functional_logits(params, x, branch="gen")

    def und_logits_fn(self) -> Callable:
        """``fn(params, [token, prompt]) -> (2,) | (P,)``: the understanding branch of one example."""
        return lambda params, x: self.functional_logits(params, x, branch="und")

    def extra_repr(self) -> str:
        return (f"replicas={self.replicas}, coupling={self.coupling!r}, "
                f"P={self.num_prompts}, V={self.num_tokens}, D={self.dim}, H={self.hidden}")
