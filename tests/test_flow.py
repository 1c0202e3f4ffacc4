"""The multi-step (linearised, eNTK-flow) prediction of a training run: dynamics.flow, and its scale
adapters in dynamics.study.multistep."""

from __future__ import annotations

import math

import pytest
import torch

from dynamics.flow import (
    AdamState,
    Objective,
    Optimiser,
    clo_objective,
    errors,
    flow,
    logit_objective,
    measure,
    predict,
    schedule,
)
from dynamics.kernels import first_order_probe

D, H, V = 4, 6, 3


def _batches(n_steps, seed, batch=5):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, D, generator=g, dtype=torch.float64), torch.randint(V, (batch,), generator=g))
            for _ in range(n_steps)]


def _ce(z, b):
    return torch.nn.functional.cross_entropy(z, b[1])


# a model linear in its parameters (softmax cross-entropy on top: the loss is exact, so is the flow)
LINEAR = Objective(outputs=lambda p, b: b[0] @ p["W"].T + p["c"], loss=_ce)


def _linear_params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"W": torch.randn(V, D, generator=g, dtype=torch.float64),
            "c": torch.randn(V, generator=g, dtype=torch.float64)}


def _linear_probes(seed=1):
    x = torch.randn(7, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return {"logits": lambda p: (x @ p["W"].T + p["c"]).reshape(-1),
            "params": lambda p: torch.cat([p["W"].reshape(-1), p["c"]])}


# a nonlinear MLP; probes are log-probabilities (nonlinear in the parameters)
def _mlp_params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"W1": torch.randn(H, D, generator=g, dtype=torch.float64) / math.sqrt(D),
            "b1": torch.zeros(H, dtype=torch.float64),
            "W2": torch.randn(V, H, generator=g, dtype=torch.float64) / math.sqrt(H)}


def _mlp_logits(p, x):
    return torch.tanh(x @ p["W1"].T + p["b1"]) @ p["W2"].T


MLP = Objective(outputs=lambda p, b: _mlp_logits(p, b[0]), loss=_ce)


def _mlp_probes(seed=1, n=8):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, D, generator=g, dtype=torch.float64), torch.randint(V, (n,), generator=g)
    return {"logp": lambda p: torch.log_softmax(_mlp_logits(p, x), -1)[torch.arange(n), y]}


@pytest.mark.parametrize("name,lr", [("sgd", 0.5), ("adam", 0.05)])
def test_linear_model_is_predicted_exactly_for_every_k(name, lr):
    batches = _batches(6, seed=2)
    res = flow(_linear_params(), LINEAR, batches, _linear_probes(), Optimiser(name, lr=lr), ks=(1, 2, 4, 6, "all"))
    for k, pred in res.predicted.items():
        for n, v in res.measured.values.items():  # every step, not only the end
            assert torch.allclose(pred.change[n], v - v[0], rtol=1e-9, atol=1e-12), (k, n)
        assert res.errors[k]["logits"]["relative_error"] < 1e-9
        assert res.errors[k]["logits"]["sign_agreement"] == 1.0


def test_k1_sgd_is_the_summed_first_order_probes():
    batches, probes, lr = _batches(5, seed=3), _mlp_probes(), 0.3
    opt = Optimiser("sgd", lr=lr)
    measured = measure(_mlp_params(), MLP, batches, probes, opt)
    pred = predict(measured, MLP, batches, probes, opt, k=1)
    total = torch.zeros(8, dtype=torch.float64)
    for t, batch in enumerate(batches):
        ps = {n: torch.nn.Parameter(v.clone()) for n, v in measured.params[t].items()}
        total += first_order_probe(lambda ps=ps: probes["logp"](ps), lambda ps=ps, b=batch: -MLP(ps, b),
                                   list(ps.values()), lr=lr)
        assert torch.allclose(pred.change["logp"][t + 1], total, rtol=1e-10, atol=1e-13)
    # and at this lr the first order is not the measured change: the check has something to find
    assert errors(measured, pred)["logp"]["relative_error"] > 1e-3


def test_k1_adam_is_the_first_order_of_the_true_steps():
    batches, probes = _batches(4, seed=4), _mlp_probes()
    opt = Optimiser("adam", lr=0.02)
    measured = measure(_mlp_params(), MLP, batches, probes, opt)
    pred = predict(measured, MLP, batches, probes, opt, k=1)
    total = torch.zeros(8, dtype=torch.float64)
    for t in range(len(batches)):
        step = {n: measured.params[t + 1][n] - measured.params[t][n] for n in measured.params[t]}
        total += torch.func.jvp(probes["logp"], (measured.params[t],), (step,))[1]
    assert torch.allclose(pred.change["logp"][-1], total, rtol=1e-9, atol=1e-12)


def test_adam_branch_is_torch_adam_from_a_running_state():
    params, batches = _linear_params(seed=5), _batches(5, seed=6)
    opt = Optimiser("adam", lr=0.03, betas=(0.8, 0.99), eps=1e-6)
    g = torch.Generator().manual_seed(7)
    state = AdamState(3, {n: 0.1 * torch.randn(v.shape, generator=g, dtype=torch.float64) for n, v in params.items()},
                      {n: 0.01 * torch.rand(v.shape, generator=g, dtype=torch.float64) for n, v in params.items()})
    # the reference: torch.optim.Adam itself, its state set by hand
    leaves = {n: v.clone().requires_grad_(True) for n, v in params.items()}
    ref = torch.optim.Adam(leaves.values(), lr=0.03, betas=(0.8, 0.99), eps=1e-6)
    for n, p in leaves.items():
        ref.state[p] = {"step": torch.tensor(3.0), "exp_avg": state.exp_avg[n].clone(),
                        "exp_avg_sq": state.exp_avg_sq[n].clone()}
    traj = []
    for b in batches:
        ref.zero_grad()
        LINEAR(leaves, b).backward()
        ref.step()
        traj.append(torch.cat([leaves["W"].detach().reshape(-1) - params["W"].reshape(-1),
                               leaves["c"].detach() - params["c"]]))
    probes = {"params": _linear_probes()["params"]}
    res = flow(params, LINEAR, batches, probes, opt, ks=("all",), state=state)
    pred = res.predicted["all"].change["params"][1:]
    assert torch.allclose(pred, torch.stack(traj), rtol=1e-9, atol=1e-13)
    assert state.step == 3  # the caller's state is not consumed


def _mlp_error(lr, k, steps=10):
    batches, probes = _batches(steps, seed=8), _mlp_probes()
    res = flow(_mlp_params(), MLP, batches, probes, Optimiser("sgd", lr=lr), ks=(k,))
    return res.errors[k]["logp"]["relative_error"]


def test_error_shrinks_as_lr_goes_to_zero():
    errs = [_mlp_error(lr, "all") for lr in (0.5, 0.05, 0.005)]
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 1e-2 and errs[0] / errs[2] > 20  # about linear in lr


def test_error_grows_with_k_on_a_nonlinear_model():
    errs = {k: _mlp_error(0.2, k) for k in (1, 2, 5, 10)}
    assert errs[1] < errs[10]
    assert errs[1] <= errs[2] * 1.1 and errs[2] <= errs[5] * 1.1 and errs[5] <= errs[10] * 1.1


@pytest.mark.parametrize("k", [0, -2, 1.5, "weekly", True])
def test_bad_k_is_refused_naming_it(k):
    with pytest.raises(ValueError, match=repr(k).replace(".", r"\.")):
        flow(_linear_params(), LINEAR, _batches(3, seed=0), _linear_probes(), Optimiser("sgd", lr=0.1), ks=(k,))


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="'rmsprop'"):
        Optimiser("rmsprop", lr=0.1)
    with pytest.raises(ValueError, match="lr=0"):
        Optimiser("sgd", lr=0)
    with pytest.raises(ValueError, match="batches is empty"):
        flow(_linear_params(), LINEAR, [], _linear_probes(), Optimiser("sgd", lr=0.1))
    with pytest.raises(ValueError, match="epoch_starts"):
        schedule("epoch", 4, [1, 3])
    with pytest.raises(ValueError, match="probes"):
        measure(_linear_params(), LINEAR, _batches(2, seed=0), {}, Optimiser("sgd", lr=0.1))
    measured = measure(_linear_params(), LINEAR, _batches(2, seed=0), _linear_probes(), Optimiser("sgd", lr=0.1))
    with pytest.raises(ValueError, match="3 batches"):
        predict(measured, LINEAR, _batches(3, seed=0), _linear_probes(), Optimiser("sgd", lr=0.1), k=1)


def test_optimiser_from_config_refuses_what_it_does_not_model():
    from dynamics.clo import CLOConfig

    assert Optimiser.from_config(CLOConfig(lr=0.5)) == Optimiser("sgd", lr=0.5)
    with pytest.raises(ValueError, match="weight_decay=0.01"):
        Optimiser.from_config(CLOConfig(optimizer="adam", weight_decay=0.01))


# ------------------------------------------------------------------------------------------ the scales


@pytest.fixture(scope="module")
def sim_tiny():
    from dynamics.sim.study import SimSize
    from dynamics.study.multistep import sim_setup

    return sim_setup(SimSize.tiny(epochs=3), probes=8)


def test_clo_objectives_are_the_loops_loss(sim_tiny):
    from dynamics.clo import CLOConfig, batch_loss
    from dynamics.sim.study import SimSize, pretrained

    _world, model = pretrained(SimSize.tiny(seeds=1, float64=True))
    cfg = CLOConfig(lr=0.5)
    params = {n: p.detach() for n, p in model.named_parameters()}
    batch = sim_tiny.batches[0]
    want = batch_loss(model, cfg, batch)

    def logits(p, ids):
        return torch.func.functional_call(model, p, (ids, "gen"))

    by_logits = logit_objective(cfg, logits)(params, batch)
    by_logprob = clo_objective(cfg, lambda p, ids, x: torch.log_softmax(logits(p, ids), -1).gather(-1, x[..., 0]))(
        params, batch)
    assert torch.allclose(by_logits, want) and torch.allclose(by_logprob, want)


def test_sim_setup_replays_the_loops_schedule(sim_tiny):
    from dynamics.study.multistep import epoch_starts

    assert sim_tiny.optimiser == Optimiser("sgd", lr=0.5)
    assert sim_tiny.epochs == sorted(sim_tiny.epochs) and set(sim_tiny.epochs) == {1, 2, 3}
    assert epoch_starts(sim_tiny.epochs)[0] == 0
    assert sorted(sim_tiny.probes) == ["gen", "und"] and len(sim_tiny.kinds) == 8


def test_run_multistep_reads_every_k_and_horizon(sim_tiny):
    from dynamics.study.multistep import run_multistep

    out = run_multistep(sim_tiny, ks=(1, 2, "epoch", "all"))
    assert sorted(out["errors"]) == ["1", "2", "all", "epoch"]
    assert set(out["errors"]["1"]) == {"epoch1", "epoch2", "epoch3", "end"}
    assert out["intervals"]["all"] == [out["steps"]] and sum(out["intervals"]["epoch"]) == out["steps"]
    # one linearisation per epoch and one for the run agree on the first epoch
    e, a = out["errors"]["epoch"]["epoch1"]["gen"], out["errors"]["all"]["epoch1"]["gen"]
    assert e["relative_error"] == pytest.approx(a["relative_error"])
    assert len(out["trajectories"]["1"]["und"]) == out["steps"] + 1


def test_toy_setup_trains_the_recipes_adam_on_the_loops_batches():
    from dynamics.study.multistep import run_multistep, toy_setup
    from dynamics.toy.experiments import QUICK  # the tiny preset, threshold 0: every candidate accepted

    setup = toy_setup(QUICK, seed=0, probes=4)
    assert setup.optimiser == Optimiser("adam", lr=1e-4)
    assert setup.epochs == [1] * len(setup.batches) and len(setup.batches) > 1
    out = run_multistep(setup, ks=(1, "all"))
    assert out["errors"]["1"]["end"]["gen"]["relative_error"] < 0.05  # a few tiny Adam steps: near first order
    assert len(out["trajectories"]["measured"]["und"][0]) == 4


def test_figure_draws_a_result(tmp_path):
    from dynamics.figures.multistep import draw_multistep

    ks = ["1", "10", "epoch", "all"]
    cell = {b: {"relative_error": 0.1, "sign_agreement": 0.9} for b in ("gen", "und")}
    table = {k: {"epoch1": cell, "end": cell, "interval": float(i + 1), "segment": {"gen": 0.1, "und": 0.2}}
             for i, k in enumerate(ks)}
    run = {"steps": 2, "optimiser": {"name": "sgd", "lr": 0.5}, "kinds": ["fp", "tn"],
           "trajectories": {"measured": {"gen": [[0, 0], [1, 2], [2, 3]], "und": [[0, 0], [1, 1], [1, 2]]},
                            **{k: {"gen": [[0, 0], [1, 2], [2, 2]], "und": [[0, 0], [1, 1], [2, 2]]} for k in ks}}}
    summary = {"ks": ks, "table": {"sim_logits": table}, "runs": {"sim_logits": [run]}}
    result = {"name": "fig_multistep", "summary": summary, "plot": {"runs": ["sim_logits"]}}
    paths = draw_multistep(result, tmp_path)
    assert [p.suffix for p in paths] == [".png", ".pdf", ".json"] and all(p.exists() for p in paths)
