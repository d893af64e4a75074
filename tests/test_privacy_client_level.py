"""Client-level DP (reference/privacy.md §5, invariants §7.8): clipping, the noise's scale, the
fixed denominator and uniform weights — as pure functions, and through the strategy's
``aggregate_train`` on replies built by hand (no Ray)."""

import math

import pytest
import torch
from flwr.app import Metadata, Message, MetricRecord, RecordDict

from fedlr.config import experiment_from_dict
from fedlr.methods import get_method
from fedlr.privacy.client_level import (add_local_noise, central_noised_mean, clip_update, global_norm,
                                        uniform_mean)
from fedlr.privacy.federation_accountant import central_epsilon
from fedlr.privacy.planning import plan_privacy
from fedlr.run.records import to_record
from fedlr.seeding import torch_generator
from fedlr.results.ledger import LedgerRow
from fedlr.strategies import FedLRStrategy
from fedlr.strategies.collector import ReplyCollector

S = 0.5


def update(scale, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"a.lora_A.weight": scale * torch.randn(4, 6, generator=g), "head.bias": scale * torch.randn(3, generator=g)}


@pytest.mark.parametrize("scale", [100.0, 1.0, 0.01])
def test_clipped_norm_is_at_most_s_and_small_updates_pass_unchanged(scale):
    upd = update(scale)
    clipped, norm = clip_update(upd, S)
    assert norm == pytest.approx(global_norm(upd))
    assert global_norm(clipped) <= S
    if norm <= S:
        assert all(torch.equal(clipped[k], upd[k]) for k in upd)
    else:  # one flat norm over every tensor: all scaled by the same factor
        assert global_norm(clipped) == pytest.approx(S, rel=1e-6)
        assert all(torch.allclose(clipped[k], upd[k] * S / norm, rtol=1e-5) for k in upd)


def test_zero_and_tiny_updates_do_not_break_clipping():
    zero = {k: torch.zeros_like(v) for k, v in update(1.0).items()}
    clipped, norm = clip_update(zero, S)
    assert norm == 0.0 and all(torch.count_nonzero(v) == 0 for v in clipped.values())
    tiny = update(1e-30)
    clipped, _ = clip_update(tiny, S)
    assert all(torch.equal(clipped[k], tiny[k]) for k in tiny) and all(torch.isfinite(v).all() for v in clipped.values())
    with pytest.raises(ValueError):
        clip_update(zero, 0.0)


def test_central_mean_has_the_fixed_denominator_and_noise_std_z_s_over_m():
    updates = [update(10.0, seed=i) for i in range(3)]
    m = 5  # the cohort size, though only three replied
    exact = central_noised_mean(updates, S, 0.0, m, torch_generator(0, "x"))
    expected = {k: sum(clip_update(u, S)[0][k] for u in updates) / m for k in updates[0]}
    assert all(torch.allclose(exact[k], expected[k], atol=1e-7) for k in expected)
    # noise: zero updates, many coordinates; std of the mean = z·S/m (fixed seed)
    z = 1.3
    big = [{"w": torch.zeros(200_000)}]
    noised = central_noised_mean(big, S, z, m, torch_generator(0, "noise"))["w"]
    assert noised.std().item() == pytest.approx(z * S / m, rel=0.01)
    assert abs(noised.mean().item()) < 3 * z * S / m / math.sqrt(200_000)
    again = central_noised_mean(big, S, z, m, torch_generator(0, "noise"))["w"]
    assert torch.equal(noised, again)  # seeded per round: reproducible


def test_local_noise_is_clipped_update_plus_z_s():
    z = 0.8
    noised = add_local_noise({"w": torch.full((200_000,), 1.0)}, S, z, torch_generator(0, "local"))["w"]
    clipped_value = S / math.sqrt(200_000)
    assert (noised - clipped_value).std().item() == pytest.approx(z * S, rel=0.01)
    assert noised.mean().item() == pytest.approx(clipped_value, abs=4 * z * S / math.sqrt(200_000))


def test_uniform_mean_ignores_sizes():
    ups = [update(1.0, seed=i) for i in range(3)]
    mean = uniform_mean(ups)
    assert all(torch.allclose(mean[k], sum(u[k] for u in ups) / 3) for k in mean)


# ----------------------------------------------------------------------------- the strategy's glue
def experiment(mode, method="fedit"):
    return experiment_from_dict({
        "seed": 3, "model": {"name_or_path": "tiny-random-bert"}, "method": {"name": method, "rank": 2},
        "federation": {"num_clients": 6, "clients_per_round": 3, "num_rounds": 4},
        "privacy": {"mode": mode, "noise_multiplier": 1.2, "max_grad_norm": S, "delta": 1e-3},
    })


def reply(node, tensors, metrics):
    meta = Metadata(run_id=1, message_id="", src_node_id=node, dst_node_id=0, reply_to_message_id="m",
                    group_id="", created_at=0.0, ttl=60.0, message_type="train")
    return Message(RecordDict({"arrays": to_record(tensors), "metrics": MetricRecord(metrics)}), metadata=meta)


def strategy_for(exp, state, sizes=(50, 60, 70, 80, 90, 100)):
    """The strategy with the privacy plan of ``sizes``, and a server state holding ``state``."""
    plan = plan_privacy(exp, list(sizes))
    strat = FedLRStrategy(exp, privacy=plan)
    return strat, strat.fresh_state(state), plan


def run_round(strat, server, rnd, replies):
    """One round's replies (node 100 + pid for partition pid) through the strategy's collector and
    aggregation, without a grid."""
    sampled = [pid for pid, _, _ in replies]
    nodes = {100 + p: p for p in range(strat.exp.federation.num_clients)}
    collector = ReplyCollector(strat.reply_policy(rnd, server), nodes)
    row = LedgerRow(round=rnd, clients_sampled=sampled)
    strat.aggregate(server, row, collector.collect(rnd, [reply(100 + pid, t, m) for pid, t, m in replies], sampled))
    strat.record_privacy(server, row)
    return row


def test_central_strategy_clips_adds_seeded_noise_and_composes_one_release_per_round():
    exp = experiment("client_central")
    state = {"a.lora_A.weight": torch.zeros(4, 6), "head.bias": torch.zeros(3)}
    strat, server, plan = strategy_for(exp, dict(state))
    ups = [clip_update(update(5.0, seed=i), S)[0] for i in range(2)]  # 2 of the 3 sampled clients: valid
    unclipped = update(5.0, seed=7)  # the third skipped its clipping: rejected, never aggregated
    rep = run_round(strat, server, 1, [(0, ups[0], {"num-examples": 10.0}), (4, ups[1], {"num-examples": 1000.0}),
                               (5, unclipped, {"num-examples": 10.0})])
    assert rep.clients_rejected == 1 and "exceeds the clipping bound" in rep.failures[0]["reason"]
    expected = central_noised_mean(ups, S, 1.2, 3, torch_generator(3, "server-noise", 1))
    assert all(torch.allclose(server.state[k], state[k] + expected[k], atol=1e-6) for k in state)
    assert rep.epsilon == pytest.approx(central_epsilon(1.2, 6, 3, 1, 1e-3)) and rep.delta == 1e-3
    rep2 = run_round(strat, server, 2, [])  # nobody replied: still a round of the accountant (conservative)
    assert rep2.epsilon == pytest.approx(central_epsilon(1.2, 6, 3, 2, 1e-3))
    assert rep2.epsilon > rep.epsilon
    assert rep2.epsilon <= plan.epsilon  # the plan's worst case covers all 4 rounds


def test_local_strategy_takes_the_uniform_mean_and_the_largest_client_epsilon():
    exp = experiment("client_local")
    state = {"a.lora_A.weight": torch.zeros(4, 6), "head.bias": torch.zeros(3)}
    strat, server, _ = strategy_for(exp, dict(state))
    ups = [update(0.1, seed=i) for i in range(3)]
    rep = run_round(strat, server, 1, [(1, ups[0], {"num-examples": 5.0, "epsilon": 2.0}),
                               (2, ups[1], {"num-examples": 500.0, "epsilon": 3.5}),
                               (5, ups[2], {"num-examples": 50.0, "epsilon": 1.0})])
    assert all(torch.allclose(server.state[k], sum(u[k] for u in ups) / 3, atol=1e-7) for k in state)
    assert rep.epsilon == 3.5 and rep.client_epsilon == {"1": 2.0, "2": 3.5, "5": 1.0}
    rep = run_round(strat, server, 2, [(5, ups[2], {"num-examples": 50.0, "epsilon": 1.6})])
    assert rep.epsilon == 3.5 and rep.client_epsilon["5"] == 1.6  # clients that sat out keep their ε


def test_fed_svd_strategy_expects_b_only_and_returns_refactorized_factors():
    exp = experiment("client_central", method="fed_svd")
    g = torch.Generator().manual_seed(1)
    state = {"l.lora_B.weight": torch.randn(8, 2, generator=g), "l.lora_A.weight": torch.randn(2, 5, generator=g)}
    strat, server, _ = strategy_for(exp, dict(state))
    assert set(strat.update_keys(server.state)) == {"l.lora_B.weight"}
    with_a = {"l.lora_B.weight": torch.zeros(8, 2), "l.lora_A.weight": torch.zeros(2, 5)}
    rep = run_round(strat, server, 1, [(0, {"l.lora_B.weight": 0.01 * torch.ones(8, 2)}, {"num-examples": 1.0}),
                               (1, with_a, {"num-examples": 1.0})])
    assert rep.clients_rejected == 1  # A is not an update a FedSVD client may send
    a = server.state["l.lora_A.weight"]
    assert torch.allclose(a @ a.T, torch.eye(2), atol=1e-5)
