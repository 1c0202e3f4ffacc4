"""Run directories: a self-describing record of every run (config, versions, data, metrics).

A run directory holds ``config.json`` (every setting, seeds, versions), ``metrics.jsonl`` (one JSON
object per replica and epoch), ``theory.jsonl`` (theory-tracking records), ``data.safetensors``
(candidates, judgements, SFT/DPO sets, discard pool) and ``state.pt`` (the last checkpoint, for
``--resume``). Whole files are written atomically (temporary file, flush, fsync, rename), so a run
killed at any point leaves the last complete checkpoint; the append-only records (``*.jsonl``) are
flushed and synced line by line and, on resume, recovered as write-ahead logs are: an incomplete last
line (a kill mid-write) is dropped and the records after the last checkpoint are derived again. A
damaged file is reported in one line naming the file and what to do (:class:`DamagedRunError`).

Example::

    >>> import tempfile
    >>> from dynamics.records import RunDir
    >>> run = RunDir(tempfile.mkdtemp())
    >>> run.append_jsonl("metrics.jsonl", {"epoch": 0, "gen_acc": 0.5})
    >>> run.read_jsonl("metrics.jsonl")
    [{'epoch': 0, 'gen_acc': 0.5}]
"""

from __future__ import annotations

import json
import math
import os
import pickle
import platform
import sys
from pathlib import Path

import torch

__all__ = ["COSMETIC_FIELDS", "ConfigMismatchError", "DamagedRunError", "RunDir", "differences", "to_jsonable",
           "versions"]


class ConfigMismatchError(ValueError):
    """``--resume`` on a run directory written with another configuration."""


class DamagedRunError(ValueError):
    """A run file that cannot be read (cut, empty or foreign); the message names it and what to do."""


#: CLOConfig fields that change no number of a run (display only): never part of its identity.
COSMETIC_FIELDS = frozenset({"progress"})

_RESTART = "remove it and pass --resume to start this run over, or start a new run with another --out"


def differences(old: dict, new: dict, *, ignore=()) -> list[str]:
    """One line per field that differs between two identities (``field: <old> there, <new> now``).

    >>> differences({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4})
    ['b: 2 there, 3 now', 'c: (absent) there, 4 now']
    """
    missing = "(absent)"
    old, new = to_jsonable(old), to_jsonable(new)
    return [f"{k}: {old.get(k, missing)!r} there, {new.get(k, missing)!r} now".replace("'(absent)'", missing)
            for k in sorted(set(old) | set(new)) if k not in ignore and old.get(k, missing) != new.get(k, missing)]


def versions() -> dict[str, str]:
    """Versions of the packages that decide a run's numbers."""
    from importlib.metadata import PackageNotFoundError, version

    from dynamics import __version__

    def v(name):  # from package metadata: importing transformers only for its version costs seconds
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return {
        "dynamics": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": v("transformers"),
        "numpy": v("numpy"),
        "platform": platform.platform(),
    }


def to_jsonable(obj):
    """Tensors, numpy scalars and NaN made JSON-safe (NaN becomes null).

    >>> to_jsonable({"a": torch.tensor(1.5), "b": float("nan"), "c": (1, 2)})
    {'a': 1.5, 'b': None, 'c': [1, 2]}
    """
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.tolist())
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        return to_jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


class RunDir:
    """A run directory (created if missing)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def file(self, name: str) -> Path:
        return self.path / name

    def _atomic_write(self, name: str, write) -> None:
        tmp = self.file(_tmp_name(name))
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, self.file(name))
        _fsync(self.path)  # the rename itself

    def remove_partial_writes(self) -> None:
        """Delete the temporary files of writes a kill interrupted (their target is intact)."""
        for tmp in self.path.glob("*.tmp*"):
            if tmp.name == _tmp_name(tmp.name.replace(".tmp", "", 1)):
                tmp.unlink(missing_ok=True)

    def write_json(self, name: str, obj) -> None:
        text = json.dumps(to_jsonable(obj), indent=2, sort_keys=True)
        self._atomic_write(name, lambda p: p.write_text(text + "\n"))

    def write_text(self, name: str, text: str) -> None:
        self._atomic_write(name, lambda p: p.write_text(text))

    def write_with(self, name: str, write) -> None:
        """Write ``name`` atomically through ``write(path)`` (any writer of a file path, e.g. a plot)."""
        self._atomic_write(name, write)

    def read_json(self, name: str, *, todo: str = _RESTART):
        """The JSON object in ``name``; a damaged file raises :class:`DamagedRunError` naming it and ``todo``."""
        path = self.file(name)
        try:
            value = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            where = f"line {e.lineno}: {e.msg}" if isinstance(e, json.JSONDecodeError) else "not UTF-8 text"
            raise DamagedRunError(f"{path} is damaged ({where}); {todo}") from None
        if not isinstance(value, dict):
            raise DamagedRunError(f"{path} is damaged (not a JSON object); {todo}")
        return value

    def append_jsonl(self, name: str, record: dict) -> None:
        """Append one record and sync it to disk (a kill leaves at most an incomplete last line)."""
        with open(self.file(name), "a") as f:
            f.write(json.dumps(to_jsonable(record), sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def recover_jsonl(self, name: str) -> bool:
        """Drop an incomplete last line of ``name`` (a write cut by a kill), as a write-ahead log does on
        recovery; returns whether one was dropped. A damaged line before the last raises
        :class:`DamagedRunError` (it was complete once: the file was changed by something else)."""
        path = self.file(name)
        if not path.exists():
            return False
        text = path.read_bytes().decode("utf-8", errors="replace")
        lines = text.split("\n")
        tail = lines.pop()  # "" when the file ends in a newline
        cut = tail != ""
        if not cut and lines:
            try:
                json.loads(lines[-1])
            except json.JSONDecodeError:
                cut = True
                lines.pop()
        for lineno, line in enumerate(lines, 1):
            if line.strip():
                try:
                    json.loads(line)
                except json.JSONDecodeError as e:
                    raise DamagedRunError(f"{path}:{lineno}: not valid JSON ({e.msg}) before the last line: the "
                                          f"records are damaged; start a new run with another --out") from None
        if cut:
            kept = "".join(line + "\n" for line in lines)
            self._atomic_write(name, lambda p: p.write_text(kept))
        return cut

    def read_jsonl(self, name: str) -> list[dict]:
        path = self.file(name)
        if not path.exists():
            return []
        out = []
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        return out

    def truncate_jsonl(self, name: str, keep) -> None:
        """Keep only the records for which ``keep(record)`` is true (used on resume)."""
        if not self.file(name).exists():  # nothing to keep; an empty file would be a record the run never wrote
            return
        records = [r for r in self.read_jsonl(name) if keep(r)]
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        self._atomic_write(name, lambda p: p.write_text(text))

    def save_state(self, name: str, state: dict) -> None:
        self._atomic_write(name, lambda p: torch.save(state, p))

    def load_state(self, name: str) -> dict | None:
        """The checkpoint in ``name`` (None if absent); a damaged one raises :class:`DamagedRunError`."""
        path = self.file(name)
        if not path.exists():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except (EOFError, pickle.UnpicklingError, RuntimeError, OSError, ValueError, KeyError, IndexError,
                AttributeError, ImportError) as e:  # what torch.load raises on a cut, empty or foreign file
            raise DamagedRunError(f"{path} is damaged ({type(e).__name__}); {_RESTART}") from None
        if not isinstance(state, dict) or "epoch" not in state:
            raise DamagedRunError(f"{path} is damaged (not a checkpoint of this package); {_RESTART}")
        return state

    def save_tensors(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items() if v is not None}
        self._atomic_write(name, lambda p: save_file(flat, str(p)))

    def check_config(self, config: dict) -> None:
        """Raise :class:`ConfigMismatchError` naming every differing field but the cosmetic ones
        (:data:`COSMETIC_FIELDS`), one line each with both values, if any."""
        old = self.read_json("config.json").get("config", {})
        diff = differences(old, config, ignore=COSMETIC_FIELDS)
        if diff:
            raise ConfigMismatchError(f"{self.file('config.json')}: resume needs the same settings (or a new --out); "
                                      f"differing:\n  " + "\n  ".join(diff))


def _tmp_name(name: str) -> str:
    """The temporary file of an atomic write of ``name``, with its suffix (writers choose the format by it).

    >>> _tmp_name("curves.png"), _tmp_name("state.pt")
    ('curves.tmp.png', 'state.tmp.pt')
    """
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}.tmp.{suffix}" if dot and stem else f"{name}.tmp"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
