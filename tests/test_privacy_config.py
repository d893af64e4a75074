"""Bad privacy input fails before any work with a message naming the field; allowed-but-weak
input (δ ≥ 1/n) warns and says why; `fedlr plan` reports ε, δ, the accountant and σ."""

import json
import logging

import pytest

from fedlr.cli import main
from fedlr.config import ConfigError, experiment_from_dict
from fedlr.plan import communication_plan
from fedlr.privacy.planning import check_privacy, plan_privacy

BASE = {"model": {"name_or_path": "tiny-random-bert"}, "method": {"name": "fedit", "rank": 4},
        "federation": {"num_clients": 4, "clients_per_round": 2, "num_rounds": 3},
        "train": {"local_steps": 5, "batch_size": 8}}
SIZES = [100, 80, 60, 90]


def exp_with(privacy, **sections):
    return experiment_from_dict({**BASE, **sections, "privacy": privacy})


@pytest.mark.parametrize("privacy, fragment", [
    ({"mode": "sample", "target_epsilon": 0.0}, "privacy.target_epsilon: Input should be greater than 0"),
    ({"mode": "sample", "target_epsilon": -1.0}, "privacy.target_epsilon: Input should be greater than 0"),
    ({"mode": "sample", "noise_multiplier": 1.0, "delta": 0.0}, "privacy.delta: Input should be greater than 0"),
    ({"mode": "sample", "noise_multiplier": 1.0, "delta": 1.0}, "privacy.delta: Input should be less than 1"),
    ({"mode": "sample", "noise_multiplier": 1.0, "max_grad_norm": 0.0}, "privacy.max_grad_norm: Input should be greater"),
    ({"mode": "sample", "noise_multiplier": 1.0, "max_grad_norm": -2.0}, "privacy.max_grad_norm: Input should be greater"),
    ({"mode": "sample", "noise_multiplier": 0.0}, "privacy.noise_multiplier: Input should be greater than 0"),
    ({"mode": "sample", "noise_multiplier": 1.0, "target_epsilon": 3.0}, "exactly one of privacy.noise_multiplier and privacy.target_epsilon (both given)"),
    ({"mode": "client_local"}, "exactly one of privacy.noise_multiplier and privacy.target_epsilon (neither given)"),
    ({"mode": "none", "target_epsilon": 3.0}, "privacy.target_epsilon is set but privacy.mode is 'none'"),
    ({"mode": "sample", "noise_multiplier": 1.0, "accountant": "gdp"}, "privacy.accountant: 'gdp' is not allowed"),
    ({"mode": "dp", "noise_multiplier": 1.0}, "privacy.mode: 'dp' is not allowed"),
    ({"mode": "client_central", "noise_multiplier": 1.0, "accountant": "prv"}, "only the RDP accountant"),
    ({"mode": "sample", "noise_multiplier": 1.0, "grad_sample_mode": "ew"}, "privacy.grad_sample_mode: 'ew' is not allowed"),
])
def test_bad_privacy_config_names_the_field(privacy, fragment):
    with pytest.raises(ConfigError) as err:
        exp_with(privacy)
    assert fragment in str(err.value)


def test_fed_sb_federated_init_is_refused_under_dp():
    with pytest.raises(ConfigError, match="method.init: 'federated' sends clients' raw gradients"):
        exp_with({"mode": "sample", "noise_multiplier": 1.0}, method={"name": "fed_sb", "rank": 4})
    exp_with({"mode": "sample", "noise_multiplier": 1.0}, method={"name": "fed_sb", "rank": 4, "init": "random"})


def test_infinite_target_epsilon_turns_dp_off():
    exp = exp_with({"mode": "sample", "target_epsilon": float("inf")})
    assert not exp.privacy.enabled and plan_privacy(exp, SIZES) is None
    assert communication_plan(exp, 2, SIZES)["epsilon"] is None


def test_delta_above_one_over_the_smallest_client_warns_and_says_why(caplog):
    exp = exp_with({"mode": "sample", "noise_multiplier": 1.0, "delta": 0.05})
    with caplog.at_level(logging.WARNING, logger="fedlr"):
        plan = check_privacy(exp, [100, 40, 60, 90])
    assert any("privacy.delta = 0.05 is larger than 1/n = 1/40" in w and "smallest client" in w for w in plan.warnings)
    assert "1/40" in caplog.text
    assert not check_privacy(exp_with({"mode": "sample", "noise_multiplier": 1.0, "delta": 1e-5}), SIZES).warnings
    client = check_privacy(exp_with({"mode": "client_central", "noise_multiplier": 1.0, "delta": 0.3}), SIZES)
    assert any("1/N = 1/4" in w for w in client.warnings)


def test_empty_client_is_warned_about_and_excluded_from_calibration():
    plan = plan_privacy(exp_with({"mode": "sample", "noise_multiplier": 1.0}), [100, 0, 60, 90])
    assert plan.sample_rates[1] == 0.0 and plan.smallest_client == 60
    assert any("partitions [1] have no training examples" in w for w in plan.warnings)


def test_plan_reports_epsilon_delta_accountant_and_calibrated_sigma():
    exp = exp_with({"mode": "sample", "target_epsilon": 3.0})
    plan = communication_plan(exp, 2, SIZES)
    assert plan["epsilon"] == pytest.approx(3.0, rel=1e-2) and plan["epsilon"] <= 3.0
    assert plan["delta"] == 1e-5 and plan["accountant"] == "rdp" and plan["noise_calibrated"]
    # the worst case: the smallest client (q = 8/60) in all 3 rounds × 5 steps
    from fedlr.privacy.accountant import epsilon_of_history
    assert epsilon_of_history([(plan["noise_multiplier"], 8 / 60, 15)], 1e-5) == pytest.approx(plan["epsilon"])
    assert plan["epsilon_seeded_schedule"] <= plan["epsilon"]
    fixed = communication_plan(exp_with({"mode": "sample", "noise_multiplier": plan["noise_multiplier"]}), 2, SIZES)
    assert fixed["epsilon"] == pytest.approx(plan["epsilon"], rel=1e-9) and not fixed["noise_calibrated"]
    assert communication_plan(exp_with({"mode": "none"}), 2, SIZES)["epsilon"] is None


def test_cli_plan_json_has_privacy_and_a_bad_privacy_run_exits_2(tiny_path, tmp_path, capsys):
    assert main(["plan", str(tiny_path), "--json", "--set", "method.name=ffa_lora", "--set", "privacy.mode=sample",
                 "--set", "privacy.target_epsilon=2.0"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["epsilon"] <= 2.0 and plan["delta"] == 1e-5 and plan["accountant"] == "rdp"
    assert plan["noise_multiplier"] > 0 and plan["adjacency"].startswith("add/remove one")
    out = tmp_path / "runs"
    code = main(["run", str(tiny_path), "--set", f'output.dir="{out}"', "--set", "privacy.mode=sample",
                 "--set", "privacy.noise_multiplier=1.0", "--set", "privacy.target_epsilon=1.0"])
    assert code == 2 and "both given" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("method", ["fedex_lora", "flora"])
@pytest.mark.parametrize("mode", ["client_central", "client_local"])
def test_exact_methods_that_need_each_clients_factors_are_refused_under_client_level_dp(
        tiny_path, tmp_path, capsys, method, mode):
    """Client-level DP hands the method one averaged update: FedEx-LoRA's residual would be zero
    (FedIT under FedEx's name) and FLoRA would merge a product of means (issue 20, item 6)."""
    out = tmp_path / "runs"
    code = main(["run", str(tiny_path), "--set", f'output.dir="{out}"', "--set", f"method.name={method}",
                 "--set", f"privacy.mode={mode}", "--set", "privacy.noise_multiplier=1.0"])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert f"{method} aggregates exactly only from each client's own update" in err and repr(mode) in err
    assert main(["plan", str(tiny_path), "--json", "--set", f"method.name={method}", "--set",
                 f"privacy.mode={mode}", "--set", "privacy.noise_multiplier=1.0"]) == 2


@pytest.mark.parametrize("method, mode, exact", [
    ("fedex_lora", "sample", True),  # DP-SGD inside each client: the server still sees each client's factors
    ("flora", "none", True),
    ("ffa_lora", "client_central", True),  # linear in the updates: one mean update loses nothing
    ("fed_svd", "client_local", True),
    ("fedit", "client_central", False),
])
def test_plan_reports_exactness_under_the_privacy_mode(method, mode, exact):
    privacy = {"mode": mode} if mode == "none" else {"mode": mode, "noise_multiplier": 1.0}
    exp = exp_with(privacy, method={"name": method, "rank": 4})
    assert communication_plan(exp, 2, SIZES)["exact_aggregation"] is exact
