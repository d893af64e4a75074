"""Codecs, error feedback, PowerSGD vs the SVD optimum, exact byte accounting and the
``[compression]`` config (reference/compression.md §7). Pure tensors, no Ray; Flower only to
serialize payloads and check ``ArrayRecord.count_bytes()``."""

import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from fedlr.compression import (Codec, PayloadError, PowerSGDCodec, QSGDCodec, TopKCodec,
                               compression_config, compression_ratio, compression_stats, decode_update,
                               encode_update, make_codec, payload_bytes, payload_nbytes, planned_bytes)
from fedlr.compression.powersgd import orthogonalize, power_iteration, svd_tail_error
from fedlr.compression.qsgd import SUPPORTED_BITS, expected_squared_error, levels, pack_bits, unpack_bits
from fedlr.config import ConfigError

LAYERS = [f"bert.encoder.layer.{i}.attention.self.{t}" for i in range(6) for t in ("query", "value")]
HEAD = {"classifier.weight": (2, 384), "classifier.bias": (2,)}
# all-MiniLM-L6-v2, query+value (12 matrices of 384×384): LoRA r=8 factors, or dense deltas
MINILM_LORA = {**{f"{p}.lora_A.weight": (8, 384) for p in LAYERS}, **{f"{p}.lora_B.weight": (384, 8) for p in LAYERS},
               **HEAD}
MINILM_DENSE = {**{f"{p}.weight": (384, 384) for p in LAYERS}, **HEAD}
ODD = {"conv": (6, 3, 5, 5), "tiny": (1,), "pair": (2,), "vec": (1000,), "wide": (8, 4096), "tall": (300, 7),
       "square": (64, 64), "row": (1, 50)}

CODEC_CONFIGS = [
    {"codec": "none"}, {"codec": "fp16"},
    *({"codec": "qsgd", "bits": b} for b in SUPPORTED_BITS), {"codec": "qsgd", "bits": 4, "bucket_size": 512},
    {"codec": "topk", "density": 0.01}, {"codec": "topk", "density": 0.2}, {"codec": "topk", "density": 1.0},
    *({"codec": "powersgd", "rank": r} for r in (1, 2, 4)),
]
LOSSY = [c for c in CODEC_CONFIGS if c["codec"] != "none"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cfg_id(c):
    return "-".join(str(v) for v in c.values())


def random_update(shapes, seed=0, dtype=torch.float32, scale=0.01):
    g = torch.Generator().manual_seed(seed)
    return {k: (scale * torch.randn(s, generator=g, dtype=torch.float64)).to(dtype) for k, s in shapes.items()}


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def to_record(payload) -> ArrayRecord:
    return ArrayRecord(array_dict=OrderedDict((k, Array(v)) for k, v in payload.items()))


def norm(tensors):
    return math.sqrt(sum(float(t.double().square().sum()) for t in tensors.values()))


# ---------------------------------------------------------------- config
@pytest.mark.parametrize("data, field", [
    ({"codec": "zip"}, "compression.codec"), ({"codec": "int8"}, "compression.codec"),
    ({"rank": 0}, "compression.rank"), ({"rank": -2}, "compression.rank"),
    ({"density": 0}, "compression.density"), ({"density": 1.5}, "compression.density"),
    ({"density": -0.1}, "compression.density"),
    ({"bits": 1}, "compression.bits"), ({"bits": 9}, "compression.bits"), ({"bits": 32}, "compression.bits"),
    ({"codec": "fp16", "adaptive": "lgreco"}, "compression.adaptive"), ({"adaptive": "greedy"}, "compression.adaptive"),
    ({"error_budget": 0}, "compression.error_budget"), ({"ranks": 2}, "compression.ranks"),
])
def test_bad_config_names_the_field(data, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        compression_config(data)


def test_config_defaults_and_limits():
    assert compression_config().codec == "none"
    assert compression_config({"density": 1.0, "bits": 8, "codec": "qsgd", "adaptive": "lgreco"}).bits == 8


# ---------------------------------------------------------------- bytes: reported == serialized
@pytest.mark.parametrize("data", CODEC_CONFIGS, ids=cfg_id)
@pytest.mark.parametrize("shapes", [MINILM_LORA, ODD], ids=["minilm-lora", "odd"])
def test_reported_size_is_the_serialized_size(data, shapes):
    cfg = compression_config(data)
    assert isinstance(make_codec(cfg), Codec)
    update = random_update(shapes)
    payload, _ = encode_update(update, cfg, {}, gen())
    record = to_record(payload)
    assert payload_bytes(payload) == record.count_bytes() == planned_bytes(shapes, cfg)
    assert compression_stats(shapes, cfg).payload_bytes == payload_nbytes(payload)
    # the size is a function of the shapes alone, never of the data
    other, _ = encode_update(random_update(shapes, seed=7, scale=3.0), cfg, {}, gen(3))
    assert {k: v.nbytes for k, v in other.items()} == {k: v.nbytes for k, v in payload.items()}
    # what travels decodes to what the client meant
    back = {k: a.numpy() for k, a in record.items()}
    for k, v in decode_update(back, cfg, shapes).items():
        assert torch.equal(v, decode_update(payload, cfg, shapes)[k])
        assert v.dtype == torch.float32 and tuple(v.shape) == shapes[k]


def test_identity_is_the_uncompressed_record_with_ratio_one():
    update = random_update(MINILM_LORA)
    payload, state = encode_update(update, compression_config(), {}, gen())
    assert state == {} and set(payload) == set(MINILM_LORA)
    assert payload_bytes(payload) == to_record({k: v.numpy() for k, v in update.items()}).count_bytes()
    assert compression_ratio(MINILM_LORA, compression_config()) == 1.0
    assert all(torch.equal(v, update[k]) for k, v in decode_update(payload, compression_config(), MINILM_LORA).items())


def test_fp16_round_trip_and_exact_ratio_two():
    update = random_update(MINILM_DENSE, scale=0.3)
    cfg = compression_config({"codec": "fp16"})
    payload, _ = encode_update(update, cfg, {}, gen())
    decoded = decode_update(payload, cfg, MINILM_DENSE)
    for k, v in update.items():
        assert torch.allclose(decoded[k], v, rtol=2**-11, atol=2**-24)
    stats = compression_stats(MINILM_DENSE, cfg)
    assert stats.compression_ratio == 2.0
    assert stats.wire_compression_ratio > 1.99  # one header instead of 14
    big = {"w": torch.tensor([1e6, -1e6, 1.0])}  # saturates instead of overflowing to inf
    out = decode_update(encode_update(big, cfg, {}, gen())[0], cfg, {"w": (3,)})["w"]
    assert torch.isfinite(out).all() and out[0] == 65504


# ---------------------------------------------------------------- QSGD
@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_bit_packing_round_trips(bits):
    rng = np.random.default_rng(bits)
    for n in (1, 7, 8, 129):
        codes = rng.integers(0, 2**bits - 1, n).astype(np.uint8)
        packed = pack_bits(codes, bits)
        assert packed.nbytes == math.ceil(n * bits / 8)
        assert np.array_equal(unpack_bits(packed, n, bits), codes)


@pytest.mark.parametrize("bits", [2, 4])
def test_qsgd_is_unbiased_with_the_variance_of_the_paper(bits):
    d, trials = 64, 2000
    x = torch.randn(320, generator=gen(1), dtype=torch.float64)  # 5 whole buckets
    codec, s = QSGDCodec(bits=bits, bucket_size=d), levels(bits)
    copies = x.repeat(trials)  # 2000 independent encodings in one call: buckets never straddle copies
    payload, _ = codec.encode({"x": copies}, {"x": bits}, gen(2))
    outs = codec.decode(payload, {"x": (320 * trials,)})["x"].double().reshape(trials, 320)
    bucket_norm = x.reshape(-1, d).norm(dim=1).repeat_interleave(d)
    sd_bound = bucket_norm / (2 * s)  # per-entry sd ≤ ‖v_B‖/(2s)
    assert ((outs.mean(0) - x).abs() <= 5 * sd_bound / math.sqrt(trials) + 1e-6).all()
    mse = float((outs - x).square().sum(1).mean())
    expected = expected_squared_error(x, bits, d)
    assert abs(mse - expected) < 0.1 * expected
    assert expected <= min(d / s**2, math.sqrt(d) / s) * float(x.square().sum())


# ---------------------------------------------------------------- top-k
@pytest.mark.parametrize("density", [0.01, 0.2])  # indices, then bitmap (crossover at 1/32)
def test_topk_keeps_exactly_the_largest(density):
    x = torch.randperm(5000, generator=gen(3)).double().sub(2500).reshape(50, 100) / 7  # distinct magnitudes
    cfg = compression_config({"codec": "topk", "density": density, "error_feedback": False})
    payload, _ = encode_update({"w": x}, cfg, {}, gen())
    decoded = decode_update(payload, cfg, {"w": (50, 100)})["w"].double().reshape(-1)
    k = round(density * 5000)
    largest = set(x.reshape(-1).abs().topk(k).indices.tolist())
    assert set(decoded.nonzero().reshape(-1).tolist()) == largest
    idx = torch.tensor(sorted(largest))
    assert torch.equal(decoded[idx], x.reshape(-1)[idx].float().double())
    assert (payload["topk.bitmap"].size > 0) == (density > 1 / 32)


# ---------------------------------------------------------------- PowerSGD
def low_rank_plus_noise(n=256, m=128, decay=0.5, noise=1e-3, seed=0):
    g = gen(seed)
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    s = decay ** torch.arange(min(n, m), dtype=torch.float64)
    return u[:, :m] @ torch.diag(s) @ v.T + noise * torch.randn(n, m, generator=g, dtype=torch.float64)


def test_powersgd_never_beats_the_svd_and_converges_to_it():
    m = low_rank_plus_noise()
    best = svd_tail_error(m, 4)
    q0 = torch.randn(128, 4, generator=gen(5), dtype=torch.float64)
    ratios = []
    for iters in range(1, 11):
        p_hat, q = power_iteration(m, q0, iters)
        ratios.append(float((m - p_hat @ q.T).norm()) / best)
        assert torch.allclose(p_hat.T @ p_hat, torch.eye(4, dtype=torch.float64), atol=1e-10)
    assert min(ratios) >= 1 - 1e-9  # Eckart–Young
    assert ratios[0] > 1.01 and ratios[-1] < 1.01  # within 1% of the optimum after enough iterations
    for seed in range(5):  # any input, rank and iteration count: never below the optimum
        a = torch.randn(30 + seed, 20, generator=gen(seed), dtype=torch.float64)
        for r in (1, 2, 3):
            p_hat, q = power_iteration(a, torch.randn(20, r, generator=gen(seed), dtype=torch.float64), 1 + seed % 3)
            assert float((a - p_hat @ q.T).norm()) >= svd_tail_error(a, r) - 1e-9


def test_powersgd_codec_within_one_percent_and_exact_on_rank_r_input():
    m = low_rank_plus_noise()
    codec = PowerSGDCodec(rank=4, power_iterations=10)
    payload, state = codec.encode({"m": m}, {"m": 4}, gen())
    err = float((codec.decode(payload, {"m": (256, 128)})["m"].double() - m).norm())
    assert err / svd_tail_error(m, 4) < 1.01
    assert state["m"].shape == (128, 4)
    exact = torch.randn(60, 3, generator=gen(1), dtype=torch.float64) @ torch.randn(3, 50, generator=gen(2), dtype=torch.float64)
    codec = PowerSGDCodec(rank=3, power_iterations=2)
    out = codec.decode(codec.encode({"m": exact}, {"m": 3}, gen())[0], {"m": (60, 50)})["m"].double()
    assert float((out - exact).norm()) < 1e-5 * float(exact.norm())


def test_warm_start_lowers_the_error_on_a_slowly_changing_sequence():
    base = low_rank_plus_noise(128, 96, decay=0.8, noise=1e-3, seed=1)
    drift = gen(9)
    seq = [base + 0.01 * t * torch.randn(128, 96, generator=drift, dtype=torch.float64) * 0.05 for t in range(8)]
    errors = {}
    for warm in (True, False):
        codec, state, g, errs = PowerSGDCodec(rank=4, power_iterations=1, warm_start=warm), {}, gen(4), []
        for m in seq:
            payload, state = codec.encode({"m": m}, {"m": 4}, g, state)
            errs.append(float((codec.decode(payload, {"m": (128, 96)})["m"].double() - m).norm()) / svd_tail_error(m, 4))
        errors[warm] = errs
    assert sum(errors[True][2:]) < 0.9 * sum(errors[False][2:])
    assert errors[True][-1] < 1.05  # the carried subspace is nearly optimal after a few rounds


def test_orthogonalization_is_per_matrix_and_zero_safe():
    batch = torch.randn(3, 10, 1, generator=gen(), dtype=torch.float64) * torch.tensor([1.0, 5.0, 0.1]).reshape(3, 1, 1).double()
    assert torch.allclose(orthogonalize(batch).norm(dim=1), torch.ones(3, 1, dtype=torch.float64))
    codec = PowerSGDCodec(rank=1)
    for r in (1, 2):
        codec = PowerSGDCodec(rank=r)
        payload, _ = codec.encode({"b": torch.zeros(384, 8)}, {"b": r}, gen())
        out = codec.decode(payload, {"b": (384, 8)})["b"]
        assert torch.isfinite(out).all() and not out.any()


def test_min_compression_rule_at_the_reference_boundaries():
    codec = PowerSGDCodec(rank=4)
    assert codec.default_params({"a": (8, 4096), "b": (16, 4096), "bias": (4096,)}) == {"a": 0, "b": 4, "bias": 0}
    ratios = {(s, r): 4 * s[0] * s[1] / PowerSGDCodec(rank=r).tensor_nbytes(s, r)
              for s in [(8, 4096), (16, 4096), (8, 768)] for r in (1, 2)}
    assert [round(ratios[(s, 1)], 2) for s in [(8, 4096), (16, 4096), (8, 768)]] == [7.98, 15.94, 7.92]
    assert [round(ratios[(s, 2)], 2) for s in [(8, 4096), (16, 4096), (8, 768)]] == [3.99, 7.97, 3.96]
    assert PowerSGDCodec(rank=2).default_params({"a": (8, 4096)}) == {"a": 2}


def test_encoding_is_reproducible_from_the_generator():
    update = random_update(ODD)
    for data in LOSSY:
        cfg = compression_config(data)
        a, _ = encode_update(update, cfg, {}, gen(11))
        b, _ = encode_update(update, cfg, {}, gen(11))
        assert all(np.array_equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- error feedback
@pytest.mark.parametrize("data", LOSSY, ids=cfg_id)
def test_error_feedback_telescopes(data):
    cfg = compression_config({**data, "power_iterations": 1})
    shapes = {"A": (8, 64), "B": (64, 8), "W": (40, 30), "bias": (30,)}
    state, g, sent_total, true_total = {}, gen(1), None, None
    for t in range(1, 7):
        delta = random_update(shapes, seed=t, dtype=torch.float64)
        payload, state = encode_update(delta, cfg, state, g, server_round=t)
        sent = decode_update(payload, cfg, shapes, server_round=t)
        sent_total = {k: v.double() for k, v in sent.items()} if sent_total is None else \
            {k: sent_total[k] + sent[k].double() for k in shapes}
        true_total = delta if true_total is None else {k: true_total[k] + delta[k] for k in shapes}
    for k in shapes:
        assert torch.allclose(sent_total[k] + state[f"ef/{k}"], true_total[k], atol=1e-10)


def test_error_feedback_memory_stays_bounded_on_a_stationary_stream():
    cfg = compression_config({"codec": "topk", "density": 0.05})
    shapes, state, g = {"W": (50, 40)}, {}, gen()
    mean = random_update(shapes, seed=3)["W"]
    norms, sent_sum = [], torch.zeros(50, 40)
    for t in range(1, 61):
        delta = {"W": mean + 0.1 * random_update(shapes, seed=100 + t)["W"]}
        payload, state = encode_update(delta, cfg, state, g, server_round=t)
        sent_sum += decode_update(payload, cfg, shapes)["W"]
        norms.append(float(state["ef/W"].norm()))
    assert norms[-1] < 1.5 * max(norms[:20])  # does not grow with T
    assert float((sent_sum / 60 - mean).norm()) < 0.25 * float(mean.norm())


def test_stale_memory_decays_only_when_asked():
    shapes = {"W": (20, 20)}
    delta = random_update(shapes)
    for decay, expected in ((1.0, 1.0), (0.5, 0.125)):
        cfg = compression_config({"codec": "topk", "density": 0.1, "error_decay": decay})
        _, state = encode_update(delta, cfg, {}, gen(), server_round=1)
        memory = state["ef/W"].clone()
        zero = {"W": torch.zeros(20, 20)}  # round 5: 3 rounds idle since round 1
        payload, new = encode_update(zero, cfg, state, gen(), server_round=5)
        sent = decode_update(payload, cfg, shapes)["W"]
        assert torch.allclose(sent + new["ef/W"], expected * memory, atol=1e-7)
        assert int(new["ef.round"][0]) == 5


def test_malformed_payloads_are_rejected():
    cfg = compression_config({"codec": "powersgd", "rank": 2})
    payload, _ = encode_update(random_update(MINILM_LORA), cfg, {}, gen())
    cut = dict(payload, **{"powersgd.Q": payload["powersgd.Q"][:-1]})
    extra = dict(payload, junk=np.zeros(1, np.float32))
    wrong_type = dict(payload, **{"powersgd.P": payload["powersgd.P"].astype(np.float64)})
    for bad in (cut, extra, wrong_type, {k: v for k, v in payload.items() if k != "dense"}):
        with pytest.raises(PayloadError):
            decode_update(bad, cfg, MINILM_LORA)
    with pytest.raises(PayloadError):
        decode_update(payload, cfg, {**MINILM_LORA, "extra.weight": (4, 4)})
    with pytest.raises(PayloadError):  # not the parameters the server assigned
        decode_update(payload, cfg, MINILM_LORA, assignment={k: 1 for k in MINILM_LORA if len(MINILM_LORA[k]) == 2
                                                             and k.startswith("bert")})
    with pytest.raises(PayloadError):
        decode_update({k: v.numpy() for k, v in random_update({"w": (3, 3)}).items()}, compression_config(), {"w": (3, 4)})


def test_warm_up_rounds_travel_dense():
    cfg = compression_config({"codec": "powersgd", "warmup_rounds": 2})
    update = random_update(MINILM_DENSE)
    payload, state = encode_update(update, cfg, {}, gen(), server_round=2)
    assert set(payload) == set(MINILM_DENSE)
    assert planned_bytes(MINILM_DENSE, cfg, server_round=2) == payload_bytes(payload)
    assert not state["ef/bert.encoder.layer.0.attention.self.query.weight"].any()
    payload, _ = encode_update(update, cfg, state, gen(), server_round=3)
    assert "powersgd.P" in payload


# ---------------------------------------------------------------- ratios on a MiniLM update
def formula_nbytes(shapes, data):
    """reference/compression.md §6, written out independently of the codecs."""
    codec, total = data["codec"], 0
    meta = 0 if codec in ("none", "fp16") else 4 * len(shapes)
    for shape in shapes.values():
        n = math.prod(shape)
        if codec == "none":
            total += 4 * n
        elif codec == "fp16":
            total += 2 * n
        elif codec == "qsgd":
            b, d = data["bits"], data.get("bucket_size", 128)
            c = 4 * math.ceil(n / d) + math.ceil(n * b / 8)
            total += c if c < 4 * n else 4 * n
        elif codec == "topk":
            k = max(1, round(data["density"] * n))
            c = min(8 * k, 4 * k + math.ceil(n / 8))
            total += c if c < 4 * n else 4 * n
        elif codec == "powersgd":
            r = data["rank"]
            rows, cols = (shape[0], math.prod(shape[1:])) if len(shape) > 1 else (None, None)
            total += 4 * r * (rows + cols) if rows and (rows + cols) * r * 2 < rows * cols else 4 * n
    return total + meta


@pytest.mark.parametrize("data", [
    {"codec": "none"}, {"codec": "fp16"}, {"codec": "qsgd", "bits": 4}, {"codec": "qsgd", "bits": 8},
    {"codec": "qsgd", "bits": 2, "bucket_size": 512}, {"codec": "topk", "density": 0.01},
    {"codec": "topk", "density": 0.1}, {"codec": "powersgd", "rank": 1}, {"codec": "powersgd", "rank": 2},
    {"codec": "powersgd", "rank": 4}], ids=cfg_id)
@pytest.mark.parametrize("shapes", [MINILM_LORA, MINILM_DENSE], ids=["lora-r8", "dense"])
def test_minilm_ratios_match_the_formulas(data, shapes):
    cfg = compression_config(data)
    dense = 4 * sum(math.prod(s) for s in shapes.values())
    assert dense == 4 * (73_728 + 770 if shapes is MINILM_LORA else 1_769_472 + 770)  # methods.md §4
    expected = dense / formula_nbytes(shapes, data)
    assert compression_ratio(shapes, cfg) == pytest.approx(expected, rel=1e-12)
    payload, _ = encode_update(random_update(shapes), cfg, {}, gen())
    assert dense / payload_nbytes(payload) == pytest.approx(expected, rel=1e-12)


def test_headline_ratios():
    qsgd = compression_config({"codec": "qsgd", "bits": 4})
    assert 4 * 384 * 384 / QSGDCodec(4, 128).tensor_nbytes((384, 384), 4) == pytest.approx(7.53, abs=0.005)
    dense = compression_stats(MINILM_DENSE, compression_config({"codec": "powersgd", "rank": 1}))
    assert dense.compressed_tensors == 12  # the head (2×384) fails the 2× rule at rank 1, the bias is 1-D
    assert dense.compression_ratio == pytest.approx(4 * 1_770_242 / (4 * (12 * 768 + 770) + 4 * 14))
    assert compression_stats(MINILM_LORA, qsgd).wire_bytes == planned_bytes(MINILM_LORA, qsgd)
    assert TopKCodec(0.01).tensor_nbytes((384, 384), 1475) == 8 * 1475
