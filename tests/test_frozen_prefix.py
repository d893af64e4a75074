"""model.layers (adapters on chosen transformer blocks, PEFT's layers_to_transform) and the
frozen-prefix cache: the hidden states entering the lowest adapted block, computed once per example."""

import json

import pytest
import torch
from peft import PeftModel

from fedlr.adapters.export import export_model
from fedlr.config import ConfigError, experiment_from_dict
from fedlr.models import load_base_model
from fedlr.models.adapted import adapter_paths, build_adapted_model
from fedlr.plan import communication_plan
from fedlr.workbench import Workbench

TINY = {"model": {"name_or_path": "tiny-random-bert", "max_length": 32},
        "data": {"max_train_examples": 200, "max_test_examples": 16},
        "federation": {"num_clients": 2, "clients_per_round": 2}}
LLAMA = {"model": {"name_or_path": "tiny-random-llama", "task": "causal_lm", "targets": ["q_proj", "v_proj"],
                   "max_length": 32},
         "data": {"dataset": "chatterbot", "max_train_examples": 100, "max_test_examples": 8},
         "federation": {"num_clients": 2, "clients_per_round": 2}}


def exp_for(method="fedit", layers=None, base=TINY, **method_extra):
    model = {**base["model"], **({"layers": layers} if layers is not None else {})}
    return experiment_from_dict({**base, "model": model,
                                 "method": {"name": method, "rank": 4, "alpha": 8.0, **method_extra}})


def test_layers_put_adapters_only_on_the_chosen_blocks():
    assert adapter_paths(build_adapted_model(exp_for(layers=[1]), 2, meta=True)) == [
        "bert.encoder.layer.1.attention.self.query", "bert.encoder.layer.1.attention.self.value"]
    assert len(adapter_paths(build_adapted_model(exp_for(), 2, meta=True))) == 4
    llama = build_adapted_model(exp_for(layers=[1], base=LLAMA), 0, meta=True)
    assert adapter_paths(llama) == ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]


def test_layers_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model.layers: \[2\] out of range; this model has 2 transformer blocks"):
        build_adapted_model(exp_for(layers=[0, 2]), 2, meta=True)
    with pytest.raises(ConfigError, match=r"model.layers: \[-1\] out of range"):
        build_adapted_model(exp_for(layers=[-1]), 2, meta=True)


def test_plan_counts_only_the_chosen_blocks_adapters():
    every, top = communication_plan(exp_for(), 2), communication_plan(exp_for(layers=[1]), 2)
    assert top["uplink_params_per_client"] * 2 == every["uplink_params_per_client"]
    assert top["head_params"] == every["head_params"]
    assert top["total_bytes"] < every["total_bytes"]


@pytest.mark.parametrize("method", ["fedit", "fedpara"])
def test_export_with_layers_reloads_with_identical_logits(tmp_path, method):
    exp = exp_for(method, layers=[1])
    bench = Workbench(exp)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in bench.adapted.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    assert bench.prefix_cache is not None  # the logits below come through the cache
    export_model(bench, tmp_path / "model")
    batch = bench.data.test().batch(list(range(8)))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    ours = bench.adapted.model(**inputs).logits
    loaded = PeftModel.from_pretrained(load_base_model(exp.model, 2, seed=123), tmp_path / "model").eval()
    assert loaded.peft_config["default"].layers_to_transform == [1]
    assert not any(".layer.0." in n for n, _ in loaded.named_parameters() if "lora" in n or "hada" in n)
    assert torch.allclose(ours, loaded(**inputs).logits, atol=1e-5)


# ----------------------------------------------------------------------------- the cache
from fedlr.data.tokens import TokenizedSet  # noqa: E402
from fedlr.models.blocks import block_stack, modules_before_stack  # noqa: E402
from fedlr.models.frozen_prefix import FrozenPrefixCache, attach_prefix_cache, prefix_boundary  # noqa: E402
from fedlr.privacy.dp_sgd import DPSGDSettings, dp_local_train  # noqa: E402
from fedlr.train import local_train  # noqa: E402

CACHED_METHODS = ["fedit", "ffa_lora", "fed_sb", "fed_svd", "dp_lora", "fedex_lora", "flora", "fedpara"]


def examples(n=24, seed=0) -> TokenizedSet:
    """Random token ids of lengths 5…20 (so batches are padded), two labels."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(5, 21, (n,), generator=gen).tolist()
    ids = [[101] + torch.randint(1000, 30000, (k - 1,), generator=gen).tolist() for k in lengths]
    return TokenizedSet(ids, torch.randint(0, 2, (n,), generator=gen), 0)


def pair(method, **method_extra):
    """Two identical models with adapters on block 1 of 2 (dropout 0.1 everywhere): the reference
    runs its prefix in eval mode by a hook, the other carries the cache."""
    exp = exp_for(method, layers=[1], **method_extra)
    ref, cached = build_adapted_model(exp, 2), build_adapted_model(exp, 2)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():  # trained tensors away from their init (B = 0, R = 0 would hide gradients)
        for a, b in zip(ref.trainable_parameters(), cached.trainable_parameters()):
            a.add_(torch.randn(a.shape, generator=gen) * 0.1)
            b.copy_(a)
    stack_path, stack = block_stack(ref.model)
    prefix = modules_before_stack(ref.model, stack_path) + list(stack[:1])
    ref.model.register_forward_pre_hook(lambda m, a: [p.eval() for p in prefix] and None)
    cache = attach_prefix_cache(exp, cached)
    assert cache is not None and cache.boundary == 1
    return exp, ref, cached, cache


def close(a, b, atol=1e-5):
    return torch.allclose(a, b, atol=atol, rtol=1e-4)


def assert_same_gradients(ref, other, batch) -> None:
    """The loss's gradients in training mode (dropout on, same seed) agree."""
    for model in (ref.model, other.model):
        model.train()
        torch.manual_seed(11)
        model.zero_grad()
        model(**batch).loss.backward()
    for a, b in zip(ref.trainable_parameters(), other.trainable_parameters()):
        assert a.grad is not None and close(a.grad, b.grad)


def assert_same_updates(exp, ref, other, data, dp: bool) -> None:
    """Three local steps (DP-SGD with ``dp``) from the same state and seeds move ``ref`` and
    ``other`` alike, and away from where they started."""
    start = ref.trained_state()
    for adapted in (ref, other):
        named = adapted.parameters_by_name()
        head = [named[k] for k in adapted.head_keys]
        cfg = exp.train.model_copy(update={"local_steps": 3, "batch_size": 8})
        torch.manual_seed(12)
        if dp:
            settings = DPSGDSettings(noise_multiplier=0.5, max_grad_norm=0.1, sample_rate=8 / len(data),
                                     per_tensor_clipping=adapted.spec.per_tensor_clipping)
            dp_local_train(adapted.model, adapted.trainable_parameters(), head, data, cfg, settings,
                           torch.Generator().manual_seed(1), torch.Generator().manual_seed(2), torch.device("cpu"))
        else:
            local_train(adapted.model, adapted.trainable_parameters(), head, data, cfg,
                        torch.Generator().manual_seed(1), torch.device("cpu"))
    after_ref, after_other = ref.trained_state(), other.trained_state()
    assert any(not torch.equal(after_ref[k], start[k]) for k in start)
    assert all(close(after_ref[k], after_other[k]) for k in start)


@pytest.mark.parametrize("method", CACHED_METHODS)
def test_cached_logits_gradients_and_updates_equal_the_uncached_path(method):
    exp, ref, cached, cache = pair(method)
    data = examples()
    batch = data.batch(list(range(8)))
    ref.model.eval(), cached.model.eval()
    want = ref.model(**batch).logits
    assert close(cached.model(**batch).logits, want) and (cache.misses, cache.hits) == (8, 0)  # computed, stored
    assert close(cached.model(**batch).logits, want) and (cache.misses, cache.hits) == (8, 8)  # from the store
    wider = data.batch(list(range(8)), width=24)  # same examples, more padding: still hits
    assert close(cached.model(**wider).logits, want) and cache.hits == 16
    assert_same_gradients(ref, cached, batch)  # dropout on above block 1
    assert_same_updates(exp, ref, cached, data, dp=False)


@pytest.mark.parametrize("method", CACHED_METHODS)
def test_cached_dp_sgd_updates_equal_the_uncached_path(method):
    exp, ref, cached, cache = pair(method)
    data = examples()
    assert_same_updates(exp, ref, cached, data, dp=True)
    assert cache.misses >= 1


def test_cache_is_refused_with_the_reason():
    def reason(method="fedit", layers=None, base=TINY, **extra):
        exp = exp_for(method, layers=layers, base=base, **extra)
        boundary, why = prefix_boundary(exp, build_adapted_model(exp, 2 if base is TINY else 0, meta=True))
        return why if boundary is None else None
    assert reason("full_ft", layers=None) == "full fine-tuning trains every block"
    assert reason() == "adapters on block 0 (model.layers without 0 leaves frozen blocks below to cache)"
    assert reason(layers=[0, 1]).startswith("adapters on block 0")
    assert reason(layers=[1], base=LLAMA).startswith("causal_lm: generation decodes incrementally")
    assert reason(layers=[1]) is None


def test_trained_embeddings_refuse_the_cache():
    exp = exp_for(layers=[1])
    adapted = build_adapted_model(exp, 2, meta=True)
    adapted.trained_keys.append("bert.embeddings.word_embeddings.weight")
    assert prefix_boundary(exp, adapted) == (None, "trained embeddings (bert.embeddings.word_embeddings.weight)")
    adapted.trained_keys[-1] = "bert.encoder.layer.0.output.dense.bias"
    assert prefix_boundary(exp, adapted) == (None, "bert.encoder.layer.0.output.dense.bias changes below block 1")


def test_cache_bound_evicts_least_recently_used():
    exp = exp_for(layers=[1])
    adapted = build_adapted_model(exp, 2)
    data = examples(6)
    row_bytes = [len(s) * 64 * 4 for s in data.input_ids]  # real tokens × hidden 64 × float32
    cache = FrozenPrefixCache(adapted.model, 1, max_bytes=row_bytes[1] + row_bytes[2])
    adapted.model(**data.batch([0, 1, 2]))
    assert set(cache.store) == {_key(data, 1), _key(data, 2)} and cache.bytes <= cache.max_bytes
    none = FrozenPrefixCache(build_adapted_model(exp, 2).model, 1, max_bytes=0)
    assert none.store == {} and none.bytes == 0


def _key(data, i):
    return torch.tensor(data.input_ids[i]).numpy().tobytes()


def test_detach_restores_the_model():
    exp = exp_for(layers=[1])
    adapted = build_adapted_model(exp, 2)
    batch = examples().batch(list(range(4)))
    before = adapted.model(**batch).logits
    cache = attach_prefix_cache(exp, adapted)
    cache.detach()
    adapted.model.eval()
    assert torch.equal(adapted.model(**batch).logits, before) and cache.misses == 0


def test_cached_results_do_not_depend_on_what_the_worker_saw_before():
    exp = exp_for(layers=[1])
    data = examples()
    fresh, seasoned = build_adapted_model(exp, 2), build_adapted_model(exp, 2)
    a, b = attach_prefix_cache(exp, fresh), attach_prefix_cache(exp, seasoned)
    seasoned.model(**data.batch(list(range(4, 16))))  # examples 4-7 stored from another batch, another width
    batch = data.batch(list(range(8)))
    assert torch.equal(fresh.model(**batch).logits, seasoned.model(**batch).logits)
    assert (a.misses, b.hits) == (8, 4)


def test_plan_and_sweep_dry_run_say_whether_the_cache_applies(tmp_path, tiny_path, capsys):
    from fedlr.cli import main

    assert main(["plan", str(tiny_path), "--json", "--set", "model.layers=[1]"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["frozen_prefix_cache"] is True and plan["frozen_prefix_reason"].startswith("the embeddings and block 0 are frozen")
    assert main(["plan", str(tiny_path), "--json", "--set", "method.name=full_ft"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["frozen_prefix_cache"], plan["frozen_prefix_reason"]) == (False, "full fine-tuning trains every block")
    assert main(["plan", str(tiny_path)]) == 0
    assert "frozen-prefix cache: off (adapters on block 0" in capsys.readouterr().out
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(tiny_path.read_text() + '\n[sweep]\nmode = "grid"\n"model.layers" = [[0, 1], [1]]\n')
    assert main(["sweep", str(sweep), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "prefix_cache" in out.splitlines()[1] and "prefix_cache off (runs 1): adapters on block 0" in out
    assert main(["sweep", str(sweep), "--dry-run", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["frozen_prefix_cache"] for r in rows] == [False, True]


def test_benchmark_quick_runs_and_ends_with_the_readable_line():
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "frozen_prefix.py"
    done = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert re.fullmatch(r"speed-up train \d+\.\d\d, eval \d+\.\d\d", lines[-1])
    assert [line.split()[0] for line in lines[-4:-1]] == ["plain", "dp-sgd", "eval"]
    assert "wrote" not in done.stderr  # --quick records nothing


@pytest.mark.parametrize("method", ["fedit", "fed_sb"])
def test_fused_clients_through_the_cache_equal_fused_clients_without_it(method):
    """federation.fused_clients calls the model like local_train: the cache serves it as well."""
    from fedlr.fused import fused_local_train

    exp, ref, cached, cache = pair(method, **({"init": "random"} if method == "fed_sb" else {}))
    sets = [examples(12, seed=s) for s in range(3)]
    gen = torch.Generator().manual_seed(4)
    start = ref.trained_state()
    states = [{k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in start.items()} for _ in sets]
    cfg = exp.train.model_copy(update={"local_steps": 3, "batch_size": 4})
    out = []
    for adapted in (ref, cached):
        torch.manual_seed(12)  # dropout above block 1 draws alike
        out.append(fused_local_train(adapted, states, sets, cfg, [torch.Generator().manual_seed(k) for k in range(3)],
                                     torch.device("cpu"))[0])
    for want, got, state in zip(*out, states):
        assert any(not torch.equal(want[k], state[k]) for k in state)
        assert all(close(want[k], got[k]) for k in state)
    assert cache.misses >= 1


def _disk_cached(exp, folder):
    adapted = build_adapted_model(exp, 2)
    cache = FrozenPrefixCache(adapted.model, 1, max_bytes=2**30, folder=folder)
    adapted.model.eval()
    return adapted, cache


def test_disk_cache_is_shared_between_processes_and_exact(tmp_path):
    exp = exp_for(layers=[1])
    batch = examples().batch(list(range(8)))
    in_memory, _ = _disk_cached(exp, None)  # the memory-only cache (equal to the uncached path: tests above)
    want = in_memory.model(**batch).logits
    first, a = _disk_cached(exp, tmp_path)
    got_first = first.model(**batch).logits
    assert (a.misses, a.disk_hits) == (8, 0) and len(list(tmp_path.rglob("*.pt"))) == 8
    second, b = _disk_cached(exp, tmp_path)  # a new process: empty memory, same folder
    got_second = second.model(**batch).logits
    assert (b.misses, b.disk_hits) == (0, 8)
    assert torch.equal(got_second, got_first) and torch.equal(got_second, want)


def test_disk_cache_is_keyed_by_the_prefix_weights(tmp_path):
    exp = exp_for(layers=[1])
    batch = examples().batch(list(range(4)))
    first, a = _disk_cached(exp, tmp_path)
    first.model(**batch)
    other, b = _disk_cached(exp, tmp_path)
    with torch.no_grad():
        next(other.model.parameters()).add_(0.5)  # the embeddings: another base model
    other.model(**batch)
    assert (b.misses, b.disk_hits) == (4, 0) and len(list(tmp_path.rglob("*.pt"))) == 8


def test_unreadable_disk_file_is_recomputed_and_rewritten(tmp_path):
    exp = exp_for(layers=[1])
    batch = examples().batch(list(range(3)))
    first, _ = _disk_cached(exp, tmp_path)
    want = first.model(**batch).logits
    for f in tmp_path.rglob("*.pt"):
        f.write_bytes(b"torn")
    again, c = _disk_cached(exp, tmp_path)
    assert torch.equal(again.model(**batch).logits, want) and (c.misses, c.disk_hits) == (3, 0)
    third, d = _disk_cached(exp, tmp_path)
    third.model(**batch)
    assert (d.misses, d.disk_hits) == (0, 3) and not list(tmp_path.rglob("*.tmp"))
