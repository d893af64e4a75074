"""Inputs the README promises "exit 2 and a message" for, through the CLI: one clear line naming
the field, no traceback, nothing written; and a hub id that cannot be loaded fails at once."""

import json
import socket
import time

import pytest

from fedlr import hub
from fedlr.cli import main


def run_fails_with(tmp_path, tiny_path, capsys, *overrides) -> str:
    out = tmp_path / "runs"
    sets = [f'output.dir="{out}"', *overrides]
    assert main(["run", str(tiny_path), *[a for s in sets for a in ("--set", s)]]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
    return err


def test_an_empty_csv_is_one_line(tmp_path, tiny_path, capsys):
    (tmp_path / "empty.csv").write_text("")
    err = run_fails_with(tmp_path, tiny_path, capsys, f'data.dataset="{tmp_path / "empty.csv"}"')
    assert f"data.dataset: cannot read {tmp_path / 'empty.csv'} as a .csv table: No columns to parse" in err


def test_a_model_family_without_a_sequence_classifier_is_one_line(tmp_path, tiny_path, capsys):
    (tmp_path / "vit").mkdir()
    (tmp_path / "vit" / "config.json").write_text(json.dumps({"model_type": "vit"}))
    err = run_fails_with(tmp_path, tiny_path, capsys, f'model.name_or_path="{tmp_path / "vit"}"')
    assert "is a 'vit' model, which has no sequence-classification class" in err


def test_an_unknown_model_type_is_one_short_line_with_close_matches(tmp_path, tiny_path, capsys):
    """transformers' own error listed every model type it knows on one line of thousands of characters."""
    (tmp_path / "bertt.json").write_text(json.dumps({"model_type": "bertt", "hidden_size": 8}))
    err = run_fails_with(tmp_path, tiny_path, capsys, f'model.name_or_path="{tmp_path / "bertt.json"}"')
    assert "is a 'bertt' model, which has no sequence-classification class in transformers" in err
    assert "close: bert," in err and len(err) < 400, err


def test_an_unknown_causal_lm_type_names_the_task_and_close_matches():
    from fedlr.config import ConfigError, ModelConfig
    from fedlr.models import check_model_type
    from fedlr.tasks import get_task

    with pytest.raises(ConfigError, match=r"'gtp2' model, which has no causal-LM class .*\(close: [^)]*gpt2"):
        check_model_type(ModelConfig(name_or_path="/models/x", task="causal_lm"), "gtp2", get_task("causal_lm"))
    check_model_type(ModelConfig(task="causal_lm"), "llama", get_task("causal_lm"))  # a known type passes


def test_an_output_directory_that_cannot_be_created_is_one_line(tmp_path, tiny_path, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    assert main(["run", str(tiny_path), "--set", f'output.dir="{tmp_path / "a-file" / "runs"}"']) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "output.dir: cannot create the run directory" in err
    assert (tmp_path / "a-file").read_text() == "not a folder"


@pytest.mark.parametrize("override, field", [('data.dataset="imdb"', "data.dataset"),
                                             ('model.name_or_path="bert-base-uncased"', "model.name_or_path")])
def test_a_hub_id_offline_fails_at_once(tmp_path, tiny_path, capsys, monkeypatch, override, field):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "cached", lambda name, kind: False)
    started = time.perf_counter()
    err = run_fails_with(tmp_path, tiny_path, capsys, override)
    assert time.perf_counter() - started < 5
    assert f"{field}: '{override.split('=')[1][1:-1]}' is neither a local path nor a bundled name" in err
    assert "HF_HUB_OFFLINE is set" in err


def test_no_network_is_found_out_within_the_probe_timeout(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def refused(*args, **kwargs):
        raise OSError(111, "Connection refused")

    monkeypatch.setattr(socket, "create_connection", refused)
    assert "cannot be reached (Connection refused)" in hub.hub_unreachable(("HF_HUB_OFFLINE",))

    def hangs(*args, **kwargs):  # then times out as a real connection would (the probe thread outlives the test)
        time.sleep(30)
        raise OSError(110, "Connection timed out")

    monkeypatch.setattr(socket, "create_connection", hangs)
    monkeypatch.setattr(hub, "PROBE_TIMEOUT_S", 0.5)
    started = time.perf_counter()
    assert "did not answer within 0.5 s" in hub.hub_unreachable(())
    assert time.perf_counter() - started < 2


def test_a_cached_hub_id_is_left_to_the_libraries_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(hub.ConfigError, match="not in the local cache"):
        hub.require_hub("model.name_or_path", "org/model", "model", ())
    (tmp_path / "models--org--model").mkdir()
    hub.require_hub("model.name_or_path", "org/model", "model", ())  # cached: no error
