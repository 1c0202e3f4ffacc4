"""Data judges: parsing errors, and each judge's verdicts against its definition."""

import pytest
import torch

from dynamics.judges import parse_judge


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("spec,msg", [
    ("selfish", "unknown judge"), ("corrupt", "needs a probability"), ("noisy:x", "not a number"),
    ("corrupt:-0.1", "outside [0, 1]"), ("all:1", "takes no argument"), ("", "non-empty"),
])
def test_bad_specs_name_the_cause(spec, msg):
    with pytest.raises(ValueError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        parse_judge(spec)


def test_self_all_oracle_verdicts():
    p = torch.rand(2, 50, 4, generator=gen(), dtype=torch.float64)
    ext = torch.rand(2, 50, 4, generator=gen(1)) < 0.5
    assert torch.equal(parse_judge("self").score(p, None, threshold=0.5, generator=gen()) >= 0.5, p >= 0.5)
    assert bool((parse_judge("all").score(p, None, threshold=0.9, generator=gen()) >= 0.9).all())
    oracle = parse_judge("external").score(p, ext, threshold=0.3, generator=gen())
    assert torch.equal(oracle >= 0.3, ext)
    # within the accepted set, order follows P(yes)
    acc = ext[0, 0]
    if acc.sum() > 1:
        assert torch.equal(oracle[0, 0][acc].argsort(), p[0, 0][acc].argsort())


def test_oracle_needs_external():
    with pytest.raises(ValueError, match="needs an external judge"):
        parse_judge("oracle").score(torch.rand(1, 1, 1, dtype=torch.float64), None, threshold=0.5, generator=gen())


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_corrupt_inverts_a_share_p_of_self_verdicts(p):
    probs = torch.rand(1, 4000, 5, generator=gen(), dtype=torch.float64)
    score = parse_judge(f"corrupt:{p}").score(probs, None, threshold=0.5, generator=gen(3))
    flipped = ((score >= 0.5) != (probs >= 0.5)).double().mean().item()
    assert abs(flipped - p) < 0.02


def test_noise_per_replica_depends_only_on_its_generator():
    probs = torch.rand(3, 20, 4, generator=gen(), dtype=torch.float64)
    j = parse_judge("corrupt:0.5")
    both = j.score(probs, None, threshold=0.5, generator=[gen(10), gen(11), gen(12)])
    alone = j.score(probs[1:2], None, threshold=0.5, generator=[gen(11)])
    assert torch.equal(both[1:2], alone)
