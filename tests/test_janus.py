"""The Janus-Pro adapter (model protocol), presets and loading, real-model eNTK probes, benchmark smoke tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dynamics.full.janus import JanusUnified, JudgeConfig, entk_probe
from dynamics.full.presets import PRESETS, build_preset, load_janus, preset_config
from dynamics.full.sampler import (
    GenerationScorer,
    SamplingConfig,
    prompt_batch,
    row_seeds,
    sample_image_tokens,
)
from dynamics.protocol import PromptSet, UnifiedModel

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["a red cube", "two dogs on a wooden bench near a tree", "a cat", "three blue cups"]


@pytest.fixture(scope="module")
def jm():
    return JanusUnified.from_pretrained(
        "tiny", PromptSet(TEXTS, tags=["color", "spatial", "single", "count"])
    )


@pytest.fixture(scope="module")
def jm64():
    return JanusUnified.from_pretrained("tiny", TEXTS, dtype=torch.float64, seed=1)


# ---------------------------------------------------------------- protocol and sampling


def test_conforms_to_protocol_with_real_shapes(jm):
    assert isinstance(jm, UnifiedModel)
    assert jm.replicas == 1 and jm.image_length == 16 and len(jm.prompts) == 4
    x = jm.sample(torch.tensor([2, 0]), 3, seed=5)
    assert x.shape == (1, 2, 3, 16) and x.dtype == torch.long
    assert int(x.min()) >= 0 and int(x.max()) < 64
    for name in ("janus-pro-1b-shape", "janus-pro-7b-shape"):
        cfg = preset_config(name)
        assert cfg.vision_config.num_image_tokens == 576 == cfg.vq_config.num_patches**2
        assert cfg.vq_config.num_embeddings == 16384


def test_sample_is_seeded_and_independent_of_batch_composition(jm):
    a = jm.sample(torch.tensor([0, 1, 2]), 2, seed=7)
    assert torch.equal(a, jm.sample(torch.tensor([0, 1, 2]), 2, seed=7))
    assert not torch.equal(a, jm.sample(torch.tensor([0, 1, 2]), 2, seed=8))
    alone = jm.sample(torch.tensor([1]), 2, seed=7)
    assert torch.equal(alone[0, 0], a[0, 1])
    chunked = JanusUnified(jm.model, jm.processor, jm.prompts, sampling=SamplingConfig(batch_size=4))
    assert torch.equal(chunked.sample(torch.tensor([0, 1, 2]), 2, seed=7), a)
    assert not torch.equal(a[0, 0, 0], a[0, 0, 1])  # candidates differ


@pytest.mark.parametrize("cfg_mode,cfg_scale", [("none", 1.0), ("combined", 5.0), ("combined", 2.5)])
def test_image_logprob_equals_the_samplers_logprobs(jm64, cfg_mode, cfg_scale):
    # The adapter's samples are the sampler's rows with row_seeds, and its teacher-forced log-probs
    # (through self.module) are the log-probs those tokens were drawn with.
    jm = JanusUnified(
        jm64.model,
        jm64.processor,
        jm64.prompts,
        sampling=SamplingConfig(cfg_scale=cfg_scale),
        cfg_mode=cfg_mode,
    )
    pids = [0, 3]
    x = jm.sample(torch.tensor(pids), 2, seed=3)
    seeds = row_seeds(3, pids, 2)
    ids, mask = prompt_batch(jm.processor, [TEXTS[p] for p in pids for _ in range(2)])
    tok, lp = sample_image_tokens(
        jm.model,
        ids,
        mask,
        seeds=[s for row in seeds for s in row],
        cfg_scale=cfg_scale,
        return_logprobs=True,
    )
    assert torch.equal(tok.reshape(1, 2, 2, 16), x)
    got = jm.image_logprob(torch.tensor(pids), x)
    assert got.shape == (1, 2, 2) and got.requires_grad and got.dtype == torch.float64
    torch.testing.assert_close(got, lp.sum(-1).reshape(1, 2, 2), rtol=0, atol=1e-9)


def test_training_forward_goes_through_the_swappable_module(jm):
    # A DDP/accelerate wrapper is swapped in as jm.module: image_logprob must call it (not the raw model).
    class Counting(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, *args, **kwargs):
            self.calls += 1
            return self.inner(*args, **kwargs)

    wrapped = JanusUnified(jm.model, jm.processor, jm.prompts, logprob_batch_size=2)
    wrapped.module = Counting(wrapped.scorer)
    x = jm.sample(torch.tensor([0, 1]), 2, seed=1)
    lp = wrapped.image_logprob(torch.tensor([0, 1]), x)
    assert wrapped.module.calls == 2  # 4 rows in chunks of 2
    (-lp.sum()).backward()
    grads = [p.grad for p in wrapped.generation_parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    jm.model.zero_grad(set_to_none=True)


# ---------------------------------------------------------------- judge


def test_judge_reads_pixels_like_a_saved_png_through_the_processor(jm, tmp_path):
    # The judge's inputs equal JanusProcessor's on the decoded PNG files (the real understanding path),
    # and its P(yes) equals the restricted two-set softmax of the model's next-token logits.
    pids = [0, 1]
    x = jm.sample(torch.tensor(pids), 2, seed=2)
    paths = jm.save_images(torch.tensor(pids), x, tmp_path)
    assert [p.name for p in paths] == ["p0_c0.png", "p0_c1.png", "p1_c0.png", "p1_c1.png"]
    images = [Image.open(p).convert("RGB") for p in paths]
    rows = [0, 0, 1, 1]
    proc = jm.processor
    raw = [
        proc.apply_chat_template(
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image"},
                        {"type": "text", "text": jm.judge_config.question.replace("{prompt}", TEXTS[r])},
                    ],
                }
            ],
            add_generation_prompt=True,
        )
        for r in rows
    ]
    enc = proc(text=raw, images=images, return_tensors="pt", padding=True)
    ids, mask, pixels = jm._und_inputs(rows, x[0].reshape(-1, 16))
    assert torch.equal(enc["input_ids"], ids) and torch.equal(enc["attention_mask"], mask)
    torch.testing.assert_close(enc["pixel_values"].float(), pixels, rtol=0, atol=1e-6)
    with torch.no_grad():
        logits = jm.model(**enc, position_ids=(enc["attention_mask"].cumsum(-1) - 1).clamp_min(0)).logits[
            :, -1
        ]
    tok = proc.tokenizer
    yes, no = tok.convert_tokens_to_ids(["Yes", "yes"]), tok.convert_tokens_to_ids(["No", "no"])
    p = torch.sigmoid(torch.logsumexp(logits[:, yes], -1) - torch.logsumexp(logits[:, no], -1))
    got = jm.judge(torch.tensor(pids), x)
    assert got.shape == (1, 2, 2) and not got.requires_grad
    torch.testing.assert_close(got.reshape(-1), p, rtol=0, atol=1e-5)


def test_judge_batched_equals_one_by_one(jm64):
    x = jm64.sample(torch.tensor([0, 1, 2, 3]), 2, seed=4)
    together = jm64.judge(torch.tensor([0, 1, 2, 3]), x)
    small = JanusUnified(jm64.model, jm64.processor, jm64.prompts, judge=JudgeConfig(batch_size=1))
    for b in range(4):
        one = small.judge(torch.tensor([b]), x[:, b : b + 1])
        torch.testing.assert_close(one[0, 0], together[0, b], rtol=0, atol=1e-9)
    lp = jm64.judge_logprob(torch.tensor([0, 1, 2, 3]), x)
    assert lp.requires_grad
    torch.testing.assert_close(lp.detach().exp().float(), together, rtol=0, atol=1e-6)


def test_score_format_and_generate_and_parse(jm):
    x = jm.sample(torch.tensor([0, 2]), 1, seed=0)
    score = JanusUnified(jm.model, jm.processor, jm.prompts, judge=JudgeConfig.score_format())
    assert score.understanding_texts([0])[0].endswith("<|Assistant|>: The score is")
    p = score.judge(torch.tensor([0, 2]), x)
    assert p.shape == (1, 2, 1) and bool(((p > 0) & (p < 1)).all())
    gen = JanusUnified(jm.model, jm.processor, jm.prompts, judge=JudgeConfig.score_format(mode="generate"))
    answers = gen.generate_answers([0, 2], x[0, :, 0])
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    v = gen.judge(torch.tensor([0, 2]), x)
    assert set(v.reshape(-1).tolist()) <= {0.0, 1.0}
    assert gen.parse_answer("The score is 1") == 1.0 and gen.parse_answer("The score is 0.") == 0.0


# ---------------------------------------------------------------- scopes and checkpoints


def test_parameter_scopes_keep_understanding_encoder_and_vq_frozen():
    names = {}
    for scope in ("trunk", "trunk+gen", "lora"):
        jm = JanusUnified.from_pretrained("tiny", ["a cube"], scope=scope)
        names[scope] = set(jm.generation_parameter_names())
        for n in names[scope]:
            assert not n.startswith(("model.vision_model", "model.aligner", "model.vqmodel", "lm_head"))
            assert "embed_tokens" not in n
    assert all(n.startswith("model.language_model.") for n in names["trunk"])
    extra = names["trunk+gen"] - names["trunk"]
    assert {n.split(".")[1] for n in extra} == {
        "generation_embeddings",
        "generation_aligner",
        "generation_head",
    }
    assert names["lora"] and all("lora_" in n for n in names["lora"])


@pytest.mark.parametrize("scope", ["trunk", "lora"])
def test_sgd_step_changes_only_the_scope_and_state_dict_round_trips(scope):
    jm = JanusUnified.from_pretrained("tiny", TEXTS, scope=scope, seed=4)
    before = {n: p.detach().clone() for n, p in jm.model.named_parameters()}
    state = jm.state_dict()
    assert state["scope"] == scope and set(state["parameters"]) == set(jm.generation_parameter_names())
    x = jm.sample(torch.tensor([0, 1]), 1, seed=0)
    opt = torch.optim.SGD(jm.generation_parameters(), lr=0.5)
    (-jm.image_logprob(torch.tensor([0, 1]), x).sum()).backward()
    opt.step()
    changed = {n for n, p in jm.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(jm.generation_parameter_names())
    jm.load_state_dict(state)
    assert all(torch.equal(p, before[n]) for n, p in jm.model.named_parameters())
    with pytest.raises(ValueError, match="scope"):
        jm.load_state_dict({**state, "scope": "trunk+gen"})


def test_gradient_checkpointing_changes_memory_not_results():
    plain = JanusUnified.from_pretrained("tiny", TEXTS, seed=5, dtype=torch.float64)
    ckpt = JanusUnified.from_pretrained(
        "tiny", TEXTS, seed=5, dtype=torch.float64, gradient_checkpointing=True
    )
    x = plain.sample(torch.tensor([0, 1]), 2, seed=1)
    assert torch.equal(ckpt.sample(torch.tensor([0, 1]), 2, seed=1), x)  # the KV cache still works
    grads = []
    for jm in (plain, ckpt):
        lp = jm.image_logprob(torch.tensor([0, 1]), x)
        (g,) = torch.autograd.grad(lp.sum(), [jm.generation_parameters()[0]])
        grads.append((lp.detach(), g))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=1e-10)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=0, atol=1e-10)


def test_load_janus_from_a_local_checkpoint(tmp_path):
    model, processor = build_preset("tiny", seed=6)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    a = JanusUnified(model, processor, TEXTS)
    b = JanusUnified.from_pretrained(str(tmp_path), TEXTS)
    assert b.processor.tokenizer.boi_token == "<begin_of_image>"
    x = a.sample(torch.tensor([0, 2]), 2, seed=4)
    assert torch.equal(b.sample(torch.tensor([0, 2]), 2, seed=4), x)
    torch.testing.assert_close(b.judge(torch.tensor([0, 2]), x), a.judge(torch.tensor([0, 2]), x))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_janus(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="no such checkpoint directory"):
        load_janus(str(tmp_path / "not-here"))


# ---------------------------------------------------------------- eNTK probes


def test_entk_probe_matches_one_sgd_step_to_first_order(jm64):
    # Theory (first order): one plain-SGD step of size lr on u changes log pi_gen(o) by
    # lr <grad log pi_gen(o), grad log pi_gen(u)> + O(lr^2), and log P_und(yes|o) by
    # lr <grad log P_und(yes|o), grad log pi_gen(u)> + O(lr^2): the relative error is small and
    # shrinks linearly with lr (the second-order remainder).
    x = jm64.sample(torch.tensor([0, 1, 2]), 2, seed=9)
    params = [p for n, p in jm64.model.named_parameters() if p.requires_grad and ".layers.1." in n]
    errs = {}
    for lr in (1e-3, 1e-4):
        r = entk_probe(jm64, [0, 1, 2], x[0, :, 0], 1, x[0, 1, 1], lr=lr, parameters=params)
        assert r.predicted_gen.shape == r.measured_und.shape == (3,)
        assert r.parameter_count == sum(p.numel() for p in params)
        assert float(r.predicted_und.abs().max()) > 0 and float(r.predicted_gen.abs().max()) > 0
        errs[lr] = r.relative_error()
    assert errs[1e-4]["gen"] < 0.02 and errs[1e-4]["und"] < 0.02
    assert errs[1e-3]["gen"] / errs[1e-4]["gen"] > 4  # the error is O(lr)
    # parameters are restored after the measured step
    again = entk_probe(jm64, [0], x[0, :1, 0], 1, x[0, 1, 1], lr=1e-4, parameters=params)
    torch.testing.assert_close(again.predicted_gen, r.predicted_gen[:1])


# ---------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors_before_work(jm, monkeypatch):
    with pytest.raises(ValueError, match="presets: janus-pro-1b-shape, janus-pro-7b-shape, tiny"):
        preset_config("janus-pro-3b")
    with pytest.raises(ValueError, match="not a Janus preset"):
        load_janus("my-janus")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="nobody-here/no-such-janus"):
        load_janus("nobody-here/no-such-janus")
    with pytest.raises(ValueError, match="perfect square"):
        preset_config("tiny", image_tokens=15)
    with pytest.raises(ValueError, match="out of range"):
        jm.sample(torch.tensor([0, 9]), 1, seed=0)
    with pytest.raises(ValueError, match="n .* must be >= 1"):
        jm.sample(torch.tensor([0]), 0, seed=0)
    with pytest.raises(ValueError, match="prompt rows"):
        jm.judge(torch.tensor([0]), torch.zeros(1, 2, 1, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="17 tokens"):
        jm.image_logprob(torch.tensor([0]), torch.zeros(1, 1, 1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="scope must be one of"):
        JanusUnified(jm.model, jm.processor, jm.prompts, scope="vision")
    with pytest.raises(ValueError, match="cfg_mode must be one of"):
        JanusUnified(jm.model, jm.processor, jm.prompts, cfg_mode="both")
    with pytest.raises(ValueError, match="no single-token answer"):
        JanusUnified(jm.model, jm.processor, jm.prompts, judge=JudgeConfig(yes=("Absolutely",)))
    with pytest.raises(ValueError, match="must contain"):
        JudgeConfig(question="Is this good?")
    with pytest.raises(ValueError, match="empty"):
        PromptSet([])
    assert sorted(PRESETS) == ["janus-pro-1b-shape", "janus-pro-7b-shape", "tiny"]


def test_tiny_preset_is_small_and_deterministic():
    # Small enough to build in well under 2 s (timed in benchmarks, not here); seeded weights.
    model, _ = build_preset("tiny", seed=3)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    again, _ = build_preset("tiny", seed=3)
    other, _ = build_preset("tiny", seed=4)
    pairs = list(zip(model.state_dict().values(), again.state_dict().values(), other.state_dict().values()))
    assert all(torch.equal(a, b) for a, b, _ in pairs)
    assert not all(torch.equal(a, c) for a, _, c in pairs)
    assert GenerationScorer(model).model is model


# ---------------------------------------------------------------- benchmark smoke tests


def _load_bench(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_bench_sampler_quick(capsys):
    bench = _load_bench("bench_sampler")
    result = bench.main(["--quick"])
    out = capsys.readouterr().out
    assert "identical tokens" in out and "speed ratio" in out and "per-prompt loop" in out
    assert result["identical"] and result["batched_identical"]
    assert result["speed_ratio"] > 0 and result["batch_ratio"] > 0


def test_bench_dpo_memory_quick(capsys):
    bench = _load_bench("bench_dpo_memory")
    result = bench.main(["--quick", "--no-pin-malloc"])
    out = capsys.readouterr().out
    assert "precomputed / live" in out
    assert all(np.isfinite(r["ratio"]) and r["ratio"] > 0 for r in result["rows"])
