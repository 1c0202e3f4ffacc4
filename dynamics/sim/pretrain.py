"""Pre-training that leaves an internal gap: understanding clearly better than generation.

Understanding learns from plenty of labelled (prompt, token) pairs: a random share ``und_pairs`` of
the full table, aligned pairs weighted ``pos_weight``. Its labels confuse look-alikes: each
*distractor* pair (a misaligned token that looks like an aligned one, ``world.distractor``) is
labelled aligned with probability ``confusion``, the source of its false positives (which
co-improvement can later correct).

Generation learns from few, noisy examples: per prompt, the empirical distribution of ``gen_shots``
aligned tokens, mixed with weight ``gap`` with a prompt-independent prior over ``popular`` "generic"
tokens (Zipf weights): the weak generation the paper blames most self-contradictions on. The target
is this mixture itself (a soft cross-entropy), so the generic preference is the same for every
prompt; the ``bayes`` understanding, a posterior over prompts, does not see it and rejects it.

Both objectives train at once (one Adam optimiser, full batch); they meet in whatever the coupling
shares (:mod:`dynamics.sim.model`). ``gap`` sets the size of the gap (0: clean generation targets).

Example::

    >>> import torch
    >>> from dynamics.sim import SimWorld, SimModel
    >>> from dynamics.sim.pretrain import pretrain
    >>> w = SimWorld(prompts=16, tokens=16, seed=0)
    >>> m = SimModel(w, replicas=2, seed=0)
    >>> stats = pretrain(w, m, steps=20, gap=0.3, seed=0)
    >>> sorted(stats)[:4]
    ['attribution', 'gen_acc', 'non_unification', 'und_acc']
"""

from __future__ import annotations

import math

import torch

__all__ = ["exact_metrics", "pretrain", "pretraining_data"]


def pretraining_data(world, replicas: int, *, gap: float, seed: int, und_pairs: float = 0.8,
                     confusion: float = 0.3, gen_shots: int = 2, popular: int = 8,
                     zipf: float = 1.0) -> dict[str, torch.Tensor]:
    """The labelled pairs and the generation targets of :func:`pretrain`, per replica.

    Returns ``und_seen`` ``(R, P, V)`` bool (pairs with an understanding label), ``und_label``
    ``(R, P, V)`` bool (the label: aligned, or a distractor mislabelled aligned), ``gen_target``
    ``(R, P, V)`` float64 (each row a distribution: ``1 - gap`` on the empirical distribution of
    ``gen_shots`` aligned examples, ``gap`` on the popular tokens) and ``popular`` ``(R, popular)``
    long (the generic tokens). Replica ``r`` draws from ``seed + r``, so it gets the data of a
    one-replica run with that seed.

    >>> from dynamics.sim import SimWorld
    >>> w = SimWorld(8, 8)
    >>> d = pretraining_data(w, 2, gap=0.0, seed=0)
    >>> d["gen_target"].shape, bool((d["gen_target"] * ~w.aligned).sum() == 0)
    (torch.Size([2, 8, 8]), True)
    """
    if not 0.0 <= gap <= 1.0:
        raise ValueError(f"pretrain: gap must lie in [0, 1], got {gap}")
    if not 0.0 < und_pairs <= 1.0:
        raise ValueError(f"pretrain: und_pairs must lie in (0, 1], got {und_pairs}")
    if not 0.0 <= confusion <= 1.0:
        raise ValueError(f"pretrain: confusion must lie in [0, 1], got {confusion}")
    if gen_shots < 1 or popular < 1:
        raise ValueError(f"pretrain: gen_shots={gen_shots} and popular={popular} must be >= 1")
    P, V = world.aligned.shape
    popular = min(popular, V)
    rows = world.aligned.to(torch.float64)
    weights = torch.arange(1, popular + 1, dtype=torch.float64) ** -zipf
    seen, label, target, pop = [], [], [], []
    for r in range(replicas):  # replica r draws from seed + r: the same data as a one-replica run
        g = torch.Generator().manual_seed(int(seed) + r)
        seen.append(torch.rand(P, V, generator=g) < und_pairs)
        label.append(world.aligned | (world.distractor & (torch.rand(P, V, generator=g) < confusion)))
        shots = torch.multinomial(rows, gen_shots, replacement=True, generator=g)  # (P, shots)
        clean = torch.zeros(P, V, dtype=torch.float64).scatter_add_(
            1, shots, torch.full(shots.shape, 1.0 / gen_shots, dtype=torch.float64))
        pop.append(torch.randperm(V, generator=g)[:popular])
        prior = torch.zeros(V, dtype=torch.float64).index_put_((pop[-1],), weights / weights.sum())
        target.append((1.0 - gap) * clean + gap * prior)
    seen, label, target, pop = map(torch.stack, (seen, label, target, pop))
    return {"und_seen": seen, "und_label": label, "gen_target": target, "popular": pop}


def pretrain(world, model, *, steps: int = 200, gap: float = 0.3, seed: int = 0, lr: float = 0.05,
             und_pairs: float = 0.8, confusion: float = 0.3, gen_shots: int = 2, popular: int = 8,
             zipf: float = 1.0, gen_weight: float = 1.0, pos_weight: float = 4.0,
             threshold: float = 0.5) -> dict[str, list[float]]:
    """Pre-train ``model`` in place on ``world`` (see the module docstring); returns its exact metrics.

    Args:
        steps: full-batch Adam steps.
        gap: weight of the generic prior in the generation targets (the gap size), in [0, 1].
        seed: seeds the data draws.
        lr: Adam step size.
        und_pairs: share of the (P, V) table understanding is labelled on.
        confusion: share of the labelled distractor pairs mislabelled aligned.
        gen_shots: aligned generation examples per prompt.
        popular: number of popular ("generic") tokens; zipf: their Zipf exponent.
        gen_weight: weight of the generation loss against the understanding loss.
        pos_weight: weight of a labelled-aligned pair against a labelled-misaligned one.
        threshold: ``P(yes)`` threshold of the returned metrics.

    Returns:
        :func:`exact_metrics` after training, as lists over replicas.

    >>> from dynamics.sim import SimWorld, SimModel
    >>> w = SimWorld(8, 8); m = SimModel(w, replicas=1)
    >>> 0.0 <= pretrain(w, m, steps=5)["gen_acc"][0] <= 1.0
    True
    """
    if steps < 0:
        raise ValueError(f"pretrain: steps must be >= 0, got {steps}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"pretrain: lr must be a positive number, got {lr}")
    if tuple(world.aligned.shape) != (model.num_prompts, model.num_tokens):
        raise ValueError(f"pretrain: world is {tuple(world.aligned.shape)} but the model is "
                         f"{(model.num_prompts, model.num_tokens)}")
    R, P = model.replicas, model.num_prompts
    data = pretraining_data(world, R, gap=gap, seed=seed, und_pairs=und_pairs, confusion=confusion,
                            gen_shots=gen_shots, popular=popular, zipf=zipf)
    device = model.prompt_features.device
    seen = data["und_seen"].to(device)
    labels = data["und_label"].to(device)
    pos = (seen & labels).to(model.prompt_features.dtype)
    neg = (seen & ~labels).to(model.prompt_features.dtype)
    # per-replica mean over the labelled pairs, aligned pairs weighted by pos_weight
    norm = (pos_weight * pos + neg).sum((1, 2), keepdim=True).clamp_min(1)
    w_pos = pos_weight * pos / norm
    w_neg = neg / norm
    # pos and neg are disjoint, so w_pos softplus(-logit) + w_neg softplus(logit) is one softplus of
    # the signed logit: the same numbers (and gradients), half the work
    weight = w_pos + w_neg
    sign = torch.where(pos > 0, -1.0, 1.0).to(pos.dtype)
    all_ids = torch.arange(P, device=device)
    target = data["gen_target"].to(device, model.prompt_features.dtype)
    # the bayes understanding is a function of the generation log-probs: one forward pass serves both
    # objectives (see below)
    shared = model.understanding == "bayes"
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        if shared:
            logp = torch.log_softmax(model.gen_logits(all_ids), -1)  # (R, P, V)
            und_in, gen_in = logp.detach().requires_grad_(), logp.detach().requires_grad_()
            logit, gen_logp = model.bayes_logit(und_in), gen_in
        else:
            logit = model.und_logit(all_ids)  # (R, P, V): the full table
            gen_logp = torch.log_softmax(model.gen_logits(all_ids), -1)
        und_loss = (weight * torch.nn.functional.softplus(sign * logit)).sum()
        gen_loss = -(target * gen_logp).sum(-1).mean(-1).sum()
        (und_loss + gen_weight * gen_loss).backward()
        if shared:
            # one backward pass per objective, so each parameter gets the sum of the two objectives'
            # gradients, the numbers of two separate forward passes (one backward pass of the summed
            # log-prob gradient would round differently)
            logp.backward(und_in.grad, retain_graph=True)
            logp.backward(gen_in.grad)
        opt.step()
    return {k: v.tolist() for k, v in exact_metrics(world, model, threshold=threshold).items()}


def exact_metrics(world, model, *, threshold: float = 0.5) -> dict[str, torch.Tensor]:
    """Exact (sampling-free) metrics of a model against ground truth, each ``(R,)`` float64.

    ``gen_acc``: expected aligned mass; ``und_acc``: balanced accuracy of the understanding table;
    ``und_fp_rate`` / ``und_fn_rate``: over all misaligned / aligned (prompt, token) pairs;
    ``non_unification``: ``E_y sum_x pi(x|y) 1[P(yes|x,y) < threshold]``; ``attribution``: the share
    of that rejected mass which is truly misaligned (weak-generation attribution).

    >>> from dynamics.sim import SimWorld, SimModel
    >>> w = SimWorld(8, 8)
    >>> exact_metrics(w, SimModel(w, replicas=3))["und_fp_rate"].shape
    torch.Size([3])
    """
    from dynamics import metrics

    pi = model.gen_table().to(torch.float64).cpu()  # (R, P, V)
    yes = metrics.accepts(model.understanding_table().cpu(), threshold)
    al = world.aligned.cpu().expand_as(yes)
    return {
        "gen_acc": metrics.accuracy(al, pi),
        "und_acc": metrics.balanced_accuracy(yes, al),
        "und_fp_rate": metrics.false_positive_rate(yes, al),
        "und_fn_rate": metrics.false_negative_rate(yes, al),
        "non_unification": metrics.non_unification(yes, pi),
        "attribution": metrics.weak_generation_attribution(yes, al, pi),
    }
