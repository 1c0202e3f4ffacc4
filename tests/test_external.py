"""External judges (file, detector, file of detections, VLM)."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import torch

from dynamics.full.data import load_geneval
from dynamics.full.external import (
    DetectionFile,
    DetectorJudge,
    FileJudge,
    MissingJudgementError,
    TransformersYesNo,
    VLMJudge,
    candidate_hash,
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


# ---------------------------------------------------------------- DetectionFile (--external detector:<file>)


def test_detection_file_judge_equals_the_detector_it_records(tmp_path):
    """A file of the detector's detections, scored by GenEval's rules, gives the verdicts and reasons of
    the detector itself; candidates are looked up by content, not position."""
    ps = PromptSet([t for t, _, _ in RULES], tags=[g for _, g, _ in RULES], meta=[m for _, _, m in RULES])
    ids = torch.tensor([2, 0, 1])
    images = images_like(2, 3, 4, 4, seed=3)
    path = tmp_path / "d.jsonl"
    dets = [[[toy_detector(images[r, b, k]) for k in range(4)] for b in range(3)] for r in range(2)]
    assert DetectionFile.write(path, images, dets) == 24
    live = DetectorJudge(toy_detector, ps, decode=lambda t: list(t))
    from_file = DetectorJudge.from_file(path, ps)
    want = live(ids, images)
    assert torch.equal(from_file(ids, images), want) and from_file.last_reasons == live.last_reasons
    perm = torch.tensor([1, 2])
    assert torch.equal(from_file(ids[perm], images[:, perm].flip(2)), want[:, perm].flip(2))
    assert 0 < int(want.sum()) < want.numel()


def test_detection_file_missing_candidate_names_prompt_and_position(tmp_path):
    ps = PromptSet([t for t, _, _ in RULES], tags=[g for _, g, _ in RULES], meta=[m for _, _, m in RULES])
    images = images_like(1, 2, 2, 4)
    path = tmp_path / "d.jsonl"
    DetectionFile.write(path, images, [[[[], []], [[], []]]])
    other = images.clone()
    other[0, 1, 0, 0] += 1
    with pytest.raises(
        MissingJudgementError,
        match=r"no detections for 1 of 4 candidates: .*d\.jsonl: no detections for candidate [0-9a-f]{12}\.\.\. "
        r"\(prompt 'a photo of two cups', id 1, at \[r=0, b=1, k=0\]\)",
    ):
        DetectorJudge.from_file(path, ps)(torch.tensor([0, 1]), other)


GOOD = {"label": "cat", "box": [0, 0, 9, 9], "confidence": 0.9}


@pytest.mark.parametrize(
    "row, match",
    [
        ('{"candidate": ', r"d\.jsonl:2: malformed JSON"),
        ('[1, 2]', r"d\.jsonl:2: expected a JSON object, got list"),
        ({"detections": []}, r"d\.jsonl:2: missing field 'candidate'"),
        ({"candidate": "0" * 64}, r"d\.jsonl:2: missing field 'detections'"),
        ({"candidate": "xyz", "detections": []}, r"d\.jsonl:2: field 'candidate' must be a 64-digit"),
        ({"candidate": "0" * 64, "detections": {}}, r"d\.jsonl:2: field 'detections' must be a list"),
        ({"candidate": "0" * 64, "detections": [GOOD, "cat"]}, r"d\.jsonl:2: field 'detections\[1\]' must be an object"),
        ({"candidate": "0" * 64, "detections": [{"label": "cat", "box": [0, 0, 1, 1]}]},
         r"d\.jsonl:2: field 'detections\[0\]' has no 'confidence'"),
        ({"candidate": "0" * 64, "detections": [{**GOOD, "label": ""}]}, r"d\.jsonl:2: field 'detections\[0\]\.label'"),
        ({"candidate": "0" * 64, "detections": [{**GOOD, "box": [0, 0, 9]}]},
         r"d\.jsonl:2: field 'detections\[0\]\.box' must be \[x0, y0, x1, y1\]"),
        ({"candidate": "0" * 64, "detections": [{**GOOD, "box": [9, 0, 0, 9]}]},
         r"d\.jsonl:2: field 'detections\[0\]\.box' \[9, 0, 0, 9\] needs x0 <= x1"),
        ({"candidate": "0" * 64, "detections": [{**GOOD, "confidence": 1.5}]},
         r"d\.jsonl:2: field 'detections\[0\]\.confidence' must be a number in \[0, 1\], got 1\.5"),
        ({"candidate": "0" * 64, "detections": [{**GOOD, "color": "teal"}]},
         r"d\.jsonl:2: field 'detections\[0\]\.color' 'teal' is not a GenEval colour"),
        ({"candidate": "1" * 64, "detections": []}, r"d\.jsonl:2: detections of candidate 111111111111\.\.\. contradict line 1"),
    ],
)
def test_detection_file_bad_lines_name_file_line_and_field(tmp_path, row, match):
    path = tmp_path / "d.jsonl"
    first = json.dumps({"candidate": "1" * 64, "detections": [GOOD]})
    path.write_text(first + "\n" + (row if isinstance(row, str) else json.dumps(row)) + "\n")
    with pytest.raises(ValueError, match=match):
        DetectionFile(path)


def test_detection_file_missing_empty_and_duplicate_lines(tmp_path):
    with pytest.raises(FileNotFoundError, match="no detection file"):
        DetectionFile(tmp_path / "nope.jsonl")
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="detection file is empty"):
        DetectionFile(tmp_path / "e.jsonl")
    same = json.dumps({"candidate": "1" * 64, "detections": [GOOD], "prompt": "a cat"})
    (tmp_path / "s.jsonl").write_text(same + "\n" + same + "\n")  # a repeated line, extra fields: fine
    assert DetectionFile(tmp_path / "s.jsonl").table["1" * 64][0] == [Detection("cat", (0, 0, 9, 9), 0.9)]


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
