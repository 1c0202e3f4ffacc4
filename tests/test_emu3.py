"""The Emu3 adapter (model protocol) through transformers' native Emu3 classes: the sampler against
``generate``, the teacher-forced scorer against the sampler, the judge's pixel path, scopes, model-family
dispatch, and CLO end to end through ``experiments/full_clo.py``'s logic."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_entry_points import full_clo, make_prompts

from dynamics.full.emu3 import (
    EMU3_PRESETS,
    Emu3Scorer,
    Emu3Unified,
    build_emu3,
    emu3_config,
    sample_image_tokens,
)
from dynamics.full.janus import JudgeConfig
from dynamics.full.presets import model_family
from dynamics.full.sampler import SamplingConfig, row_seeds
from dynamics.protocol import PromptSet, UnifiedModel

TEXTS = ["a red cube", "two dogs on a wooden bench near a tree", "a cat", "three blue cups"]


@pytest.fixture(scope="module")
def em():
    return Emu3Unified.from_pretrained("emu3-tiny", PromptSet(TEXTS, tags=["color", "spatial", "single", "count"]))


@pytest.fixture(scope="module")
def em64():
    return Emu3Unified.from_pretrained("emu3-tiny", TEXTS, dtype=torch.float64, seed=1)


def _generate(em, pid, seed, *, cfg, temperature=1.0, top_k=None):
    """transformers' generate with the prefix_allowed_tokens_fn of transformers' Emu3 example and the
    adapter's negative prompt as negative_prompt_ids, after torch.manual_seed(seed); returns the codes
    through transformers' own unwrapping (Emu3ImageVocabularyMapping.convert_bpe2img)."""
    model, tok = em.model, em.processor.tokenizer
    h, w = em.height, em.width
    visual = model.vocabulary_mapping.image_tokens
    eol = tok.convert_tokens_to_ids("<|extra_200|>")

    def allowed(batch_id, input_ids):
        position = torch.nonzero(input_ids == tok.image_wrapper_token_id, as_tuple=True)[0][0]
        offset = input_ids.shape[0] - position
        if offset % (w + 1) == 0:
            return (eol,)
        if offset == (w + 1) * h + 1:
            return (tok.eof_token_id,)
        if offset == (w + 1) * h + 2:
            return (tok.eoi_token_id,)
        if offset >= (w + 1) * h + 3:
            return (tok.eos_token_id,)
        return visual

    ids, mask = em.generation_inputs([pid])
    neg = em.scorer.negative_ids
    extra = {"negative_prompt_ids": neg, "negative_prompt_attention_mask": torch.ones_like(neg)} if cfg != 1 else {}
    torch.manual_seed(seed)
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, guidance_scale=cfg,
                         temperature=temperature, top_k=top_k or 0, prefix_allowed_tokens_fn=allowed,
                         max_new_tokens=(w + 1) * h + 3, pad_token_id=tok.pad_token_id, **extra)
    seq = out[:, ids.shape[1]:]
    assert tok.convert_ids_to_tokens(seq[0, -3:]) == ["<|extra_201|>", "<|image end|>", "<|extra_204|>"]
    return seq, model.vocabulary_mapping.convert_bpe2img(seq[:, :-3].view(-1, h, w + 1)).reshape(1, -1).long()


# ---------------------------------------------------------------- protocol, presets, sampler


def test_conforms_to_protocol_and_presets_have_emu3_shapes(em):
    assert isinstance(em, UnifiedModel)
    assert em.replicas == 1 and (em.height, em.width) == (4, 4) and em.image_length == 16
    x = em.sample(torch.tensor([2, 0]), 3, seed=5)
    assert x.shape == (1, 2, 3, 16) and x.dtype == torch.long
    assert 0 <= int(x.min()) and int(x.max()) < 64
    assert sorted(EMU3_PRESETS) == ["emu3-8b-shape", "emu3-tiny"]
    big = emu3_config("emu3-8b-shape")  # a config check only: 8B parameters are never built here
    t = big.text_config
    assert (t.hidden_size, t.num_hidden_layers, t.num_key_value_heads, t.vocab_size) == (4096, 32, 8, 184622)
    assert big.vq_config.codebook_size == 32768 == sum(k.startswith("<|visual token") for k in big.vocabulary_map)
    assert 2 ** (len(big.vq_config.channel_multiplier) - 1) == 8  # the grid Emu3Processor assumes


@pytest.mark.parametrize("image_tokens,seed,cfg,temperature,top_k,negative", [
    (16, 0, 3.0, 1.0, None, ""),
    (16, 123, 5.0, 0.7, 10, "lowres, bad anatomy, blurry."),
    (16, 7, 1.0, 1.3, None, ""),
    (64, 5, 2.0, 1.0, 20, ""),
])
def test_identical_tokens_to_transformers_generate(em, image_tokens, seed, cfg, temperature, top_k, negative):
    # Claim: with the same seed (torch.manual_seed for transformers, the row's generator here) and equal
    # settings, the sampler draws exactly generate's tokens under the layout constraint (end-of-line forced
    # at each row's end), with CFG on the negative prompt's own cache; the VQ decode equals transformers'
    # decode_image_tokens of generate's sequence.
    if image_tokens == 16:
        model, processor = em.model, em.processor
    else:
        model, processor = build_emu3("emu3-tiny", seed=2, image_tokens=image_tokens)
    e = Emu3Unified(model, processor, TEXTS, negative_prompt=negative)
    seq, ref = _generate(e, seed % 2, seed, cfg=cfg, temperature=temperature, top_k=top_k)
    ids, mask = e.generation_inputs([seed % 2])
    ours = sample_image_tokens(e.model, ids, mask, seeds=[seed], height=e.height, width=e.width,
                               negative_ids=e.scorer.negative_ids, cfg_scale=cfg, temperature=temperature, top_k=top_k)
    assert ours.shape == (1, image_tokens) and torch.equal(ours, ref)
    assert torch.equal(e.decode_pixels(ours), e.model.decode_image_tokens(image_tokens=seq, height=e.height,
                                                                           width=e.width))


def test_left_padded_batch_rows_equal_rows_alone(em64):
    # Left padding, position ids from each row's first token and per-row generators: a prompt sampled in a
    # padded batch gets the tokens and log-probs it gets alone (float64: exact to 1e-10); the adapter's
    # candidates do not depend on its sampling batch size.
    ids, mask = em64.generation_inputs([0, 1, 2])
    assert (mask == 0).any(), "the batch must contain left padding for this test to mean anything"
    kw = {"height": 4, "width": 4, "negative_ids": em64.scorer.negative_ids, "cfg_scale": 3.0, "temperature": 0.9,
          "top_k": 20, "return_logprobs": True}
    tok, lp = sample_image_tokens(em64.model, ids, mask, seeds=[11, 12, 13], **kw)
    for i in range(3):
        i1, m1 = em64.generation_inputs([i])
        t1, l1 = sample_image_tokens(em64.model, i1, m1, seeds=[11 + i], **kw)
        assert torch.equal(t1[0], tok[i])
        torch.testing.assert_close(l1[0], lp[i], rtol=0, atol=1e-10)
    a = em64.sample(torch.tensor([0, 1, 2]), 2, seed=7)
    chunked = Emu3Unified(em64.model, em64.processor, em64.prompts, sampling=SamplingConfig(batch_size=4))
    assert torch.equal(chunked.sample(torch.tensor([0, 1, 2]), 2, seed=7), a)
    assert torch.equal(em64.sample(torch.tensor([1]), 2, seed=7)[0, 0], a[0, 1])
    assert not torch.equal(a[0, 0, 0], a[0, 0, 1]) and not torch.equal(a, em64.sample(torch.tensor([0, 1, 2]), 2, seed=8))


@pytest.mark.parametrize("cfg_mode,cfg_scale,temperature", [("none", 1.0, 1.0), ("combined", 3.0, 1.0),
                                                             ("combined", 2.0, 0.8)])
def test_image_logprob_equals_the_samplers_logprobs(em64, cfg_mode, cfg_scale, temperature):
    # The adapter's samples are the sampler's rows under row_seeds, and the teacher-forced log-probs (one
    # forward over the layout, visual-token logits only) are those the tokens were drawn with.
    e = Emu3Unified(em64.model, em64.processor, em64.prompts, sampling=SamplingConfig(cfg_scale=cfg_scale,
                    temperature=temperature), cfg_mode=cfg_mode)
    pids = [0, 3]
    x = e.sample(torch.tensor(pids), 2, seed=3)
    ids, mask = e.generation_inputs([p for p in pids for _ in range(2)])
    seeds = [s for row in row_seeds(3, pids, 2) for s in row]
    tok, lp = sample_image_tokens(e.model, ids, mask, seeds=seeds, height=4, width=4, negative_ids=e.scorer.negative_ids,
                                  cfg_scale=cfg_scale, temperature=temperature, return_logprobs=True)
    assert torch.equal(tok.reshape(1, 2, 2, 16), x)
    scored = e.scorer(ids, mask, tok, cfg_scale=cfg_scale, temperature=temperature, per_token=True)
    torch.testing.assert_close(scored, lp, rtol=0, atol=1e-10)
    if temperature == 1.0:  # the protocol's image_logprob scores at temperature 1
        got = e.image_logprob(torch.tensor(pids), x)
        assert got.shape == (1, 2, 2) and got.requires_grad and got.dtype == torch.float64
        torch.testing.assert_close(got, lp.sum(-1).reshape(1, 2, 2), rtol=0, atol=1e-9)


# ---------------------------------------------------------------- judge through pixels


def test_judge_reads_saved_pngs_through_emu3s_processor(em, tmp_path):
    # The judge's inputs equal Emu3Processor's on the decoded PNG files (the VQ decoder's pixels,
    # quantised as the processor's postprocess does), and P(yes) equals the two-set softmax of the model's
    # next-token logits on them; it lies in [0, 1], differs across images and batching changes nothing.
    pids = [0, 1]
    x = em.sample(torch.tensor(pids), 2, seed=2)
    paths = em.save_images(torch.tensor(pids), x, tmp_path)
    images = [Image.open(p).convert("RGB") for p in paths]
    px = em.decode_pixels(x[0].reshape(-1, 16))
    post = em.processor.postprocess(list(px.float()), return_tensors="PIL.Image.Image")["pixel_values"]
    assert all(np.array_equal(np.array(a), np.array(b)) for a, b in zip(images, post))
    rows = [0, 0, 1, 1]
    raw = [em.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                                          "text": em.judge_config.question.replace("{prompt}", TEXTS[r])}]}],
        add_generation_prompt=True) for r in rows]
    enc = em.processor(text=raw, images=images, padding=True, padding_side="left", return_tensors="pt")
    ours = em._und_inputs(rows, x[0].reshape(-1, 16))
    assert set(enc) == set(ours)
    for key in ("input_ids", "attention_mask", "image_sizes"):
        assert torch.equal(enc[key], ours[key]), key
    torch.testing.assert_close(enc["pixel_values"].float(), ours["pixel_values"], rtol=0, atol=0)
    with torch.no_grad():
        logits = em.model(**enc, position_ids=(enc["attention_mask"].cumsum(-1) - 1).clamp_min(0)).logits[:, -1]
    tok = em.processor.tokenizer
    yes, no = tok.convert_tokens_to_ids(["Yes", "yes"]), tok.convert_tokens_to_ids(["No", "no"])
    p = torch.sigmoid(torch.logsumexp(logits[:, yes], -1) - torch.logsumexp(logits[:, no], -1))
    got = em.judge(torch.tensor(pids), x)
    assert got.shape == (1, 2, 2) and not got.requires_grad
    torch.testing.assert_close(got.reshape(-1), p, rtol=0, atol=1e-5)
    assert bool(((got >= 0) & (got <= 1)).all()) and len(set(got.reshape(-1).tolist())) > 1
    one = Emu3Unified(em.model, em.processor, em.prompts, judge=JudgeConfig(batch_size=1))
    torch.testing.assert_close(one.judge(torch.tensor(pids), x), got, rtol=0, atol=1e-5)
    lp = em.judge_logprob(torch.tensor(pids), x)
    assert lp.requires_grad
    torch.testing.assert_close(lp.detach().exp(), got, rtol=0, atol=1e-5)


def test_score_format_and_generate_and_parse(em):
    x = em.sample(torch.tensor([0, 2]), 1, seed=0)
    score = Emu3Unified(em.model, em.processor, em.prompts, judge=JudgeConfig.score_format())
    assert score.understanding_texts([0])[0].endswith("ASSISTANT: The score is")
    p = score.judge(torch.tensor([0, 2]), x)
    assert p.shape == (1, 2, 1) and bool(((p > 0) & (p < 1)).all())
    gen = Emu3Unified(em.model, em.processor, em.prompts, judge=JudgeConfig.score_format(mode="generate"))
    answers = gen.generate_answers([0, 2], x[0, :, 0])
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    assert set(gen.judge(torch.tensor([0, 2]), x).reshape(-1).tolist()) <= {0.0, 1.0}


# ---------------------------------------------------------------- scopes and checkpoints


def test_scopes_and_state_dict_round_trip():
    names = {}
    for scope in ("trunk", "trunk+gen", "lora"):
        e = Emu3Unified.from_pretrained("emu3-tiny", TEXTS, scope=scope, seed=4)
        names[scope] = set(e.generation_parameter_names())
        assert not any(n.startswith("model.vqmodel") for n in names[scope])
    assert all(n.startswith("model.text_model.") and "embed_tokens" not in n for n in names["trunk"])
    assert names["trunk+gen"] - names["trunk"] == {"model.text_model.embed_tokens.weight", "lm_head.weight"}
    assert names["lora"] and all("lora_" in n for n in names["lora"])
    # one SGD step on the LoRA scope (the last e) changes only the scope; the state dict restores it
    before = {n: p.detach().clone() for n, p in e.model.named_parameters()}
    state = e.state_dict()
    x = e.sample(torch.tensor([0, 1]), 1, seed=0)
    opt = torch.optim.SGD(e.generation_parameters(), lr=0.5)
    (-e.image_logprob(torch.tensor([0, 1]), x).sum()).backward()
    opt.step()
    changed = {n for n, p in e.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= names["lora"]
    e.load_state_dict(state)
    assert all(torch.equal(p, before[n]) for n, p in e.model.named_parameters())
    with pytest.raises(ValueError, match="scope"):
        e.load_state_dict({**state, "scope": "trunk"})


def test_gradient_checkpointing_changes_memory_not_results():
    plain = Emu3Unified.from_pretrained("emu3-tiny", TEXTS, dtype=torch.float64, seed=5)
    ckpt = Emu3Unified.from_pretrained("emu3-tiny", TEXTS, dtype=torch.float64, seed=5, gradient_checkpointing=True)
    x = plain.sample(torch.tensor([0, 1]), 2, seed=1)
    assert torch.equal(ckpt.sample(torch.tensor([0, 1]), 2, seed=1), x)  # the KV cache still works
    res = []
    for e in (plain, ckpt):
        lp = e.image_logprob(torch.tensor([0, 1]), x)
        (g,) = torch.autograd.grad(lp.sum(), [e.generation_parameters()[0]])
        res.append((lp.detach(), g))
    torch.testing.assert_close(res[0][0], res[1][0], rtol=0, atol=1e-10)
    torch.testing.assert_close(res[0][1], res[1][1], rtol=0, atol=1e-10)
    assert float(res[0][1].abs().sum()) > 0


def test_local_checkpoint_loads_as_emu3_and_bad_checkpoints_are_refused_before_loading(em, tmp_path):
    ck = tmp_path / "emu3"
    em.model.save_pretrained(ck)
    em.processor.save_pretrained(ck)
    assert model_family(str(ck)) == "emu3" and model_family("emu3-tiny") == "emu3" and model_family("tiny") == "janus"
    back = Emu3Unified.from_pretrained(str(ck), TEXTS)
    assert (back.height, back.width) == (4, 4)  # the grid travels in config.json (image_area)
    x = em.sample(torch.tensor([0, 2]), 2, seed=4)
    assert torch.equal(back.sample(torch.tensor([0, 2]), 2, seed=4), x)
    torch.testing.assert_close(back.judge(torch.tensor([0, 2]), x), em.judge(torch.tensor([0, 2]), x))
    config = json.loads((ck / "config.json").read_text())
    cases = {
        "llama": ({"model_type": "llama"}, "model_type 'llama', not a supported unified model family"),
        "chameleon": ({"model_type": "chameleon"}, "ChameleonVQVAE has an encoder and no decoder"),
        "text": ({"model_type": "emu3_text_model"}, "without an image tokenizer"),
        "novq": ({**{k: v for k, v in config.items() if k != "vq_config"}}, "no vq_config"),
        "novisual": ({**config, "vocabulary_map": {"<image>": 4}}, "no visual tokens"),
    }
    for name, (cfg, match) in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(ValueError, match=match):
            model_family(str(tmp_path / name))
    with pytest.raises(ValueError, match="not a Janus or Emu3 preset"):
        model_family("show-o-tiny")
    with pytest.raises(ValueError, match="emu3-8b-shape has no tokenizer"):
        Emu3Unified.from_pretrained("emu3-8b-shape", TEXTS)


def test_bad_inputs_raise_clear_errors(em):
    with pytest.raises(ValueError, match="unknown Emu3 preset"):
        emu3_config("emu3-2b")
    with pytest.raises(ValueError, match="perfect square"):
        emu3_config("emu3-tiny", image_tokens=15)
    with pytest.raises(ValueError, match="out of range"):
        em.sample(torch.tensor([0, 9]), 1, seed=0)
    with pytest.raises(ValueError, match="17 tokens"):
        em.image_logprob(torch.tensor([0]), torch.zeros(1, 1, 1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"image tokens must lie in \[0, 64\)"):
        em.image_logprob(torch.tensor([0]), torch.full((1, 1, 1, 16), 64))
    with pytest.raises(ValueError, match="png_roundtrip"):
        Emu3Unified(em.model, em.processor, TEXTS, judge=JudgeConfig(png_roundtrip=False))
    with pytest.raises(ValueError, match="scope must be one of"):
        Emu3Unified(em.model, em.processor, TEXTS, scope="vision")
    assert isinstance(em.scorer, Emu3Scorer) and em.module is em.scorer


# ---------------------------------------------------------------- CLO through the entry point


def _args(prompts, *extra):
    return ["--model", "emu3-tiny", "--prompts", prompts, "--candidates", "2", "--epochs", "2", "--curriculum", "off",
            "--eval-candidates", "2", "--cfg-scale", "2", "--lr", "0.01", "--judge", "self", *extra]


def test_full_clo_runs_emu3_tiny_and_resumes_to_the_same_records(tmp_path, monkeypatch):
    from dynamics import clo

    args = _args(make_prompts(tmp_path))
    recs = full_clo(args, tmp_path / "a")
    assert [r["epoch"] for r in recs] == [0, 1, 2] and "non_unification" in recs[-1]
    assert json.loads((tmp_path / "a" / "config.json").read_text())["run"]["family"] == "emu3"
    real_save = clo._save

    def dying_save(*args, epoch, **kwargs):  # killed at epoch 2, after its metrics
        if epoch == 2:
            raise KeyboardInterrupt
        real_save(*args, epoch=epoch, **kwargs)

    monkeypatch.setattr(clo, "_save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        full_clo(args, tmp_path / "b")
    monkeypatch.setattr(clo, "_save", real_save)
    full_clo(args + ["--resume"], tmp_path / "b")
    assert (tmp_path / "a" / "metrics.jsonl").read_text() == (tmp_path / "b" / "metrics.jsonl").read_text()


def test_full_clo_refuses_unknown_family_before_any_model_loads(tmp_path, monkeypatch, capsys):
    from dynamics.full import emu3, janus

    monkeypatch.setattr(emu3, "load_emu3", lambda *a, **k: pytest.fail("a model was loaded"))
    monkeypatch.setattr(janus.JanusUnified, "from_pretrained", lambda *a, **k: pytest.fail("a model was loaded"))
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(SystemExit) as e:
        full_clo(_args(make_prompts(tmp_path))[2:] + ["--model", str(ck)], tmp_path / "r")
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "model_type 'llama'" in err[-1] and "config.json" in err[-1]
