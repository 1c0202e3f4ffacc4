"""External judges at the full scale (the co-degradation alarm they feed is :mod:`dynamics.alarm`).

An external judge is any judge that is not the model being trained (see
:class:`dynamics.protocol.ExternalJudge`): it maps ``(prompt_ids (B,), images (R, B, K, M))`` to
``(R, B, K)`` bools. Images arrive as token ids; judges that look at pixels get a ``decode``
callable, ``(N, M) long tensor -> N images`` (PIL images or pixel arrays), and the
:class:`~dynamics.protocol.PromptSet`.

- :class:`FileJudge`: judgements read from a JSONL file (human labels, or a cached run of an
  expensive judge), keyed by prompt and :func:`candidate_hash`; :meth:`FileJudge.write` writes one.
- :class:`DetectorJudge`: GenEval's rules (:mod:`dynamics.full.geneval`) over a pluggable detector,
  or over a :class:`DetectionFile` of per-image detections (:meth:`DetectorJudge.from_file`).
- :class:`VLMJudge`: a vision-language model asked a yes/no question; either a user callable
  ``(images, questions) -> P(yes)`` or any transformers VLM with a processor
  (:meth:`VLMJudge.from_transformers`), ``P(yes)`` read from the first answer token's logits.
- :func:`model_decoder` adapts a model's own ``decode`` (``(R, B, K, M)`` tokens to pixels) to that
  ``decode`` signature.

Example::

    >>> import torch
    >>> from dynamics.protocol import PromptSet
    >>> ps = PromptSet(["a red car", "two dogs"])
    >>> judge = VLMJudge(lambda images, questions: [float(im.sum() > 3) for im in images],
    ...                  ps, decode=lambda tokens: list(tokens))
    >>> images = torch.tensor([[[[1, 1, 1, 1]], [[0, 1, 0, 0]]]])  # (R=1, B=2, K=1, M=4)
    >>> judge(torch.tensor([0, 1]), images)
    tensor([[[ True],
             [False]]])
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynamics.full.geneval import (
    COLORS,
    ColorClassifier,
    Detection,
    Detector,
    GenEvalConfig,
    score,
    validate_rule,
)
from dynamics.protocol import PromptSet, check_images

__all__ = [
    "DEFAULT_QUESTION",
    "DetectionFile",
    "DetectorJudge",
    "FileJudge",
    "MissingJudgementError",
    "TransformersYesNo",
    "VLMJudge",
    "candidate_hash",
    "model_decoder",
]

#: The yes/no question asked of a VLM judge; ``{prompt}`` is replaced by the prompt text.
DEFAULT_QUESTION = 'Does this image match the description "{prompt}"? Answer yes or no.'

Decode = Callable[[torch.Tensor], Sequence[Any]]


def candidate_hash(tokens: torch.Tensor | Sequence[int]) -> str:
    """The key of one candidate in judgement files: SHA-256 (hex) of its image-token ids as
    little-endian int64.

    Args: ``tokens``: ``(M,)`` integer token ids.

    >>> candidate_hash([1, 2, 3])[:16]
    'e2e2033ae7e19d68'
    >>> candidate_hash(torch.tensor([1, 2, 3])) == candidate_hash([1, 2, 3])
    True
    """
    arr = tokens.detach().cpu().numpy() if isinstance(tokens, torch.Tensor) else np.asarray(tokens)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"candidate_hash: expected a 1-D sequence of integer token ids, got shape {arr.shape}, dtype {arr.dtype}"
        )
    return hashlib.sha256(arr.astype("<i8").tobytes()).hexdigest()


def model_decoder(model: Any) -> Decode:
    """Adapt a model's ``decode((R, B, K, M) tokens) -> (R, B, K, ...) pixels`` (as
    :class:`dynamics.full.janus.JanusUnified` has) to the judges' ``(N, M) -> N images``.

    >>> class Fake:
    ...     def decode(self, images): return images[..., None].float()  # (R, B, K, M, 1)
    >>> [im.shape for im in model_decoder(Fake())(torch.zeros(2, 5, dtype=torch.long))]
    [torch.Size([5, 1]), torch.Size([5, 1])]
    """

    def decode(tokens: torch.Tensor) -> list[Any]:
        return list(model.decode(tokens[None, None])[0, 0])

    return decode


def _check_call(
    prompts: PromptSet, prompt_ids: torch.Tensor, images: torch.Tensor, replicas: int | None
) -> None:
    if prompt_ids.dim() != 1:
        raise ValueError(f"prompt_ids must be (B,), got shape {tuple(prompt_ids.shape)}")
    check_images(
        images, replicas=images.shape[0] if replicas is None else replicas, batch=prompt_ids.shape[0]
    )
    if prompt_ids.numel() and (int(prompt_ids.min()) < 0 or int(prompt_ids.max()) >= len(prompts)):
        raise ValueError(
            f"prompt_ids must lie in [0, {len(prompts)}), got values in [{int(prompt_ids.min())}, {int(prompt_ids.max())}]"
        )


def _decode_all(decode: Decode, flat: torch.Tensor, batch_size: int) -> list[Any]:
    out: list[Any] = []
    for s in range(0, flat.shape[0], batch_size):
        chunk = flat[s : s + batch_size]
        got = list(decode(chunk))
        if len(got) != chunk.shape[0]:
            raise ValueError(f"decode returned {len(got)} images for {chunk.shape[0]} token sequences")
        out.extend(got)
    return out


def _json_object(path, line: str, lineno: int) -> dict:
    """One line of a judgement or detection file as a JSON object; a ValueError naming file and line."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{lineno}: malformed JSON: {e.msg} (column {e.colno})") from None
    if not isinstance(row, dict):
        raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")  # noqa: TRY004 (bad file content, like every line error)
    return row


def _require(path, row: dict, lineno: int, fields: Sequence[str]) -> None:
    """The line holds ``fields``, among them a valid ``candidate`` hash; a ValueError naming file, line
    and field otherwise."""
    for key in fields:
        if key not in row:
            raise ValueError(f"{path}:{lineno}: missing field {key!r}")
    cand = row["candidate"]
    if not (isinstance(cand, str) and len(cand) == 64 and all(c in "0123456789abcdef" for c in cand)):
        raise ValueError(f"{path}:{lineno}: field 'candidate' must be a 64-digit lowercase hex candidate_hash, "
                         f"got {cand!r}")


class MissingJudgementError(LookupError):
    """A :class:`FileJudge` was asked about a (prompt, candidate) pair its file does not hold."""


@dataclass
class _Entry:
    label: bool
    line: int
    p_yes: float | None


class FileJudge:
    """Judgements from a JSONL file, one object a line:

    ``{"prompt": "<prompt text>", "candidate": "<candidate_hash>", "label": true}``

    ``prompt_id`` (the row in the :class:`PromptSet`) may replace or accompany ``prompt``;
    ``p_yes`` (a probability) and any other fields (annotator, reason) are optional and kept. A
    file may hold judgements for prompts outside the set. Every line is checked on load (file and
    line named); a call with a pair the file lacks raises :class:`MissingJudgementError` naming it.

    >>> import pathlib, tempfile
    >>> ps = PromptSet(["a red car", "two dogs"])
    >>> images = torch.tensor([[[[5, 6], [7, 8]], [[1, 2], [3, 4]]]])   # (1, 2, 2, 2)
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "labels.jsonl"
    >>> FileJudge.write(path, ps, torch.tensor([0, 1]), images, torch.tensor([[[True, False], [False, True]]]))
    4
    >>> FileJudge(path, ps)(torch.tensor([1, 0]), images.flip(1))
    tensor([[[False,  True],
             [ True, False]]])
    """

    def __init__(self, path: str | os.PathLike, prompts: PromptSet):
        self.path = Path(path)
        self.prompts = prompts
        self.table: dict[tuple[str, str], _Entry] = {}
        self.rows: list[dict] = []
        if not self.path.is_file():
            raise FileNotFoundError(f"FileJudge: no judgement file at {self.path}")
        with open(self.path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                line = line.rstrip("\r\n")
                if line == "":
                    continue
                self._add(self._parse(line, lineno), lineno)
        if not self.table:
            raise ValueError(f"{self.path}: the judgement file is empty")

    def _err(self, lineno: int, msg: str) -> ValueError:
        return ValueError(f"{self.path}:{lineno}: {msg}")

    def _parse(self, line: str, lineno: int) -> dict:
        row = _json_object(self.path, line, lineno)
        if "prompt" not in row and "prompt_id" not in row:
            raise self._err(lineno, "missing field 'prompt' (or 'prompt_id')")
        _require(self.path, row, lineno, ("candidate", "label"))
        label = row["label"]
        if label not in (True, False, 0, 1) or isinstance(label, float):
            raise self._err(lineno, f"field 'label' must be true/false (or 1/0), got {label!r}")
        if "p_yes" in row:
            p = row["p_yes"]
            if not (isinstance(p, (int, float)) and not isinstance(p, bool) and 0.0 <= p <= 1.0):
                raise self._err(lineno, f"field 'p_yes' must be a probability in [0, 1], got {p!r}")
        if "prompt_id" in row:
            pid = row["prompt_id"]
            if not (isinstance(pid, int) and not isinstance(pid, bool) and 0 <= pid < len(self.prompts)):
                raise self._err(
                    lineno,
                    f"field 'prompt_id' {pid!r} is not a row of the prompt set (0..{len(self.prompts) - 1})",
                )
            text = self.prompts.texts[pid]
            if "prompt" in row and row["prompt"] != text:
                raise self._err(lineno, f"prompt {row['prompt']!r} disagrees with prompt_id {pid} ({text!r})")
            row = {**row, "prompt": text}
        elif not isinstance(row["prompt"], str):
            raise self._err(lineno, f"field 'prompt' must be a string, got {row['prompt']!r}")
        return row

    def _add(self, row: dict, lineno: int) -> None:
        key = (row["prompt"], row["candidate"])
        entry = _Entry(bool(row["label"]), lineno, row.get("p_yes"))
        old = self.table.get(key)
        if old is not None and old.label != entry.label:
            raise self._err(
                lineno,
                f"label {entry.label} contradicts line {old.line} for prompt {key[0]!r}, candidate {key[1][:12]}...",
            )
        self.table.setdefault(key, entry)
        self.rows.append(row)

    def _lookup(self, prompt_ids: torch.Tensor, images: torch.Tensor) -> list[_Entry]:
        _check_call(self.prompts, prompt_ids, images, None)
        R, B, K, _ = images.shape
        found, missing = [], []
        for r in range(R):
            for b in range(B):
                text = self.prompts.texts[int(prompt_ids[b])]
                for k in range(K):
                    h = candidate_hash(images[r, b, k])
                    entry = self.table.get((text, h))
                    if entry is None:
                        missing.append(
                            f"prompt {text!r} (id {int(prompt_ids[b])}), candidate {h[:12]}... at [r={r}, b={b}, k={k}]"
                        )
                    found.append(entry)
        if missing:
            more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
            raise MissingJudgementError(
                f"{self.path}: no judgement for {len(missing)} of {len(found)} candidates: "
                + "; ".join(missing[:3])
                + more
            )
        return found

    def __call__(self, prompt_ids: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """``(R, B, K)`` bool labels for the candidates; raises before returning if any is missing."""
        entries = self._lookup(prompt_ids, images)
        return torch.tensor([e.label for e in entries], dtype=torch.bool, device=images.device).reshape(
            images.shape[:3]
        )

    @staticmethod
    def write(
        path: str | os.PathLike,
        prompts: PromptSet,
        prompt_ids: torch.Tensor,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        p_yes: torch.Tensor | None = None,
        append: bool = False,
    ) -> int:
        """Write judgements in :class:`FileJudge`'s format; returns the number of lines written.

        Args: ``prompt_ids`` ``(B,)``, ``images`` ``(R, B, K, M)``, ``labels`` ``(R, B, K)`` bool,
        ``p_yes`` ``(R, B, K)`` optional. ``append`` adds to an existing file.
        """
        _check_call(prompts, prompt_ids, images, None)
        if tuple(labels.shape) != tuple(images.shape[:3]):
            raise ValueError(
                f"labels must be (R, B, K) = {tuple(images.shape[:3])}, got {tuple(labels.shape)}"
            )
        if p_yes is not None and tuple(p_yes.shape) != tuple(images.shape[:3]):
            raise ValueError(f"p_yes must be (R, B, K) = {tuple(images.shape[:3])}, got {tuple(p_yes.shape)}")
        R, B, K, _ = images.shape
        n = 0
        with open(path, "a" if append else "w", encoding="utf-8") as fh:
            for r in range(R):
                for b in range(B):
                    pid = int(prompt_ids[b])
                    for k in range(K):
                        row = {
                            "prompt": prompts.texts[pid],
                            "prompt_id": pid,
                            "candidate": candidate_hash(images[r, b, k]),
                            "label": bool(labels[r, b, k]),
                        }
                        if p_yes is not None:
                            row["p_yes"] = float(p_yes[r, b, k])
                        fh.write(json.dumps(row) + "\n")
                        n += 1
        return n


class DetectionFile:
    """A :class:`~dynamics.full.geneval.Detector` read from a JSONL file of per-image detections (a
    detector run offline over a run's decoded samples), one object a line:

    ``{"candidate": "<candidate_hash>", "detections": [{"label": "cat", "box": [x0, y0, x1, y1],
    "confidence": 0.93, "color": "black"}]}``

    ``candidate`` is the :func:`candidate_hash` of the image's tokens; ``detections`` lists the raw
    detections of that image (possibly none: ``[]``), each with a class ``label``, a ``box`` in pixels
    (y downwards, ``x0 <= x1``, ``y0 <= y1``), a ``confidence`` in [0, 1] and, for colour rules, a
    ``color`` among GenEval's :data:`~dynamics.full.geneval.COLORS` (or null). GenEval's rules filter
    them (:func:`~dynamics.full.geneval.score`), so keep every detection, not only confident ones. An
    image's detections do not depend on the prompt, so lines are keyed by candidate alone; other
    fields (``prompt``, ``prompt_id``, ``detector``) are allowed and ignored. Every line is checked on
    load, errors naming file, line and field; calling it with an image the file lacks raises
    :class:`MissingJudgementError`.

    >>> import pathlib, tempfile
    >>> from dynamics.full.geneval import Detection
    >>> images = torch.tensor([[[[5, 6], [7, 8]]]])                      # (1, 1, 2, 2)
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "detections.jsonl"
    >>> DetectionFile.write(path, images, [[[[Detection("cat", (0, 0, 9, 9), 0.9)], []]]])
    2
    >>> DetectionFile(path)(images[0, 0, 0])
    [Detection(label='cat', box=(0.0, 0.0, 9.0, 9.0), confidence=0.9, color=None)]
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.table: dict[str, tuple[list[Detection], int, str]] = {}
        if not self.path.is_file():
            raise FileNotFoundError(f"DetectionFile: no detection file at {self.path}")
        with open(self.path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                line = line.rstrip("\r\n")
                if line.strip() == "":
                    continue
                cand, dets = self._parse(line, lineno)
                old = self.table.get(cand)
                if old is not None and old[2] != json.dumps(dets, sort_keys=True):
                    raise self._err(lineno, f"detections of candidate {cand[:12]}... contradict line {old[1]}")
                if old is None:
                    self.table[cand] = ([Detection(**d) for d in dets], lineno, json.dumps(dets, sort_keys=True))
        if not self.table:
            raise ValueError(f"{self.path}: the detection file is empty")

    def _err(self, lineno: int, msg: str) -> ValueError:
        return ValueError(f"{self.path}:{lineno}: {msg}")

    def _parse(self, line: str, lineno: int) -> tuple[str, list[dict]]:
        row = _json_object(self.path, line, lineno)
        _require(self.path, row, lineno, ("candidate", "detections"))
        cand = row["candidate"]
        if not isinstance(row["detections"], list):
            raise self._err(lineno, f"field 'detections' must be a list of objects, got {row['detections']!r}")
        out = []
        for j, d in enumerate(row["detections"]):
            where = f"field 'detections[{j}]"
            if not isinstance(d, dict):
                raise self._err(lineno, f"{where}' must be an object, got {d!r}")
            for key in ("label", "box", "confidence"):
                if key not in d:
                    raise self._err(lineno, f"{where}' has no {key!r}")
            if not isinstance(d["label"], str) or not d["label"]:
                raise self._err(lineno, f"{where}.label' must be a non-empty class name, got {d['label']!r}")
            box = d["box"]
            if not (isinstance(box, list) and len(box) == 4 and all(_number(v) and math.isfinite(v) for v in box)):
                raise self._err(lineno, f"{where}.box' must be [x0, y0, x1, y1], 4 finite numbers, got {box!r}")
            if box[0] > box[2] or box[1] > box[3]:
                raise self._err(lineno, f"{where}.box' {box!r} needs x0 <= x1 and y0 <= y1")
            conf = d["confidence"]
            if not (_number(conf) and 0.0 <= conf <= 1.0):
                raise self._err(lineno, f"{where}.confidence' must be a number in [0, 1], got {conf!r}")
            color = d.get("color")
            if color is not None and color not in COLORS:
                raise self._err(
                    lineno, f"{where}.color' {color!r} is not a GenEval colour; allowed: {', '.join(COLORS)} or null"
                )
            out.append({"label": d["label"], "box": list(box), "confidence": conf, "color": color})
        return cand, out

    def __call__(self, image: torch.Tensor | Sequence[int]) -> list[Detection]:
        """The detections of one image, given as its ``(M,)`` token ids."""
        h = candidate_hash(image)
        entry = self.table.get(h)
        if entry is None:
            raise MissingJudgementError(f"{self.path}: no detections for candidate {h[:12]}...")
        return list(entry[0])

    @staticmethod
    def write(path: str | os.PathLike, images: torch.Tensor, detections: Sequence, *, append: bool = False) -> int:
        """Write detections in :class:`DetectionFile`'s format; returns the number of lines written.

        Args: ``images`` ``(R, B, K, M)`` token ids; ``detections`` nested ``[r][b][k]`` lists of
        :class:`~dynamics.full.geneval.Detection`. ``append`` adds to an existing file.
        """
        if images.dim() != 4:
            raise ValueError(f"images must be (R, B, K, M), got shape {tuple(images.shape)}")
        R, B, K, _ = images.shape
        n = 0
        with open(path, "a" if append else "w", encoding="utf-8") as fh:
            for r in range(R):
                for b in range(B):
                    for k in range(K):
                        dets = [{"label": d.label, "box": list(d.box), "confidence": d.confidence, "color": d.color}
                                for d in detections[r][b][k]]
                        fh.write(json.dumps({"candidate": candidate_hash(images[r, b, k]), "detections": dets}) + "\n")
                        n += 1
        return n


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class DetectorJudge:
    """GenEval's rules over a user's detector: a candidate is accepted when its decoded image's
    detections satisfy the prompt's ``include``/``exclude`` rules (:func:`dynamics.full.geneval.score`).

    Every prompt needs rules (``prompts.meta[i]["include"]``, as :func:`dynamics.full.data.load_geneval`
    provides); that is checked on construction, before any decoding. ``last_reasons`` keeps the
    reason strings of the latest call, ``(R, B, K)`` nested lists.

    >>> from dynamics.full.geneval import Detection
    >>> ps = PromptSet(["a photo of a cat"], tags=["single_object"], meta=[{"include": [{"class": "cat", "count": 1}]}])
    >>> detector = lambda image: [Detection("cat", (0, 0, 9, 9), 0.9)] if image[0] == 1 else []
    >>> judge = DetectorJudge(detector, ps, decode=lambda tokens: list(tokens))
    >>> judge(torch.tensor([0]), torch.tensor([[[[1, 0], [2, 0]]]]))
    tensor([[[ True, False]]])
    >>> judge.last_reasons
    [[['', 'expected cat>=1, found 0']]]
    """

    def __init__(
        self,
        detector: Detector,
        prompts: PromptSet,
        decode: Decode,
        *,
        config: GenEvalConfig | None = None,
        classify_color: ColorClassifier | None = None,
        batch_size: int = 16,
    ):
        if batch_size < 1:
            raise ValueError(f"DetectorJudge: batch_size must be >= 1, got {batch_size}")
        self.rows: list[dict] = []
        for i, (text, tag, meta) in enumerate(zip(prompts.texts, prompts.tags, prompts.meta)):
            where = f"prompt {i} {text!r}" + (
                f" ({meta['file']}:{meta['line']})" if "file" in meta and "line" in meta else ""
            )
            if "include" not in meta:
                raise ValueError(
                    f"DetectorJudge needs GenEval rules for every prompt; {where} has no 'include' rules"
                )
            row = {"tag": tag, "include": meta["include"], "exclude": meta.get("exclude", [])}
            try:
                validate_rule(row, tags=None)
            except (ValueError, TypeError) as e:
                raise ValueError(f"DetectorJudge: {where}: {e}") from None
            self.rows.append(row)
        self.detector, self.prompts, self.decode = detector, prompts, decode
        self.config = GenEvalConfig() if config is None else config
        self.classify_color, self.batch_size = classify_color, batch_size
        self.last_reasons: list = []

    @classmethod
    def from_file(
        cls, path: str | os.PathLike, prompts: PromptSet, *, config: GenEvalConfig | None = None
    ) -> DetectorJudge:
        """GenEval's rules over a :class:`DetectionFile` (``--external detector:<file>``): the
        detections are looked up by the candidates' tokens, so nothing is decoded. The prompts'
        rules and every line of the file are checked here, before any model work.

        >>> import pathlib, tempfile
        >>> from dynamics.full.geneval import Detection
        >>> ps = PromptSet(["a photo of a cat"], tags=["single_object"], meta=[{"include": [{"class": "cat", "count": 1}]}])
        >>> images = torch.tensor([[[[1, 0], [2, 0]]]])
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "detections.jsonl"
        >>> DetectionFile.write(path, images, [[[[Detection("cat", (0, 0, 9, 9), 0.9)], []]]])
        2
        >>> DetectorJudge.from_file(path, ps)(torch.tensor([0]), images)
        tensor([[[ True, False]]])
        """
        return cls(DetectionFile(path), prompts, decode=lambda tokens: list(tokens), config=config)

    def __call__(self, prompt_ids: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """``(R, B, K)`` bools: the decoded candidates satisfy their prompts' GenEval rules."""
        _check_call(self.prompts, prompt_ids, images, None)
        R, B, K, M = images.shape
        pics = _decode_all(self.decode, images.reshape(R * B * K, M), self.batch_size)
        ok, reasons, missing = [], [], []
        for n, pic in enumerate(pics):
            b = (n // K) % B
            try:
                detections = list(self.detector(pic))
            except MissingJudgementError as e:  # a detection file without this image: collect, then say all
                pid = int(prompt_ids[b])
                missing.append(f"{e} (prompt {self.prompts.texts[pid]!r}, id {pid}, at [r={n // (B * K)}, b={b}, "
                               f"k={n % K}])")
                continue
            verdict, reason = score(
                self.rows[int(prompt_ids[b])],
                detections,
                config=self.config,
                image=pic,
                classify_color=self.classify_color,
            )
            ok.append(verdict)
            reasons.append(reason)
        if missing:
            more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
            raise MissingJudgementError(
                f"no detections for {len(missing)} of {len(pics)} candidates: " + "; ".join(missing[:3]) + more
            )
        self.last_reasons = [
            [reasons[(r * B + b) * K : (r * B + b + 1) * K] for b in range(B)] for r in range(R)
        ]
        return torch.tensor(ok, dtype=torch.bool, device=images.device).reshape(R, B, K)


class VLMJudge:
    """A vision-language model as external judge: ``P(yes)`` to a question about each candidate,
    accepted when ``P(yes) >= threshold``.

    Args:
        answer: ``(images: list, questions: list[str]) -> P(yes)`` (a sequence or tensor of
            floats in [0, 1]), e.g. :class:`TransformersYesNo` or the user's own API client.
        prompts: the prompt set; ``question`` is formatted with ``prompt=`` its text.
        decode: ``(N, M) long tensor -> N images``.
        question: the question template (default :data:`DEFAULT_QUESTION`).
        threshold: acceptance threshold on ``P(yes)``.
        batch_size: candidates per ``decode``/``answer`` call.
    """

    def __init__(
        self,
        answer: Callable[[list[Any], list[str]], Any],
        prompts: PromptSet,
        decode: Decode,
        *,
        question: str = DEFAULT_QUESTION,
        threshold: float = 0.5,
        batch_size: int = 8,
    ):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"VLMJudge: threshold must be in [0, 1], got {threshold}")
        if batch_size < 1:
            raise ValueError(f"VLMJudge: batch_size must be >= 1, got {batch_size}")
        if "{prompt}" not in question:
            raise ValueError(f"VLMJudge: the question template must contain '{{prompt}}', got {question!r}")
        self.answer, self.prompts, self.decode = answer, prompts, decode
        self.question, self.threshold, self.batch_size = question, threshold, batch_size

    @classmethod
    def from_transformers(
        cls,
        model: torch.nn.Module,
        processor: Any,
        prompts: PromptSet,
        decode: Decode,
        *,
        yes: Sequence[str | int] = ("yes", "Yes"),
        no: Sequence[str | int] = ("no", "No"),
        question: str = DEFAULT_QUESTION,
        threshold: float = 0.5,
        batch_size: int = 8,
    ) -> VLMJudge:
        """A judge over any transformers VLM and its processor (see :class:`TransformersYesNo`)."""
        return cls(
            TransformersYesNo(model, processor, yes=yes, no=no),
            prompts,
            decode,
            question=question,
            threshold=threshold,
            batch_size=batch_size,
        )

    def probabilities(self, prompt_ids: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """``(R, B, K)`` float ``P(yes)`` for every candidate."""
        _check_call(self.prompts, prompt_ids, images, None)
        R, B, K, M = images.shape
        flat = images.reshape(R * B * K, M)
        questions = [
            self.question.format(prompt=self.prompts.texts[int(prompt_ids[(n // K) % B])])
            for n in range(R * B * K)
        ]
        probs: list[float] = []
        for s in range(0, flat.shape[0], self.batch_size):
            pics = _decode_all(self.decode, flat[s : s + self.batch_size], self.batch_size)
            got = self.answer(pics, questions[s : s + self.batch_size])
            got = [
                float(p)
                for p in (got.detach().cpu().reshape(-1).tolist() if isinstance(got, torch.Tensor) else got)
            ]
            if len(got) != len(pics):
                raise ValueError(
                    f"VLMJudge: the answer callable returned {len(got)} probabilities for {len(pics)} images"
                )
            bad = [p for p in got if not (0.0 <= p <= 1.0)]
            if bad:
                raise ValueError(
                    f"VLMJudge: the answer callable returned values outside [0, 1], e.g. {bad[0]!r}"
                )
            probs.extend(got)
        return torch.tensor(probs, dtype=torch.float32, device=images.device).reshape(R, B, K)

    def __call__(self, prompt_ids: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """``(R, B, K)`` bools: ``P(yes) >= threshold``."""
        return self.probabilities(prompt_ids, images) >= self.threshold


class TransformersYesNo:
    """``(images, questions) -> P(yes)`` for a transformers VLM: one batched forward pass over
    chat-formatted inputs (image then question, generation prompt added), then, at each row's last
    real position, ``P(yes) = sigmoid(logsumexp(logits[yes]) - logsumexp(logits[no]))``: the
    first answer token's probability of a yes-token given that it is a yes- or no-token.

    Args:
        model: a transformers VLM returning ``.logits`` ``(N, T, V)``.
        processor: its processor (``apply_chat_template`` and ``__call__(images=, text=)``).
        yes, no: answer tokens, as words that must each be one token, or token ids.

    Rows are right-padded so that every real token keeps its position ids.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any,
        *,
        yes: Sequence[str | int] = ("yes", "Yes"),
        no: Sequence[str | int] = ("no", "No"),
    ):
        self.model, self.processor = model, processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.yes_ids = self._ids(yes, "yes")
        self.no_ids = self._ids(no, "no")
        if set(self.yes_ids) & set(self.no_ids):
            raise ValueError(
                f"TransformersYesNo: yes tokens {self.yes_ids} and no tokens {self.no_ids} overlap"
            )

    def _ids(self, words: Sequence[str | int], name: str) -> list[int]:
        if not words:
            raise ValueError(f"TransformersYesNo: no {name} tokens given")
        ids = []
        for w in words:
            if isinstance(w, int):
                ids.append(w)
                continue
            enc = self.tokenizer.encode(w, add_special_tokens=False)
            if len(enc) != 1:
                raise ValueError(
                    f"TransformersYesNo: {name} word {w!r} is {len(enc)} tokens {enc}; give single-token words or token ids"
                )
            ids.append(enc[0])
        return sorted(set(ids))

    @torch.no_grad()
    def __call__(self, images: list[Any], questions: list[str]) -> torch.Tensor:
        msgs = [
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}] for q in questions
        ]
        texts = [
            self.processor.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in msgs
        ]
        side = getattr(self.tokenizer, "padding_side", None)
        try:
            if side is not None:
                self.tokenizer.padding_side = "right"
            inputs = self.processor(images=images, text=texts, return_tensors="pt", padding=True)
        finally:
            if side is not None:
                self.tokenizer.padding_side = side
        device = next(self.model.parameters()).device
        inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
        logits = self.model(**inputs).logits
        mask = inputs["attention_mask"]
        last = mask.shape[1] - 1 - mask.flip(1).argmax(1)  # last real position, for either padding side
        logp = torch.log_softmax(
            logits[torch.arange(logits.shape[0], device=logits.device), last].float(), dim=-1
        )
        ly = torch.logsumexp(logp[:, self.yes_ids], dim=-1)
        ln = torch.logsumexp(logp[:, self.no_ids], dim=-1)
        return torch.sigmoid(ly - ln).cpu()
