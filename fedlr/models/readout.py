"""The last block computed at the read-out position only (issue 17.4: what the profile shows).

A BERT sequence classifier reads one position of its last block's output: the pooler takes
h_N[:, 0] (``BertPooler``), and no other position of block N reaches the logits. Block N is

    a = SelfAttention(h)                                   queries, keys and values at every position
    x = LayerNorm(Dropout(a W_O + b_O) + h)                attention output
    y = LayerNorm(Dropout(GELU(x W_I + b_I) W_2 + b_2) + x)  feed-forward

and every step after the attention acts on each position alone, so y[:, 0] needs only a[:, 0] and
h[:, 0]. ``trim_readout`` makes block N compute the attention as before and x, y at position 0
only: per token, W_O and the feed-forward are 9 of the block's 12·d² multiply-adds (d = hidden
size, a 4·d feed-forward), so block N costs about a quarter of what it did. The model then returns
block N's output at position 0 alone (``last_hidden_state`` of length 1); fedlr reads only logits.

**Dropout.** In training the masks of the two dropouts after the attention are drawn at the full
(batch, length, hidden) shape and position 0's rows kept, as ``F.dropout`` draws them on the CPU
(``empty_like(x).bernoulli_(1 − p)``): the random stream, so a seeded run, is the untrimmed
model's. Logits, gradients and updates equal the untrimmed model's to float tolerance, with and
without DP-SGD (Opacus's per-sample gradients of adapters in block N see position 0's rows only,
whose gradients are the only non-zero ones anyway) and under the frozen-prefix cache
(tests/test_readout.py).

Applied by ``build_adapted_model`` to ``BertForSequenceClassification`` (the bundled MiniLM and
the tiny test BERT) whose last block is a plain encoder block (no cross-attention, no feed-forward
chunking); other models run as they are. Decoders pool the last non-pad token of each row, which
the causal-LM task's generation also decodes from: they are left alone.
"""

from __future__ import annotations

from types import MethodType

import torch
from torch import nn
from transformers.models.bert.modeling_bert import BertForSequenceClassification, BertLayer

from fedlr.models.blocks import block_stack


def readout_block(model: nn.Module) -> BertLayer | None:
    """The last block of a BERT sequence classifier that reads position 0 alone, else None."""
    if not isinstance(model, BertForSequenceClassification):
        return None
    _, stack = block_stack(model)
    last = stack[-1]
    plain = (type(last) is BertLayer and not last.add_cross_attention and not last.is_decoder
             and last.chunk_size_feed_forward == 0)
    return last if plain else None


def trim_readout(model: nn.Module) -> bool:
    """Make ``model``'s last block compute only position 0 after its attention (module docstring);
    whether it applies. ``untrim_readout`` undoes it."""
    block = readout_block(model)
    if block is None:
        return False
    block.forward = MethodType(_readout_forward, block)  # a bound method: deep copies rebind it to the copy
    return True


def untrim_readout(model: nn.Module) -> None:
    block = readout_block(model)
    if block is not None and "forward" in vars(block):
        del block.forward


def _readout_forward(self: BertLayer, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                     *args, **kwargs) -> torch.Tensor:
    """``BertLayer.forward`` with x and y (module docstring) at position 0 only."""
    kwargs.pop("encoder_attention_mask", None)
    attended, _ = self.attention.self(hidden_states, attention_mask=attention_mask, **kwargs)
    out = self.attention.output
    x = out.LayerNorm(_dropout_row0(out.dropout, out.dense(attended[:, :1]), hidden_states.shape) + hidden_states[:, :1])
    ffn = self.output
    return ffn.LayerNorm(_dropout_row0(ffn.dropout, ffn.dense(self.intermediate(x)), hidden_states.shape) + x)


def _dropout_row0(dropout: nn.Dropout, row0: torch.Tensor, full_shape: torch.Size) -> torch.Tensor:
    """``dropout`` of a (batch, length, hidden) tensor, at position 0: the mask is drawn whole, as
    ``F.dropout`` draws it, and its position-0 rows applied."""
    if not dropout.training or dropout.p == 0:
        return row0
    noise = torch.empty(full_shape, dtype=row0.dtype, device=row0.device).bernoulli_(1 - dropout.p)
    return row0 * noise[:, :1].div_(1 - dropout.p)
