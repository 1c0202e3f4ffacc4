"""Run directories: a self-describing record of every run (config, versions, data, metrics).

A run directory holds ``config.json`` (every setting, seeds, versions), ``metrics.jsonl`` (one JSON
object per replica and epoch), ``theory.jsonl`` (theory-tracking records), ``data.safetensors``
(candidates, judgements, SFT/DPO sets, discard pool) and ``state.pt`` (the last checkpoint, for
``--resume``). Writes are atomic (temporary file, then rename), so a run killed at any point leaves
the last complete checkpoint.

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
import platform
import sys
from pathlib import Path

import torch

__all__ = ["ConfigMismatchError", "RunDir", "to_jsonable", "versions"]


class ConfigMismatchError(ValueError):
    """``--resume`` on a run directory written with another configuration."""


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
        tmp = self.file(name + ".tmp")
        write(tmp)
        os.replace(tmp, self.file(name))

    def write_json(self, name: str, obj) -> None:
        text = json.dumps(to_jsonable(obj), indent=2, sort_keys=True)
        self._atomic_write(name, lambda p: p.write_text(text + "\n"))

    def read_json(self, name: str):
        return json.loads(self.file(name).read_text())

    def append_jsonl(self, name: str, record: dict) -> None:
        with open(self.file(name), "a") as f:
            f.write(json.dumps(to_jsonable(record), sort_keys=True) + "\n")

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
        records = [r for r in self.read_jsonl(name) if keep(r)]
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        self._atomic_write(name, lambda p: p.write_text(text))

    def save_state(self, name: str, state: dict) -> None:
        self._atomic_write(name, lambda p: torch.save(state, p))

    def load_state(self, name: str) -> dict | None:
        path = self.file(name)
        if not path.exists():
            return None
        return torch.load(path, map_location="cpu", weights_only=False)

    def save_tensors(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items() if v is not None}
        self._atomic_write(name, lambda p: save_file(flat, str(p)))

    def check_config(self, config: dict) -> None:
        """Raise :class:`ConfigMismatchError` naming the first differing field, if any."""
        old = self.read_json("config.json").get("config", {})
        new = to_jsonable(config)
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                raise ConfigMismatchError(
                    f"{self.file('config.json')}: field {key!r} is {old.get(key)!r} there but "
                    f"{new.get(key)!r} now; resume needs the same configuration (or a new --out)"
                )
