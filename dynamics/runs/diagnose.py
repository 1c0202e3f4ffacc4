"""``python experiments/diagnose.py``: the paper's diagnosis of one or more unified models, no training.

Every ``--model`` and the prompt files are checked first (an unknown model, a missing or malformed
prompt file, a bad external judge spec: exit status 2 before any model loads). Then, model by model:
``--candidates`` samples per prompt judged by the model's own understanding and by the external judge
(the toy world's exact detector for ``toy``; ``--external`` for full-scale models), through
:func:`dynamics.diagnose.diagnose`. Printed and written into ``--out``: one table per model (Non,
weak-generation attribution, Gen, understanding FP/FN rates, overall, per task and per difficulty
tier), the cross-model table (``diagnosis.txt``, ``diagnosis.json``), every sample's verdicts
(``verdicts_<i>.jsonl``) and the figure (``diagnosis.png``/``.pdf``, :mod:`dynamics.figures.diagnose`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from dynamics.protocol import COUPLINGS
from dynamics.runs.common import clean_errors, default_out

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="The paper's diagnosis without training: for each model, N samples per prompt judged by the "
                    "model's own understanding and an external judge; Non (share of own samples the own "
                    "understanding rejects), weak-generation attribution (share of those the external judge also "
                    "rejects), generation accuracy and understanding FP/FN rates, overall, per task and per "
                    "difficulty tier, and the cross-model table and figure.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", nargs="+", default=["toy"],
                   help="models to diagnose: toy (the toy scene-world transformer, judged by the world's exact "
                        "detector) | a full-scale preset (Janus-Pro: tiny, janus-pro-1b-shape, janus-pro-7b-shape; "
                        "Emu3: emu3-tiny) | a local Janus-Pro or Emu3 checkpoint directory | a hub id available "
                        "offline")
    p.add_argument("--prompts", nargs="+", type=Path, default=None,
                   help="prompt files or directories for full-scale models: GenEval JSONL (easy tier) or plain text "
                        "lists (T2I-CompBench, medium tier; tag from the file name). The toy uses its world's prompts")
    p.add_argument("--split", default=None, choices=["train", "val"],
                   help="with directories: take only the *_train or *_val files")
    p.add_argument("--max-prompts", type=int, default=0, help="use at most this many prompts (0 = all)")
    p.add_argument("--candidates", type=int, default=8, help="N samples per prompt")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="the own understanding says yes when P(yes) >= this, in [0, 1] (the CLO loop's rule)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (and the toy model's pre-training seed)")
    p.add_argument("--chunk-size", type=int, default=64, help="prompts per sampling / judging call")
    p.add_argument("--external", default="none",
                   help="external judge of full-scale models: none | file:<judgements.jsonl> | "
                        "detector:<detections.jsonl> | vlm:<local path or offline hub id> (as in full_clo.py). "
                        "Without one only Non is reported for them")
    p.add_argument("--out", type=Path, default=None, help="output directory (default runs/diagnose/<UTC time>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    t = p.add_argument_group("toy world")
    t.add_argument("--toy-preset", default="default", choices=["default", "tiny"], help="toy model preset")
    t.add_argument("--coupling", default="tied", choices=list(COUPLINGS),
                   help="the toy network's coupling (see full_clo.py --help)")
    t.add_argument("--pretrain-steps", type=int, default=None, help="pre-training steps (default: the preset's)")
    t.add_argument("--gen-noise", type=float, default=None,
                   help="gap size: share of generation pre-training targets replaced by hard negatives")
    t.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("DYNAMICS_CACHE", "cache/toy")),
                   help="pre-trained checkpoint cache (env DYNAMICS_CACHE)")
    j = p.add_argument_group("full-scale models")
    j.add_argument("--cfg-scale", type=float, default=5.0, help="classifier-free guidance g (1 = none)")
    j.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    j.add_argument("--top-k", type=int, default=0, help="top-k sampling (0 = off)")
    j.add_argument("--sample-batch-size", type=int, default=0, help="rows (prompt, candidate) per sampler call (0 = all)")
    j.add_argument("--judge-batch-size", type=int, default=16, help="images per understanding forward")
    j.add_argument("--question", default=None, help="understanding question template with {prompt}")
    j.add_argument("--answer-format", default="yesno", choices=["yesno", "score"],
                   help="yesno: P(yes) from the first answer token; score: the paper's 'The score is 1/0'")
    j.add_argument("--judge-mode", default="logits", choices=["logits", "generate"],
                   help="read P(yes) from logits, or generate an answer and parse it")
    j.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="model dtype")
    j.add_argument("--device", default=None, help="device (default: cuda if available, else cpu)")
    return p


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """Every flag, model name, prompt file and judge file checked; the full-scale prompt set (or None)."""
    from dynamics.diagnose import check_model
    from dynamics.full.data import load_prompts
    from dynamics.runs.full import EXTERNAL_KINDS

    for name in ("candidates", "chunk_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_prompts < 0:
        parser.error(f"--max-prompts must be >= 0, got {args.max_prompts}")
    if not 0.0 <= args.threshold <= 1.0:
        parser.error(f"--threshold must lie in [0, 1], got {args.threshold}")
    if args.pretrain_steps is not None and args.pretrain_steps < 1:
        parser.error(f"--pretrain-steps must be >= 1, got {args.pretrain_steps}")
    if len(set(args.model)) != len(args.model):
        parser.error(f"--model names a model twice: {' '.join(args.model)}")
    for name in args.model:
        try:
            check_model(name)
        except ValueError as e:
            parser.error(str(e))
    kind, _, arg = args.external.partition(":")
    if kind not in EXTERNAL_KINDS or (kind != "none" and not arg):
        parser.error(f"--external {args.external!r}: expected none, file:<path>, detector:<path> or vlm:<path or id>")
    full = [m for m in args.model if m != "toy"]
    if not full:
        return None
    if not args.prompts:
        parser.error(f"--prompts is required for {', '.join(full)} (GenEval JSONL or text prompt lists)")
    try:
        prompts = load_prompts(*args.prompts, split=args.split)
    except (ValueError, OSError) as e:
        parser.error(str(e))
    return prompts.subset(range(min(args.max_prompts, len(prompts)))) if args.max_prompts else prompts


def main(argv: Sequence[str] | None = None) -> list:
    """Parse and check, diagnose every model, print and write the tables and the figure; returns the
    :class:`dynamics.diagnose.Diagnosis` of each model."""
    parser = build_parser()
    args = parser.parse_args(argv)
    prompts = _check(parser, args)
    if prompts is not None and args.external.split(":", 1)[0] in ("file", "detector"):
        from dynamics.runs.janus import load_external

        external = clean_errors(lambda: load_external(args, prompts))  # judgement files: before any model
    else:
        external = None
    out = Path(args.out) if args.out else default_out("diagnose")
    return clean_errors(lambda: _run(args, prompts, external, out))


def _run(args, prompts, external, out: Path) -> list:
    import json

    import torch

    from dynamics.diagnose import cross_model_table, diagnose, diagnosis_table, write_diagnoses
    from dynamics.figures.common import save_figure
    from dynamics.figures.diagnose import plot_diagnosis
    from dynamics.full.presets import model_family

    diagnoses, info = [], {"args": json.loads(json.dumps(vars(args), default=str)), "models": {}}
    for name in args.model:
        if name == "toy":
            from dynamics.runs.toy import toy_model

            toy_args = argparse.Namespace(**vars(args), no_gap_check=True)
            model, gap = toy_model(toy_args, args.seed, args.threshold)
            judge, label = model.world.external_judge(), f"toy-{args.toy_preset}-{args.coupling}"
            info["models"][label] = {"family": "toy", "gap_report": gap}
            subset = range(min(args.max_prompts, len(model.prompts))) if args.max_prompts else None
        else:
            from dynamics.runs.janus import load_external, load_model

            device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
            model = load_model(args, name, prompts, seed=args.seed, device=device)
            judge = load_external(args, prompts, model) if args.external.startswith("vlm:") else external
            label = name
            info["models"][label] = {"family": model_family(name)}
            subset = None
        d = diagnose(model, candidates=args.candidates, seed=args.seed, external=judge, prompt_ids=subset,
                     threshold=args.threshold, chunk_size=args.chunk_size, name=label, progress=not args.no_progress)
        print(diagnosis_table(d) + "\n")
        diagnoses.append(d)
        del model
    table = cross_model_table(diagnoses)
    print(table)
    write_diagnoses(diagnoses, out, info=info)
    fig = plot_diagnosis({d.name: d.rows() for d in diagnoses},
                         title=f"own samples rejected by own understanding ({args.candidates} per prompt)")
    save_figure(fig, out, "diagnosis")
    print(f"\noutput directory: {out}", file=sys.stdout)
    return diagnoses
