"""External judges (file, detector, VLM) and the co-degradation alarm."""

from __future__ import annotations

import hashlib
import json
import struct
import warnings
from pathlib import Path

import pytest
import torch

from dynamics.full.data import load_geneval
from dynamics.full.external import (
    CoDegradationAlarm,
    CoDegradationWarning,
    DetectorJudge,
    FileJudge,
    MissingJudgementError,
    TransformersYesNo,
    VLMJudge,
    candidate_hash,
    probe,
)
from dynamics.full.geneval import Detection, score
from dynamics.protocol import ExternalJudge, PromptSet

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GENEVAL = DATA / "geneval" / "evaluation_metadata.jsonl"


def images_like(R, B, K, M, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 50, (R, B, K, M), generator=g)


# ---------------------------------------------------------------- candidate hashes and FileJudge


def test_candidate_hash_is_sha256_of_int64_le():
    toks = [7, 0, 123456789, 2]
    assert candidate_hash(toks) == hashlib.sha256(struct.pack("<4q", *toks)).hexdigest()
    assert candidate_hash(torch.tensor(toks, dtype=torch.int32)) == candidate_hash(toks)
    assert candidate_hash([1, 2]) != candidate_hash([1, 2, 0]) != candidate_hash([2, 1])
    with pytest.raises(ValueError, match="1-D sequence of integer"):
        candidate_hash(torch.zeros(2, 2, dtype=torch.long))


def test_file_judge_roundtrip_any_order_and_replicas(tmp_path):
    ps = PromptSet(["a red car", "two dogs", "a cat left of a cup"])
    ids = torch.tensor([0, 1, 2])
    images = images_like(2, 3, 4, 5)
    labels = torch.rand(2, 3, 4, generator=torch.Generator().manual_seed(1)) > 0.5
    path = tmp_path / "j.jsonl"
    assert FileJudge.write(path, ps, ids, images, labels, p_yes=labels.float() * 0.9) == 24
    judge = FileJudge(path, ps)
    assert isinstance(judge, ExternalJudge)
    assert torch.equal(judge(ids, images), labels)
    # a permuted batch: prompts and candidates looked up by content, not position
    perm = torch.tensor([2, 0])
    assert torch.equal(judge(ids[perm], images[:, perm].flip(2)), labels[:, perm].flip(2))
    assert judge.rows[0]["p_yes"] in (0.0, pytest.approx(0.9))


def test_file_judge_prompt_id_keys_and_extra_fields(tmp_path):
    ps = PromptSet(["a red car", "two dogs"])
    img = images_like(1, 2, 1, 3)
    lines = [
        {"prompt_id": 1, "candidate": candidate_hash(img[0, 1, 0]), "label": 1, "annotator": "A"},
        {"prompt": "a red car", "candidate": candidate_hash(img[0, 0, 0]), "label": False},
        {"prompt": "some other prompt set", "candidate": "0" * 64, "label": True},  # unused: fine
    ]
    path = tmp_path / "j.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    assert FileJudge(path, ps)(torch.tensor([0, 1]), img).tolist() == [[[False], [True]]]


def test_file_judge_unknown_key_is_a_clear_error(tmp_path):
    ps = PromptSet(["a red car", "two dogs"])
    images = images_like(1, 2, 2, 3)
    path = tmp_path / "j.jsonl"
    FileJudge.write(path, ps, torch.tensor([0, 1]), images, torch.ones(1, 2, 2, dtype=torch.bool))
    judge = FileJudge(path, ps)
    other = images.clone()
    other[0, 1, 1, 0] += 1
    with pytest.raises(
        MissingJudgementError,
        match=r"no judgement for 1 of 4 candidates: prompt 'two dogs' \(id 1\), candidate [0-9a-f]{12}\.\.\. at \[r=0, b=1, k=1\]",
    ):
        judge(torch.tensor([0, 1]), other)


@pytest.mark.parametrize(
    "line, match",
    [
        ('{"prompt": "a", "candidate": ', r"j\.jsonl:2: malformed JSON"),
        (
            '{"candidate": "' + "0" * 64 + '", "label": true}',
            r"j\.jsonl:2: missing field 'prompt' \(or 'prompt_id'\)",
        ),
        ('{"prompt": "a", "label": true}', r"j\.jsonl:2: missing field 'candidate'"),
        ('{"prompt": "a", "candidate": "' + "0" * 64 + '"}', r"j\.jsonl:2: missing field 'label'"),
        (
            '{"prompt": "a", "candidate": "xyz", "label": true}',
            r"j\.jsonl:2: field 'candidate' must be a 64-digit",
        ),
        (
            '{"prompt": "a", "candidate": "' + "0" * 64 + '", "label": "yes"}',
            r"j\.jsonl:2: field 'label' must be true/false",
        ),
        (
            '{"prompt": "a", "candidate": "' + "0" * 64 + '", "label": true, "p_yes": 1.5}',
            r"j\.jsonl:2: field 'p_yes'",
        ),
        (
            '{"prompt_id": 9, "candidate": "' + "0" * 64 + '", "label": true}',
            r"j\.jsonl:2: field 'prompt_id' 9 is not a row",
        ),
        (
            '{"prompt_id": 0, "prompt": "b", "candidate": "' + "0" * 64 + '", "label": true}',
            r"j\.jsonl:2: prompt 'b' disagrees with prompt_id 0",
        ),
        (
            '{"prompt": "a", "candidate": "' + "1" * 64 + '", "label": false}',
            r"j\.jsonl:2: label False contradicts line 1",
        ),
    ],
)
def test_file_judge_bad_lines(tmp_path, line, match):
    path = tmp_path / "j.jsonl"
    path.write_text(json.dumps({"prompt": "a", "candidate": "1" * 64, "label": True}) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=match):
        FileJudge(path, PromptSet(["a", "b"]))


def test_file_judge_missing_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no judgement file"):
        FileJudge(tmp_path / "nope.jsonl", PromptSet(["a"]))
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="judgement file is empty"):
        FileJudge(tmp_path / "e.jsonl", PromptSet(["a"]))


# ---------------------------------------------------------------- DetectorJudge


RULES = [
    ("a photo of a cat", "single_object", {"include": [{"class": "cat", "count": 1}]}),
    (
        "a photo of two cups",
        "counting",
        {"include": [{"class": "cup", "count": 2}], "exclude": [{"class": "cup", "count": 3}]},
    ),
    ("a photo of a red car", "colors", {"include": [{"class": "car", "count": 1, "color": "red"}]}),
]


def toy_detector(image: torch.Tensor) -> list[Detection]:
    """An 'image' here is its token ids: token t at slot i means t objects of class i."""
    names = ["cat", "cup", "car"]
    out = []
    for slot, n in enumerate(image.tolist()[:3]):
        for j in range(n % 4):
            out.append(
                Detection(
                    names[slot], (100 * j, 0, 100 * j + 20, 20), 0.95, color="red" if image[3] % 2 else "blue"
                )
            )
    return out


def test_detector_judge_matches_geneval_score():
    ps = PromptSet([t for t, _, _ in RULES], tags=[g for _, g, _ in RULES], meta=[m for _, _, m in RULES])
    decoded = []

    def decode(tokens):
        decoded.append(tokens.shape[0])
        return list(tokens)

    judge = DetectorJudge(toy_detector, ps, decode, batch_size=5)
    assert isinstance(judge, ExternalJudge)
    ids = torch.tensor([2, 0, 1])
    images = images_like(2, 3, 4, 4, seed=3)
    got = judge(ids, images)
    assert got.shape == (2, 3, 4) and got.dtype == torch.bool
    assert decoded == [5, 5, 5, 5, 4]  # 24 candidates in batches of 5
    for r in range(2):
        for b in range(3):
            pid = int(ids[b])
            row = {"tag": RULES[pid][1], **RULES[pid][2]}
            for k in range(4):
                ok, reason = score(row, toy_detector(images[r, b, k]))
                assert bool(got[r, b, k]) == ok and judge.last_reasons[r][b][k] == reason
    assert 0 < int(got.sum()) < got.numel()  # both outcomes occur


def test_detector_judge_needs_rules_before_any_decoding():
    calls = []
    ps = PromptSet(
        ["a red car", "a blue bird"], tags=["color", "color"], meta=[{"file": "color_val.txt", "line": 1}, {}]
    )
    with pytest.raises(ValueError, match=r"prompt 0 'a red car' \(color_val\.txt:1\) has no 'include' rules"):
        DetectorJudge(toy_detector, ps, lambda t: calls.append(1) or list(t))
    assert not calls
    bad = PromptSet(
        ["x"], tags=["colors"], meta=[{"include": [{"class": "car", "count": 1, "color": "teal"}]}]
    )
    with pytest.raises(ValueError, match=r"prompt 0 'x': include\[0\]\.color: 'teal'"):
        DetectorJudge(toy_detector, bad, lambda t: list(t))


def test_detector_judge_on_real_geneval_prompts_and_bad_decode():
    if not GENEVAL.exists():
        pytest.skip(f"GenEval metadata not present at {GENEVAL}")
    ps = load_geneval(GENEVAL)
    judge = DetectorJudge(lambda image: [], ps, decode=lambda t: list(t)[:-1])
    with pytest.raises(ValueError, match="decode returned 1 images for 2 token sequences"):
        judge(torch.tensor([0]), images_like(1, 1, 2, 3))
    ok = DetectorJudge(lambda image: [], ps, decode=lambda t: list(t))(
        torch.tensor([0, 552]), images_like(1, 2, 1, 3)
    )
    assert not ok.any()  # nothing detected: every GenEval rule fails
    with pytest.raises(ValueError, match=r"prompt_ids must lie in \[0, 553\)"):
        judge(torch.tensor([553]), images_like(1, 1, 1, 3))


# ---------------------------------------------------------------- VLMJudge


def test_vlm_judge_stub_questions_order_and_threshold():
    ps = PromptSet(["a red car", "two dogs"])
    seen: list[str] = []

    def answer(images, questions):
        seen.extend(questions)
        return torch.tensor([float(im[0]) / 10 for im in images])

    judge = VLMJudge(
        answer, ps, decode=lambda t: list(t), question="Is this {prompt}?", threshold=0.5, batch_size=3
    )
    images = torch.arange(2 * 2 * 2).reshape(2, 2, 2, 1)  # P(yes) = token / 10
    ids = torch.tensor([1, 0])
    probs = judge.probabilities(ids, images)
    assert torch.allclose(probs, images[..., 0].float() / 10)
    # candidates in (r, b, k) order, each asked about its own prompt
    assert seen == (["Is this two dogs?"] * 2 + ["Is this a red car?"] * 2) * 2
    assert torch.equal(judge(ids, images), images[..., 0] >= 5)


def test_vlm_judge_bad_input():
    ps = PromptSet(["a"])
    with pytest.raises(ValueError, match="must contain '{prompt}'"):
        VLMJudge(lambda i, q: [1.0], ps, lambda t: list(t), question="Is it good?")
    with pytest.raises(ValueError, match="threshold must be in"):
        VLMJudge(lambda i, q: [1.0], ps, lambda t: list(t), threshold=2)
    images = torch.zeros(1, 1, 2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="returned 1 probabilities for 2 images"):
        VLMJudge(lambda i, q: [1.0], ps, lambda t: list(t))(torch.tensor([0]), images)
    with pytest.raises(ValueError, match="outside"):
        VLMJudge(lambda i, q: [3.0, 1.0], ps, lambda t: list(t))(torch.tensor([0]), images)
    with pytest.raises(ValueError, match=r"images must be \(R, B, K, M\)"):
        VLMJudge(lambda i, q: [1.0], ps, lambda t: list(t))(torch.tensor([0]), images[0])


def tiny_llava():
    """A random tiny LLaVA with a word-level tokenizer and a processor, all built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    words = [
        "<pad>",
        "<s>",
        "</s>",
        "<unk>",
        "<image>",
        "USER:",
        "ASSISTANT:",
        "yes",
        "no",
        "Yes",
        "No",
        "is",
        "this",
        "a",
        "red",
        "car",
        "two",
        "dogs",
        "?",
        "maybe",
    ]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )
    template = (
        "{% for m in messages %}USER: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image> "
        "{% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}
        ),
        tokenizer=tokenizer,
        chat_template=template,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=16,
            patch_size=8,
        ),
        text_config=LlamaConfig(
            vocab_size=len(words),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            pad_token_id=0,
        ),
        image_token_id=4,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(config).eval(), processor


def test_transformers_yes_no_on_a_tiny_random_vlm():
    import numpy as np
    from PIL import Image

    torch.set_num_threads(1)
    model, processor = tiny_llava()
    yn = TransformersYesNo(model, processor, yes=("yes", "Yes"), no=("no", "No"))
    pics = [
        Image.fromarray(np.random.RandomState(i).randint(0, 255, (16, 16, 3), dtype=np.uint8))
        for i in range(3)
    ]
    questions = ["is this a red car ?", "two dogs ?", "is this two red dogs ?"]  # different lengths: padding
    batched = yn(pics, questions)
    single = torch.cat([yn([p], [q]) for p, q in zip(pics, questions)])
    assert torch.allclose(batched, single, atol=1e-5)
    # by hand: the first answer token's distribution at the end of the generation prompt
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": questions[0]}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert text.endswith("ASSISTANT:")
    inputs = processor(images=pics[:1], text=[text], return_tensors="pt")
    with torch.no_grad():
        p = torch.softmax(model(**inputs).logits[0, -1].double(), -1)
    expect = (p[7] + p[9]) / (p[7] + p[8] + p[9] + p[10])
    assert batched[0].item() == pytest.approx(expect.item(), rel=1e-4)
    # a full judge over it, with a decode from token ids to pictures
    ps = PromptSet(["a red car", "two dogs"])
    judge = VLMJudge.from_transformers(
        model,
        processor,
        ps,
        decode=lambda t: [pics[int(x[0]) % 3] for x in t],
        question="is this {prompt} ?",
        batch_size=2,
    )
    probs = judge.probabilities(torch.tensor([0, 1]), torch.tensor([[[[0]], [[1]]]]))
    assert probs[0, 0, 0].item() == pytest.approx(batched[0].item(), rel=1e-4)
    with pytest.raises(ValueError, match=r"yes word 'maybe yes' is 2 tokens"):
        TransformersYesNo(model, processor, yes=("maybe yes",))
    with pytest.raises(ValueError, match="overlap"):
        TransformersYesNo(model, processor, yes=("yes",), no=("yes",))


# ---------------------------------------------------------------- co-degradation alarm


def test_alarm_fires_only_when_external_falls_while_non_improves():
    alarm = CoDegradationAlarm()
    assert alarm.update(0, 0.60, 0.30) is False
    # co-improvement: external up, Non down
    assert alarm.update(1, 0.65, 0.25) is False
    # plain degradation Non sees: external down, Non up
    assert alarm.update(2, 0.62, 0.28) is False
    with pytest.warns(
        CoDegradationWarning,
        match=r"epoch 3: co-degradation: external accuracy 0\.620 -> 0\.580 while Non 0\.280 -> 0\.200 \(vs epoch 2\)",
    ):
        assert alarm.update(3, 0.58, 0.20) is True
    assert [h["alarm"] for h in alarm.history] == [False, False, False, True]


def test_alarm_tolerance_and_slow_drift_against_the_start():
    alarm = CoDegradationAlarm(tolerance=0.03)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not alarm.update(0, 0.60, 0.30)
        assert not alarm.update(1, 0.58, 0.28)  # -0.02 against both references: within tolerance
    with pytest.warns(CoDegradationWarning, match=r"vs epoch 0\)$"):
        assert alarm.update(2, 0.56, 0.26)  # -0.02 per epoch, -0.04 since the start
    strict = CoDegradationAlarm(non_tolerance=0.05)
    strict.update(0, 0.6, 0.3)
    assert not strict.update(1, 0.5, 0.28)  # Non improved by less than its tolerance


def test_alarm_bad_input_and_resume():
    alarm = CoDegradationAlarm(tolerance=0.01)
    with pytest.raises(ValueError, match=r"external_acc must be a fraction in \[0, 1\] \(not %\), got 60"):
        alarm.update(0, 60, 0.3)
    with pytest.raises(ValueError, match="non must be a fraction"):
        alarm.update(0, 0.6, float("nan"))
    alarm.update(0, 0.6, 0.3)
    with pytest.raises(ValueError, match="epoch 0 is not after the last recorded epoch 0"):
        alarm.update(0, 0.6, 0.3)
    with pytest.raises(ValueError, match="tolerance must be in"):
        CoDegradationAlarm(tolerance=-0.1)
    restored = CoDegradationAlarm()
    restored.load_state_dict(json.loads(json.dumps(alarm.state_dict())))
    assert restored == alarm
    with pytest.warns(CoDegradationWarning):
        assert restored.update(1, 0.5, 0.2)


def test_probe_counts_external_accepts_and_self_rejections():
    class Model:
        def sample(self, ids, n, *, seed):
            g = torch.Generator().manual_seed(seed)
            return torch.randint(0, 2, (1, len(ids), n, 1), generator=g)

        def judge(self, ids, images):
            return images[..., 0].float() * 0.9  # P(yes) 0.9 for token 1, 0 for token 0

    ext = lambda ids, images: images[..., 0] == 1
    acc, non = probe(Model(), ext, torch.arange(50), n=4, seed=0)
    tokens = Model().sample(torch.arange(50), 4, seed=0)
    assert acc == pytest.approx(tokens.float().mean().item())
    assert non == pytest.approx(1 - acc)
    with pytest.raises(ValueError, match="n must be >= 1"):
        probe(Model(), ext, torch.arange(2), n=0, seed=0)


# ---------------------------------------------------------------- on the tiny Janus-Pro


def test_judges_on_tiny_janus_candidates(tmp_path):
    from dynamics.full.external import model_decoder
    from dynamics.full.janus import JanusUnified

    torch.set_num_threads(1)
    ps = PromptSet(
        ["a photo of a cat", "a photo of two cups"],
        tags=["single_object", "counting"],
        meta=[RULES[0][2], RULES[1][2]],
    )
    jm = JanusUnified.from_pretrained("tiny", ps)
    ids = torch.tensor([1, 0])
    images = jm.sample(ids, 3, seed=0)  # (1, 2, 3, M)
    pixels = jm.decode(images)  # (1, 2, 3, H, W, 3) uint8
    seen = []

    def detector(image):  # bright images hold a cat and two cups
        seen.append(image)
        n = 1 if float(torch.as_tensor(image).float().mean()) > threshold else 0
        return [Detection("cat", (0, 0, 5, 5), 0.95)] * n + [
            Detection("cup", (9 * j, 0, 9 * j + 5, 5), 0.95) for j in range(2 * n)
        ]

    threshold = float(pixels.float().mean(dim=(-1, -2, -3)).median())
    judge = DetectorJudge(detector, ps, model_decoder(jm), batch_size=4)
    got = judge(ids, images)
    assert got.shape == (1, 2, 3)
    assert all(torch.equal(torch.as_tensor(a), b) for a, b in zip(seen, pixels.reshape(6, *pixels.shape[3:])))
    bright = pixels.float().mean(dim=(-1, -2, -3)) > threshold
    assert torch.equal(got, bright) and 0 < int(got.sum()) < 6
    # cached as a file, read back
    FileJudge.write(tmp_path / "j.jsonl", ps, ids, images, got)
    assert torch.equal(FileJudge(tmp_path / "j.jsonl", ps)(ids, images), got)
