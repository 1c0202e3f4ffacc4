"""Theory tracking during training: measured one-step changes against the first-order predictions.

A :class:`TheoryTracker` is a step hook for the CLO loop (:class:`dynamics.clo.StepHook`). On every
``every``-th step it reads a fixed probe set of (prompt ``y0``, token ``x0``) pairs before and after
the step and records, per replica:

- ``delta_g``: the measured ``Delta G = Delta log pi(x0 | y0)`` and ``pred_delta_g``, Proposition 1's
  ``-eta (e_x0 - pi0)^T sum_u K(Y0, Yu) G(u)`` (Lemmas 3-4 for DPO: ``G`` from
  :func:`dynamics.theory.g_dpo`);
- ``delta_u``: the measured change of the understanding and ``pred_delta_u``: for ``bayes`` the
  paper's ``U = log pi(y0 | x0)``, predicted by Proposition 1,
  ``sum_{i != 0} w_i [Delta G(x0|Y0) - Delta G(x0|Yi)]`` (each ``Delta G`` read from the
  understanding branch's view); for the yes/no head (``decoupled``, ``trunk``, ``tied``),
  ``U = log P(yes | x0, y0)``, predicted as ``-eta (e_yes - p)^T K(X0, Yu) G(u)``;
- their residuals, and the dominance ratio ``||K(Y0, Yu)|| / ||K(Yi, Yu)||`` (Frobenius norms over
  the step's training prompts ``u``, ``Yi`` the probe's strongest competing prompt by posterior
  weight) from explicit eNTK blocks (:func:`dynamics.kernels.entk`) for a few probes.

The kernel contraction ``sum_u K(o, Yu) G(u) = J(o) (sum_u J(Yu)^T G(u))`` is evaluated for every
prompt at once as one Jacobian-vector product along ``sum_u J(Yu)^T G(u)`` (a vector-Jacobian
product with the closed-form ``G`` as cotangent): the exact eNTK, never materialised (the explicit
``(P, B, V, V)`` kernel costs gigaflops at ``P = V = 64``). The predictions assume plain SGD on the
generation parameters; under any other optimizer the record says so (``first_order_valid: false``).

:func:`fp_correction_analysis` is the paper's Fig. 7 analysis: the probes whose understanding flipped
from a wrong yes to a right no, their similarity to the training data and their ``Delta G``, against
random probes.

Example (one plain-SGD step of the loop's SFT loss, tracked)::

    >>> import torch
    >>> from dynamics.protocol import TrainBatch
    >>> from dynamics.sim import SimWorld, SimModel
    >>> from dynamics.sim.tracking import TheoryTracker, sft_loss
    >>> w = SimWorld(8, 8, seed=0)
    >>> m = SimModel(w, replicas=2, dtype=torch.float64)
    >>> tracker = TheoryTracker(w, m, seed=0, ratio_probes=0)
    >>> ids = torch.tensor([0, 1])
    >>> batch = TrainBatch("sft", ids, torch.ones(2, 2, 3, dtype=torch.float64), images=m.sample(ids, 3, seed=0))
    >>> tracker.before_step(m, batch, 1e-3)
    >>> opt = torch.optim.SGD(m.generation_parameters(), lr=1e-3)
    >>> sft_loss(m, batch).backward(); opt.step()
    >>> rec = tracker.after_step(m, batch, 1e-3)
    >>> len(rec), rec[0]["rel_err_g"] < 1e-2
    (2, True)
"""

from __future__ import annotations

import math

import torch
from torch.func import functional_call, jvp

from dynamics import metrics
from dynamics.protocol import TrainBatch
from dynamics.theory import dpo_coefficients, g_sft, posterior_weights

__all__ = [
    "TheoryTracker",
    "default_probes",
    "dpo_batch_loss",
    "fp_correction_analysis",
    "nearest_similarity",
    "predict_step",
    "probe_values",
    "sft_loss",
]


# ---------------------------------------------------------------------------------------------- probes


def default_probes(world, *, n_misaligned: int = 24, n_aligned: int = 8, seed: int = 0) -> torch.Tensor:
    """A fixed random probe set: ``n_misaligned`` misaligned and ``n_aligned`` aligned (prompt, token)
    pairs, ``(n, 2)`` long, rows ``[prompt, token]``, misaligned first.

    >>> from dynamics.sim import SimWorld
    >>> w = SimWorld(8, 8)
    >>> pr = default_probes(w, n_misaligned=3, n_aligned=2)
    >>> pr.shape, w.aligned[pr[:, 0], pr[:, 1]].tolist()
    (torch.Size([5, 2]), [False, False, False, True, True])
    """
    if n_misaligned < 0 or n_aligned < 0 or n_misaligned + n_aligned == 0:
        raise ValueError(f"default_probes: need a non-empty probe set, got n_misaligned={n_misaligned}, "
                         f"n_aligned={n_aligned}")
    g = torch.Generator().manual_seed(int(seed))
    out = []
    for want, n in ((False, n_misaligned), (True, n_aligned)):
        pairs = (world.aligned == want).nonzero()
        if n > len(pairs):
            raise ValueError(f"default_probes: asked for {n} {'aligned' if want else 'misaligned'} probes, "
                             f"the world has {len(pairs)}")
        out.append(pairs[torch.randperm(len(pairs), generator=g)[:n]])
    return torch.cat(out).long()


def _check_probes(probes, model) -> torch.Tensor:
    probes = torch.as_tensor(probes).long()
    if probes.dim() != 2 or probes.shape[1] != 2 or len(probes) == 0:
        raise ValueError(f"probes must be a non-empty (n, 2) tensor of [prompt, token] rows, got {tuple(probes.shape)}")
    if int(probes[:, 0].min()) < 0 or int(probes[:, 0].max()) >= model.num_prompts:
        raise ValueError(f"probe prompts must lie in [0, {model.num_prompts})")
    if int(probes[:, 1].min()) < 0 or int(probes[:, 1].max()) >= model.num_tokens:
        raise ValueError(f"probe tokens must lie in [0, {model.num_tokens})")
    return probes


def probe_values(model, probes: torch.Tensor) -> dict[str, torch.Tensor]:
    """``G = log pi(x0 | y0)`` and ``U`` (``log pi(y0|x0)`` for ``bayes``, ``log P(yes)`` for ``head``)
    of every probe, each ``(R, n)`` float64, without gradient; ``p_yes`` ``(R, n)`` too.

    >>> from dynamics.sim import SimWorld, SimModel
    >>> w = SimWorld(8, 8); m = SimModel(w, replicas=2)
    >>> {k: tuple(v.shape) for k, v in probe_values(m, default_probes(w, n_misaligned=3, n_aligned=1)).items()}
    {'g': (2, 4), 'u': (2, 4), 'p_yes': (2, 4)}
    """
    probes = _check_probes(probes, model)
    dev = model.prompt_features.device
    y0, x0 = probes[:, 0].to(dev), probes[:, 1].to(dev)
    ids = torch.arange(model.num_prompts, device=dev)
    with torch.no_grad():
        logp = torch.log_softmax(model(ids, "gen").double(), -1)  # (R, P, V)
        g = logp[:, y0, x0]
        und = model(ids, "und").double()[:, y0, x0]  # logit of P(yes)
        if model.understanding == "bayes":
            lv = torch.log_softmax(model(ids, "und_view").double(), -1)  # (R, P, V)
            u = lv[:, y0, x0] - torch.logsumexp(lv[:, :, x0], dim=1)
        else:
            u = torch.nn.functional.logsigmoid(und)
    return {"g": g, "u": u, "p_yes": torch.sigmoid(und)}


# ---------------------------------------------------------------------------------------------- losses


def sft_loss(model, batch: TrainBatch) -> torch.Tensor:
    """The CLO loop's SFT objective: ``sum_r [-sum_{b,k} w_rbk log pi_r(x|y) / max(1, sum w_r)]``.

    >>> from dynamics.sim import SimWorld, SimModel
    >>> w = SimWorld(8, 8); m = SimModel(w)
    >>> b = TrainBatch("sft", torch.tensor([0]), torch.ones(1, 1, 2), images=torch.zeros(1, 1, 2, 1, dtype=torch.long))
    >>> bool(sft_loss(m, b) > 0)
    True
    """
    w = batch.weights
    logp = model.image_logprob(batch.prompt_ids, batch.images).to(w.dtype)
    return (-(w * logp).sum((1, 2)) / w.sum((1, 2)).clamp_min(1.0)).sum()


def dpo_batch_loss(model, batch: TrainBatch, *, beta: float = 0.1, variant: str = "sigmoid",
                   nll_weight: float = 0.0) -> torch.Tensor:
    """The CLO loop's DPO objective: ``sum_r sum_b w_rb [dpo_loss - nll_weight log pi(x+)] / max(1, sum w_r)``."""
    from dynamics.losses import dpo_loss

    w = batch.weights
    lc = model.image_logprob(batch.prompt_ids, batch.chosen).to(w.dtype)
    lr = model.image_logprob(batch.prompt_ids, batch.rejected).to(w.dtype)
    loss = dpo_loss(lc, lr, batch.ref_chosen, batch.ref_rejected, beta=beta, variant=variant)
    if nll_weight:
        loss = loss - nll_weight * lc
    return ((w * loss).sum((1, 2)) / w.sum((1, 2)).clamp_min(1.0)).sum()


def _logit_gradient(model, batch: TrainBatch, z: torch.Tensor, *, beta, variant, nll_weight) -> torch.Tensor:
    """Closed-form ``G = dL/dz`` ``(R, B, V)`` of the loop's loss at the batch prompts' logits ``z``."""
    w = batch.weights.to(z.dtype)
    count = w.sum((1, 2)).clamp_min(1.0)[:, None, None]  # (R, 1, 1)
    c = w / count  # (R, B, K)
    if batch.kind == "sft":
        tok = batch.images[..., 0]  # (R, B, K)
        zk = z[:, :, None, :].expand(*tok.shape, z.shape[-1])
        return (c[..., None] * g_sft(zk, tok)).sum(2)  # Proposition 1: pi - e_x, weighted
    if batch.kind == "dpo":
        xp, xm = batch.chosen[..., 0, 0], batch.rejected[..., 0, 0]  # (R, B)
        logp = torch.log_softmax(z, -1)
        lc, lr = logp.gather(-1, xp[..., None])[..., 0], logp.gather(-1, xm[..., None])[..., 0]
        h = (lc - batch.ref_chosen[..., 0].to(z.dtype)) - (lr - batch.ref_rejected[..., 0].to(z.dtype))
        c_plus, _ = dpo_coefficients(h, beta=beta, variant=variant)
        V = z.shape[-1]
        diff = torch.nn.functional.one_hot(xp, V).to(z.dtype) - torch.nn.functional.one_hot(xm, V).to(z.dtype)
        # Lemmas 3-4 with a shared prompt: the pi terms cancel, G = L'(h) (e_x+ - e_x-); plus the NLL term
        g = c_plus[..., None] * diff + nll_weight * g_sft(z, xp)
        return c[..., 0, None] * g
    raise ValueError(f"TrainBatch.kind must be 'sft' or 'dpo', got {batch.kind!r}")


# ---------------------------------------------------------------------------------------------- prediction


def predict_step(model, batch: TrainBatch, lr: float, probes: torch.Tensor, *, beta: float = 0.1,
                 variant: str = "sigmoid", nll_weight: float = 0.0) -> dict[str, torch.Tensor]:
    """First-order predictions of one plain-SGD step (size ``lr``) on the generation parameters.

    Returns float64 tensors: ``pred_delta_g`` and ``pred_delta_u`` ``(R, n)``; ``delta_z`` ``(R, P, V)``
    the predicted change of every generation logit ``-eta sum_u K(Y, Yu) G(u)``; ``weights``
    ``(R, n, P)`` the posterior weights ``w(y_i | x0)`` (``bayes``) of the understanding's view;
    ``grad_logits`` ``(R, B, V)`` the closed-form ``G``.

    >>> from dynamics.sim import SimWorld, SimModel
    >>> w = SimWorld(8, 8); m = SimModel(w, dtype=torch.float64)
    >>> b = TrainBatch("sft", torch.tensor([0]), torch.ones(1, 1, 1, dtype=torch.float64),
    ...                images=torch.zeros(1, 1, 1, 1, dtype=torch.long))
    >>> out = predict_step(m, b, 0.1, torch.tensor([[0, 0]]))
    >>> bool(out["pred_delta_g"][0, 0] > 0)    # SFT on (y0, x0) raises log pi(x0 | y0)
    True
    """
    probes = _check_probes(probes, model)
    dev = model.prompt_features.device
    y0, x0 = probes[:, 0].to(dev), probes[:, 1].to(dev)
    scope = list(model.generation_parameters())
    scope_ids = {id(p) for p in scope}
    named = dict(model.named_parameters())
    gen_names = [n for n, p in named.items() if id(p) in scope_ids]
    with torch.enable_grad():
        primal = {n: named[n].detach().requires_grad_(True) for n in gen_names}
        z = functional_call(model, primal, (batch.prompt_ids, "gen"))  # (R, B, V)
        G = _logit_gradient(model, batch, z.detach(), beta=beta, variant=variant, nll_weight=nll_weight)
        grads = torch.autograd.grad(z, [primal[n] for n in gen_names], grad_outputs=G.to(z.dtype),
                                    allow_unused=True)
    tangent = {n: (torch.zeros_like(primal[n]) if g is None else -lr * g) for n, g in zip(gen_names, grads)}
    base = {n: v.detach() for n, v in primal.items()}
    ids = torch.arange(model.num_prompts, device=dev)

    def out(what):
        def f(params):
            return functional_call(model, params, (ids, what))
        with torch.no_grad():
            value, delta = jvp(f, (base,), (tangent,))
        return value.double(), delta.double()

    z_all, dz = out("gen")  # (R, P, V): exact eNTK contraction -eta sum_u K(Y, Yu) G(u)
    a_rows = -g_sft(z_all[:, y0], x0.expand(z_all.shape[0], -1))  # (R, n, V): e_x0 - pi0
    pred_g = (a_rows * dz[:, y0]).sum(-1)
    result = {"pred_delta_g": pred_g, "delta_z": dz, "grad_logits": G.double()}
    if model.understanding == "bayes":
        zu, dzu = out("und_view")  # (R, P, V): the understanding's generation view
        logp = torch.log_softmax(zu, -1)
        # Delta log pi_u(x0 | y_i) for every prompt i: (e_x0 - pi_i)^T Delta z_u(y_i)
        a_all = torch.nn.functional.one_hot(x0, model.num_tokens).double()[None, :, None, :] - logp.exp()[:, None]
        dg_all = (a_all * dzu[:, None]).sum(-1)  # (R, n, P)
        w = posterior_weights(logp[:, :, x0].transpose(1, 2))  # (R, n, P)
        dg0 = dg_all.gather(2, y0[None, :, None].expand(dg_all.shape[0], -1, 1))[..., 0]
        # Proposition 1: sum_{i != 0} w_i [dG_0 - dG_i] = dG_0 - sum_i w_i dG_i (the weights sum to 1)
        result["pred_delta_u"] = dg0 - (w * dg_all).sum(-1)
        result["weights"] = w
    else:
        ul, dul = out("und")  # logit of P(yes)
        p = torch.sigmoid(ul[:, y0, x0])
        result["pred_delta_u"] = (1.0 - p) * dul[:, y0, x0]  # (e_yes - pi)^T Delta [0, l]
    return result


def dominance_ratio(model, replica: int, probes: torch.Tensor, train_prompts: torch.Tensor,
                    competitors: torch.Tensor) -> torch.Tensor:
    """``||K(Y0, Yu)||_F / ||K(Yi, Yu)||_F`` per probe from explicit eNTK blocks (float64).

    ``probes`` ``(n, 2)``, ``train_prompts`` ``(B,)`` the step's training prompts, ``competitors``
    ``(n,)`` the prompt ``Yi`` each probe is compared with. The kernel is restricted to the
    generation parameters (what a generation-only step moves).

    >>> from dynamics.sim import SimWorld, SimModel
    >>> m = SimModel(SimWorld(8, 8))
    >>> r = dominance_ratio(m, 0, torch.tensor([[0, 1]]), torch.tensor([0]), torch.tensor([5]))
    >>> r.shape, bool(r[0] > 0)
    (torch.Size([1]), True)
    """
    from dynamics.transfer import dominance_ratio as ratio
    from dynamics.transfer import sim_branches

    return ratio(sim_branches(model, replica), probes[:, 0].long(), competitors.long(), train_prompts.long())


# ---------------------------------------------------------------------------------------------- the hook


class TheoryTracker:
    """Step hook recording measured against predicted ``Delta G`` and ``Delta U`` (module docstring).

    Args:
        world: the :class:`~dynamics.sim.world.SimWorld` (probe labels).
        model: the :class:`~dynamics.sim.model.SimModel` being trained.
        every: track every ``every``-th step (1 = every step).
        probes: ``(n, 2)`` [prompt, token] rows; default :func:`default_probes`.
        n_misaligned, n_aligned, seed: the default probe set.
        config: an object with the loop's settings (``dynamics.clo.CLOConfig``): ``optimizer``,
            ``beta``, ``dpo_variant``, ``nll_weight``, ``weight_decay`` are read from it; keywords
            below override.
        optimizer: ``"sgd"`` (the theory's setting) or anything else (recorded as not first-order valid).
        beta, dpo_variant, nll_weight: the DPO objective.
        ratio_probes: how many probes (misaligned first) get the explicit-kernel dominance ratio.
        ratio_train: at most this many training prompts of the step enter the ratio's kernels.
        ratio_replicas: the ratio is computed for the first ``ratio_replicas`` replicas.
        ratio_every: ... on every ``ratio_every``-th tracked step (explicit kernels cost about a second
            at ``P = V = 64``; the predictions themselves cost a few forward passes).

    ``after_step`` returns one record per replica (see :meth:`after_step`).
    """

    @classmethod
    def with_probes(cls, world, model, probes: int, **kw) -> TheoryTracker:
        """A tracker of ``probes`` probe pairs, three quarters misaligned (at least one of each);
        ``kw`` as for the constructor.

        >>> from dynamics.sim import SimWorld, SimModel
        >>> w = SimWorld(8, 8)
        >>> t = TheoryTracker.with_probes(w, SimModel(w), 8)
        >>> int((~t.probe_aligned).sum()), int(t.probe_aligned.sum())
        (6, 2)
        """
        n_mis = max(1, (3 * probes) // 4)
        return cls(world, model, n_misaligned=n_mis, n_aligned=max(1, probes - n_mis), **kw)

    def __init__(self, world, model, *, every: int = 1, probes=None, n_misaligned: int = 24,
                 n_aligned: int = 8, seed: int = 0, config=None, optimizer: str | None = None,
                 beta: float | None = None, dpo_variant: str | None = None, nll_weight: float | None = None,
                 ratio_probes: int = 2, ratio_train: int = 8, ratio_replicas: int = 1,
                 ratio_every: int = 5) -> None:
        if int(every) < 1:
            raise ValueError(f"TheoryTracker: every must be >= 1, got {every}")
        if ratio_probes < 0 or ratio_train < 1 or ratio_replicas < 0 or ratio_every < 1:
            raise ValueError(f"TheoryTracker: ratio_probes={ratio_probes} and ratio_replicas={ratio_replicas} "
                             f"must be >= 0, ratio_train={ratio_train} and ratio_every={ratio_every} >= 1")

        def pick(value, name, default):
            if value is not None:
                return value
            return getattr(config, name, default) if config is not None else default

        self.every = int(every)
        self.optimizer = str(pick(optimizer, "optimizer", "sgd"))
        self.beta = float(pick(beta, "beta", 0.1))
        self.dpo_variant = str(pick(dpo_variant, "dpo_variant", "sigmoid"))
        self.nll_weight = float(pick(nll_weight, "nll_weight", 0.0))
        self.weight_decay = float(getattr(config, "weight_decay", 0.0) or 0.0) if config is not None else 0.0
        self.world = world
        self.probes = _check_probes(default_probes(world, n_misaligned=n_misaligned, n_aligned=n_aligned, seed=seed)
                                    if probes is None else probes, model)
        self.probe_aligned = world.aligned[self.probes[:, 0], self.probes[:, 1]]
        order = torch.argsort(self.probe_aligned.long(), stable=True)  # misaligned first
        self.ratio_index = order[: int(ratio_probes)]
        self.ratio_train, self.ratio_replicas = int(ratio_train), int(ratio_replicas)
        self.ratio_every = int(ratio_every)
        self.steps = 0
        self.tracked = 0
        self._pending = None

    def state_dict(self) -> dict:
        """The step counters (which steps are tracked, which get the ratio): checkpointed by the loop,
        so a resumed run tracks the same steps as an uninterrupted one."""
        return {"steps": self.steps, "tracked": self.tracked}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.tracked, self._pending = int(state["steps"]), int(state["tracked"]), None

    @property
    def first_order_valid(self) -> bool:
        """Whether the loop's update is the theory's plain SGD (no weight decay)."""
        return self.optimizer == "sgd" and self.weight_decay == 0.0

    def before_step(self, model, batch: TrainBatch, lr: float) -> None:
        """Read the probes and compute the predictions at the parameters before the step."""
        tracked = self.steps % self.every == 0
        self.steps += 1
        if not tracked:
            self._pending = None
            return
        before = probe_values(model, self.probes)
        pred = predict_step(model, batch, lr, self.probes, beta=self.beta, variant=self.dpo_variant,
                            nll_weight=self.nll_weight)
        ratios = {}
        with_ratio = self.tracked % self.ratio_every == 0
        self.tracked += 1
        if len(self.ratio_index) and with_ratio:
            probes = self.probes[self.ratio_index]
            for r in range(min(self.ratio_replicas, model.replicas)):
                used = batch.weights[r].sum(-1) > 0  # (B,) prompts this replica trains on
                train = batch.prompt_ids[used.to(batch.prompt_ids.device)][: self.ratio_train].cpu()
                if len(train) == 0:
                    continue
                comp = self._competitors(model, pred, r, probes)
                ratios[r] = dominance_ratio(model, r, probes, train, comp)
        self._pending = (before, pred, ratios, float(lr))

    def _competitors(self, model, pred, r, probes) -> torch.Tensor:
        """The strongest other prompt for each probe's token, by the posterior weight."""
        if "weights" in pred:
            w = pred["weights"][r][self.ratio_index].clone()  # (n, P)
        else:
            with torch.no_grad():
                lv = torch.log_softmax(model(torch.arange(model.num_prompts), "gen").double(), -1)[r]
            w = torch.softmax(lv[:, probes[:, 1]].T, -1)
        w[torch.arange(len(probes)), probes[:, 0]] = -1.0
        return w.argmax(-1).cpu()

    def after_step(self, model, batch: TrainBatch, lr: float) -> list[dict]:
        """Records for ``theory.jsonl``, one per replica, or ``[]`` on an untracked step.

        Fields: ``replica``, ``kind``, ``lr``, ``optimizer``, ``first_order_valid``, ``u``
        (``"log_posterior"`` or ``"log_p_yes"``), ``coupling``, ``understanding``, ``probe_prompt``,
        ``probe_token``, ``probe_aligned``, ``delta_g``, ``pred_delta_g``, ``resid_g``, ``delta_u``,
        ``pred_delta_u``, ``resid_u`` (lists over probes), ``rel_err_g``/``rel_err_u``
        (``||resid|| / ||measured||``), ``max_abs_resid_g``/``max_abs_resid_u``, ``p_yes_before``,
        ``p_yes_after`` and, where computed, ``dominance_ratio`` with ``dominance_probes`` (indices
        into the probe lists).
        """
        if self._pending is None:
            return []
        before, pred, ratios, lr0 = self._pending
        self._pending = None
        after = probe_values(model, self.probes)
        dg, du = after["g"] - before["g"], after["u"] - before["u"]
        rg, ru = dg - pred["pred_delta_g"], du - pred["pred_delta_u"]
        records = []
        for r in range(model.replicas):
            rec = {
                "replica": r,
                "kind": batch.kind,
                "lr": lr0,
                "optimizer": self.optimizer,
                "first_order_valid": self.first_order_valid,
                "u": "log_posterior" if model.understanding == "bayes" else "log_p_yes",
                "coupling": model.coupling,
                "understanding": model.understanding,
                "probe_prompt": self.probes[:, 0].tolist(),
                "probe_token": self.probes[:, 1].tolist(),
                "probe_aligned": self.probe_aligned.tolist(),
                "delta_g": dg[r].tolist(),
                "pred_delta_g": pred["pred_delta_g"][r].tolist(),
                "resid_g": rg[r].tolist(),
                "delta_u": du[r].tolist(),
                "pred_delta_u": pred["pred_delta_u"][r].tolist(),
                "resid_u": ru[r].tolist(),
                "rel_err_g": _rel(rg[r], dg[r]),
                "rel_err_u": _rel(ru[r], du[r]),
                "max_abs_resid_g": float(rg[r].abs().max()),
                "max_abs_resid_u": float(ru[r].abs().max()),
                "p_yes_before": before["p_yes"][r].tolist(),
                "p_yes_after": after["p_yes"][r].tolist(),
            }
            if not self.first_order_valid:
                rec["note"] = (f"optimizer {self.optimizer!r} (weight decay {self.weight_decay}): the first-order "
                               "predictions assume plain SGD and do not describe this update")
            if r in ratios:
                rec["dominance_ratio"] = ratios[r].tolist()
                rec["dominance_probes"] = self.ratio_index.tolist()
            records.append(rec)
        return records


def _rel(resid: torch.Tensor, measured: torch.Tensor) -> float:
    den = float(measured.norm())
    return float(resid.norm()) / den if den > 0 else (0.0 if float(resid.norm()) == 0 else math.inf)


# ---------------------------------------------------------------------------------------------- Fig. 7


def nearest_similarity(world, prompts: torch.Tensor, train_prompts: torch.Tensor, *,
                       exclude_self: bool = True) -> torch.Tensor:
    """Cosine of each prompt's features to its nearest training prompt, ``(n,)`` float64.

    ``exclude_self``: a prompt is not its own neighbour (otherwise every training prompt scores 1).

    >>> from dynamics.sim import SimWorld
    >>> w = SimWorld(8, 8)
    >>> s = nearest_similarity(w, torch.tensor([0, 1]), torch.tensor([0, 1, 2]))
    >>> s.shape, bool((s <= 1 + 1e-9).all())
    (torch.Size([2]), True)
    """
    prompts, train_prompts = torch.as_tensor(prompts).long(), torch.as_tensor(train_prompts).long()
    if len(train_prompts) == 0:
        raise ValueError("nearest_similarity: train_prompts is empty")
    sim = world.prompt_similarity(prompts, train_prompts)  # (n, T)
    if exclude_self:
        sim = sim.masked_fill(prompts[:, None] == train_prompts[None, :], -math.inf)
    return sim.max(-1).values


def fp_correction_analysis(world, und_before: torch.Tensor, und_after: torch.Tensor, train_prompts,
                           *, gen_logp_before: torch.Tensor | None = None,
                           gen_logp_after: torch.Tensor | None = None, threshold: float = 0.5,
                           n_random: int = 256, exclude_self: bool = True, seed: int = 0) -> list[dict]:
    """The paper's Fig. 7: false-positive-corrected probes against random probes, per replica.

    Args:
        world: the world (ground truth, prompt features).
        und_before, und_after: ``(R, P, V)`` understanding ``P(yes)`` tables
            (:meth:`~dynamics.sim.model.SimModel.understanding_table`) before and after training.
        train_prompts: the prompts trained on, ``(T,)`` for all replicas or a list of ``R`` such.
        gen_logp_before, gen_logp_after: ``(R, P, V)`` ``log pi(x|y)`` tables; when given, the
            ``Delta G`` of each group is reported.
        threshold: ``P(yes)`` threshold of a "yes".
        n_random: random (prompt, token) pairs per replica for the control group.
        exclude_self: similarity to the nearest *other* training prompt.
        seed: seeds the random group.

    Returns:
        One dict per replica: ``n_corrected``, ``n_fp_before``, ``corrected_similarity`` and
        ``random_similarity`` (means), ``corrected_delta_g`` and ``random_delta_g`` (means and
        medians, and the per-probe lists ``*_delta_g_values``), ``corrected`` (the ``[prompt,
        token]`` rows).

    >>> from dynamics.sim import SimWorld
    >>> w = SimWorld(8, 8)
    >>> before = (~w.aligned).double()[None]           # every misaligned pair a false positive ...
    >>> after = torch.zeros_like(before)               # ... all corrected
    >>> out = fp_correction_analysis(w, before, after, torch.arange(4), n_random=8)
    >>> out[0]["n_corrected"] == int((~w.aligned).sum())
    True
    """
    if und_before.shape != und_after.shape or und_before.dim() != 3:
        raise ValueError(f"und_before/und_after must be equal (R, P, V) tables, got {tuple(und_before.shape)} "
                         f"and {tuple(und_after.shape)}")
    R, P, V = und_before.shape
    if (P, V) != tuple(world.aligned.shape):
        raise ValueError(f"tables are (P, V) = {(P, V)}, the world is {tuple(world.aligned.shape)}")
    if (gen_logp_before is None) != (gen_logp_after is None):
        raise ValueError("pass both gen_logp_before and gen_logp_after, or neither")
    per_rep = train_prompts if isinstance(train_prompts, (list, tuple)) else [train_prompts] * R
    if len(per_rep) != R:
        raise ValueError(f"train_prompts: got {len(per_rep)} lists for {R} replicas")
    aligned = world.aligned
    pre_yes = metrics.accepts(und_before.cpu(), threshold)
    fixed = metrics.false_positive_corrections(pre_yes, metrics.accepts(und_after.cpu(), threshold), aligned)
    g = torch.Generator().manual_seed(int(seed))
    out = []
    for r in range(R):
        rows = fixed[r].nonzero()
        rand = torch.stack([torch.randint(P, (n_random,), generator=g), torch.randint(V, (n_random,), generator=g)], 1)
        train = torch.as_tensor(per_rep[r]).long()
        rec = {
            "replica": r,
            "n_corrected": len(rows),
            "n_fp_before": int((pre_yes[r] & ~aligned).sum()),
            "corrected": rows.tolist(),
            "corrected_similarity": _mean(nearest_similarity(world, rows[:, 0], train, exclude_self=exclude_self)),
            "random_similarity": _mean(nearest_similarity(world, rand[:, 0], train, exclude_self=exclude_self)),
        }
        if gen_logp_before is not None:
            dg = (gen_logp_after[r] - gen_logp_before[r]).double().cpu()
            dc, dr = dg[rows[:, 0], rows[:, 1]], dg[rand[:, 0], rand[:, 1]]
            rec.update({
                "corrected_delta_g": _mean(dc), "corrected_delta_g_median": _median(dc),
                "random_delta_g": _mean(dr), "random_delta_g_median": _median(dr),
                "corrected_delta_g_values": dc.tolist(), "random_delta_g_values": dr.tolist(),
            })
        out.append(rec)
    return out


def _mean(t: torch.Tensor) -> float:
    return float(t.double().mean()) if t.numel() else math.nan


def _median(t: torch.Tensor) -> float:
    return float(t.double().median()) if t.numel() else math.nan
