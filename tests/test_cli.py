"""`fedlr run` with a bad config exits with code 2, says what is wrong, and writes nothing."""

import json

import pytest

from fedlr.cli import main


@pytest.mark.parametrize(
    "override, message",
    [
        ("method.name=fedavg", "method.name: 'fedavg' is not allowed"),
        ("method.rank=0", "method.rank: Input should be greater than 0"),
        ("federation.clients_per_round=9", "clients_per_round (9) must be <= num_clients (4)"),
        ('data.dataset="/nonexistent/reviews.csv"', "data.dataset: file not found"),
        ('model.targets=["query","attn"]', "model.targets: ['attn'] match no linear layer"),
        ("federation.num_clint=3", "federation.num_clint: unknown key"),
        ("train.lr=inf", "train.lr: Input should be a finite number"),
        ("method.rnak=3", "method.rnak: unknown key (did you mean method.rank?)"),
        ("method.init_step_size=nan", "method.init_step_size: Input should be a finite number"),
    ],
)
def test_bad_config_exits_2_and_writes_nothing(tmp_path, tiny_path, capsys, override, message):
    out = tmp_path / "runs"
    code = main(["run", str(tiny_path), "--set", f'output.dir="{out}"', "--set", override])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_model_validators_refusal_is_one_line_without_the_config(tiny_path, capsys):
    """Fed-SB's federated init under DP is refused by a model validator, whose input is the whole config."""
    assert main(["plan", str(tiny_path), "--set", 'privacy.mode="sample"', "--set", "privacy.noise_multiplier=1.0"]) == 2
    err = capsys.readouterr().err
    assert "method.init: 'federated' sends clients' raw gradients" in err
    assert "{" not in err and "(top level)" not in err and len(err.strip().splitlines()) == 2


def test_plan_json_has_the_documented_keys(tiny_path, capsys):
    assert main(["plan", str(tiny_path), "--json", "--set", "method.name=fedit"]) == 0
    plan = json.loads(capsys.readouterr().out)
    for key in ("method", "rank", "num_rounds", "clients_per_round", "uplink_params_per_client", "head_params",
                "downlink_params", "uplink_bytes_per_client", "downlink_bytes", "total_bytes"):
        assert key in plan
    assert plan["method"] == "fedit" and plan["rank"] == 4


def test_plan_with_a_bad_config_exits_2(tiny_path, capsys):
    assert main(["plan", str(tiny_path), "--set", "method.rank=-1"]) == 2
    assert "method.rank" in capsys.readouterr().err
