"""The runtime seam: client state that survives an ArrayRecord round trip (resume), the DP bound
on what is released, L-GreCo assignments through encode/decode, and the compressed broadcast."""

import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from fedlr.compression import (PayloadError, apply_broadcast, cached_reference, compression_config,
                               compression_stats, decode_update, encode_broadcast, encode_update, payload_bytes,
                               planned_bytes, planned_downlink_bytes, remember_broadcast)
from fedlr.compression.dp import global_norm
from fedlr.compression.pipeline import choose_assignment

SHAPES = {"l0.A": (8, 96), "l0.B": (96, 8), "l1.A": (8, 96), "l1.B": (96, 8), "W": (48, 40), "head.bias": (2,)}
LOSSY = [{"codec": "fp16"}, {"codec": "qsgd", "bits": 2}, {"codec": "qsgd", "bits": 8},
         {"codec": "topk", "density": 0.05}, {"codec": "powersgd", "rank": 1}, {"codec": "powersgd", "rank": 3}]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def update(seed, scale=0.1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return {k: (scale * torch.randn(s, generator=g, dtype=torch.float64)).to(dtype) for k, s in SHAPES.items()}


def gen(*purpose):
    return torch.Generator().manual_seed(hash(purpose) % 2**31)


def through_record(tensors):
    """Persist a state the way the runtime does (context.state / a checkpoint) and read it back."""
    record = ArrayRecord(torch_state_dict=OrderedDict(tensors))
    return dict(record.to_torch_state_dict())


@pytest.mark.parametrize("data", LOSSY + [{"codec": "none"}], ids=lambda d: "-".join(map(str, d.values())))
def test_released_update_respects_the_clip_bound(data):
    """Server-side noise (DP-FedAvg): the decoded contribution has norm ≤ S after EF and rounding."""
    cfg = compression_config(data)
    clip, state = 0.5, {}
    for t in range(1, 5):
        delta = update(t, scale=1.0)  # ‖Δ‖ ≫ S, and the memory grows the vector further
        x_norm = global_norm({k: delta[k] + state.get(f"ef/{k}", 0) for k in delta})
        payload, state = encode_update(delta, cfg, state, gen(t), server_round=t, clip_norm=clip)
        sent = decode_update(payload, cfg, SHAPES, server_round=t)
        assert global_norm(sent) <= clip
        assert global_norm(sent) > 0.9 * clip and x_norm > clip  # clipped, not zeroed
    small = {k: 1e-4 * v for k, v in update(9).items()}
    payload, _ = encode_update(small, compression_config({**data, "error_feedback": False}), {}, gen(9), clip_norm=clip)
    unclipped, _ = encode_update(small, compression_config({**data, "error_feedback": False}), {}, gen(9))
    assert all(np.array_equal(payload[k], unclipped[k]) for k in payload)  # under the bound: untouched


def test_clip_error_goes_to_memory_only_when_folded():
    cfg = compression_config({"codec": "topk", "density": 0.2})
    delta = update(1, scale=1.0)
    folded, s1 = encode_update(delta, cfg, {}, gen(1), clip_norm=0.1)
    kept, s2 = encode_update(delta, cfg, {}, gen(1), clip_norm=0.1, fold_clip_error=False)
    assert all(np.array_equal(folded[k], kept[k]) for k in folded)  # same release either way
    sent = decode_update(folded, cfg, SHAPES)
    for k in SHAPES:
        assert torch.allclose(sent[k] + s1[f"ef/{k}"], delta[k], atol=1e-6)  # e = x − released
    assert global_norm({k: delta[k] - s2[f"ef/{k}"] for k in SHAPES}) > 10 * 0.1  # e = x − unclipped


@pytest.mark.parametrize("data", LOSSY, ids=lambda d: "-".join(map(str, d.values())))
def test_client_state_survives_a_record_round_trip(data):
    cfg = compression_config(data)
    live, resumed = {}, {}
    for t in range(1, 4):
        a, live = encode_update(update(t), cfg, live, gen(t), server_round=t)
        b, resumed = encode_update(update(t), cfg, through_record(resumed), gen(t), server_round=t)
        assert all(np.array_equal(a[k], b[k]) for k in a)
    keys = set(live)
    assert "ef.round" in keys and all(f"ef/{k}" in keys for k in SHAPES)
    assert any(k.startswith("warm/") for k in keys) == (data["codec"] == "powersgd")


def test_lgreco_assignment_travels_through_encode_and_decode():
    cfg = compression_config({"codec": "powersgd", "rank": 2, "adaptive": "lgreco"})
    aggregate = update(3)
    aggregate["W"] = torch.randn(48, 1) @ torch.randn(1, 40)  # rank 1: rank 1 is exact
    assignment = choose_assignment(aggregate, cfg)
    assert assignment["W"] == 1 and assignment["head.bias"] == 0
    payload, state = encode_update(update(4), cfg, {}, gen(4), server_round=2, assignment=assignment)
    assert payload_bytes(payload) == planned_bytes(SHAPES, cfg, assignment=assignment)
    decode_update(payload, cfg, SHAPES, assignment=assignment)
    with pytest.raises(PayloadError):  # a client that ignored the assignment
        decode_update(encode_update(update(4), cfg, {}, gen(4))[0], cfg, SHAPES, assignment=assignment)
    assert compression_stats(SHAPES, cfg, assignment=assignment).compression_ratio != \
        compression_stats(SHAPES, cfg).compression_ratio  # the ratio uses the actual per-tensor ranks
    # a rank change keeps the EF memory and reshapes the warm start
    new = dict(assignment, W=3)
    _, state2 = encode_update(update(5), cfg, state, gen(5), server_round=3, assignment=new)
    assert state2["warm/W"].shape == (40, 3) and all(f"ef/{k}" in state2 for k in SHAPES)
    with pytest.raises(ValueError):
        encode_update(update(5), cfg, state, gen(5), assignment=dict(assignment, W=30))  # fails the 2× rule


@pytest.mark.parametrize("data", [{"codec": "fp16"}, {"codec": "topk", "density": 0.1}, {"codec": "powersgd", "rank": 2}],
                         ids=["fp16", "topk", "powersgd"])
def test_compressed_broadcast_tracks_the_global_model(data):
    cfg = compression_config({**data, "downlink": True})
    theta = update(0)
    server, client = {}, {}
    first = encode_broadcast(theta, cfg, server, gen("down", 1), server_round=1)
    assert first.payload is None  # nobody holds a reference yet: dense for all
    client = remember_broadcast(client, first.reference, 1)
    server = first.server_state
    drift, start, direction = [], theta, update(1)
    for t in range(2, 12):  # a stationary stream: a fixed direction plus noise
        theta = {k: theta[k] + 0.02 * (direction[k] + 0.1 * update(100 + t)[k]) for k in theta}
        b = encode_broadcast(theta, cfg, server, gen("down", t), server_round=t)
        server = through_record(b.server_state)
        assert payload_bytes(b.payload) == planned_downlink_bytes(SHAPES, cfg, fresh=True, server_round=t)
        ref = cached_reference(through_record(client), t - 1)
        rebuilt = apply_broadcast(b.payload, cfg, ref, server_round=t)
        assert all(torch.equal(rebuilt[k], b.reference[k]) for k in SHAPES)  # client == server, bit for bit
        client = remember_broadcast(client, rebuilt, t)
        drift.append(math.sqrt(sum(float((theta[k] - b.reference[k]).square().sum()) for k in SHAPES)))
    moved = global_norm({k: theta[k] - start[k] for k in SHAPES})
    assert drift[-1] < 0.6 * moved and drift[-1] < 1.5 * drift[len(drift) // 2]  # bounded: the server's EF
    assert cached_reference(client, 3) is None  # stale clients get the dense state
    dense = planned_downlink_bytes(SHAPES, cfg, fresh=False, server_round=5)
    assert dense == sum(4 * math.prod(s) + 128 + len(k) for k, s in SHAPES.items())
    off = encode_broadcast(theta, compression_config(data), {}, gen(), server_round=3)
    assert off.payload is None and off.server_state == {}
