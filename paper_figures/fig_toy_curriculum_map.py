"""Toy world, curriculum replay where it can matter: for every number of candidates N, loss (C-SFT,
C-DPO) and replay (none, early, late, adaptive), the discard pool, the prompts replay recovers, the
precision of the replayed data against the first round's, and Gen / the understanding's false-positive
rate beyond no replay (paired by unit), overall and per difficulty tier.

    python paper_figures/fig_toy_curriculum_map.py          # the default toy model, 3 seeds (pre-training cached)
    python paper_figures/fig_toy_curriculum_map.py --quick  # a smoke run (tiny preset, no gap)

Writes fig_toy_curriculum_map.png, .pdf and .json (the numbers) into --out (default paper_figures/out).

Experiment: :func:`dynamics.toy.ablations.toy_curriculum_map`,
drawing: :func:`dynamics.figures.ablations.draw_curriculum_map`.
"""

from pathlib import Path

from dynamics.runs.figures import main

if __name__ == "__main__":
    main("toy_curriculum_map", default_out=Path(__file__).resolve().parent / "out")
