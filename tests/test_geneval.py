"""GenEval's scoring rules over synthetic detections: every rule kind, and all 553 real rows."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from dynamics.full.geneval import (
    COLORS,
    RELATIONS,
    Detection,
    Detector,
    GenEvalConfig,
    compute_iou,
    relative_position,
    score,
    select_objects,
    validate_rule,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GENEVAL = DATA / "geneval" / "evaluation_metadata.jsonl"

# unit direction of "A <relation> B" in image coordinates (y down)
DIRECTION = {"left of": (-1, 0), "right of": (1, 0), "above": (0, -1), "below": (0, 1)}
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
SIZE = 40.0


def box_at(cx: float, cy: float, size: float = SIZE) -> tuple[float, float, float, float]:
    return (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2)


def synthesize(row: dict, rng: random.Random) -> list[Detection]:
    """Detections that satisfy ``row`` by construction (from the rule semantics, not the scorer):
    each include clause's objects at confidence 0.95 with the asked colour; position clauses placed
    far in the asked direction from their target; plus distractors that must not matter."""
    dets: list[Detection] = []
    centres: list[tuple[float, float]] = []
    for j, req in enumerate(row["include"]):
        if "position" in req:
            rel, target = req["position"]
            tx, ty = centres[target]
            dx, dy = DIRECTION[rel]
            cx, cy = tx + 200 * dx, ty + 200 * dy
            px, py = -dy, dx  # spread several objects perpendicular to the relation
        else:
            cx, cy = 500.0 + 600.0 * j, 500.0
            px, py = 1, 0
        centres.append((cx, cy))
        for i in range(req["count"]):
            # offsets of 30 px against 200 px keep every object well inside the relation's cone
            off = 30.0 * (i - (req["count"] - 1) / 2)
            box = box_at(cx + off * px, cy + off * py, 20)
            dets.append(Detection(req["class"], box, rng.uniform(0.91, 0.99), color=req.get("color")))
    # distractors: an unrelated class at high confidence; a same-class detection below the threshold
    dets.append(Detection("zebra-like-thing", box_at(2000, 2000), 0.97, color="red"))
    first = row["include"][0]
    low = 0.5 if row["tag"] == "counting" else 0.2  # under 0.9 (counting) / 0.3 (others)
    dets.append(Detection(first["class"], box_at(3000, 3000), low, color="white"))
    rng.shuffle(dets)
    return dets


def perturbations(row: dict, dets: list[Detection], rng: random.Random) -> dict[str, list[Detection]]:
    """Each returned detection list breaks exactly one aspect of ``row``."""
    thr = 0.9 if row["tag"] == "counting" else 0.3
    out: dict[str, list[Detection]] = {}
    j = rng.randrange(len(row["include"]))
    req = row["include"][j]
    idx = [i for i, d in enumerate(dets) if d.label == req["class"] and d.confidence > thr]
    victim = rng.choice(idx)
    out["drop_one"] = [d for i, d in enumerate(dets) if i != victim]
    out["below_threshold"] = [
        Detection(d.label, d.box, thr - 0.05, d.color) if i == victim else d for i, d in enumerate(dets)
    ]
    out["wrong_class"] = [
        Detection("not-" + d.label, d.box, d.confidence, d.color) if i == victim else d
        for i, d in enumerate(dets)
    ]
    colored = [(k, r) for k, r in enumerate(row["include"]) if "color" in r]
    if colored:
        _, r = rng.choice(colored)
        i = rng.choice([i for i, d in enumerate(dets) if d.label == r["class"] and d.confidence > thr])
        other = rng.choice([c for c in COLORS if c != r["color"]])
        out["wrong_color"] = [
            Detection(d.label, d.box, d.confidence, other) if n == i else d for n, d in enumerate(dets)
        ]
    positioned = [r for r in row["include"] if "position" in r]
    if positioned:
        r = positioned[0]
        rel, target = r["position"]
        tgt = next(d for d in dets if d.label == row["include"][target]["class"] and d.confidence > thr)
        tx, ty = tgt.center
        dx, dy = DIRECTION[OPPOSITE[rel]]
        out["flipped_position"] = [
            Detection(d.label, box_at(tx + 200 * dx, ty + 200 * dy, 20), d.confidence, d.color)
            if d.label == r["class"] and d.confidence > thr
            else d
            for d in dets
        ]
        out["coincident_position"] = [
            Detection(d.label, tgt.box, d.confidence, d.color)
            if d.label == r["class"] and d.confidence > thr
            else d
            for d in dets
        ]
    for ex in row.get("exclude", []):
        have = sum(d.label == ex["class"] and d.confidence > thr for d in dets)
        extra = [
            Detection(ex["class"], box_at(4000 + 50 * n, 100, 20), 0.95) for n in range(ex["count"] - have)
        ]
        out["excluded_present"] = dets + extra
    return out


def geneval_rows() -> list[dict]:
    if not GENEVAL.exists():
        pytest.skip(f"GenEval metadata not present at {GENEVAL}")
    return [json.loads(line) for line in GENEVAL.read_text().splitlines() if line]


# ---------------------------------------------------------------- every real row


def test_all_553_rows_satisfied_and_perturbed():
    rows = geneval_rows()
    assert len(rows) == 553
    rng = random.Random(0)
    kinds_seen: dict[str, int] = {}
    for n, row in enumerate(rows):
        dets = synthesize(row, rng)
        ok, reason = score(row, dets)
        assert ok, f"row {n + 1} ({row['prompt']!r}) should pass: {reason}"
        assert reason == ""
        for kind, bad in perturbations(row, dets, rng).items():
            ok, reason = score(row, bad)
            assert not ok, f"row {n + 1} ({row['prompt']!r}) perturbation {kind} should fail"
            assert reason, kind
            kinds_seen[kind] = kinds_seen.get(kind, 0) + 1
    assert kinds_seen["drop_one"] == kinds_seen["below_threshold"] == kinds_seen["wrong_class"] == 553
    assert kinds_seen["wrong_color"] == 194  # colors + color_attr
    assert kinds_seen["flipped_position"] == kinds_seen["coincident_position"] == 100
    assert kinds_seen["excluded_present"] == 80  # counting rows


# ---------------------------------------------------------------- each rule kind


def D(label, cx, cy, conf=0.95, color=None, size=20):
    return Detection(label, box_at(cx, cy, size), conf, color)


def test_counting_threshold_and_exact_count():
    row = {
        "tag": "counting",
        "include": [{"class": "cup", "count": 3}],
        "exclude": [{"class": "cup", "count": 4}],
    }
    three = [D("cup", 100 * i, 0) for i in range(3)]
    assert score(row, three) == (True, "")
    # a fourth confident cup breaks the exact count; an unconfident one (<= 0.9) does not
    assert score(row, three + [D("cup", 400, 0, conf=0.95)]) == (False, "expected cup<4, found 4")
    assert score(row, three + [D("cup", 400, 0, conf=0.9)])[0]
    # the same row under a non-counting tag uses the 0.3 threshold
    assert not score({**row, "tag": "two_object"}, three + [D("cup", 400, 0, conf=0.5)])[0]
    assert score(row, three[:2] + [D("cup", 400, 0, conf=0.89)]) == (False, "expected cup>=3, found 2")


def test_include_is_at_least_without_exclude():
    row = {"tag": "two_object", "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}]}
    assert score(row, [D("cat", 0, 0), D("dog", 200, 0), D("dog", 400, 0)])[0]
    assert score(row, [D("cat", 0, 0)]) == (False, "expected dog>=1, found 0")
    ok, reason = score(row, [])
    assert not ok and reason == "expected cat>=1, found 0\nexpected dog>=1, found 0"


def test_confidence_threshold_is_strict():
    row = {"tag": "single_object", "include": [{"class": "cat", "count": 1}]}
    assert not score(row, [D("cat", 0, 0, conf=0.3)])[0]
    assert score(row, [D("cat", 0, 0, conf=0.3001)])[0]
    assert score(row, [D("cat", 0, 0, conf=0.2)], config=GenEvalConfig(threshold=0.1))[0]


def test_colour_uses_most_confident_objects_only():
    row = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}]}
    assert score(row, [D("car", 0, 0, 0.9, "red"), D("car", 200, 0, 0.8, "blue")])[0]
    ok, reason = score(row, [D("car", 0, 0, 0.8, "red"), D("car", 200, 0, 0.9, "blue")])
    assert not ok and reason == "expected red car>=1, found 0 red; and 1 blue"
    two = {"tag": "color_attr", "include": [{"class": "car", "count": 2, "color": "red"}]}
    assert not score(two, [D("car", 0, 0, 0.9, "red"), D("car", 200, 0, 0.8, "green")])[0]


def test_colour_classifier_is_pluggable_and_required():
    row = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}]}
    dets = [D("car", 0, 0)]
    calls = []

    def classify(image, objs, name):
        calls.append((image, len(objs), name))
        return ["red"] * len(objs)

    assert score(row, dets, image="IMG", classify_color=classify) == (True, "")
    assert calls == [("IMG", 1, "car")]
    with pytest.raises(ValueError, match="colour rule on 'car' needs colours"):
        score(row, dets)
    with pytest.raises(ValueError, match="returned 0 colours for 1"):
        score(row, dets, classify_color=lambda image, objs, name: [])


def test_position_centre_offset_rule():
    # A is left of B when the shrunk horizontal offset dominates
    assert relative_position(box_at(0, 0), box_at(100, 0)) == {"left of"}
    assert relative_position(box_at(0, 100), box_at(0, 0)) == {"below"}
    # diagonal: both relations
    assert relative_position(box_at(0, 0), box_at(100, 100)) == {"left of", "above"}
    # offset 10 px with 40 + 40 px boxes: shrunk by 0.1 * 80 = 8 -> 2 / 10 = 0.2 < 0.5: no relation
    assert relative_position(box_at(0, 0), box_at(10, 0)) == set()
    # offset 20 px: (20 - 8) / 20 = 0.6 > 0.5
    assert relative_position(box_at(0, 0), box_at(20, 0)) == {"left of"}
    # the threshold is a setting
    assert relative_position(box_at(0, 0), box_at(20, 0), position_threshold=0.2) == set()
    # coincident boxes: no relation, no division by zero
    assert relative_position(box_at(5, 5), box_at(5, 5)) == set()


def test_position_every_object_against_every_target():
    row = {
        "tag": "position",
        "include": [{"class": "tree", "count": 2}, {"class": "bird", "count": 1, "position": ["above", 0]}],
    }
    trees = [D("tree", 0, 300), D("tree", 100, 300)]
    assert score(row, trees + [D("bird", 50, 0)])[0]
    # the bird is above one tree but beside (not above) the other
    ok, reason = score(row, [D("tree", 0, 300), D("tree", 600, 0)] + [D("bird", 0, 0)])
    assert not ok and reason == "expected bird above target, found left of target"
    # a failed target clause fails the relation, with GenEval's reason
    ok, reason = score(row, trees[:1] + [D("bird", 50, 0)])
    assert not ok and reason == "expected tree>=2, found 1\nno target for bird to be above"


def test_colour_failure_skips_position_check():
    row = {
        "tag": "position",
        "include": [
            {"class": "a", "count": 1},
            {"class": "b", "count": 1, "color": "red", "position": ["left of", 0]},
        ],
    }
    ok, reason = score(row, [D("a", 300, 0), D("b", 500, 0, color="blue")])
    assert not ok and reason == "expected red b>=1, found 0 red; and 1 blue"  # no position line


def test_max_objects_and_nms():
    cups = [D("cup", 100 * i, 0, conf=0.5 + 0.01 * i) for i in range(20)]
    kept = select_objects(cups, "two_object")["cup"]
    assert len(kept) == 16 and kept[0].confidence == pytest.approx(0.69)
    assert [d.confidence for d in kept] == sorted((d.confidence for d in kept), reverse=True)
    # overlapping duplicates collapse under NMS, not by default
    dup = [D("cup", 0, 0, 0.9), D("cup", 2, 0, 0.8), D("cup", 200, 0, 0.7)]
    assert len(select_objects(dup, "counting", GenEvalConfig(counting_threshold=0.5))["cup"]) == 3
    assert (
        len(select_objects(dup, "counting", GenEvalConfig(counting_threshold=0.5, max_overlap=0.5))["cup"])
        == 2
    )
    assert compute_iou(box_at(0, 0, 9), box_at(0, 0, 9)) == 1.0


def test_exclude_counts_all_kept_objects():
    row = {
        "tag": "two_object",
        "include": [{"class": "cat", "count": 1}],
        "exclude": [{"class": "dog", "count": 1}],
    }
    assert score(row, [D("cat", 0, 0), D("dog", 0, 0, conf=0.25)])[0]
    assert score(row, [D("cat", 0, 0), D("dog", 0, 0)]) == (False, "expected dog<1, found 1")


def test_bad_rule_rows_and_detections():
    with pytest.raises(ValueError, match="missing field 'tag'"):
        score({"include": [{"class": "a", "count": 1}]}, [])
    with pytest.raises(ValueError, match=r"exclude\[0\]: missing field 'count'"):
        validate_rule(
            {"tag": "counting", "include": [{"class": "a", "count": 1}], "exclude": [{"class": "a"}]}
        )
    with pytest.raises(ValueError, match="confidence must be in"):
        Detection("a", (0, 0, 1, 1), 1.5)
    with pytest.raises(ValueError, match="4 finite numbers"):
        Detection("a", (0, 0, 1, float("nan")), 0.5)
    with pytest.raises(TypeError, match="Detection records"):
        select_objects([("a", (0, 0, 1, 1), 0.5)], "colors")
    with pytest.raises(ValueError, match="max_objects"):
        GenEvalConfig(max_objects=0)
    assert set(RELATIONS) == set(DIRECTION)


def test_detector_protocol_is_structural():
    def det(image):
        return [D("cat", 0, 0)]

    assert isinstance(det, Detector)
