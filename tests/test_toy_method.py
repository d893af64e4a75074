"""A method is one module: a toy method defined and registered here — in no other file — is
validated by the config through its spec, planned, accounted, and run end to end by the server,
the ClientApp and the workbench (in process: ``benchmarks/common.InProcessGrid``; Ray workers would
import fedlr afresh and not see a method registered only in this test process)."""

import ast
import sys

import pytest
import torch

from conftest import ROOT, TINY

sys.path.insert(0, str(ROOT / "benchmarks"))

from common import InProcessGrid  # noqa: E402

from fedlr import checkpoint  # noqa: E402
from fedlr.adapters.naming import B_KEY, LORA_B  # noqa: E402
from fedlr.config import ConfigError, load_experiment  # noqa: E402
from fedlr.methods import MethodSpec, base, method_names, register  # noqa: E402
from fedlr.methods.averaging import normalized_weights  # noqa: E402
from fedlr.plan import communication_plan  # noqa: E402
from fedlr.privacy.modes import MODES  # noqa: E402
from fedlr.privacy.planning import client_train_sizes, plan_privacy  # noqa: E402
from fedlr.results import RunDir  # noqa: E402
from fedlr.results.console import Console  # noqa: E402
from fedlr.results.ledger import read_ledger  # noqa: E402

TOY = "toy_half_step"
CALLS = []  # (state, updates, weights, result) of every aggregation the server ran


def half_step(state, updates, weights):
    """θ' = θ + ½ Σ_k p_k Δ_k: FFA-style B averaging with a server step size of ½."""
    p = normalized_weights(weights)
    new = {k: v + 0.5 * sum(pk * u[k] for pk, u in zip(p, updates)) for k, v in state.items()}
    CALLS.append((dict(state), list(updates), list(weights), new))
    return new


SPEC = MethodSpec(
    name=TOY, adapter="lora", trains=(LORA_B,), broadcast_once=(), exact=True, aggregate=half_step,
    citation="this test", exact_on_combined_update=False, client_ranks_refused="toy clients share one shape",
    downlink_refused="toy broadcasts are never compressed", privacy_mechanisms={"sample": "toy: B under DP-SGD"},
)


@pytest.fixture
def toy(monkeypatch):
    """The toy registered for one test (the registry restored after it)."""
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    register(SPEC)
    CALLS.clear()
    return SPEC


def tiny(tmp_path, *overrides):
    return load_experiment(TINY, [f'output.dir="{tmp_path}"', f'method.name="{TOY}"', "output.export_peft=false",
                                  *overrides])


def test_the_config_knows_the_toy_only_once_registered_and_asks_its_spec(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=f"method.name: '{TOY}' is not allowed"):
        tiny(tmp_path)
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    register(SPEC)
    assert TOY in method_names() and tiny(tmp_path).method.name == TOY
    with pytest.raises(ConfigError, match="toy clients share one shape"):
        tiny(tmp_path, "method.client_ranks=[2, 4]")
    with pytest.raises(ConfigError, match="toy broadcasts are never compressed"):
        tiny(tmp_path, 'compression.codec="fp16"', "compression.downlink=true")
    with pytest.raises(ConfigError, match=f"{TOY} aggregates exactly only from each client's own update"):
        tiny(tmp_path, 'privacy.mode="client_local"', "privacy.noise_multiplier=1.0")
    with pytest.raises(ValueError, match="registered twice"):
        register(MethodSpec(name=TOY, adapter=None, trains=("*",), broadcast_once=(), exact=True,
                            aggregate=half_step, citation=""))


def test_the_privacy_plan_carries_the_toys_mechanism(tmp_path, toy):
    exp = tiny(tmp_path, 'privacy.mode="sample"', "privacy.noise_multiplier=1.0")
    plan = plan_privacy(exp, client_train_sizes(exp))
    assert plan.mechanisms == [MODES["sample"].mechanism, "toy: B under DP-SGD"]


def test_the_toy_runs_end_to_end_as_its_spec_says(tmp_path, toy, one_torch_thread):
    from fedlr.clients.app import app
    from fedlr.run.server import run_server
    from fedlr.workbench import get_workbench

    exp = tiny(tmp_path)
    bench = get_workbench(exp)
    plan = communication_plan(exp, bench.data.num_labels)
    b_keys = [k for k in bench.adapted.trained_keys if k.endswith(B_KEY)]
    assert b_keys and plan["uplink_params_per_client"] == sum(bench.adapted.parameters_by_name()[k].numel()
                                                              for k in b_keys)
    assert plan["exact_aggregation"] is True and plan["method"] == TOY

    run_dir = RunDir.create(exp, "toy")
    summary = run_server(InProcessGrid(app, exp.federation.num_clients), exp, run_dir, Console(quiet=True))
    rows = read_ledger(run_dir.ledger_path)
    assert [r.round for r in rows] == [0, 1, 2]
    assert all(r.aggregated for r in rows[1:])
    assert [r.uplink_bytes for r in rows[1:]] == plan["uplink_bytes_by_round"]
    assert summary["method"] == TOY and summary["total_bytes"] == plan["total_bytes"]

    # the server aggregated with the toy's function, each client's update holding exactly what it trains
    assert len(CALLS) == exp.federation.num_rounds
    for state, updates, weights, _ in CALLS:
        assert len(updates) == exp.federation.clients_per_round and all(w > 0 for w in weights)
        assert all(set(u) == set(bench.adapted.trained_keys) == set(state) for u in updates)
        assert any(not torch.equal(u[k], torch.zeros_like(u[k])) for u in updates for k in b_keys)
    _, saved = checkpoint.latest(run_dir.checkpoint_dir)
    for k, v in CALLS[-1][3].items():
        torch.testing.assert_close(saved["state"][k], v, rtol=0, atol=0)


# ----------------------------------------------------------------------------- acceptance (issue 16)
METHOD_NAMES_NOW = ("fed_sb", "fedex_lora", "fedit", "ffa_lora", "fed_svd", "dp_lora", "fedpara", "flora", "full_ft")
MODE_NAMES = tuple(MODES)


def _package_files():
    for folder in ("fedlr", "strategies", "clients"):
        yield from (ROOT / folder).rglob("*.py")


def test_no_file_outside_the_methods_names_a_method():
    """No string constant equal to a method name outside ``fedlr/methods`` (docstrings apart)."""
    found = []
    for path in _package_files():
        if path.is_relative_to(ROOT / "fedlr" / "methods"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in METHOD_NAMES_NOW:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert set(method_names()) >= set(METHOD_NAMES_NOW)
    assert found == []


def test_no_file_outside_privacy_compares_a_privacy_mode_name():
    """No comparison (==, !=, in, not in) against a privacy mode's name outside ``fedlr/privacy``
    ("none" counts where the comparison is about a mode: other settings have a "none" too)."""
    found = []
    for path in _package_files():
        if path.is_relative_to(ROOT / "fedlr" / "privacy"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                consts = {c.value for c in ast.walk(node) if isinstance(c, ast.Constant)}
                if consts & (set(MODE_NAMES) - {"none"}) or ("none" in consts and "mode" in ast.unparse(node)):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
    assert found == []
