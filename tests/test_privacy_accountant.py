"""Accountants and calibration (reference/privacy.md §4, §5, §7), without models, Flower or Ray:
reference values, agreement with an independent implementation (dp-accounting), monotonicity,
composition across rounds, state that survives a resume, and σ calibrated to a target ε."""

import json
import math

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant
from flwr.app import ConfigRecord, RecordDict

from fedlr.cli import main
from fedlr.privacy.accountant import StepAccountant, epsilon_of_history, sample_rate
from fedlr.privacy.calibration import CalibrationError, calibrate_noise
from fedlr.privacy.federation_accountant import FederationAccountant, central_epsilon

DELTA = 1e-5


def test_rdp_reproduces_the_reference_value():
    # Opacus's own test value (reference/privacy.md §7), to 1e-9
    assert epsilon_of_history([(1.5, 0.04, 2250)], DELTA, "rdp") == pytest.approx(7.32911117143, rel=1e-9)


def test_prv_reproduces_the_reference_value():
    assert epsilon_of_history([(1.5, 0.04, 2249)], DELTA, "prv") == pytest.approx(6.777395712150674, rel=1e-3)


@pytest.mark.parametrize("sigma, q, steps", [
    (1.5, 0.04, 2250), (4.0, 0.01, 10_000), (1.1, 256 / 60_000, 14_062), (2.0, 0.1, 200), (1.0, 0.25, 16),
])
def test_rdp_agrees_with_dp_accounting_within_one_percent(sigma, q, steps):
    independent = RdpAccountant()
    independent.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    ours = epsilon_of_history([(sigma, q, steps)], DELTA, "rdp")
    assert ours == pytest.approx(independent.get_epsilon(DELTA), rel=1e-2)


def test_orders_near_the_optimum_give_the_full_orders_epsilon():
    """ε is taken over the integer orders and only the fractional ones that could beat the best of
    them (``orders_near_optimum``): the same ε as over all of ``ORDERS``, to the bit, across σ, q,
    steps and δ — including histories of two (σ, q) and cases whose optimum is far from the best
    integer order (σ = 1, q = 0.005, one step, δ = 1e-8)."""
    from fedlr.privacy.accountant import ORDERS

    histories = [[(s, q, t)] for s in (0.5, 0.8, 1.0, 1.5, 3.0) for q in (0.005, 0.05, 0.2, 0.6, 1.0)
                 for t in (1, 30, 3000)]
    histories += [[(1.0, 0.1, 40), (0.7, 0.3, 12)], [(2.0, 0.02, 500), (1.2, 0.5, 3)]]
    for history in histories:
        for delta in (1e-3, 1e-5, 1e-8):
            full = epsilon_of_history(history, delta, "rdp", ORDERS)
            assert epsilon_of_history(history, delta, "rdp") == full, (history, delta)


def test_prv_agrees_with_dp_accounting_pld_within_one_percent():
    pld = PLDAccountant(value_discretization_interval=1e-3)
    pld.compose(dp_accounting.PoissonSampledDpEvent(0.04, dp_accounting.GaussianDpEvent(1.5)), 2249)
    ours = epsilon_of_history([(1.5, 0.04, 2249)], DELTA, "prv")
    assert ours == pytest.approx(pld.get_epsilon(DELTA), rel=1e-2)
    assert ours < epsilon_of_history([(1.5, 0.04, 2249)], DELTA, "rdp")  # PRV is the tighter one


def test_epsilon_grows_with_steps_and_rate_and_falls_with_noise_and_delta():
    eps = lambda s=1.0, q=0.01, t=1000, d=DELTA: epsilon_of_history([(s, q, t)], d)  # noqa: E731
    by_sigma = [eps(s=s) for s in (0.6, 0.8, 1.0, 1.5, 2.0)]
    assert by_sigma == pytest.approx([8.67, 3.70, 2.10, 1.01, 0.69], abs=0.01)  # privacy.md §7 invariant 2
    by_steps = [eps(t=t) for t in (100, 1000, 5000, 10_000)]
    assert by_steps == pytest.approx([1.21, 2.10, 4.59, 6.71], abs=0.01)
    by_rate = [eps(q=q) for q in (0.001, 0.01, 0.05, 0.1)]
    assert all(a < b for a, b in zip(by_rate, by_rate[1:]))
    assert eps(d=1e-3) < eps(d=1e-5) < eps(d=1e-7)


def test_full_batch_is_plain_gaussian_composition():
    # q = 1: RDP α·T/(2σ²) before conversion; σ = 1, T = 100 gives ≈ 96 (privacy.md §5, §7.6)
    assert epsilon_of_history([(1.0, 1.0, 100)], DELTA) == pytest.approx(96.1, abs=0.1)


def test_rounds_of_steps_compose_to_one_entry_and_never_decrease():
    acc = StepAccountant("rdp")
    seen = []
    for _ in range(5):
        acc.step(1.1, 0.05, 8)
        seen.append(acc.epsilon(DELTA))
    assert acc.history == [(1.1, 0.05, 40)]
    assert seen[-1] == epsilon_of_history([(1.1, 0.05, 40)], DELTA)
    assert all(a < b for a, b in zip(seen, seen[1:]))
    mixed = StepAccountant("rdp")
    for _ in range(3):  # alternating rates (e.g. a client whose sampling rate changed) stay separate entries
        mixed.step(1.1, 0.05, 8)
        mixed.step(1.1, 0.02, 8)
    assert len(mixed.history) == 6
    assert mixed.epsilon(DELTA) == pytest.approx(
        epsilon_of_history([(1.1, 0.05, 24), (1.1, 0.02, 24)], DELTA), rel=1e-12)


@pytest.mark.parametrize("kind", ["rdp", "prv"])
def test_accountant_state_survives_a_resume_through_a_flower_record(kind):
    """Resume = the client's persistent state (a ConfigRecord in context.state) re-read by a new
    process: the cumulative ε equals that of an uninterrupted client, bit for bit."""
    uninterrupted = StepAccountant(kind)
    first = StepAccountant(kind)
    for rnd in range(4):
        for acc in (uninterrupted, first):
            acc.step(1.3, 0.08 if rnd % 2 else 0.05, 6)
        if rnd == 1:  # the run is killed here; the state was saved after round 1
            saved = RecordDict({"fedlr.accountant": ConfigRecord(first.state_dict())})
            first = StepAccountant.from_state(dict(saved["fedlr.accountant"]))
    assert first.history == uninterrupted.history
    assert first.epsilon(DELTA) == uninterrupted.epsilon(DELTA)


def test_sigma_zero_is_infinite_epsilon_and_no_steps_is_zero():
    assert math.isinf(epsilon_of_history([(0.0, 0.1, 5)], DELTA))
    assert StepAccountant().epsilon(DELTA) == 0.0


def test_sample_rate_is_batch_over_examples_and_refuses_an_empty_client():
    assert sample_rate(16, 400) == 0.04
    assert sample_rate(16, 10) == 1.0
    with pytest.raises(ValueError, match="no examples"):
        sample_rate(16, 0)


@pytest.mark.parametrize("kind, target", [("rdp", 1.0), ("rdp", 3.0), ("rdp", 8.0), ("prv", 3.0)])
def test_calibration_lands_within_one_percent_below_the_target(kind, target):
    sigma = calibrate_noise(lambda s: epsilon_of_history([(s, 0.01, 1000)], DELTA, kind), target)
    eps = epsilon_of_history([(sigma, 0.01, 1000)], DELTA, kind)
    assert target * 0.99 <= eps <= target
    # Opacus's get_noise_multiplier pins (privacy.md §7): σ_rdp 1.5234 / 0.8655 / 0.6158, σ_prv 0.8154 at ε=3
    expected = {("rdp", 1.0): 1.5234, ("rdp", 3.0): 0.8655, ("rdp", 8.0): 0.6158, ("prv", 3.0): 0.8154}[kind, target]
    assert sigma == pytest.approx(expected, rel=1e-2)


def test_calibration_of_a_closed_form_and_its_errors():
    sigma = calibrate_noise(lambda s: 10 / s**2, 2.5)  # exact answer: 2
    assert sigma == pytest.approx(2.0, rel=1e-3) and 10 / sigma**2 <= 2.5
    with pytest.raises(CalibrationError):
        calibrate_noise(lambda s: 1.0, 0.5)  # no σ reaches it
    with pytest.raises(CalibrationError):
        calibrate_noise(lambda s: 1 / s, -1.0)


def test_client_level_central_accountant_matches_dp_accounting_without_replacement():
    """10 of 100 clients, 50 rounds, δ = 1e-5. fedlr hands the accountant z/2 (replace-one moves
    the clipped sum by 2S), so z = 2 here is the reference's unit-sensitivity σ = 1 → 9.428."""
    ours = central_epsilon(2.0, 100, 10, 50, DELTA)
    independent = RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    independent.compose(dp_accounting.SampledWithoutReplacementDpEvent(
        100, 10, dp_accounting.GaussianDpEvent(1.0)), 50)
    assert ours == pytest.approx(independent.get_epsilon(DELTA), rel=1e-3)
    assert ours == pytest.approx(9.428, abs=1e-3)
    acc = FederationAccountant(2.0, 100, 10)
    values = []
    for _ in range(3):
        acc.compose(1)
        values.append(acc.epsilon(DELTA))
    assert all(a < b for a, b in zip(values, values[1:]))
    assert FederationAccountant.from_state(acc.state_dict()).epsilon(DELTA) == values[-1]
    assert central_epsilon(2.0, 100, 10, 3, DELTA) == values[-1]


@pytest.fixture(autouse=True)
def fallback_not_yet_noted(monkeypatch):
    """The PRV fallback is noted once a process: each test starts as a fresh process would."""
    from fedlr.privacy import accountant

    monkeypatch.setattr(accountant, "_FALLBACKS_NOTED", set())


@pytest.fixture
def no_prv_discretization(monkeypatch):
    """Fails (instead of eating gigabytes) if Opacus's PRV discretization is built."""
    from opacus.accountants import PRVAccountant

    def refuse(*args, **kwargs):
        raise AssertionError("the PRV discretization was built for a history past the bound")

    monkeypatch.setattr(PRVAccountant, "get_epsilon", refuse)


@pytest.mark.parametrize("history, delta", [
    ([(0.5155, 0.409378, 5562)], 1e-3),  # grew past 14.9 GB unguarded (135 M points)
    ([(0.8 / 2, 1.0, 300)], 1e-5),  # client_local at z = 0.8 over 300 rounds: PRV said inf (13.7 M points)
])
def test_prv_falls_back_to_rdp_with_a_warning_where_its_discretization_runs_away(no_prv_discretization, history,
                                                                                delta):
    with pytest.warns(UserWarning, match="PRV accountant .* RDP instead"):
        eps = epsilon_of_history(history, delta, "prv")
    assert math.isfinite(eps)
    assert eps == epsilon_of_history(history, delta, "rdp")


def test_prv_that_gives_no_finite_epsilon_falls_back_to_rdp(monkeypatch):
    from fedlr.privacy import accountant

    monkeypatch.setattr(accountant, "_prv_epsilon", lambda history, delta: math.inf)
    with pytest.warns(UserWarning, match="no finite value"):
        assert epsilon_of_history([(1.0, 0.1, 100)], DELTA, "prv") == epsilon_of_history([(1.0, 0.1, 100)], DELTA)


def test_plan_with_prv_at_small_sigma_over_many_steps_reports_a_finite_bound(tiny_path, no_prv_discretization,
                                                                             capsys):
    """`fedlr plan` exited 1 with MemoryError here: σ 0.5, batch 32, 100 steps × 20 rounds."""
    sets = ['method.name="fedit"', 'privacy.mode="sample"', 'privacy.accountant="prv"', "privacy.noise_multiplier=0.5",
            "train.batch_size=32", "train.local_steps=100", "federation.num_rounds=20"]
    with pytest.warns(UserWarning, match="RDP instead"):
        assert main(["plan", str(tiny_path), "--json", *[a for s in sets for a in ("--set", s)]]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["epsilon"] is not None and 100 < plan["epsilon"] < math.inf


def test_plan_prints_the_prv_fallback_once(tiny_path):
    """`fedlr plan` printed the fallback notice, and Opacus's "optimal order is the smallest alpha"
    (about the fallback's orders, which no user picks) after it, once per client group: 4 times
    each here. Read from the command line's own output, in a fresh process."""
    import subprocess
    import sys

    sets = ['method.name="fedit"', 'privacy.mode="sample"', 'privacy.accountant="prv"', "privacy.noise_multiplier=0.5",
            "train.batch_size=32", "train.local_steps=100", "federation.num_rounds=20"]
    done = subprocess.run([sys.executable, "-m", "fedlr.cli", "plan", str(tiny_path),
                           *[a for s in sets for a in ("--set", s)]], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert output.count("epsilon comes from RDP instead") == 1
    assert "Optimal order" not in output
    assert "privacy (sample): epsilon" in done.stdout  # the plan itself is printed
