"""Toy world, which parts to train: the self judge against the unfiltered control when CLO trains every
generation parameter, only the transformer layers, the layers and the image-logit head, or only the
embeddings (the paper's trainable-parts ablation).

    python paper_figures/fig_toy_scopes.py          # the default toy model, 3 seeds (pre-training cached)
    python paper_figures/fig_toy_scopes.py --quick  # a smoke run (tiny preset, no gap)

Writes fig_toy_scopes.png, .pdf and .json (the numbers) into --out (default paper_figures/out).

Experiment: :func:`dynamics.toy.ablations.toy_scopes`, drawing: :func:`dynamics.figures.toy.draw_toy_scopes`.
"""

from pathlib import Path

from dynamics.runs.figures import main

if __name__ == "__main__":
    main("toy_scopes", default_out=Path(__file__).resolve().parent / "out")
