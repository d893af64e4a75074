"""The last block at the read-out position only (fedlr.models.readout): a BERT classifier's logits,
gradients and updates equal the untrimmed model's, dropout on, with and without DP-SGD and the
frozen-prefix cache; other models are left as they are."""

import copy

import pytest
import torch
from transformers import LlamaForSequenceClassification

from fedlr.config import TINY_LLAMA
from fedlr.models import tiny_config
from fedlr.models.adapted import build_adapted_model
from fedlr.models.blocks import block_stack
from fedlr.models.frozen_prefix import attach_prefix_cache
from fedlr.models.readout import readout_block, trim_readout, untrim_readout
from test_frozen_prefix import TINY, assert_same_gradients, assert_same_updates, close, examples, exp_for

METHODS = ["fedit", "fed_sb", "fedpara", "full_ft"]


def pair(method, layers=None):
    """The model as fedlr builds it (trimmed) and an untrimmed copy, trained tensors moved off
    their init so that no gradient vanishes by construction."""
    exp = exp_for(method, layers=layers)
    trimmed = build_adapted_model(exp, 2)
    assert "forward" in vars(readout_block(trimmed.model))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in trimmed.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    full = copy.deepcopy(trimmed)
    untrim_readout(full.model)
    assert "forward" not in vars(readout_block(full.model))
    if layers:  # both behind the frozen-prefix cache, which then feeds the (trimmed) last block
        assert [attach_prefix_cache(exp, m).boundary for m in (full, trimmed)] == [1, 1]
    return exp, full, trimmed


@pytest.mark.parametrize("method", METHODS)
def test_trimmed_logits_gradients_and_updates_equal_the_full_last_block(method):
    exp, full, trimmed = pair(method)
    data = examples()
    batch = data.batch(list(range(8)))
    full.model.eval(), trimmed.model.eval()
    assert close(trimmed.model(**batch).logits, full.model(**batch).logits)
    assert_same_gradients(full, trimmed, batch)  # dropout on in every block
    assert_same_updates(exp, full, trimmed, data, dp=False)


@pytest.mark.parametrize(("method", "layers"),  # layers [1]: the frozen-prefix cache feeds the trimmed block
                         [("fedit", None), ("fed_sb", None), ("full_ft", None), ("fedit", [1]), ("fed_sb", [1])])
def test_trimmed_dp_sgd_updates_equal_the_full_last_block(method, layers):
    exp, full, trimmed = pair(method, layers)
    assert_same_updates(exp, full, trimmed, examples(), dp=True)


def test_the_trimmed_block_computes_position_zero_only_after_attention():
    _, _, trimmed = pair("fedit")
    _, stack = block_stack(trimmed.model)
    seen = {}
    for name in ("attention.self.value", "intermediate.dense"):
        stack[-1].get_submodule(name).register_forward_hook(lambda m, a, o, name=name: seen.update({name: o.shape}))
    trimmed.model.eval()(**examples().batch(list(range(4))))
    assert seen["attention.self.value"][:2] == (4, 20) and seen["intermediate.dense"][:2] == (4, 1)


def test_a_deep_copy_trims_its_own_block():
    _, _, trimmed = pair("fedit")
    twin = copy.deepcopy(trimmed.model)
    assert readout_block(twin).forward.__self__ is readout_block(twin)


def test_decoders_and_the_meta_skeleton_are_left_alone():
    llama = LlamaForSequenceClassification(tiny_config(TINY_LLAMA, 2))  # pools each row's last non-pad token
    assert readout_block(llama) is None and not trim_readout(llama)
    assert "forward" not in vars(block_stack(llama)[1][-1])
    skeleton = build_adapted_model(exp_for(base=TINY), 2, meta=True)
    assert "forward" not in vars(readout_block(skeleton.model))
