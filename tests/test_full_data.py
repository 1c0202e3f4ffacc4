"""Prompt sets from GenEval JSONL and T2I-CompBench text files: real files and bad input."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from dynamics.full.data import (
    GENEVAL_TAGS,
    T2I_COMPBENCH_TAGS,
    PromptFileError,
    load_geneval,
    load_prompts,
    load_text_prompts,
    tag_from_filename,
)
from dynamics.protocol import PromptSet

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GENEVAL = DATA / "geneval" / "evaluation_metadata.jsonl"
T2I = DATA / "t2i_compbench"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"benchmark data not present at {path}")
    return path


ROW = {
    "tag": "colors",
    "prompt": "a photo of a red car",
    "include": [{"class": "car", "count": 1, "color": "red"}],
}


def write_jsonl(tmp_path: Path, lines: list[str], name: str = "p.jsonl") -> Path:
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return p


# ---------------------------------------------------------------- real files


def test_geneval_real_file_all_rows():
    ps = load_geneval(need(GENEVAL))
    assert isinstance(ps, PromptSet) and len(ps) == 553
    counts = Counter(ps.tags)
    assert counts == {
        "position": 100,
        "color_attr": 100,
        "two_object": 99,
        "colors": 94,
        "single_object": 80,
        "counting": 80,
    }
    assert set(ps.tiers) == {"easy"}
    raw = [json.loads(line) for line in GENEVAL.read_text().splitlines()]
    for i, (row, text, tag, meta) in enumerate(zip(raw, ps.texts, ps.tags, ps.meta)):
        assert text == row["prompt"] and tag == row["tag"]
        assert meta["include"] == row["include"]
        assert meta["exclude"] == row.get("exclude", [])
        assert meta["line"] == i + 1 and meta["file"] == GENEVAL.name
    # per-category groups for metrics
    groups = ps.groups()
    assert len(groups["tag:counting"]) == 80 and len(groups["tier:easy"]) == 553


def test_t2i_compbench_real_files_tags_from_names():
    need(T2I)
    train = load_prompts(T2I, split="train")
    assert set(train.tags) == set(T2I_COMPBENCH_TAGS)
    assert set(train.tiers) == {"medium"}
    for tag in T2I_COMPBENCH_TAGS:
        lines = [x.strip() for x in (T2I / f"{tag}_train.txt").read_text().splitlines() if x.strip()]
        got = [t for t, g in zip(train.texts, train.tags) if g == tag]
        assert got == lines  # order kept, CRLF stripped
        assert not any("\r" in t for t in got)
    val = load_prompts(T2I, split="val")
    both = load_prompts(T2I)
    assert len(both) == len(train) + len(val)
    one = load_text_prompts(T2I / "non_spatial_val.txt")
    assert set(one.tags) == {"non_spatial"}


def test_mixed_sources_combined_in_order():
    need(GENEVAL), need(T2I)
    ps = load_prompts(GENEVAL, T2I / "color_val.txt", T2I / "spatial_val.txt")
    n_color = len(load_text_prompts(T2I / "color_val.txt"))
    assert ps.tags[:553].count("counting") == 80
    assert ps.tags[553 : 553 + n_color] == ["color"] * n_color
    assert ps.tiers[0] == "easy" and ps.tiers[-1] == "medium"


# ---------------------------------------------------------------- bad input


def test_malformed_json_names_file_and_line(tmp_path):
    p = write_jsonl(
        tmp_path, [json.dumps(ROW), json.dumps(ROW), '{"tag": "colors", "prompt": "x", "include": [}']
    )
    with pytest.raises(PromptFileError, match=r"p\.jsonl:3: malformed JSON") as e:
        load_geneval(p)
    assert e.value.line == 3 and e.value.file == str(p)


@pytest.mark.parametrize("field", ["tag", "prompt", "include"])
def test_missing_field_names_file_line_field(tmp_path, field):
    bad = {k: v for k, v in ROW.items() if k != field}
    p = write_jsonl(tmp_path, [json.dumps(ROW), json.dumps(bad)])
    with pytest.raises(PromptFileError, match=rf"p\.jsonl:2: missing field '{field}'") as e:
        load_geneval(p)
    assert e.value.field == field


def test_unknown_tag_names_value_and_allowed(tmp_path):
    p = write_jsonl(tmp_path, [json.dumps({**ROW, "tag": "colour"})])
    with pytest.raises(
        PromptFileError, match=r"p\.jsonl:1: unknown tag 'colour'; allowed tags: single_object"
    ):
        load_geneval(p)
    # the same tag is fine when any tag is allowed
    assert load_geneval(p, allowed_tags=None).tags == ["colour"]


def test_unknown_tag_from_text_file_name(tmp_path):
    p = tmp_path / "colour_train.txt"
    p.write_text("a red car\n")
    with pytest.raises(
        PromptFileError, match=r"colour_train\.txt: unknown tag 'colour'.*allowed tags: color, shape"
    ):
        load_prompts(p)
    assert load_text_prompts(p, tag="color").tags == ["color"]


@pytest.mark.parametrize(
    "include, match",
    [
        ([{"class": "car", "count": 0}], r"include\[0\]\.count: must be an integer >= 1"),
        ([{"class": "car", "count": 1, "color": "teal"}], r"include\[0\]\.color: 'teal'"),
        ([{"count": 1}], r"include\[0\]: missing field 'class'"),
        (
            [{"class": "a", "count": 1}, {"class": "b", "count": 1, "position": ["near", 0]}],
            r"include\[1\]\.position: relation 'near'",
        ),
        (
            [{"class": "a", "count": 1, "position": ["above", 0]}],
            r"include\[0\]\.position: the first clause has no earlier clause",
        ),
        (
            [{"class": "a", "count": 1}, {"class": "b", "count": 1, "position": ["above", 1]}],
            r"include\[1\]\.position: target 1 must index an earlier include clause \(0\.\.0\)",
        ),
        ([], r"include: must be a non-empty list"),
    ],
)
def test_invalid_rule_fields(tmp_path, include, match):
    p = write_jsonl(tmp_path, [json.dumps(ROW), json.dumps({**ROW, "include": include})])
    with pytest.raises(PromptFileError, match=r"p\.jsonl:2: " + match):
        load_geneval(p)


def test_empty_prompt_sets(tmp_path):
    empty_jsonl = write_jsonl(tmp_path, [""], name="e.jsonl")
    with pytest.raises(PromptFileError, match=r"e\.jsonl: the prompt set is empty"):
        load_geneval(empty_jsonl)
    empty_txt = tmp_path / "color_val.txt"
    empty_txt.write_text("\n  \n\r\n")
    with pytest.raises(PromptFileError, match=r"color_val\.txt: the prompt set is empty"):
        load_text_prompts(empty_txt)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "color_val.txt").write_text("a red car\n")
    with pytest.raises(
        PromptFileError, match=r"sub: the directory holds no prompt files \(\*\.jsonl or \*_train"
    ):
        load_prompts(tmp_path / "sub", split="train")
    (tmp_path / "sub" / "color_val.txt").unlink()
    with pytest.raises(PromptFileError, match=r"sub: the directory holds no prompt files"):
        load_prompts(tmp_path / "sub")
    with pytest.raises(PromptFileError, match="no such file"):
        load_prompts(tmp_path / "missing.jsonl")


def test_empty_prompt_text_is_an_error(tmp_path):
    p = write_jsonl(tmp_path, [json.dumps({**ROW, "prompt": "  "})])
    with pytest.raises(PromptFileError, match=r"p\.jsonl:1: field 'prompt' must be a non-empty string"):
        load_geneval(p)


def test_blank_line_policy(tmp_path):
    # empty lines (also CRLF ones) are skipped; line numbers still count them
    p = tmp_path / "p.jsonl"
    p.write_bytes((json.dumps(ROW) + "\r\n\r\n\n" + json.dumps(ROW) + "\r\n").encode())
    ps = load_geneval(p)
    assert len(ps) == 2 and [m["line"] for m in ps.meta] == [1, 4]
    # a line of only spaces in JSONL is an error naming the line
    q = write_jsonl(tmp_path, [json.dumps(ROW), "   ", json.dumps(ROW)], name="q.jsonl")
    with pytest.raises(PromptFileError, match=r"q\.jsonl:2: line holds only whitespace"):
        load_geneval(q)


def test_non_object_and_bad_encoding(tmp_path):
    p = write_jsonl(tmp_path, ["[1, 2]"])
    with pytest.raises(PromptFileError, match=r"p\.jsonl:1: expected a JSON object, got list"):
        load_geneval(p)
    t = tmp_path / "color_val.txt"
    t.write_bytes(b"a red car\n\xff\xfe bad\n")
    with pytest.raises(PromptFileError, match=r"color_val\.txt:2: not valid UTF-8"):
        load_text_prompts(t)


def test_unknown_suffix_and_split(tmp_path):
    p = tmp_path / "prompts.csv"
    p.write_text("a,b\n")
    with pytest.raises(PromptFileError, match=r"unknown prompt file type '\.csv'"):
        load_prompts(p)
    with pytest.raises(ValueError, match="split 'training' unknown"):
        load_prompts(p, split="training")


def test_tag_from_filename():
    assert tag_from_filename("x/non_spatial_val.txt") == "non_spatial"
    assert tag_from_filename("complex_train.txt") == "complex"
    assert tag_from_filename("train.txt") == "train"
    assert set(GENEVAL_TAGS) == {
        "single_object",
        "two_object",
        "counting",
        "colors",
        "position",
        "color_attr",
    }
