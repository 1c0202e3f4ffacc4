"""Finding 4 in the toy world: Janus-like sharing against full sharing.

Janus-like sharing gives generation its own image embeddings and head and understanding its own image
embeddings; only the trunk (and the word embeddings) are shared. The paper observes that weaker
sharing transfers less to understanding. Three seeds per sharing, one CLO round each (the default
recipe), the self judge read against the unfiltered control from the same weights and seed.
Measured (``paper_figures/fig_toy_sharing.py``): the understanding's false-positive gain beyond the
control shrinks from about 1.5 points (full) to about 0.1 (Janus-like), while generation still gains.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch

from dynamics.figures.sim import paired_difference
from dynamics.figures.toy import study
from dynamics.toy.study import TOY_CLO, ToySize

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
CACHE = os.environ.get("DYNAMICS_CACHE", str(ROOT / "cache" / "toy"))
SIZE = ToySize(seeds=(0, 1, 2), cache_dir=CACHE, clo=dataclasses.replace(TOY_CLO, progress=False))


@pytest.fixture(scope="module")
def arms():
    return {sharing: study(SIZE, ["self", "all"], sharing=sharing) for sharing in ("janus", "full")}


def _gain(arms, key):
    return paired_difference(arms["self"], arms["all"], key)


def test_janus_sharing_transfers_less_to_understanding(arms):
    janus, full = _gain(arms["janus"], "und_fp_rate"), _gain(arms["full"], "und_fp_rate")
    assert janus[2] == full[2] == len(SIZE.seeds)
    # full sharing: fewer false positives than the control; Janus-like: within half a point of it
    assert full[0] < -0.005, full
    assert abs(janus[0]) < 0.005, janus
    assert janus[0] - full[0] > 0.005, (janus, full)
    # generation still gains beyond the control under both
    for sharing in ("janus", "full"):
        gen = _gain(arms[sharing], "gen_acc")
        assert gen[0] > 2 * gen[1] and gen[0] > 0.01, (sharing, gen)


def test_janus_understanding_drifts_alike_with_and_without_filtering(arms):
    """What understanding does change under Janus-like sharing (through the shared trunk) it changes
    as much without filtering: drift, not co-improvement."""
    for key in ("und_fp_rate", "und_fn_rate"):
        d = _gain(arms["janus"], key)
        assert abs(d[0]) < 0.005, (key, d)
