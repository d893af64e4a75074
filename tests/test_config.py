import pytest

from fedlr.config import (ConfigError, Experiment, experiment_from_dict, load_experiment, parse_override,
                          to_toml)


def test_defaults_are_valid_and_name_the_required_fields():
    exp = Experiment()
    assert exp.model.targets == ["query", "value"]
    assert exp.method.name == "fed_sb"
    assert exp.method.scale == 1.0  # alpha defaults to rank


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"model": {"nme_or_path": "x"}}, "model.nme_or_path: unknown key"),
        ({"method": {"name": "fedavg"}}, "method.name: 'fedavg' is not allowed"),
        ({"method": {"rank": 0}}, "method.rank"),
        ({"federation": {"num_clients": 3, "clients_per_round": 5}}, "clients_per_round (5) must be <= num_clients (3)"),
        ({"federation": {"num_gpus": 1.5}}, "federation.num_gpus"),
        ({"bogus": 1}, "bogus: unknown key"),
        ({"data": {"partitioner": "random"}}, "'natural', 'iid' or 'dirichlet'"),
    ],
)
def test_bad_values_name_the_field(data, fragment):
    with pytest.raises(ConfigError) as err:
        experiment_from_dict(data)
    assert fragment in str(err.value)


@pytest.mark.parametrize(
    "text, key, value",
    [
        ('model.targets=["query","value","key"]', "model.targets", ["query", "value", "key"]),
        ("method.name=fedit", "method.name", "fedit"),
        ('method.name="ffa_lora"', "method.name", "ffa_lora"),
        ("federation.num_rounds=7", "federation.num_rounds", 7),
        ("train.lr=1e-4", "train.lr", 1e-4),
        ("evaluation.central=false", "evaluation.central", False),
        ("seed=3", "seed", 3),
    ],
)
def test_override_values_parse_as_toml(text, key, value):
    assert parse_override(text) == (key, value)


def test_overrides_apply_on_top_of_the_file(tiny_path):
    exp = load_experiment(tiny_path, ["method.name=fedit", "method.rank=2", 'model.targets=["query"]', "seed=5"])
    assert (exp.method.name, exp.method.rank, exp.model.targets, exp.seed) == ("fedit", 2, ["query"], 5)


def test_override_of_unknown_field_fails():
    with pytest.raises(ConfigError, match="federation.num_client: unknown key"):
        load_experiment(None, ["federation.num_client=3"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_experiment(None, ["federation.num_clients"])


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_experiment(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nname=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_experiment(bad)


def test_resolved_config_round_trips_through_toml(tmp_path, tiny_path):
    exp = load_experiment(tiny_path, ["method.alpha=8.0"])
    path = tmp_path / "resolved.toml"
    path.write_text(to_toml(exp))
    assert load_experiment(path) == exp


def test_a_sweep_file_given_to_run_or_plan_points_at_fedlr_sweep(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[method]\nname = "fedit"\n\n[sweep]\n"method.rank" = [4, 8]\n')
    with pytest.raises(ConfigError, match="fedlr sweep"):
        load_experiment(path)
