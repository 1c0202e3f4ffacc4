"""The toy's CLO recipe: the defaults of ``python experiments/full_clo.py`` on the toy world, read by
the entry point (:mod:`dynamics.runs.toy`) and by the toy experiments (:mod:`dynamics.toy.study`).

One self-judged round, curriculum replay after two epochs; Adam as in the calibration run
(``optimizer="sgd"`` is the theory's setting).

    >>> from dynamics.toy.recipe import TOY_CLO
    >>> TOY_CLO.epochs, TOY_CLO.curriculum, TOY_CLO.optimizer
    (4, 'epochs:2', 'adam')
"""

from __future__ import annotations

from dynamics.clo import CLOConfig

__all__ = ["TOY_CLO"]

TOY_CLO = CLOConfig(candidates=8, epochs=4, lr=1e-4, optimizer="adam", batch_size=16, eval_candidates=8,
                    curriculum="epochs:2", chunk_size=512)
