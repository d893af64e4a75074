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


def test_version_names_fedlr_and_flower(capsys):
    import tomllib
    from importlib.metadata import version
    from pathlib import Path

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert capsys.readouterr().out.strip() == f"fedlr {pyproject['project']['version']} (Flower {version('flwr')})"


def test_top_level_help_lists_every_command_and_the_exit_codes(capsys):
    import argparse

    from fedlr.cli import _parser

    parser = _parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert set(sub.choices) == {"run", "plan", "sweep", "report", "deploy"}
    for choice in sub._choices_actions:  # each command on its own line with its one-line help
        assert f"    {choice.dest}" in out and choice.help.split()[0] in out, choice.dest
    for code in ("2 bad config or input", "3 a deployment failed while running"):
        assert code in " ".join(out.split()), out


def test_errors_share_one_base_with_their_exit_codes():
    from fedlr.errors import ConfigError, DeployError, DeploymentFailed, FedlrError
    from fedlr.results.report import ReportError
    from fedlr.results.tensorboard import TensorBoardUnavailable

    for error, code in ((ConfigError, 2), (DeployError, 2), (ReportError, 2), (TensorBoardUnavailable, 2),
                        (DeploymentFailed, 3)):
        assert issubclass(error, FedlrError) and error("x").exit_code == code, error
    assert not issubclass(DeploymentFailed, ConfigError)  # a failure while running is not bad config


def test_a_fedlr_error_is_one_line_with_its_own_exit_code(tmp_path, capsys):
    """One handler in ``fedlr.cli.main`` for every FedlrError: a report of a folder with no runs
    (ReportError, formerly re-raised as ConfigError by hand) exits 2 with one line."""
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedlr: error: ") and "no run directories" in err and err.count("\n") == 1, err
