"""Dotted config paths (the one flattener and setter of ``--set``, ``[sweep]`` and the report) and
None through TOML: every field that may be unset round-trips through ``config.toml``."""

from __future__ import annotations

import tomllib
import typing

import pytest
from pydantic import BaseModel

from fedlr.config import ConfigError, Experiment, experiment_from_dict, load_experiment, to_toml
from fedlr.config_paths import flatten, set_dotted
from fedlr.sweep import config_differences


def test_flatten_and_set_dotted_are_inverse():
    nested = {"seed": 1, "method": {"name": "fedit", "rank": 4}, "model": {"targets": ["query"]},
              "data": {"partition_by": None}}
    flat = flatten(nested)
    assert flat == {"seed": 1, "method.name": "fedit", "method.rank": 4, "model.targets": ["query"],
                    "data.partition_by": None}
    rebuilt: dict = {}
    for key, value in flat.items():
        set_dotted(rebuilt, key, value)
    assert rebuilt == nested
    assert rebuilt["model"]["targets"] is not nested["model"]["targets"]  # copied: points do not share lists
    with pytest.raises(ValueError, match="'seed' is not a section"):
        set_dotted(rebuilt, "seed.x", 1)


def nullable_fields(model: type[BaseModel] = Experiment, prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out += nullable_fields(field.annotation, f"{prefix}{name}.")
        elif type(None) in typing.get_args(field.annotation):
            out.append(prefix + name)
    return out


def test_every_field_set_to_none_round_trips_with_its_fingerprint():
    fields = nullable_fields()
    assert {"data.max_test_examples", "train.max_grad_norm", "method.alpha"} <= set(fields)
    data: dict = {}
    for key in fields:
        set_dotted(data, key, None)
    exp = experiment_from_dict(data)
    back = experiment_from_dict(tomllib.loads(to_toml(exp)))
    assert back == exp and back.fingerprint() == exp.fingerprint()
    assert back.data.max_test_examples is None and back.train.max_grad_norm is None
    # and each one alone (a None beside defaults elsewhere)
    for key in fields:
        one: dict = {}
        set_dotted(one, key, None)
        exp = experiment_from_dict(one)
        assert experiment_from_dict(tomllib.loads(to_toml(exp))).fingerprint() == exp.fingerprint(), key
    # the default of 500 is still what an absent field means
    assert experiment_from_dict({}).data.max_test_examples == 500


def test_none_from_the_command_line_and_where_it_is_no_value(tiny_path):
    assert load_experiment(tiny_path, ["data.max_test_examples=none"]).data.max_test_examples is None
    assert load_experiment(tiny_path, ["train.max_grad_norm=none"]).train.max_grad_norm is None
    assert load_experiment(tiny_path, ['data.partition_by="none"']).data.partition_by == "none"  # a column name
    with pytest.raises(ConfigError, match="method.rank"):
        load_experiment(tiny_path, ["method.rank=none"])  # rank cannot be unset
    with pytest.raises(ConfigError, match="--set seed.x: 'seed' is not a section"):
        load_experiment(tiny_path, ["seed.x=1"])


def test_a_stored_config_with_none_matches_its_experiment():
    """A sweep skips a complete run only if its config.toml is the experiment asked for."""
    exp = experiment_from_dict({"data": {"max_test_examples": None}})
    assert config_differences(tomllib.loads(to_toml(exp)), exp) == []
    assert config_differences(tomllib.loads(to_toml(Experiment())), exp) == [
        "data.max_test_examples: run has 500, sweep wants 'none'"]
