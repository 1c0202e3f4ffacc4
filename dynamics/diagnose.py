"""The paper's diagnosis without training: how often a model's own understanding rejects its own
generations (Non), and whose fault it is (weak-generation attribution), per task and difficulty tier.

For a model and a prompt set, :func:`diagnose` draws ``N`` samples per prompt and judges each with the
model's own understanding and, where one is given, an external judge: exactly steps 1-2 of
Algorithm 1 (:func:`dynamics.clo.sample_candidates`, the same seeds as a CLO run's first round). A
:class:`Diagnosis` holds the verdict tables; :meth:`Diagnosis.rows` reads them with the package's one
metric set (:mod:`dynamics.metrics`), overall and per ``tag:<task>`` / ``tier:<tier>``:

- ``non_unification``: the share of samples the own understanding rejects (paper Sec. 1);
- ``attribution``: among self-rejected samples, the share the external judge also rejects (> 0.5: the
  generator, not the understanding, is at fault);
- ``gen_acc``: the share the external judge accepts;
- ``und_fp_rate`` / ``und_fn_rate``: the own understanding's false-positive rate (a yes to a truly
  misaligned sample) and false-negative rate (a no to an aligned one) on the model's own samples.

Without an external judge only Non is defined; the other columns are NaN. Every rate comes with its
denominator (``samples``, ``rejected``, ``misaligned``, ``aligned``).

Models (:func:`check_model`, checked before anything loads): ``toy`` (the toy scene-world transformer,
pre-trained and cached like the CLO run's, judged by the world's exact detector), a full-scale preset
(``tiny``, ``janus-pro-1b-shape``, ... and the presets of every other family the CLO run loads), a local
checkpoint directory or a hub id available offline; the full-scale ones load through the CLO run's own
loader (:func:`dynamics.runs.janus.load_model`, by model family: Janus-Pro or Emu3).

Example (a table model judged by its own oracle)::

    >>> from dynamics.testing import TableModel
    >>> model = TableModel.random(prompts=4, tokens=6, seed=0)
    >>> d = diagnose(model, candidates=8, seed=0, external=model.oracle, name="table", progress=False)
    >>> row = d.rows()[0]
    >>> row["group"], row["samples"]
    ('overall', 32)
    >>> 0.0 <= row["non_unification"] <= 1.0
    True
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from dynamics import metrics as _metrics
from dynamics.protocol import ExternalJudge, PromptSet, UnifiedModel

__all__ = [
    "COLUMNS",
    "Diagnosis",
    "check_model",
    "cross_model_table",
    "diagnose",
    "diagnosis_table",
    "write_diagnoses",
]

#: The columns of a diagnosis row (rates in [0, 1], then their denominators).
COLUMNS = ("non_unification", "attribution", "gen_acc", "und_fp_rate", "und_fn_rate")
_LABELS = {"non_unification": "Non", "attribution": "attrib.", "gen_acc": "Gen", "und_fp_rate": "FP",
           "und_fn_rate": "FN"}


@dataclass
class Diagnosis:
    """The verdicts of one model on its own samples.

    ``p_yes`` ``(P, N)``: the own understanding's P(yes) for each prompt's ``N`` samples; ``own_yes``
    ``(P, N)``: its verdicts at ``threshold`` (:func:`dynamics.metrics.accepts`); ``external_yes``
    ``(P, N)`` or None: the external judge's; ``images`` ``(P, N, M)``: the samples' tokens.
    """

    name: str
    prompts: PromptSet
    p_yes: torch.Tensor
    own_yes: torch.Tensor
    external_yes: torch.Tensor | None
    threshold: float
    images: torch.Tensor | None = None

    def __post_init__(self) -> None:
        P = len(self.prompts)
        if self.own_yes.dim() != 2 or self.own_yes.shape[0] != P:
            raise ValueError(f"Diagnosis {self.name!r}: own_yes has shape {tuple(self.own_yes.shape)}, "
                             f"expected ({P}, N) for {P} prompts")
        if self.external_yes is not None and self.external_yes.shape != self.own_yes.shape:
            raise ValueError(f"Diagnosis {self.name!r}: external_yes has shape {tuple(self.external_yes.shape)}, "
                             f"own_yes {tuple(self.own_yes.shape)}")

    def groups(self) -> dict[str, list[int]]:
        """``overall``, then the prompt set's ``tag:<task>`` groups, then its ``tier:<tier>`` groups (prompt
        ids; tasks and tiers in order of first appearance)."""
        groups = self.prompts.groups()
        tags = {k: v for k, v in groups.items() if k.startswith("tag:")}
        return {"overall": list(range(len(self.prompts))), **tags, **{k: v for k, v in groups.items() if k not in tags}}

    def row(self, group: str, ids: Sequence[int]) -> dict:
        """The metrics of the prompts ``ids`` (see the module docstring), with their denominators."""
        cols = torch.as_tensor(list(ids), dtype=torch.long)
        own = self.own_yes[cols][None].bool()  # the metrics take a leading replica axis
        out = {"model": self.name, "group": group, "prompts": len(cols), "samples": int(own.numel()),
               "non_unification": _metrics.non_unification(own).item(), "rejected": int((~own).sum())}
        if self.external_yes is None:
            out.update({k: math.nan for k in COLUMNS[1:]})
            return out
        ext = self.external_yes[cols][None].bool()
        out.update({
            "attribution": _metrics.weak_generation_attribution(own, ext).item(),
            "gen_acc": _metrics.accuracy(ext).item(),
            "und_fp_rate": _metrics.false_positive_rate(own, ext).item(),
            "und_fn_rate": _metrics.false_negative_rate(own, ext).item(),
            "misaligned": int((~ext).sum()),
            "aligned": int(ext.sum()),
        })
        return out

    def rows(self) -> list[dict]:
        """One row per group: ``overall`` first, then tasks and tiers in the prompt set's order."""
        return [self.row(g, ids) for g, ids in self.groups().items()]

    def verdicts(self) -> list[dict]:
        """One record per sample: prompt id, candidate, P(yes), own and external verdicts."""
        out = []
        for p in range(self.own_yes.shape[0]):
            for k in range(self.own_yes.shape[1]):
                rec = {"prompt_id": p, "prompt": self.prompts.texts[p], "tag": self.prompts.tags[p],
                       "tier": self.prompts.tiers[p], "candidate": k, "p_yes": float(self.p_yes[p, k]),
                       "own_yes": bool(self.own_yes[p, k])}
                if self.external_yes is not None:
                    rec["external_yes"] = bool(self.external_yes[p, k])
                out.append(rec)
        return out


def diagnose(
    model: UnifiedModel,
    *,
    candidates: int,
    seed: int,
    external: ExternalJudge | None = None,
    prompt_ids: Sequence[int] | None = None,
    threshold: float = 0.5,
    chunk_size: int = 64,
    name: str = "model",
    progress: bool = True,
) -> Diagnosis:
    """Sample ``candidates`` images per prompt of ``model.prompts`` (or of ``prompt_ids``), judge them
    with the model's own understanding (a yes where ``P(yes) >= threshold``) and with ``external``
    where given: the draws of a CLO run's first round with the same seed (one replica)."""
    from dynamics.clo import CLOConfig, replica_seeds, sample_candidates

    if getattr(model, "replicas", 1) != 1:
        raise ValueError(f"diagnose: one replica at a time, the model has {model.replicas}")
    cfg = CLOConfig(candidates=candidates, threshold=threshold, seed=seed, chunk_size=chunk_size, progress=progress)
    cfg.validate()
    ids = torch.arange(len(model.prompts)) if prompt_ids is None else torch.as_tensor(list(prompt_ids)).long()
    got = sample_candidates(model, cfg, ids, external=external, seeds=replica_seeds(cfg, 1, 2))
    p_yes = got["p_yes"][0].detach().to(torch.float64).cpu()
    ext = got.get("external_yes")
    return Diagnosis(name=name, prompts=model.prompts.subset(ids.tolist()), p_yes=p_yes,
                     own_yes=_metrics.accepts(p_yes, threshold), threshold=threshold,
                     external_yes=None if ext is None else ext[0].bool().cpu(), images=got["images"][0].cpu())


# ------------------------------------------------------------------------------------------- models


def check_model(name: str) -> str:
    """``name`` if it names a model :func:`diagnose` can load without downloading: ``toy``, or a full-scale
    preset, checkpoint directory or cached hub id of a supported family
    (:func:`dynamics.full.presets.model_family`, which reads no weights); else a ``ValueError`` naming
    the model and the cause.

    >>> check_model("toy"), check_model("tiny")
    ('toy', 'tiny')
    >>> check_model("no-such-model")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: --model 'no-such-model': 'no-such-model' is not a Janus or Emu3 preset (...), a local directory or a hub id (owner/name)
    """
    from dynamics.full.presets import model_family

    if name == "toy":
        return name
    try:
        model_family(name)
    except (ValueError, OSError) as e:
        raise ValueError(f"--model {name!r}: {e}") from None
    return name


# ------------------------------------------------------------------------------------------- tables


def _pct(v: float) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{100 * v:.1f}"


def diagnosis_table(d: Diagnosis) -> str:
    """One model's rows as a plain-text table (rates in %, with their denominators)."""
    head = f"{'group':<26} {'samples':>7} {'Non %':>6} {'rej.':>5} {'attrib. %':>9} {'Gen %':>6} {'FP %':>6} " \
           f"{'(n)':>5} {'FN %':>6} {'(n)':>5}"
    lines = [f"{d.name} (threshold {d.threshold}, {d.own_yes.shape[1]} samples per prompt)", head, "-" * len(head)]
    for r in d.rows():
        lines.append(f"{r['group']:<26} {r['samples']:>7} {_pct(r['non_unification']):>6} {r['rejected']:>5} "
                     f"{_pct(r['attribution']):>9} {_pct(r['gen_acc']):>6} {_pct(r['und_fp_rate']):>6} "
                     f"{r.get('misaligned', ''):>5} {_pct(r['und_fn_rate']):>6} {r.get('aligned', ''):>5}")
    return "\n".join(lines)


def cross_model_table(diagnoses: Sequence[Diagnosis]) -> str:
    """Models x (overall metrics, then Non per task and per tier), in %: the paper's cross-model table."""
    groups: list[str] = []
    for prefix in ("tag:", "tier:"):
        for d in diagnoses:
            groups += [g for g in d.groups() if g.startswith(prefix) and g not in groups]
    cols = [_LABELS[k] for k in COLUMNS] + [g.split(":", 1)[1] for g in groups]
    width = max(12, *(len(d.name) for d in diagnoses))
    lines = ["overall rates, then Non per task and per difficulty tier (all in %)",
             f"{'model':<{width}} " + " ".join(f"{c:>{max(6, len(c))}}" for c in cols)]
    lines.append("-" * len(lines[1]))
    for d in diagnoses:
        rows = {r["group"]: r for r in d.rows()}
        vals = [_pct(rows["overall"][k]) for k in COLUMNS]
        vals += [_pct(rows[g]["non_unification"]) if g in rows else "-" for g in groups]
        lines.append(f"{d.name:<{width}} " + " ".join(f"{v:>{max(6, len(c))}}" for v, c in zip(vals, cols)))
    return "\n".join(lines)


def write_diagnoses(diagnoses: Sequence[Diagnosis], out: str | Path, *, info: dict | None = None) -> list[Path]:
    """Write ``diagnosis.json`` (every row of every model, and ``info``), ``diagnosis.txt`` (the tables)
    and ``verdicts_<i>.jsonl`` (every sample's verdicts, model ``i`` of the list) into ``out``."""
    from dynamics.records import to_jsonable

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "diagnosis.json", out / "diagnosis.txt"]
    payload = {"info": info or {}, "models": [{"name": d.name, "threshold": d.threshold,
                                              "samples_per_prompt": int(d.own_yes.shape[1]), "rows": d.rows()}
                                             for d in diagnoses]}
    paths[0].write_text(json.dumps(to_jsonable(payload), indent=1) + "\n")
    paths[1].write_text("\n\n".join([*(diagnosis_table(d) for d in diagnoses), cross_model_table(diagnoses)]) + "\n")
    for i, d in enumerate(diagnoses):
        p = out / f"verdicts_{i}.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in d.verdicts()))
        paths.append(p)
    return paths
