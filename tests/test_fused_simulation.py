"""``federation.fused_clients``: a simulation that trains each message's group of sampled clients
in one pass over the frozen base gives the run that trains them one by one — the same ledger bytes
(what each client would receive and send on its own), the same updates within float tolerance —
and the settings it cannot honour are refused before anything starts.

Dropout is switched off in the equivalence runs: it is the one thing a fused call draws
differently (one mask stream per group; ``fedlr.fused``)."""

import sys

import pytest
import torch
from torch import nn

from conftest import ROOT, TINY

sys.path.insert(0, str(ROOT / "benchmarks"))

from common import InProcessGrid  # noqa: E402

from fedlr import checkpoint  # noqa: E402
from fedlr.config import ConfigError, load_experiment  # noqa: E402
from fedlr.deploy.eligibility import deployment_refusal  # noqa: E402
from fedlr.deploy.submission import submit  # noqa: E402
from fedlr.errors import DeployError  # noqa: E402
from fedlr.results import RunDir  # noqa: E402
from fedlr.results.console import Console  # noqa: E402
from fedlr.results.ledger import read_ledger  # noqa: E402
from fedlr.workbench import get_workbench  # noqa: E402

BYTES = ("uplink_bytes", "downlink_bytes")


def tiny(tmp_path, *overrides):
    return load_experiment(TINY, [f'output.dir="{tmp_path}"', "output.export_peft=false",
                                  "federation.clients_per_round=4", "federation.num_rounds=3",
                                  "evaluation.client_side=true", *overrides])


def run_without_dropout(exp, name):
    """fedlr's real ServerApp body and ClientApp in this process (``benchmarks/common.py``); returns
    the ledger, the final global state and how many messages the clients handled."""
    from fedlr.clients.app import app
    from fedlr.run.server import run_server

    for module in get_workbench(exp).adapted.model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    grid = InProcessGrid(app, exp.federation.num_clients)
    run_dir = RunDir.create(exp, name)
    run_server(grid, exp, run_dir, Console(quiet=True))
    _, saved = checkpoint.latest(run_dir.checkpoint_dir)
    return read_ledger(run_dir.ledger_path), saved["state"], grid.messages_handled


@pytest.mark.parametrize("method, extra", [
    ("fed_sb", []),  # the federated init round, then B and A sent once with the first fused message
    ("fedit", ["data.partitioner=\"iid\"", "data.max_train_examples=30",  # 7-8 rows per client: two batch sizes
               "privacy.mode=\"client_central\"", "privacy.noise_multiplier=0.5", "privacy.max_grad_norm=0.5"]),
    ("flora", []),  # fresh adapters drawn by each client (client_central refuses FLoRA: one mean is inexact)
])
def test_fused_run_equals_the_one_by_one_run(tmp_path, method, extra, one_torch_thread):
    common = [f'method.name="{method}"', *extra]
    if method != "fed_sb":
        common.append("train.batch_size=8")
    alone, alone_state, alone_msgs = run_without_dropout(tiny(tmp_path, *common), "alone")
    fused, fused_state, fused_msgs = run_without_dropout(tiny(tmp_path, *common, "federation.fused_clients=3"),
                                                         "fused")
    assert len(fused) == len(alone) == 4  # round 0 and three rounds
    for a, f in zip(alone, fused):
        assert {k: getattr(f, k) for k in BYTES} == {k: getattr(a, k) for k in BYTES}
        assert f.clients_sampled == a.clients_sampled
        assert (f.clients_replied, f.clients_rejected, f.aggregated) == \
            (a.clients_replied, a.clients_rejected, a.aggregated)
        for key in ("train_loss", "eval_loss", "client_val_accuracy"):
            fv, av = getattr(f, key), getattr(a, key)
            assert (fv is None) == (av is None)
            if av is not None:
                assert fv == pytest.approx(av, rel=1e-4, abs=1e-6), key
    assert fused[-1].clients_replied == 4
    for key, value in alone_state.items():
        torch.testing.assert_close(fused_state[key], value, rtol=1e-4, atol=1e-6)
    # 3 training rounds of 4 clients: 12 train messages one by one, 3 × (3 + 1) fused
    assert alone_msgs - fused_msgs == 3 * (4 - 2)


@pytest.mark.parametrize("override, names", [
    ('method.name="full_ft"', "frozen base"),
    ('privacy.mode="sample", privacy.noise_multiplier=1.0', "accountant"),
    ('compression.codec="fp16"', "error-feedback"),
    ("faults.fraction=0.5", "[faults]"),
])
def test_settings_a_fused_call_cannot_honour_are_refused(tmp_path, override, names):
    with pytest.raises(ConfigError, match="fused_clients") as err:
        tiny(tmp_path, "federation.fused_clients=2", *override.split(", "))
    assert names in str(err.value)


def test_heterogeneous_ranks_are_refused_with_fused_clients(tmp_path):
    with pytest.raises(ConfigError, match="different shapes"):
        tiny(tmp_path, 'method.name="flora"', "method.client_ranks=[2, 4]", "federation.fused_clients=2")


def test_deployment_refuses_fused_clients_before_contacting_anything(tmp_path):
    exp = tiny(tmp_path, 'method.name="fedit"', "federation.fused_clients=2")
    assert "simulation setting" in deployment_refusal(exp)
    with pytest.raises(DeployError, match="fused_clients"):
        submit(exp, connection=None)
    assert deployment_refusal(tiny(tmp_path, 'method.name="fedit"')) is None
