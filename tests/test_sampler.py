"""The Janus image-token sampler against transformers' own generation, and its teacher-forced twin."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dynamics.full.presets import build_preset
from dynamics.full.sampler import (
    GenerationScorer,
    SamplingConfig,
    decode_pixels,
    guide,
    prompt_batch,
    row_seeds,
    sample_image_tokens,
    save_png,
    to_uint8,
    unconditional_ids,
    warp,
)

PROMPTS = ["a red cube", "two dogs on a wooden bench near a tree", "a cat"]


@pytest.fixture(scope="module")
def tiny():
    return build_preset("tiny", seed=0)


@pytest.fixture(scope="module")
def tiny64():
    return build_preset("tiny", seed=0, dtype=torch.float64)


@pytest.mark.parametrize(
    "seed,cfg,temperature,top_k",
    [(0, 5.0, 1.0, None), (123, 5.0, 1.0, 50), (7, 3.0, 0.7, 10), (99, 1.5, 1.3, None)],
)
def test_identical_tokens_to_transformers_generate(tiny, seed, cfg, temperature, top_k):
    # Claim: with the same seed (torch.manual_seed for transformers, the row's generator for us) and
    # equal settings, our sampler draws exactly the tokens of generate(generation_mode="image").
    # transformers' GenerationConfig defaults to top_k=50: "off" must be passed as top_k=0 explicitly.
    model, processor = tiny
    ids, mask = prompt_batch(processor, [PROMPTS[seed % 3]])
    torch.manual_seed(seed)
    ref = model.generate(
        input_ids=ids,
        attention_mask=mask,
        generation_mode="image",
        do_sample=True,
        guidance_scale=cfg,
        temperature=temperature,
        top_k=top_k or 0,
    )
    ours = sample_image_tokens(
        model, ids, mask, seeds=[seed], cfg_scale=cfg, temperature=temperature, top_k=top_k
    )
    assert ours.shape == ref.shape == (1, 16)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("image_tokens", [144, pytest.param(576, marks=pytest.mark.slow)])
def test_identical_tokens_on_long_grids(image_tokens):
    # Long grids (Janus-Pro's 24 x 24 = 576 on tiny layers, slow): every sequential draw stays aligned.
    model, processor = build_preset("tiny", seed=2, image_tokens=image_tokens)
    ids, mask = prompt_batch(processor, ["a red cube"])
    torch.manual_seed(5)
    ref = model.generate(
        input_ids=ids,
        attention_mask=mask,
        generation_mode="image",
        do_sample=True,
        guidance_scale=5.0,
        top_k=0,
    )
    ours = sample_image_tokens(model, ids, mask, seeds=[5], cfg_scale=5.0)
    assert ours.shape == (1, image_tokens) and torch.equal(ours, ref)


def test_rows_do_not_depend_on_batch_composition(tiny64):
    # Left padding with correct masks and position ids plus per-row generators: a prompt sampled in a
    # padded batch gives the same tokens and log-probs as the prompt alone (float64: exact to 1e-10).
    model, processor = tiny64
    ids, mask = prompt_batch(processor, PROMPTS)
    assert (mask == 0).any(), "the batch must contain left padding for this test to mean anything"
    tok, lp = sample_image_tokens(
        model, ids, mask, seeds=[11, 12, 13], cfg_scale=5.0, temperature=0.9, top_k=20, return_logprobs=True
    )
    for i, text in enumerate(PROMPTS):
        i1, m1 = prompt_batch(processor, [text])
        t1, l1 = sample_image_tokens(
            model, i1, m1, seeds=[11 + i], cfg_scale=5.0, temperature=0.9, top_k=20, return_logprobs=True
        )
        assert torch.equal(t1[0], tok[i])
        torch.testing.assert_close(l1[0], lp[i], rtol=0, atol=1e-10)


def test_guidance_one_needs_no_unconditional_rows(tiny64):
    # g = 1 (where transformers' image generate fails) samples from the conditional logits alone: its
    # log-probs equal the scorer's conditional ("none") log-probs; g = 1 differs from g = 5.
    model, processor = tiny64
    ids, mask = prompt_batch(processor, PROMPTS)
    tok, lp = sample_image_tokens(model, ids, mask, seeds=[1, 2, 3], cfg_scale=1.0, return_logprobs=True)
    scorer = GenerationScorer(model)
    torch.testing.assert_close(scorer(ids, mask, tok, per_token=True), lp, rtol=0, atol=1e-10)
    tok5 = sample_image_tokens(model, ids, mask, seeds=[1, 2, 3], cfg_scale=5.0)
    assert not torch.equal(tok, tok5)


@pytest.mark.parametrize("cfg,temperature", [(5.0, 1.0), (2.0, 0.8)])
def test_teacher_forced_logprobs_equal_sampler_logprobs(tiny64, cfg, temperature):
    # The teacher-forced CFG-combined ("combined") log-probs are the ones the sampler drew from.
    model, processor = tiny64
    ids, mask = prompt_batch(processor, PROMPTS)
    tok, lp = sample_image_tokens(
        model, ids, mask, seeds=[4, 5, 6], cfg_scale=cfg, temperature=temperature, return_logprobs=True
    )
    scored = GenerationScorer(model)(ids, mask, tok, cfg_scale=cfg, temperature=temperature, per_token=True)
    torch.testing.assert_close(scored, lp, rtol=0, atol=1e-10)
    total = GenerationScorer(model)(ids, mask, tok, cfg_scale=cfg, temperature=temperature)
    torch.testing.assert_close(total, lp.sum(-1), rtol=0, atol=1e-9)
    assert total.requires_grad


def test_guide_and_warp_match_transformers_processors():
    from transformers.generation.logits_process import (
        ClassifierFreeGuidanceLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
    )

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 40, generator=g)
    ids = torch.zeros(3, 1, dtype=torch.long)
    ref = ClassifierFreeGuidanceLogitsProcessor(4.0)(ids, scores)
    torch.testing.assert_close(guide(scores[:3], scores[3:], 4.0), ref, rtol=0, atol=0)
    ref = TopKLogitsWarper(7)(ids, TemperatureLogitsWarper(0.6)(ids, scores[:3]))
    torch.testing.assert_close(warp(scores[:3], 0.6, 7), ref, rtol=0, atol=0)
    assert torch.isfinite(warp(scores[:3], 0.6, 7)).sum(-1).tolist() == [7, 7, 7]


def test_unconditional_row_keeps_only_bos_and_begin_of_image(tiny):
    _, processor = tiny
    ids, mask = prompt_batch(processor, PROMPTS)
    tok = processor.tokenizer
    bos, pad = tok.bos_token_id, tok.pad_token_id
    boi = tok.convert_tokens_to_ids(tok.boi_token)
    un = unconditional_ids(ids, bos_id=bos, boi_id=boi, pad_id=pad)
    for row, orig, m in zip(un, ids, mask):
        real = row[m.bool()]
        assert real[0] == bos and real[-1] == boi and (real[1:-1] == pad).all()
        assert (row[~m.bool()] == pad).all() and orig[-1] == boi


def test_row_seeds_are_per_prompt_and_candidate():
    a = row_seeds(3, [0, 1, 2], 4)
    flat = [s for row in a for s in row]
    assert len(set(flat)) == 12 and all(0 <= s < 2**63 for s in flat)
    assert row_seeds(3, [2], 4)[0] == a[2] and row_seeds(4, [2], 4)[0] != a[2]


def test_candidates_differ_and_seeds_reproduce(tiny):
    model, processor = tiny
    ids, mask = prompt_batch(processor, ["a cat"] * 3)
    tok = sample_image_tokens(model, ids, mask, seeds=[1, 2, 1], cfg_scale=5.0)
    assert torch.equal(tok[0], tok[2]) and not torch.equal(tok[0], tok[1])


def test_bad_sampler_inputs(tiny):
    model, processor = tiny
    ids, mask = prompt_batch(processor, PROMPTS[:2])
    with pytest.raises(ValueError, match="2 rows"):
        sample_image_tokens(model, ids, mask, seeds=[1])
    with pytest.raises(ValueError, match="temperature must be > 0"):
        sample_image_tokens(model, ids, mask, seeds=[1, 2], temperature=0.0)
    with pytest.raises(ValueError, match="equal"):
        sample_image_tokens(model, ids, mask[:, 1:], seeds=[1, 2])
    with pytest.raises(ValueError, match="top_k"):
        SamplingConfig(top_k=-1)
    with pytest.raises(ValueError, match=r"image tokens must lie in \[0, 64\)"):
        GenerationScorer(model)(ids, mask, torch.full((2, 16), 64))


def test_png_bytes_match_transformers_postprocess(tiny, tmp_path):
    # Our uint8 conversion is the processor's postprocess (the PNG a user would save), bit for bit.
    model, processor = tiny
    ids, mask = prompt_batch(processor, PROMPTS[:2])
    tok = sample_image_tokens(model, ids, mask, seeds=[1, 2], cfg_scale=5.0)
    px = decode_pixels(model, tok)
    u8 = to_uint8(px)
    ref = processor.postprocess(list(px.float()), return_tensors="np")["pixel_values"]
    assert u8.shape == (2, 16, 16, 3)
    assert torch.equal(u8, torch.as_tensor(ref).permute(0, 2, 3, 1))
    paths = save_png(u8, [tmp_path / "a.png", tmp_path / "b" / "c.png"])
    back = torch.as_tensor(np.array(Image.open(paths[1]).convert("RGB")))
    assert torch.equal(back, u8[1])


def test_exponential_race_is_torch_multinomial():
    # The sampler's per-row draw argmax(p / q), q ~ Exp(1) from the row's generator, is exactly what
    # torch.multinomial(p, 1, generator=g) returns (and so what transformers' generate draws).
    for seed in range(60):
        g = torch.Generator().manual_seed(seed)
        vocab = (64, 16384, 7)[seed % 3]
        p = torch.softmax(torch.randn(3, vocab, generator=g) * (seed % 5), -1)
        g1 = [torch.Generator().manual_seed(1000 + seed + r) for r in range(3)]
        g2 = [torch.Generator().manual_seed(1000 + seed + r) for r in range(3)]
        for _ in range(3):
            ref = torch.cat([torch.multinomial(p[r : r + 1], 1, generator=g1[r])[0] for r in range(3)])
            q = torch.empty_like(p)
            for r in range(3):
                q[r].exponential_(generator=g2[r])
            assert torch.equal((p / q).argmax(-1), ref)
