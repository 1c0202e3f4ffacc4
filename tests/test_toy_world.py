"""The scene world: grammar, exact detector (reference and vectorised), clutter rule, renderer."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from dynamics.protocol import ExternalJudge
from dynamics.toy.world import CATEGORIES, ExactJudge, SceneWorld, WorldConfig, render


@pytest.fixture(scope="module")
def world():
    return SceneWorld()


def pid(world, text):
    return world.prompt_set().texts.index(text)


def sat(world, scene_text, prompt_text):
    scene = world.parse_scene(scene_text)
    ref = world.satisfies(scene, world.prompt_set().meta[pid(world, prompt_text)]["spec"])
    vec = world.satisfies_batch(torch.tensor([pid(world, prompt_text)]), torch.as_tensor(scene)[None])
    assert bool(vec[0]) == ref, (scene_text, prompt_text)
    return ref


# --------------------------------------------------------------------------- grammar
def test_grammar_counts_tags_tiers(world):
    ps = world.prompt_set()
    counts = {c: ps.tags.count(c) for c in CATEGORIES}
    # 3 shapes, 4 colours, counts 2-4, 4 relations; ordered pairs of distinct shapes (and colours).
    assert counts == {"single_object": 3, "two_object": 6, "counting": 9, "colors": 12, "position": 24,
                      "color_attr": 72}
    assert len(set(ps.texts)) == len(ps)
    tiers = {c: {t for t, g in zip(ps.tiers, ps.tags) if g == c} for c in CATEGORIES}
    assert tiers["single_object"] == {"easy"} and tiers["color_attr"] == {"hard"} and tiers["counting"] == {"medium"}
    for text, meta in zip(ps.texts, ps.meta):
        assert world.spec_text(meta["spec"]) == text
        assert len(world.vocab.encode(text)) >= 2


def test_split_holds_out_only_hard_categories_deterministically(world):
    tr, ho = world.split_ids()
    ps = world.prompt_set()
    assert set(tr).isdisjoint(ho) and sorted(tr + ho) == list(range(len(ps)))
    assert {ps.tags[i] for i in ho} == {"position", "color_attr"}
    assert len([i for i in ho if ps.tags[i] == "position"]) == 6  # 25 % of 24
    assert SceneWorld().split_ids() == (tr, ho)
    assert SceneWorld(WorldConfig(split_seed=1)).split_ids() != (tr, ho)
    assert SceneWorld(WorldConfig(heldout_frac=0.0)).split_ids()[1] == []


def test_vocab_layout(world):
    v = world.vocab
    assert v.tokens[:4] == ["<pad>", "<bos>", "<boi>", "<eoi>"]
    assert v.size == v.image_offset + world.n_codes
    assert v.decode(v.encode("a red circle and a blue square")) == "a red circle and a blue square"
    with pytest.raises(ValueError, match="unknown word 'purple'"):
        v.encode("a purple circle")


# --------------------------------------------------------------------------- detector, by category
def test_single_object(world):
    assert sat(world, ". . . . / . g.triangle . . / . . . . / . . . .", "a triangle")
    assert not sat(world, ". . . . / . g.triangle . . / . . . . / . . . .", "a circle")
    assert not sat(world, ". . . . / . . . . / . . . . / . . . .", "a circle")


def test_two_object(world):
    scene = "r.circle . . . / . . . . / . . y.square . / . . . ."
    assert sat(world, scene, "a circle and a square") and sat(world, scene, "a square and a circle")
    assert not sat(world, scene, "a circle and a triangle")


def test_counting_is_exact(world):
    three = "r.circle b.circle . . / . . . . / . g.circle . b.square / . . . ."
    assert sat(world, three, "three circles")
    assert not sat(world, three, "two circles") and not sat(world, three, "four circles")
    assert not sat(world, three, "two squares")


def test_colors(world):
    scene = "r.circle . . . / . . . . / . . b.square . / . . . ."
    assert sat(world, scene, "a red circle") and sat(world, scene, "a blue square")
    assert not sat(world, scene, "a blue circle") and not sat(world, scene, "a red square")


def test_position_relations(world):
    # circle at (1, 0), square at (2, 3): the circle is left of and above the square.
    scene = ". . . . / r.circle . . . / . . . b.square / . . . ."
    assert sat(world, scene, "a circle left of a square") and sat(world, scene, "a circle above a square")
    assert sat(world, scene, "a square right of a circle") and sat(world, scene, "a square below a circle")
    assert not sat(world, scene, "a circle right of a square") and not sat(world, scene, "a circle below a square")
    # Same column: neither left nor right.
    col = ". r.circle . . / . . . . / . b.square . . / . . . ."
    assert not sat(world, col, "a circle left of a square") and not sat(world, col, "a circle right of a square")
    # Existence: one of two circles suffices.
    two = ". . . r.circle / . . . . / . b.square . . / r.circle . . ."
    assert sat(world, two, "a circle left of a square") and sat(world, two, "a circle right of a square")
    assert not sat(world, ". . . . / r.circle . . . / . . . . / . . . .", "a circle left of a square")


def test_color_attribute_binding(world):
    scene = "r.circle . . . / . . . . / . . b.square . / . . . ."
    assert sat(world, scene, "a red circle and a blue square")
    assert not sat(world, scene, "a blue circle and a red square")  # swapped binding
    assert not sat(world, ". . . . / . . . . / . . b.square . / . . . .", "a red circle and a blue square")


def test_clutter_rule(world):
    six = "r.circle b.square g.square g.square / g.square g.square . . / . . . . / . . . ."
    seven = "r.circle b.square g.square g.square / g.square g.square g.square . / . . . . / . . . ."
    for prompt in ("a circle", "a red circle", "a circle and a square", "a circle left of a square"):
        assert sat(world, six, prompt), prompt
        assert not sat(world, seven, prompt), prompt
    full = np.full(16, world.code(0, 0))
    ps = world.prompt_set()
    assert not any(world.satisfies(full, m["spec"]) for m in ps.meta)
    assert not bool(world.satisfies_all(torch.as_tensor(full)[None]).any())


# --------------------------------------------------------------------------- vectorised == reference
def _scenes(world, n, seed):
    rng = random.Random(seed)
    ps = world.prompt_set()
    out, ids = [], []
    for _ in range(n):
        p = rng.randrange(len(ps))
        spec = ps.meta[p]["spec"]
        r = rng.random()
        if r < 0.3:
            s = world.canonical_scene(spec, rng)
        elif r < 0.6:
            s = world.canonical_scene(world.perturb(spec, rng), rng)
        else:
            s = world.random_scene(rng, rng.randrange(0, 10))
        out.append(s)
        ids.append(p)
    return torch.tensor(out), torch.tensor(ids)


def test_vectorised_detector_equals_reference(world):
    scenes, ids = _scenes(world, 3000, seed=0)
    vec = world.satisfies_batch(ids, scenes)
    ps = world.prompt_set()
    ref = torch.tensor([world.satisfies(s.numpy(), ps.meta[p]["spec"]) for s, p in zip(scenes, ids.tolist())])
    assert torch.equal(vec, ref)
    assert 0.2 < ref.float().mean() < 0.8  # both verdicts well represented
    every = world.satisfies_all(scenes[:300])
    rows = torch.arange(300).repeat_interleave(len(ps))
    cols = torch.arange(len(ps)).repeat(300)
    assert torch.equal(every.flatten(), world.satisfies_batch(cols, scenes[rows]))


def test_vectorised_detector_other_grid():
    w = SceneWorld(WorldConfig(grid=3, max_objects=5, colors=("red", "blue"), shapes=("circle", "square", "star")))
    scenes, ids = _scenes(w, 1000, seed=1)
    ps = w.prompt_set()
    ref = torch.tensor([w.satisfies(s.numpy(), ps.meta[p]["spec"]) for s, p in zip(scenes, ids.tolist())])
    assert torch.equal(w.satisfies_batch(ids, scenes), ref)


def test_canonical_scenes_satisfy_and_perturbations_differ(world):
    rng = random.Random(0)
    for meta in world.prompt_set().meta:
        spec = meta["spec"]
        for _ in range(20):
            s = world.canonical_scene(spec, rng)
            assert world.satisfies(s, spec), (world.spec_text(spec), world.describe(s))
            assert sum(k > 0 for k in s) <= world.config.max_objects
        q = world.perturb(spec, rng)
        assert q["category"] == spec["category"] and q != spec


# --------------------------------------------------------------------------- judge, renderer, errors
def test_exact_judge_protocol_and_shapes(world):
    judge = ExactJudge(world)
    assert isinstance(judge, ExternalJudge)
    scenes, ids = _scenes(world, 24, seed=2)
    images = scenes.view(1, 6, 4, 16)
    pids = ids.view(6, 4)[:, 0]
    got = judge(pids, images)
    assert got.shape == (1, 6, 4) and got.dtype == torch.bool
    expect = world.satisfies_batch(pids.repeat_interleave(4), scenes)
    assert torch.equal(got.flatten(), expect)
    with pytest.raises(ValueError, match="prompt rows"):
        judge(pids[:3], images)
    with pytest.raises(ValueError, match="cells"):
        judge(pids, torch.zeros(1, 6, 4, 9, dtype=torch.long))


def test_bad_input_errors(world):
    with pytest.raises(ValueError, match="cell codes"):
        world.satisfies_batch(torch.tensor([0]), torch.full((1, 16), 99))
    with pytest.raises(ValueError, match="prompt ids"):
        world.satisfies_batch(torch.tensor([10_000]), torch.zeros(1, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        world.satisfies(np.zeros(9, dtype=int), world.prompt_set().meta[0]["spec"])
    with pytest.raises(ValueError, match="bad cell"):
        world.parse_scene("x.circle . . . / . . . . / . . . . / . . . .")
    with pytest.raises(ValueError, match="unknown colour"):
        WorldConfig(colors=("red", "mauve"))
    with pytest.raises(ValueError, match="max_objects"):
        WorldConfig(max_objects=3)
    with pytest.raises(ValueError, match="heldout_categories"):
        WorldConfig(heldout_categories=("spatial",))


def test_render_png(world, tmp_path):
    scenes, _ = _scenes(world, 6, seed=3)
    render(scenes.view(1, 2, 3, 16), tmp_path / "grid.png", world=world, titles=["a", "b"],
           marks=torch.tensor([True, False, True, True, False, True]))
    data = tmp_path.joinpath("grid.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    render(scenes, tmp_path / "flat.png", world=world, ncols=4)
    with pytest.raises(ValueError, match="one replica"):
        render(torch.zeros(2, 1, 1, 16, dtype=torch.long), tmp_path / "x.png", world=world)
