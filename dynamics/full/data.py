"""Prompt sets from benchmark files: GenEval JSONL and T2I-CompBench text lists.

Two formats, both read into one :class:`dynamics.protocol.PromptSet` whose tags drive the
per-category metrics:

- **GenEval JSONL** (``.jsonl``): one object a line with ``tag``, ``prompt``, ``include`` and an
  optional ``exclude`` (see :func:`dynamics.full.geneval.validate_rule`). The tag goes to
  ``PromptSet.tags``, the rules to ``PromptSet.meta`` (``{"include", "exclude", "file", "line"}``),
  the tier is ``"easy"``.
- **Plain text** (``.txt``, T2I-CompBench): one prompt a line; the tag comes from the file name
  with its split suffix removed (``color_train.txt`` -> ``color``, ``non_spatial_val.txt`` ->
  ``non_spatial``); the tier is ``"medium"``.

:func:`load_prompts` takes files and directories (a directory contributes its ``*.jsonl`` and
``*.txt`` files in name order) and concatenates them. Every problem is raised as a
:class:`PromptFileError` naming the file, the line and the field or value at fault, before any
model work starts.

Example::

    >>> import pathlib, tempfile
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "spatial_val.txt").write_text("a cat left of a dog\\n\\na cup on a table\\n")
    >>> _ = (d / "geneval.jsonl").write_text(
    ...     '{"tag": "counting", "prompt": "two cups", "include": [{"class": "cup", "count": 2}]}\\n')
    >>> ps = load_prompts(d)
    >>> ps.texts, ps.tags, ps.tiers
    (['two cups', 'a cat left of a dog', 'a cup on a table'], ['counting', 'spatial', 'spatial'], ['easy', 'medium', 'medium'])
    >>> ps.meta[0]["include"]
    [{'class': 'cup', 'count': 2}]
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from dynamics.full.geneval import TAGS as GENEVAL_TAGS
from dynamics.full.geneval import validate_rule
from dynamics.protocol import PromptSet

__all__ = [
    "GENEVAL_TAGS",
    "SPLITS",
    "T2I_COMPBENCH_TAGS",
    "PromptFileError",
    "concat",
    "load_geneval",
    "load_prompts",
    "load_text_prompts",
    "tag_from_filename",
]

#: T2I-CompBench's six categories (its file names ``<tag>_<split>.txt``).
T2I_COMPBENCH_TAGS: tuple[str, ...] = ("color", "shape", "texture", "spatial", "non_spatial", "complex")
#: Split suffixes removed from a text file's name to get its tag.
SPLITS: tuple[str, ...] = ("train", "val", "test", "dev", "eval")


class PromptFileError(ValueError):
    """A prompt file problem, naming the file, and where it applies the line and the field.

    >>> str(PromptFileError("p.jsonl", "missing field 'tag'", line=3))
    "p.jsonl:3: missing field 'tag'"
    """

    def __init__(
        self, file: str | os.PathLike, message: str, *, line: int | None = None, field: str | None = None
    ):
        self.file = str(file)
        self.line = line
        self.field = field
        self.message = message
        where = self.file if line is None else f"{self.file}:{line}"
        super().__init__(f"{where}: {message}")


def _read_lines(path: Path) -> list[str]:
    """Lines without their terminators (``\\n``, ``\\r\\n``); a decoding error names the line."""
    if not path.is_file():
        raise PromptFileError(path, "no such file" if not path.exists() else "not a regular file")
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for i, b in enumerate(lines, start=1):
        try:
            s = b.decode("utf-8-sig" if i == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise PromptFileError(path, f"not valid UTF-8 ({e.reason} at byte {e.start})", line=i) from None
        out.append(s.removesuffix("\r"))
    return out


def tag_from_filename(path: str | os.PathLike) -> str:
    """The category tag a text prompt file's name implies: its stem without a split suffix.

    >>> tag_from_filename("data/non_spatial_train.txt"), tag_from_filename("color.txt")
    ('non_spatial', 'color')
    """
    stem = Path(path).stem
    for split in SPLITS:
        if stem.endswith("_" + split) and len(stem) > len(split) + 1:
            return stem[: -len(split) - 1]
    return stem


def load_geneval(
    path: str | os.PathLike, *, allowed_tags: Sequence[str] | None = GENEVAL_TAGS, tier: str = "easy"
) -> PromptSet:
    """Read a GenEval-format JSONL file.

    Args:
        path: the ``.jsonl`` file. Empty lines are skipped; a line of only whitespace is an error.
        allowed_tags: the tags accepted (GenEval's six by default; ``None`` accepts any string).
        tier: the difficulty tier of every prompt (GenEval is the paper's *easy* tier).

    Returns: a :class:`PromptSet`; ``meta[i]`` = ``{"include", "exclude", "file", "line"}``.

    Raises: :class:`PromptFileError` (file, line, field) for malformed JSON, a missing or invalid
    field, an unknown tag, or a file without prompts.

    >>> import pathlib, tempfile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "bad.jsonl"
    >>> _ = p.write_text('{"tag": "colors", "prompt": "a red car", "include": [{"class": "car", "count": 1, "color": "red"}]}\\n'
    ...                  '{"tag": "colours", "prompt": "a blue car", "include": []}\\n')
    >>> load_geneval(p)
    Traceback (most recent call last):
    ...
    dynamics.full.data.PromptFileError: ...bad.jsonl:2: unknown tag 'colours'; allowed tags: single_object, two_object, counting, colors, position, color_attr
    """
    path = Path(path)
    texts, tags, metas = [], [], []
    for lineno, line in enumerate(_read_lines(path), start=1):
        if line == "":
            continue
        if not line.strip():
            raise PromptFileError(
                path, "line holds only whitespace (remove it or put a JSON object there)", line=lineno
            )
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise PromptFileError(path, f"malformed JSON: {e.msg} (column {e.colno})", line=lineno) from None
        if not isinstance(row, dict):
            raise PromptFileError(path, f"expected a JSON object, got {type(row).__name__}", line=lineno)
        for key in ("tag", "prompt", "include"):
            if key not in row:
                raise PromptFileError(path, f"missing field {key!r}", line=lineno, field=key)
        tag = row["tag"]
        if not isinstance(tag, str) or (allowed_tags is not None and tag not in allowed_tags):
            allowed = "any string" if allowed_tags is None else ", ".join(allowed_tags)
            raise PromptFileError(
                path, f"unknown tag {tag!r}; allowed tags: {allowed}", line=lineno, field="tag"
            )
        prompt = row["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise PromptFileError(
                path,
                f"field 'prompt' must be a non-empty string, got {prompt!r}",
                line=lineno,
                field="prompt",
            )
        try:
            validate_rule(row, tags=None)
        except (ValueError, TypeError) as e:
            msg = str(e)
            field = msg.split(":", 1)[0] if ":" in msg else None
            raise PromptFileError(path, str(e), line=lineno, field=field) from None
        texts.append(prompt.strip())
        tags.append(tag)
        metas.append(
            {"include": row["include"], "exclude": row.get("exclude", []), "file": path.name, "line": lineno}
        )
    if not texts:
        raise PromptFileError(path, "the prompt set is empty (no prompts in the file)")
    return PromptSet(texts=texts, tags=tags, tiers=[tier] * len(texts), meta=metas)


def load_text_prompts(
    path: str | os.PathLike,
    *,
    tag: str | None = None,
    allowed_tags: Sequence[str] | None = T2I_COMPBENCH_TAGS,
    tier: str = "medium",
) -> PromptSet:
    """Read a plain prompt list (T2I-CompBench format): one prompt a line, blank lines skipped.

    Args:
        path: the ``.txt`` file (``\\n`` or ``\\r\\n`` line ends).
        tag: the category of every prompt; default: from the file name (:func:`tag_from_filename`).
        allowed_tags: tags accepted (T2I-CompBench's six by default; ``None`` accepts any).
        tier: difficulty tier (T2I-CompBench is the paper's *medium* tier).

    Returns: a :class:`PromptSet`; ``meta[i]`` = ``{"file", "line"}``.

    >>> import pathlib, tempfile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "color_train.txt"
    >>> _ = p.write_bytes(b"a red car\\r\\n  \\r\\na blue bird\\r\\n")
    >>> ps = load_text_prompts(p)
    >>> ps.texts, ps.tags, [m["line"] for m in ps.meta]
    (['a red car', 'a blue bird'], ['color', 'color'], [1, 3])
    """
    path = Path(path)
    tag = tag_from_filename(path) if tag is None else tag
    if allowed_tags is not None and tag not in allowed_tags:
        raise PromptFileError(
            path,
            f"unknown tag {tag!r} (from the file name); allowed tags: {', '.join(allowed_tags)} "
            "(name the file <tag>_<split>.txt or pass tag=)",
            field="tag",
        )
    texts, metas = [], []
    for lineno, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        texts.append(line.strip())
        metas.append({"file": path.name, "line": lineno})
    if not texts:
        raise PromptFileError(path, "the prompt set is empty (no prompts in the file)")
    return PromptSet(texts=texts, tags=[tag] * len(texts), tiers=[tier] * len(texts), meta=metas)


def concat(sets: Sequence[PromptSet]) -> PromptSet:
    """Concatenate prompt sets in order.

    >>> concat([PromptSet(["a"], tags=["x"]), PromptSet(["b"], tags=["y"])]).tags
    ['x', 'y']
    """
    if not sets:
        raise ValueError("concat: no prompt sets given")
    return PromptSet(
        texts=[t for s in sets for t in s.texts],
        tags=[t for s in sets for t in s.tags],
        tiers=[t for s in sets for t in s.tiers],
        meta=[m for s in sets for m in s.meta],
    )


def _expand(source: Path, split: str | None) -> list[Path]:
    if not source.exists():
        raise PromptFileError(source, "no such file or directory")
    if source.is_file():
        return [source]
    files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix in (".jsonl", ".txt"))
    if split is not None:
        files = [p for p in files if p.suffix == ".jsonl" or p.stem.endswith("_" + split)]
    if not files:
        what = "*.jsonl or *.txt" if split is None else f"*.jsonl or *_{split}.txt"
        raise PromptFileError(source, f"the directory holds no prompt files ({what})")
    return files


def load_prompts(
    *sources: str | os.PathLike,
    split: str | None = None,
    geneval_tags: Sequence[str] | None = GENEVAL_TAGS,
    text_tags: Sequence[str] | None = T2I_COMPBENCH_TAGS,
) -> PromptSet:
    """Load and concatenate prompt files and directories, by suffix (``.jsonl``: GenEval,
    ``.txt``: plain list; a directory: its ``.jsonl`` and ``.txt`` files in name order).

    Args:
        sources: files or directories, at least one.
        split: keep only ``*_<split>.txt`` text files from directories (e.g. ``"train"``).
        geneval_tags, text_tags: the tags accepted for each format (``None``: any).

    Every file is parsed and checked before the set is returned; the first problem raises
    :class:`PromptFileError` naming it.

    >>> load_prompts()
    Traceback (most recent call last):
    ...
    ValueError: load_prompts: give at least one prompt file or directory
    """
    if not sources:
        raise ValueError("load_prompts: give at least one prompt file or directory")
    if split is not None and split not in SPLITS:
        raise ValueError(f"load_prompts: split {split!r} unknown; allowed: {', '.join(SPLITS)}")
    files: list[Path] = []
    for src in sources:
        files.extend(_expand(Path(src), split))
    sets = []
    for f in files:
        if f.suffix == ".jsonl":
            sets.append(load_geneval(f, allowed_tags=geneval_tags))
        elif f.suffix == ".txt":
            sets.append(load_text_prompts(f, allowed_tags=text_tags))
        else:
            raise PromptFileError(
                f,
                f"unknown prompt file type {f.suffix!r}; expected .jsonl (GenEval) or .txt (one prompt a line)",
            )
    return concat(sets)
