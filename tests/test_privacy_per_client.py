"""``privacy.calibration = 'per_client'`` (issue 18.1): each client's σ_k from its own q_k and the
rounds R_k the seeded schedule gives it, so every client ends at most at the target and within
1 % of it — checked on random schedules against ε recomputed from the accountant's own history —
the client trains and accounts with its σ_k and refuses a round past R_k, the run's ledger and
summary carry every client's σ_k and ε_k, and the default (worst case) is unchanged."""

import json
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT, TINY
from fedlr.config import ConfigError, experiment_from_dict, load_experiment
from fedlr.plan import communication_plan, format_plan, privacy_entries
from fedlr.privacy.accountant import epsilon_of_history
from fedlr.privacy.calibration import SIGMA_MIN
from fedlr.privacy.planning import client_train_sizes, plan_privacy, seeded_schedule

sys.path.insert(0, str(ROOT / "benchmarks"))
from common import InProcessGrid  # noqa: E402

DELTA = 1e-5


def experiment(mode, target, calibration, *, seed=0, num_clients=4, clients_per_round=2, rounds=3, batch=8, steps=2,
               accountant="rdp"):
    return experiment_from_dict({
        "seed": seed, "method": {"name": "fedit"},
        "federation": {"num_clients": num_clients, "clients_per_round": clients_per_round, "num_rounds": rounds},
        "train": {"batch_size": batch, "local_steps": steps},
        "privacy": {"mode": mode, "target_epsilon": target, "calibration": calibration, "delta": DELTA,
                    "accountant": accountant}})


def own_history(exp, n, sigma, rounds):
    """The history the client's accountant will hold after its rounds (clients/app.py, modes.client_step)."""
    if exp.privacy.mode == "sample":
        return [(sigma, min(1.0, exp.train.batch_size / n), rounds * exp.train.local_steps)]
    return [(sigma / 2, 1.0, rounds)]  # client_local: a Gaussian of sensitivity 2S per round


@st.composite
def schedules(draw):
    num_clients = draw(st.integers(1, 6))
    return dict(
        mode=draw(st.sampled_from(["sample", "client_local"])),
        target=draw(st.sampled_from([0.5, 1.0, 3.0, 8.0])),
        seed=draw(st.integers(0, 10_000)), num_clients=num_clients,
        clients_per_round=draw(st.integers(1, num_clients)), rounds=draw(st.integers(1, 6)),
        batch=draw(st.integers(1, 64)), steps=draw(st.integers(1, 5)),
        sizes=draw(st.lists(st.integers(0, 400), min_size=num_clients, max_size=num_clients).filter(any)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedules())
def test_every_client_ends_within_one_percent_under_the_target(case):
    sizes = case.pop("sizes")
    mode, target = case.pop("mode"), case.pop("target")
    exp = experiment(mode, target, "per_client", **case)
    plan = plan_privacy(exp, sizes)
    rounds = seeded_schedule(exp)
    assert plan.client_rounds == rounds
    for pid, (n, r) in enumerate(zip(sizes, rounds)):
        sigma = plan.client_noise_multipliers[pid]
        if n == 0 or r == 0:
            assert sigma is None and plan.client_epsilon_planned[pid] == 0.0
            continue
        eps = epsilon_of_history(own_history(exp, n, sigma, r), DELTA, "rdp")
        assert eps == pytest.approx(plan.client_epsilon_planned[pid], rel=1e-12)
        assert eps <= target
        if sigma > SIGMA_MIN:  # the target is reachable (else even the smallest noise spends less)
            assert eps >= 0.99 * target, (pid, n, r, sigma)
    assert plan.epsilon == plan.epsilon_seeded_schedule == max(plan.client_epsilon_planned)
    own = [s for s in plan.client_noise_multipliers if s is not None]
    if own:  # else no client with data is ever sampled, and the plan's σ is the worst case's
        assert plan.noise_multiplier == max(own)


def test_prv_per_client_too():
    exp = experiment("sample", 3.0, "per_client", accountant="prv", rounds=4)
    sizes = [40, 100, 250, 60]
    plan = plan_privacy(exp, sizes)
    for n, sigma, r in zip(sizes, plan.client_noise_multipliers, plan.client_rounds):
        if r:
            assert 0.99 * 3.0 <= epsilon_of_history(own_history(exp, n, sigma, r), DELTA, "prv") <= 3.0


def test_per_client_spends_what_the_worst_case_leaves_unspent():
    """The smallest client in every round sets the worst case's σ; clients with more data or fewer
    rounds end far under the target there, and at it with their own σ_k (less noise)."""
    sizes = [30, 100, 250, 60]
    worst = plan_privacy(experiment("sample", 3.0, "worst_case", rounds=4), sizes)
    own = plan_privacy(experiment("sample", 3.0, "per_client", rounds=4), sizes)
    assert worst.client_noise_multipliers is None and worst.calibration == "worst_case"
    assert epsilon_of_history([(worst.noise_multiplier, 8 / 30, 4 * 2)], DELTA) == pytest.approx(3.0, rel=1e-3)
    for pid, (sigma, r) in enumerate(zip(own.client_noise_multipliers, own.client_rounds)):
        if r:
            assert sigma < worst.noise_multiplier
            assert own.client_noise(pid) == sigma and worst.client_noise(pid) == worst.noise_multiplier


def test_worst_case_plan_is_unchanged_and_refuses_no_round():
    exp = experiment("sample", 3.0, "worst_case")
    plan = plan_privacy(exp, [30, 100, 250, 60])
    assert plan.round_refusal(0, 10_000) is None
    entries = privacy_entries(exp, [30, 100, 250, 60])
    assert not {"calibration", "client_noise_multipliers", "client_epsilon_planned"} & set(entries)
    per_client = privacy_entries(experiment("sample", 3.0, "per_client"), [30, 100, 250, 60])
    assert per_client["client_rounds"] == seeded_schedule(exp) and len(per_client["client_noise_multipliers"]) == 4


@pytest.mark.parametrize("privacy, needle", [
    ({"mode": "client_central", "target_epsilon": 3.0}, "cannot apply to privacy.mode 'client_central'"),
    ({"mode": "sample", "noise_multiplier": 1.0}, "set privacy.target_epsilon instead"),
    ({"mode": "none"}, "privacy.calibration is set but privacy.mode is 'none'"),
    ({"mode": "sample", "target_epsilon": 3.0, "calibration": "per_round"}, "privacy.calibration"),
])
def test_per_client_calibration_refused_where_it_cannot_apply(privacy, needle):
    with pytest.raises(ConfigError, match=needle):
        experiment_from_dict({"privacy": {"calibration": "per_client", **privacy}})


OVERRIDES = ["method.init=random", "evaluation.client_side=false", "federation.num_rounds=3", "train.local_steps=2",
             "privacy.target_epsilon=2.0", "privacy.calibration=\"per_client\""]


@pytest.mark.parametrize("mode", ["sample", "client_local"])
def test_a_client_trains_and_accounts_with_its_own_sigma_and_stops_after_its_rounds(mode):
    from fedlr.privacy.accountant import StepAccountant
    from fedlr.workbench import get_workbench

    exp = load_experiment(TINY, [*OVERRIDES, f"privacy.mode=\"{mode}\""])
    bench = get_workbench(exp)
    plan = bench.privacy
    pid = max(range(4), key=lambda k: plan.client_rounds[k])
    sigma = plan.client_noise_multipliers[pid]
    acc = StepAccountant(plan.accountant)
    for t in range(1, plan.client_rounds[pid] + 1):
        _, metrics = bench.client_round(pid, t, bench.adapted.round_state(), {}, acc)
    want = own_history(exp, len(bench.data.client_rows(pid)[0]), sigma, plan.client_rounds[pid])
    assert acc.history == [(pytest.approx(want[0][0], rel=1e-15), want[0][1], want[0][2])]
    assert 0.99 * 2.0 <= metrics["epsilon"] <= 2.0
    with pytest.raises(ValueError, match="another round would spend more than privacy.target_epsilon"):
        bench.client_round(pid, 9, bench.adapted.round_state(), {}, acc)


def test_a_per_client_run_ledger_and_summary_give_each_clients_sigma_and_epsilon(tmp_path):
    from fedlr.clients.app import app
    from fedlr.results import RunDir
    from fedlr.results.console import Console
    from fedlr.results.rundir import read_ledger
    from fedlr.run.server import run_server

    torch.set_num_threads(1)
    exp = load_experiment(TINY, [*OVERRIDES, "privacy.mode=\"sample\"", f"output.dir=\"{tmp_path}\"",
                                 "output.export_peft=false"])
    run_dir = RunDir.create(exp, "per_client")
    summary = run_server(InProcessGrid(app, exp.federation.num_clients), exp, run_dir, Console(quiet=True))
    plan = plan_privacy(exp, client_train_sizes(exp))
    rows = read_ledger(run_dir.ledger_path)
    final = rows[-1].client_epsilon
    for pid, (r, eps) in enumerate(zip(plan.client_rounds, plan.client_epsilon_planned)):
        if r:
            assert final[str(pid)] == pytest.approx(eps, rel=1e-9) and 0.99 * 2.0 <= final[str(pid)] <= 2.0
    assert summary["client_noise_multipliers"] == plan.client_noise_multipliers
    assert summary["client_epsilon_planned"] == plan.client_epsilon_planned
    assert summary["calibration"] == "per_client"
    assert summary["epsilon"] == pytest.approx(max(plan.client_epsilon_planned))
    on_disk = json.loads((run_dir.path / "summary.json").read_text())
    assert on_disk["client_rounds"] == plan.client_rounds
    text = format_plan(communication_plan(exp, 2, client_train_sizes(exp)))
    assert "per-client calibration" in text
    for pid, (sigma, r) in enumerate(zip(plan.client_noise_multipliers, plan.client_rounds)):
        assert (f"client {pid}: {sigma:.4g}, {r}," if r else f"client {pid}: no rounds") in text
