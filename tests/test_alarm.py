"""The co-degradation alarm (external accuracy falls while Non falls), at every scale: the alarm
itself, the loop's epoch hook, the probe set, and the entry points that install it."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from dynamics.alarm import CoDegradationAlarm, CoDegradationWarning, EpochAlarm, probe


def test_alarm_fires_only_when_external_falls_while_non_improves():
    alarm = CoDegradationAlarm()
    assert alarm.update(0, 0.60, 0.30) is False
    # co-improvement: external up, Non down
    assert alarm.update(1, 0.65, 0.25) is False
    # plain degradation Non sees: external down, Non up
    assert alarm.update(2, 0.62, 0.28) is False
    with pytest.warns(
        CoDegradationWarning,
        match=r"epoch 3: co-degradation: external accuracy 0\.620 -> 0\.580 while Non 0\.280 -> 0\.200 \(vs epoch 2\)",
    ):
        assert alarm.update(3, 0.58, 0.20) is True
    assert [h["alarm"] for h in alarm.history] == [False, False, False, True]


def test_alarm_tolerance_and_slow_drift_against_the_start():
    alarm = CoDegradationAlarm(tolerance=0.03)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not alarm.update(0, 0.60, 0.30)
        assert not alarm.update(1, 0.58, 0.28)  # -0.02 against both references: within tolerance
    with pytest.warns(CoDegradationWarning, match=r"vs epoch 0\)$"):
        assert alarm.update(2, 0.56, 0.26)  # -0.02 per epoch, -0.04 since the start
    strict = CoDegradationAlarm(non_tolerance=0.05)
    strict.update(0, 0.6, 0.3)
    assert not strict.update(1, 0.5, 0.28)  # Non improved by less than its tolerance


def test_alarm_bad_input_and_resume():
    alarm = CoDegradationAlarm(tolerance=0.01)
    with pytest.raises(ValueError, match=r"external_acc must be a fraction in \[0, 1\] \(not %\), got 60"):
        alarm.update(0, 60, 0.3)
    with pytest.raises(ValueError, match="non must be a fraction"):
        alarm.update(0, 0.6, float("nan"))
    alarm.update(0, 0.6, 0.3)
    with pytest.raises(ValueError, match="epoch 0 is not after the last recorded epoch 0"):
        alarm.update(0, 0.6, 0.3)
    with pytest.raises(ValueError, match="tolerance must be in"):
        CoDegradationAlarm(tolerance=-0.1)
    restored = CoDegradationAlarm()
    restored.load_state_dict(json.loads(json.dumps(alarm.state_dict())))
    assert restored == alarm
    with pytest.warns(CoDegradationWarning):
        assert restored.update(1, 0.5, 0.2)


def test_probe_counts_external_accepts_and_self_rejections():
    class Model:
        def sample(self, ids, n, *, seed):
            g = torch.Generator().manual_seed(seed)
            return torch.randint(0, 2, (1, len(ids), n, 1), generator=g)

        def judge(self, ids, images):
            return images[..., 0].float() * 0.9  # P(yes) 0.9 for token 1, 0 for token 0

    ext = lambda ids, images: images[..., 0] == 1
    acc, non = probe(Model(), ext, torch.arange(50), n=4, seed=0)
    tokens = Model().sample(torch.arange(50), 4, seed=0)
    assert acc == pytest.approx(tokens.float().mean().item())
    assert non == pytest.approx(1 - acc)
    with pytest.raises(ValueError, match="n must be >= 1"):
        probe(Model(), ext, torch.arange(2), n=0, seed=0)


def test_probe_counts_a_probability_at_the_threshold_as_yes():
    """The loop's rule, P(yes) >= threshold: with the rule '>' Non would be 1 here, not 0."""

    class AtThreshold:
        def sample(self, ids, n, *, seed):
            return torch.zeros(1, len(ids), n, 1, dtype=torch.long)

        def judge(self, ids, images):
            return torch.full(images.shape[:3], 0.7)

    ext = lambda ids, images: images[..., 0] == 0
    assert probe(AtThreshold(), ext, torch.arange(3), n=2, seed=0, threshold=0.7) == (1.0, 0.0)
    assert probe(AtThreshold(), ext, torch.arange(3), n=2, seed=0, threshold=0.71) == (1.0, 1.0)


# ---------------------------------------------------------------- the loop's epoch hook


def test_epoch_alarm_one_alarm_per_seed_and_skips_runs_without_external_judge():
    hook = EpochAlarm(tolerance=0.01)
    hook(0, [{"seed": 0, "gen_acc": 0.6, "non_unification": 0.3}, {"seed": 1, "gen_acc": 0.6, "non_unification": 0.3}])
    with pytest.warns(CoDegradationWarning, match=r"^seed 1, epoch 1: co-degradation: external accuracy 0\.600 -> 0\.500"):
        hook(1, [{"seed": 0, "gen_acc": 0.7, "non_unification": 0.2}, {"seed": 1, "gen_acc": 0.5, "non_unification": 0.2}])
    assert [h["alarm"] for h in hook.alarms[0].history] == [False, False]
    assert [h["alarm"] for h in hook.alarms[1].history] == [False, True]
    intrinsic = EpochAlarm()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        intrinsic(0, [{"seed": 0, "non_unification": 0.3}])
        intrinsic(1, [{"seed": 0, "non_unification": 0.1}])
    assert intrinsic.alarms == {}
    with pytest.raises(ValueError, match="tolerance must be in"):
        EpochAlarm(tolerance=1.5)


@pytest.fixture
def fed(monkeypatch):
    """What the entry point's alarm is fed: (tolerance, epoch, seeds, external accuracies) per call."""
    seen = []
    real = EpochAlarm.__call__

    def spy(self, epoch, records):
        seen.append((self.tolerance, epoch, [r["seed"] for r in records], [r["gen_acc"] for r in records]))
        return real(self, epoch, records)

    monkeypatch.setattr(EpochAlarm, "__call__", spy)
    return seen


def test_the_simulator_entry_feeds_every_seed_to_the_alarm(tmp_path, fed):
    """The world's alignment table is the exact external judge: the alarm watches each seed."""
    from dynamics.runs.sim import main

    main(["--prompts", "16", "--tokens", "16", "--seeds", "2", "--epochs", "2", "--pretrain-steps", "30",
          "--track-every", "0", "--alarm-tolerance", "0.2", "--out", str(tmp_path / "sim"), "--no-progress"])
    assert [(t, e, s) for t, e, s, _ in fed] == [(0.2, e, [0, 1]) for e in range(3)]
    assert all(0.0 <= a <= 1.0 for *_, accs in fed for a in accs)


def test_the_toy_entry_feeds_every_epoch_to_the_alarm(tmp_path, fed):
    """The toy run feeds every epoch's records (exact detector) to the alarm, with --alarm-tolerance."""
    from dynamics.runs.full import main

    main(["--toy-preset", "tiny", "--pretrain-steps", "5", "--epochs", "2", "--candidates", "2", "--eval-candidates",
          "2", "--judge", "all", "--curriculum", "off", "--no-gap-check", "--alarm-tolerance", "0.5", "--cache-dir",
          str(tmp_path / "cache"), "--out", str(tmp_path / "run"), "--no-progress"])
    assert [(t, e, s) for t, e, s, _ in fed] == [(0.5, e, [0]) for e in range(3)]
    assert all(0.0 <= a <= 1.0 for *_, accs in fed for a in accs)


@pytest.mark.parametrize("entry", ["sim", "full"])
def test_a_bad_alarm_tolerance_is_refused_before_any_work(entry, capsys):
    from dynamics.runs import full, sim

    main = {"sim": sim.main, "full": full.main}[entry]
    with pytest.raises(SystemExit):
        main(["--alarm-tolerance", "1.5"])
    assert "--alarm-tolerance must lie in [0, 1], got 1.5" in capsys.readouterr().err
