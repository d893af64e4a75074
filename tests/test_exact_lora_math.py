"""FedEx-LoRA and FLoRA identities (reference/methods.md §3, invariants 4 and 5) on float64."""

import torch

from fedlr.methods.lowrank_math import fedex_residual, flora_stack, mean_of_products

torch.manual_seed(0)


def factors(k, d_out, d_in, ranks):
    return ([torch.randn(d_out, r, dtype=torch.float64) for r in ranks],
            [torch.randn(r, d_in, dtype=torch.float64) for r in ranks])


def test_fedex_is_exact_on_square_and_non_square_layers():
    for d_out, d_in in [(12, 12), (14, 9)]:
        bs, as_ = factors(3, d_out, d_in, [2, 2, 2])
        w = [3.0, 1.0, 2.0]
        p = [x / 6 for x in w]
        w0, s = torch.randn(d_out, d_in, dtype=torch.float64), 0.5
        b_bar = sum(pk * b for pk, b in zip(p, bs))
        a_bar = sum(pk * a for pk, a in zip(p, as_))
        folded = w0 + s * fedex_residual(bs, as_, w)
        assert folded.shape == w0.shape == (d_out, d_in)  # the base weight's own orientation
        x = torch.randn(5, d_in, dtype=torch.float64)
        aggregated_out = x @ (folded + s * b_bar @ a_bar).T
        exact_out = sum(pk * x @ (w0 + s * b @ a).T for pk, b, a in zip(p, bs, as_))
        assert torch.allclose(aggregated_out, exact_out, atol=1e-10)
        # the transposed residual of the public reference code is wrong on square layers
        if d_out == d_in:
            wrong = w0 + s * fedex_residual(bs, as_, w).T + s * b_bar @ a_bar
            assert not torch.allclose(x @ wrong.T, exact_out, atol=1e-6)


def test_fedex_residual_rank_and_zero_when_clients_agree():
    bs, as_ = factors(3, 16, 16, [2, 2, 2])
    assert torch.linalg.matrix_rank(fedex_residual(bs, as_, [1, 1, 1])) <= 3 * 2  # ≤ K·r: columns in span(B_k)
    same = fedex_residual([bs[0]] * 3, [as_[0]] * 3, [1.0, 2.0, 3.0])
    assert torch.allclose(same, torch.zeros_like(same), atol=1e-12)


def test_flora_stacking_is_exact_with_heterogeneous_ranks():
    ranks = [4, 2, 1]
    bs, as_ = factors(3, 10, 7, ranks)
    w = [1.0, 1.0, 2.0]
    b_stack, a_stack = flora_stack(bs, as_, w)
    assert b_stack.shape == (10, sum(ranks)) and a_stack.shape == (sum(ranks), 7)
    assert torch.allclose(b_stack @ a_stack, mean_of_products(bs, as_, w), atol=1e-10)
