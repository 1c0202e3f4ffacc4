"""GenEval's scoring rules as pure functions over object detections.

GenEval (Ghosh et al., NeurIPS 2023 Datasets & Benchmarks) scores an image against a prompt's
structured rules: ``include`` clauses (a class with a count, optionally a colour and a position
relative to an earlier clause) combined with AND, and ``exclude`` clauses (a class whose count must
stay below a bound) combined with OR. This module restates its ``evaluate_images.py`` logic over
plain :class:`Detection` records, so any detector (a :class:`Detector`) and any colour classifier
can be plugged in; nothing here loads a model.

The rules followed, with GenEval's defaults in :class:`GenEvalConfig`:

- per class, detections sorted by confidence (highest first), kept when ``confidence > threshold``
  (0.3; 0.9 for the ``counting`` tag), at most ``max_objects`` (16) per class, then greedy
  non-maximum suppression at IoU ``max_overlap`` (1.0 = off);
- an include clause needs at least ``count`` kept objects of its class (exact counts come from an
  exclude clause with ``count + 1``); only the ``count`` most confident ones are used further;
- colour: all ``count`` used objects must have the requested colour (GenEval classifies the crop
  with CLIP among :data:`COLORS`; here the detection carries its colour, or a ``classify_color``
  callable is given);
- position: every used object must stand in the relation to every object of the target clause,
  after shrinking the centre offset by ``position_threshold`` times the summed box sizes
  (:func:`relative_position`); a failed target clause fails the relation;
- an exclude clause fails when at least ``count`` objects of its class are kept.

Example::

    >>> from dynamics.full.geneval import Detection, score
    >>> row = {"tag": "position", "include": [{"class": "dog", "count": 1},
    ...        {"class": "cat", "count": 1, "position": ["left of", 0]}]}
    >>> dets = [Detection("dog", (60, 40, 90, 70), 0.95), Detection("cat", (0, 40, 30, 70), 0.8)]
    >>> score(row, dets)
    (True, '')
    >>> score(row, [Detection("dog", (0, 40, 30, 70), 0.95), Detection("cat", (60, 40, 90, 70), 0.8)])
    (False, 'expected cat left of target, found right of target')
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "COLORS",
    "RELATIONS",
    "TAGS",
    "ColorClassifier",
    "Detection",
    "Detector",
    "GenEvalConfig",
    "compute_iou",
    "evaluate",
    "relative_position",
    "score",
    "select_objects",
    "validate_rule",
]

#: GenEval's colour vocabulary (the classes of its CLIP colour classifier), in its order.
COLORS: tuple[str, ...] = (
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "purple",
    "pink",
    "brown",
    "black",
    "white",
)
#: GenEval's relative positions, in image coordinates (y grows downwards).
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
#: GenEval's six task tags.
TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


@dataclass(frozen=True)
class Detection:
    """One detected object: class name, box ``(x0, y0, x1, y1)`` in pixels (y downwards),
    confidence in [0, 1], and optionally its colour (one of :data:`COLORS`) and a mask
    (for colour classifiers that want it; ignored by the rules).

    >>> Detection("cat", (0, 0, 10, 20), 0.9, color="black").center
    (5.0, 10.0)
    >>> Detection("cat", (10, 0, 0, 20), 0.9)
    Traceback (most recent call last):
    ...
    ValueError: Detection('cat'): box (10, 0, 0, 20) needs x0 <= x1 and y0 <= y1
    """

    label: str
    box: tuple[float, float, float, float]
    confidence: float
    color: str | None = None
    mask: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.label, str) or not self.label:
            raise ValueError(f"Detection: label must be a non-empty class name, got {self.label!r}")
        box = tuple(float(v) for v in self.box)
        if len(box) != 4 or not all(math.isfinite(v) for v in box):
            raise ValueError(f"Detection({self.label!r}): box must be 4 finite numbers, got {self.box!r}")
        if box[0] > box[2] or box[1] > box[3]:
            raise ValueError(f"Detection({self.label!r}): box {self.box!r} needs x0 <= x1 and y0 <= y1")
        conf = float(self.confidence)
        if not 0.0 <= conf <= 1.0:
            raise ValueError(
                f"Detection({self.label!r}): confidence must be in [0, 1], got {self.confidence!r}"
            )
        if self.color is not None and not isinstance(self.color, str):
            raise ValueError(f"Detection({self.label!r}): color must be a string or None, got {self.color!r}")
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "confidence", conf)

    @property
    def center(self) -> tuple[float, float]:
        """Box centre ``(x, y)``."""
        x0, y0, x1, y1 = self.box
        return ((x0 + x1) / 2, (y0 + y1) / 2)


@runtime_checkable
class Detector(Protocol):
    """Anything that maps one image (PIL image or pixel array) to its detections."""

    def __call__(self, image: Any) -> list[Detection]: ...


#: ``classify_color(image, detections, class_name) -> one colour per detection`` (GenEval: CLIP
#: zero-shot over :data:`COLORS` on the masked crop).
ColorClassifier = Callable[[Any, Sequence[Detection], str], Sequence[str]]


@dataclass(frozen=True)
class GenEvalConfig:
    """GenEval's evaluation options (``evaluate_images.py --options``), with its defaults.

    >>> GenEvalConfig().threshold_for("counting"), GenEvalConfig().threshold_for("colors")
    (0.9, 0.3)
    """

    threshold: float = 0.3  # keep detections with confidence > threshold
    counting_threshold: float = 0.9  # the same, for the ``counting`` tag
    max_objects: int = 16  # per class, after thresholding
    max_overlap: float = 1.0  # greedy NMS IoU bound within a class; 1.0 disables NMS
    position_threshold: float = 0.1  # offset shrink, as a fraction of the summed box sizes

    def __post_init__(self) -> None:
        for name in ("threshold", "counting_threshold", "max_overlap", "position_threshold"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"GenEvalConfig: {name} must be a finite number >= 0, got {v!r}")
        if not (isinstance(self.max_objects, int) and self.max_objects >= 1):
            raise ValueError(f"GenEvalConfig: max_objects must be an int >= 1, got {self.max_objects!r}")

    def threshold_for(self, tag: str) -> float:
        """The confidence threshold GenEval uses for prompts of ``tag``."""
        return self.counting_threshold if tag == "counting" else self.threshold


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def validate_rule(row: Mapping[str, Any], *, tags: Sequence[str] | None = TAGS) -> None:
    """Check one GenEval rule row; raise ``ValueError`` (``TypeError`` for a wrong JSON type) naming
    the field and value at fault.

    A row has ``tag`` (one of :data:`TAGS`), ``include`` (a non-empty list of ``{class, count[,
    color][, position: [relation, index]]}``, where ``index`` names an *earlier* clause) and an
    optional ``exclude`` (a list of ``{class, count}``). ``tags``: the tags accepted (``None``: any
    string; only ``counting`` changes the scoring).

    >>> validate_rule({"tag": "colors", "include": [{"class": "car", "count": 1, "color": "pink"}]})
    >>> validate_rule({"tag": "colors", "include": [{"class": "car", "count": 1, "color": "teal"}]})
    Traceback (most recent call last):
    ...
    ValueError: include[0].color: 'teal' is not a GenEval colour; allowed: red, orange, yellow, green, blue, purple, pink, brown, black, white
    """
    if not isinstance(row, Mapping):
        raise TypeError(f"a rule row must be a JSON object, got {type(row).__name__}")
    if "tag" not in row:
        raise ValueError("missing field 'tag'")
    if not isinstance(row["tag"], str) or (tags is not None and row["tag"] not in tags):
        allowed = "any string" if tags is None else ", ".join(tags)
        raise ValueError(f"tag: {row['tag']!r} is not an accepted tag; allowed: {allowed}")
    if "include" not in row:
        raise ValueError("missing field 'include'")
    include = row["include"]
    if not isinstance(include, list) or not include:
        raise ValueError(f"include: must be a non-empty list of clauses, got {include!r}")
    for j, req in enumerate(include):
        where = f"include[{j}]"
        if not isinstance(req, Mapping):
            raise TypeError(f"{where}: must be an object, got {req!r}")
        for key in ("class", "count"):
            if key not in req:
                raise ValueError(f"{where}: missing field {key!r}")
        if not isinstance(req["class"], str) or not req["class"]:
            raise ValueError(f"{where}.class: must be a non-empty string, got {req['class']!r}")
        if not _positive_int(req["count"]):
            raise ValueError(f"{where}.count: must be an integer >= 1, got {req['count']!r}")
        if "color" in req and req["color"] not in COLORS:
            raise ValueError(
                f"{where}.color: {req['color']!r} is not a GenEval colour; allowed: {', '.join(COLORS)}"
            )
        if "position" in req:
            pos = req["position"]
            if not (isinstance(pos, (list, tuple)) and len(pos) == 2):
                raise ValueError(f"{where}.position: must be [relation, clause index], got {pos!r}")
            rel, target = pos
            if rel not in RELATIONS:
                raise ValueError(
                    f"{where}.position: relation {rel!r} unknown; allowed: {', '.join(RELATIONS)}"
                )
            if j == 0:
                raise ValueError(f"{where}.position: the first clause has no earlier clause to be {rel!r}")
            if not (isinstance(target, int) and not isinstance(target, bool) and 0 <= target < j):
                raise ValueError(
                    f"{where}.position: target {target!r} must index an earlier include clause (0..{j - 1})"
                )
    exclude = row.get("exclude", [])
    if not isinstance(exclude, list):
        raise TypeError(f"exclude: must be a list of clauses, got {exclude!r}")
    for j, req in enumerate(exclude):
        where = f"exclude[{j}]"
        if not isinstance(req, Mapping):
            raise TypeError(f"{where}: must be an object, got {req!r}")
        for key in ("class", "count"):
            if key not in req:
                raise ValueError(f"{where}: missing field {key!r}")
        if not isinstance(req["class"], str) or not req["class"]:
            raise ValueError(f"{where}.class: must be a non-empty string, got {req['class']!r}")
        if not _positive_int(req["count"]):
            raise ValueError(f"{where}.count: must be an integer >= 1, got {req['count']!r}")


def compute_iou(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    """Intersection over union with GenEval's inclusive-pixel convention (``+1`` on each side).

    >>> compute_iou((0, 0, 9, 9), (0, 0, 9, 9)), compute_iou((0, 0, 9, 9), (10, 0, 19, 9))
    (1.0, 0.0)
    >>> round(compute_iou((0, 0, 9, 9), (5, 0, 14, 9)), 4)
    0.3333
    """

    def area(b: Sequence[float]) -> float:
        return max(b[2] - b[0] + 1, 0) * max(b[3] - b[1] + 1, 0)

    inter = area(
        (max(box_a[0], box_b[0]), max(box_a[1], box_b[1]), min(box_a[2], box_b[2]), min(box_a[3], box_b[3]))
    )
    union = area(box_a) + area(box_b) - inter
    return inter / union if union else 0.0


def relative_position(
    box_a: Sequence[float], box_b: Sequence[float], position_threshold: float = 0.1
) -> set[str]:
    """Relations of box A relative to box B (GenEval's ``relative_position``).

    The centre offset ``A - B`` is shrunk per axis by ``position_threshold * (size_A + size_B)``
    (clipped at zero); a relation holds where the shrunk offset, divided by the norm of the raw
    offset, exceeds 0.5 in that direction. Nearly coincident boxes have no relation.

    Args: ``box_a``, ``box_b``: ``(x0, y0, x1, y1)``. Returns a subset of :data:`RELATIONS`.

    >>> sorted(relative_position((0, 0, 10, 10), (50, 0, 60, 10)))
    ['left of']
    >>> sorted(relative_position((50, 50, 60, 60), (0, 0, 10, 10)))
    ['below', 'right of']
    >>> relative_position((0, 0, 10, 10), (1, 1, 11, 11))
    set()
    """
    ax, ay = (box_a[0] + box_a[2]) / 2, (box_a[1] + box_a[3]) / 2
    bx, by = (box_b[0] + box_b[2]) / 2, (box_b[1] + box_b[3]) / 2
    off = (ax - bx, ay - by)
    dims = (
        abs(box_a[2] - box_a[0]) + abs(box_b[2] - box_b[0]),
        abs(box_a[3] - box_a[1]) + abs(box_b[3] - box_b[1]),
    )
    revised = [
        max(abs(o) - position_threshold * d, 0.0) * math.copysign(1.0, o) if o else 0.0
        for o, d in zip(off, dims)
    ]
    if all(abs(r) < 1e-3 for r in revised):
        return set()
    norm = math.hypot(*off)
    dx, dy = revised[0] / norm, revised[1] / norm
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


def select_objects(
    detections: Sequence[Detection], tag: str, config: GenEvalConfig = GenEvalConfig()
) -> dict[str, list[Detection]]:
    """GenEval's per-class filtering: sort by confidence, keep ``> threshold`` (the counting
    threshold for ``tag == "counting"``), at most ``max_objects``, then greedy NMS.

    Returns ``{class: [detections, most confident first]}`` with only non-empty classes.

    >>> dets = [Detection("cup", (0, 0, 9, 9), 0.5), Detection("cup", (20, 0, 29, 9), 0.95)]
    >>> [d.confidence for d in select_objects(dets, "two_object")["cup"]]
    [0.95, 0.5]
    >>> [d.confidence for d in select_objects(dets, "counting")["cup"]]
    [0.95]
    """
    thr = config.threshold_for(tag)
    by_class: dict[str, list[Detection]] = {}
    for d in detections:
        if not isinstance(d, Detection):
            raise TypeError(f"detections must be Detection records, got {type(d).__name__}")
        by_class.setdefault(d.label, []).append(d)
    out: dict[str, list[Detection]] = {}
    for name, dets in by_class.items():
        order = sorted((d for d in dets if d.confidence > thr), key=lambda d: -d.confidence)[
            : config.max_objects
        ]
        kept: list[Detection] = []
        while order:
            top = order.pop(0)
            kept.append(top)
            if config.max_overlap < 1:
                order = [d for d in order if compute_iou(top.box, d.box) < config.max_overlap]
        if kept:
            out[name] = kept
    return out


def _colors_of(
    objs: Sequence[Detection], name: str, image: Any, classify_color: ColorClassifier | None
) -> list[str]:
    if classify_color is not None:
        got = list(classify_color(image, objs, name))
        if len(got) != len(objs):
            raise ValueError(
                f"classify_color returned {len(got)} colours for {len(objs)} {name!r} detections"
            )
        return got
    missing = [d for d in objs if d.color is None]
    if missing:
        raise ValueError(
            f"a colour rule on {name!r} needs colours: the detections carry none and no classify_color was given"
        )
    return [d.color for d in objs]  # type: ignore[misc]


def evaluate(
    row: Mapping[str, Any],
    objects: Mapping[str, Sequence[Detection]],
    *,
    config: GenEvalConfig = GenEvalConfig(),
    image: Any = None,
    classify_color: ColorClassifier | None = None,
) -> tuple[bool, str]:
    """GenEval's ``evaluate``: check a rule row against already filtered objects.

    ``objects`` is :func:`select_objects`' output (per class, most confident first). Returns
    ``(correct, reason)`` where ``reason`` lists every failed clause, one per line ('' if correct).

    >>> objs = {"clock": [Detection("clock", (0, 0, 9, 9), 0.99)] * 3}
    >>> evaluate({"include": [{"class": "clock", "count": 2}], "exclude": [{"class": "clock", "count": 3}]}, objs)
    (False, 'expected clock<3, found 3')
    """
    correct = True
    reasons: list[str] = []
    matched_groups: list[list[Detection] | None] = []
    for req in row.get("include", []):
        name = req["class"]
        matched = True
        found = list(objects.get(name, []))[: req["count"]]
        if len(found) < req["count"]:
            correct = matched = False
            reasons.append(f"expected {name}>={req['count']}, found {len(found)}")
        else:
            if "color" in req:
                colors = _colors_of(found, name, image, classify_color)
                if colors.count(req["color"]) < req["count"]:
                    correct = matched = False
                    reasons.append(
                        f"expected {req['color']} {name}>={req['count']}, found {colors.count(req['color'])} "
                        f"{req['color']}; and "
                        + ", ".join(f"{colors.count(c)} {c}" for c in COLORS if c in colors)
                    )
            if "position" in req and matched:
                rel, target = req["position"]
                targets = matched_groups[target]
                if targets is None:
                    correct = matched = False
                    reasons.append(f"no target for {name} to be {rel}")
                else:
                    for obj in found:
                        for tgt in targets:
                            true_rels = relative_position(obj.box, tgt.box, config.position_threshold)
                            if rel not in true_rels:
                                correct = matched = False
                                # GenEval joins a set: order the relations for a deterministic reason
                                got = " and ".join(r for r in RELATIONS if r in true_rels)
                                reasons.append(f"expected {name} {rel} target, found {got} target")
                                break
                        if not matched:
                            break
        matched_groups.append(found if matched else None)
    for req in row.get("exclude", []):
        name = req["class"]
        n = len(objects.get(name, []))
        if n >= req["count"]:
            correct = False
            reasons.append(f"expected {name}<{req['count']}, found {n}")
    return correct, "\n".join(reasons)


def score(
    row: Mapping[str, Any],
    detections: Sequence[Detection],
    *,
    config: GenEvalConfig = GenEvalConfig(),
    image: Any = None,
    classify_color: ColorClassifier | None = None,
) -> tuple[bool, str]:
    """Score one image's raw detections against a GenEval rule row: ``(correct, reason)``.

    Validates the row (:func:`validate_rule`), filters the detections (:func:`select_objects`
    with the row's tag) and applies :func:`evaluate`. Colours come from ``classify_color(image,
    detections, class_name)`` when given, else from each detection's ``color``.

    >>> row = {"tag": "counting", "include": [{"class": "cup", "count": 2}],
    ...        "exclude": [{"class": "cup", "count": 3}]}
    >>> cups = [Detection("cup", (30 * i, 0, 30 * i + 20, 20), 0.95) for i in range(2)]
    >>> score(row, cups)
    (True, '')
    >>> score(row, cups[:1] + [Detection("cup", (80, 0, 99, 20), 0.6)])  # below the counting threshold
    (False, 'expected cup>=2, found 1')
    """
    validate_rule(row, tags=None)
    objects = select_objects(detections, row["tag"], config)
    return evaluate(row, objects, config=config, image=image, classify_color=classify_color)
