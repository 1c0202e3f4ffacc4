"""The Bayes-linked understanding of the toy model: the model protocol, the posterior it computes,
its calibration, and that a generation-only update moves it (it has no parameter of its own)."""

from __future__ import annotations

import math

import pytest
import torch

from dynamics.clo import CLOConfig, run_clo
from dynamics.toy.bayes import BayesLinked, alternative_prompts
from dynamics.toy.model import ToyConfig, ToyModel

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def toy():
    return ToyModel(ToyConfig.preset("tiny"), seed=0).eval()


def test_alternatives_are_other_prompts_and_include_hard_negatives(toy):
    alts = alternative_prompts(toy, hard=5, others=3, seed=0)
    P = len(toy.prompts)
    assert alts.shape[0] == P and alts.shape[1] <= 8
    assert ((alts == -1) | ((alts >= 0) & (alts < P))).all()
    assert not (alts == torch.arange(P)[:, None]).any()
    # the flipped relation of a position prompt is among its alternatives
    texts = toy.prompts.texts
    i = next(k for k, t in enumerate(texts) if " left of " in t)
    flipped = texts[i].replace(" left of ", " right of ")
    assert texts.index(flipped) in alts[i].tolist()
    # deterministic given the seed
    assert torch.equal(alts, alternative_prompts(toy, hard=5, others=3, seed=0))


def test_pmi_is_the_posterior_against_the_alternatives(toy):
    """pmi = log pi(x|c) - logsumexp over {c} + A(c) of log pi(x|c') + log(1 + |A(c)|), computed by hand."""
    m = BayesLinked(toy, hard=2, others=1, seed=0)
    ids = torch.tensor([0, 7, 40])
    x = m.sample(ids, 2, seed=3)
    got = m.pmi(ids, x)
    for b, c in enumerate(ids.tolist()):
        cand = [c] + [a for a in m.alternatives[c].tolist() if a >= 0]
        for k in range(2):
            img = x[:, b, k].reshape(1, 1, 1, -1).expand(1, len(cand), 1, -1)
            lp = toy.image_logprob(torch.tensor(cand), img).flatten()
            want = lp[0] - torch.logsumexp(lp, 0) + math.log(len(cand))
            assert torch.allclose(got[0, b, k], want, atol=1e-5), (c, k)
    p = m.judge(ids, x)
    assert torch.allclose(p, torch.sigmoid(m.scale * (got.detach() - m.offset)), atol=1e-6)


def test_generation_only_update_moves_the_bayes_understanding(toy):
    """The Bayes link has no parameter of its own: one CLO epoch of generation-only SFT changes its
    P(yes) on fixed images; the wrapped model's trained yes/no head is not read."""
    model = BayesLinked(ToyModel(ToyConfig.preset("tiny"), seed=1).eval(), seed=0)
    assert {id(p) for p in model.generation_parameters()} == {id(p) for p in model.toy.generation_parameters()}
    ids = torch.arange(12)
    x = model.sample(ids, 2, seed=0)
    before = model.judge(ids, x)
    cfg = CLOConfig(candidates=2, epochs=1, lr=0.5, judge="all", eval_candidates=2, progress=False, seed=0)
    run_clo(model, cfg, external=model.world.external_judge(), train_ids=ids, eval_ids=ids)
    after = model.judge(ids, x)
    assert (after - before).abs().max() > 1e-3


def test_calibration_maximises_balanced_accuracy_on_probes(toy):
    m = BayesLinked(toy, seed=0)
    found = m.calibrate(seed=0)
    assert found["offset"] == m.offset and 0.5 <= found["balanced_accuracy"] <= 1.0
    assert found["probes"] == 2 * len(toy.world.split_ids()[0])
    assert m.probe_accuracy(seed=0) == pytest.approx(found["balanced_accuracy"])
    # no other offset does better on the same probes
    for delta in (-1.0, -0.1, -0.01, 0.01, 0.1, 1.0):
        other = BayesLinked(toy, seed=0, offset=m.offset + delta)
        assert other.probe_accuracy(seed=0) <= found["balanced_accuracy"] + 1e-12


def test_bad_settings_are_refused(toy):
    with pytest.raises(ValueError, match="scale=0"):
        BayesLinked(toy, scale=0.0)
    with pytest.raises(ValueError, match="offset=nan"):
        BayesLinked(toy, offset=float("nan"))
    with pytest.raises(ValueError, match="what must be"):
        BayesLinked(toy)(torch.tensor([0]), torch.zeros(1, 1, 1, 16, dtype=torch.long), "nope")
