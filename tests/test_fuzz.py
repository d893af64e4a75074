"""Property-based tests: no config text and no uploaded payload makes fedlr crash with an
unexpected exception or accept garbage. Bounded example counts keep CI fast."""

import math

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedlr import checkpoint
from fedlr.compression.base import PayloadError
from fedlr.compression.config import compression_config
from fedlr.compression.pipeline import decode_update, encode_update
from fedlr.config import ConfigError, Experiment, experiment_from_dict, parse_override
from fedlr.validation import expected_of, update_problem

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SECTIONS = ["model", "data", "method", "federation", "train", "evaluation", "output", "privacy", "compression",
            "faults", "bogus"]
FIELDS = sorted({f for s in Experiment.model_fields.values() if hasattr(s.annotation, "model_fields")
                 for f in s.annotation.model_fields} | {"x", "rank", "name"})
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.lists(st.text(max_size=6), max_size=3))
sections = st.dictionaries(st.sampled_from(FIELDS), scalars, max_size=4)
configs = st.dictionaries(st.sampled_from(SECTIONS + ["seed"]), st.one_of(sections, scalars), max_size=5)


@FUZZ
@given(configs)
def test_any_config_either_validates_or_raises_a_config_error(data):
    try:
        exp = experiment_from_dict(data)
    except ConfigError as e:
        assert str(e).strip()
        return
    assert exp.federation.clients_per_round <= exp.federation.num_clients
    assert exp.method.rank > 0


@FUZZ
@given(st.text(max_size=40))
def test_any_override_text_parses_or_raises_a_config_error(text):
    try:
        key, _ = parse_override(text)
    except ConfigError:
        return
    assert key and "" not in key.split(".")


SHAPES = {"layer.lora_A.weight": (4, 24), "layer.lora_B.weight": (24, 4), "classifier.bias": (2,)}
CODECS = [{"codec": "none"}, {"codec": "fp16"}, {"codec": "qsgd", "bits": 4}, {"codec": "topk", "density": 0.1},
          {"codec": "powersgd", "rank": 1}]
arrays = st.one_of(
    st.builds(lambda n, dt: np.zeros(n, dtype=dt), st.integers(0, 200), st.sampled_from([np.float32, np.float16, np.int32, np.uint8, np.int64])),
    st.builds(lambda n: np.random.default_rng(n).standard_normal(n).astype(np.float32), st.integers(0, 200)),
    st.builds(lambda n: np.full(n, np.nan, dtype=np.float32), st.integers(1, 50)),
)


def real_payload(codec_cfg):
    cfg = compression_config(codec_cfg)
    update = {k: torch.randn(s, generator=torch.Generator().manual_seed(1)) for k, s in SHAPES.items()}
    payload, _ = encode_update(update, cfg, {}, torch.Generator().manual_seed(0), server_round=1)
    return cfg, payload


@FUZZ
@given(st.sampled_from(CODECS), st.data())
def test_mangled_payloads_are_rejected_or_decode_to_the_right_shapes(codec_cfg, data):
    cfg, payload = real_payload(codec_cfg)
    mangled = dict(payload)
    action = data.draw(st.sampled_from(["drop", "add", "replace", "truncate"]))
    key = data.draw(st.sampled_from(sorted(mangled)))
    if action == "drop":
        del mangled[key]
    elif action == "add":
        mangled[data.draw(st.text(min_size=1, max_size=8))] = data.draw(arrays)
    elif action == "replace":
        mangled[key] = data.draw(arrays)
    else:
        mangled[key] = mangled[key][: max(0, len(mangled[key].reshape(-1)) - 1)].reshape(-1)
    try:
        decoded = decode_update(mangled, cfg, SHAPES, server_round=1)
    except PayloadError:
        return
    assert {k: tuple(v.shape) for k, v in decoded.items()} == SHAPES


@FUZZ
@given(st.sampled_from(list(SHAPES)), st.sampled_from(["nan", "inf", "shape", "dtype", "ok"]))
def test_update_validation_catches_every_kind_of_garbage(key, fault):
    ref = {k: torch.zeros(s) for k, s in SHAPES.items()}
    update = {k: torch.randn(s) for k, s in SHAPES.items()}
    if fault == "nan":
        update[key].view(-1)[0] = math.nan
    elif fault == "inf":
        update[key].view(-1)[-1] = -math.inf
    elif fault == "shape":
        update[key] = torch.zeros(3, 3)
    elif fault == "dtype":
        update[key] = update[key].double()
    problem = update_problem(update, expected_of(ref))
    assert (problem is None) == (fault == "ok")
    if problem is not None:
        assert key in problem


@FUZZ
@given(st.binary(max_size=400), st.integers(0, 399), st.binary(max_size=8))
def test_damaged_checkpoint_bytes_are_refused_as_corrupt(prefix, cut, splice):
    """Random bytes, and a real checkpoint cut or spliced anywhere, either load unchanged or raise
    CorruptCheckpoint — never another exception, never a silently different payload."""
    good = checkpoint.encode({"round": 3, "state": {"w": torch.arange(6.0).reshape(2, 3)}})
    for data in (prefix, good[:cut] + splice + good[cut + len(splice):]):
        try:
            got = checkpoint.decode(data)
        except checkpoint.CorruptCheckpoint:
            continue
        assert data == good and got["round"] == 3 and torch.equal(got["state"]["w"], torch.arange(6.0).reshape(2, 3))
