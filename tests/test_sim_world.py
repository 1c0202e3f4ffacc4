"""The simulator's world: compositional ground truth, tags and tiers, the oracle judge."""

import pytest
import torch

from dynamics.protocol import ExternalJudge, PromptSet
from dynamics.sim import TAGS, TIERS, SimWorld, grid_shape

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def world():
    return SimWorld(prompts=64, tokens=64, seed=0)


def test_default_sizes_and_every_prompt_has_an_aligned_token(world):
    assert world.aligned.shape == (64, 64)
    assert world.aligned.dtype == torch.bool
    assert bool(world.aligned.any(1).all())
    assert isinstance(world.prompts, PromptSet) and len(world.prompts) == 64
    assert world.prompt_features.shape[0] == 64 and world.token_features.shape[0] == 64
    assert set(world.prompts.tags) == set(TAGS)
    assert set(world.prompts.tiers) == set(TIERS)


def test_alignment_is_the_compositional_rule(world):
    # a token is aligned exactly when it matches every attribute the prompt names
    for p in range(64):
        c = world.prompt_attrs[p]
        named = c >= 0
        expect = (world.token_attrs[:, named] == c[named]).all(1)
        assert torch.equal(world.aligned[p], expect)
        tag = world.prompts.tags[p]
        assert int(named.sum()) == {"object": 1, "colour": 2, "position": 2, "binding": 3}[tag]
        if tag == "binding":
            assert int(world.aligned[p].sum()) == 1
    # prompts share features: some pairs of distinct prompts are similar
    sim = world.prompt_similarity(torch.arange(64), torch.arange(64))
    off = sim[~torch.eye(64, dtype=torch.bool)]
    assert float(off.max()) > 0.5


def test_distractors_look_like_aligned_tokens_and_drive_difficulty(world):
    f = world.token_features.double()
    f = f / f.norm(dim=1, keepdim=True)
    cos = f @ f.T
    for p in range(0, 64, 7):
        al = world.aligned[p]
        near = cos[:, al].max(1).values  # each token's best cosine to an aligned token
        d = world.distractor[p]
        assert not bool((d & al).any())
        if d.any() and (~d & ~al).any():
            assert float(near[d].min()) > float(near[~d & ~al].max())
    # harder tiers hold prompts with larger difficulty scores
    diff = {t: world.difficulty[[i for i, x in enumerate(world.prompts.tiers) if x == t]] for t in TIERS}
    assert float(diff["easy"].max()) <= float(diff["medium"].min()) + 1e-12
    assert float(diff["medium"].max()) <= float(diff["hard"].min()) + 1e-12


def test_seeded_and_deterministic():
    a, b, c = SimWorld(32, 32, seed=3), SimWorld(32, 32, seed=3), SimWorld(32, 32, seed=4)
    assert torch.equal(a.aligned, b.aligned) and torch.equal(a.token_features, b.token_features)
    assert a.prompts.texts == b.prompts.texts
    assert not torch.equal(a.token_features, c.token_features)


def test_oracle_is_the_ground_truth_and_an_external_judge(world):
    assert isinstance(world.oracle, ExternalJudge) and isinstance(world, ExternalJudge)
    ids = torch.tensor([3, 10, 40])
    imgs = torch.randint(0, 64, (2, 3, 5, 1), generator=torch.Generator().manual_seed(0))
    got = world.oracle(ids, imgs)
    assert got.shape == (2, 3, 5) and got.dtype == torch.bool
    assert torch.equal(got, world.aligned[ids[None, :, None], imgs[..., 0]])
    assert bool(world.oracle(ids, world.aligned_examples(ids)[None, :, None, None]).all())


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(1, 3, 2, 2, dtype=torch.long), "M = 1"),
    (torch.zeros(3, 2, 1, dtype=torch.long), r"\(R, B, K, M\)"),
    (torch.full((1, 3, 2, 1), 64, dtype=torch.long), r"\[0, 64\)"),
    (torch.zeros(1, 2, 2, 1, dtype=torch.long), "3 prompt ids"),
])
def test_oracle_rejects_bad_images(world, bad, match):
    with pytest.raises(ValueError, match=match):
        world.oracle(torch.tensor([0, 1, 2]), bad)


def test_bad_settings_raise_naming_the_cause():
    with pytest.raises(ValueError, match="prompts=500"):
        SimWorld(prompts=500, tokens=64)
    with pytest.raises(ValueError, match="lookalike"):
        SimWorld(8, 8, lookalike=1.5)
    with pytest.raises(ValueError, match="prompt_ids"):
        SimWorld(8, 8).oracle(torch.tensor([9]), torch.zeros(1, 1, 1, 1, dtype=torch.long))


def test_other_sizes():
    assert grid_shape(64) == (4, 4, 4)
    w = SimWorld(prompts=20, tokens=30, seed=1)
    assert w.aligned.shape == (20, 30) and bool(w.aligned.any(1).all())
    assert len(set(map(tuple, w.token_attrs.tolist()))) == 30  # distinct tokens
