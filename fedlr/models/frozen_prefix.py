"""The frozen-prefix cache: frozen layers computed once (issue 17.2).

When every adapter sits in a block ≥ L and nothing below block L changes (no full fine-tuning, no
trained embeddings, no adapter on block 0), the hidden states entering block L,

    h_L(x) = f_{L−1} ∘ … ∘ f_0 ∘ emb(x),

depend on the example x alone. ``FrozenPrefixCache`` keeps h_L per example (keyed by its token
ids; the real tokens only, so any padding width finds it) in a bounded store
(``model.prefix_cache_bytes``, least recently used evicted) and runs only blocks ≥ L and the head
on it: the blocks below pass their input through, and block L receives the cached h_L. A batch
with any example not in the store computes the prefix for the whole batch once (no gradient).

**Dropout.** Under the cache the prefix (the embeddings and blocks < L) always runs in eval mode,
in training too: that is what makes h_L a function of x alone. Where the cache is refused the
model runs as before (the prefix's dropout on in training); with the cache the logits,
gradients and updates equal the uncached model whose prefix runs in eval mode, to float tolerance
(tests/test_frozen_prefix.py), with or without DP-SGD (Opacus's per-sample gradients live in the
trained blocks ≥ L, which run on the cached input exactly as on the computed one).

**On disk** (``model.prefix_cache_dir``): h_L is also written to one file per example in a folder
that every process and every run pointing at it shares — a sweep's runs, its clients' workers and
the server's evaluation compute each example's prefix once for the whole study. A file's name is
the SHA-256 of the prefix's weights (every parameter and buffer of the embeddings and blocks < L,
with names, shapes and dtypes), L and the example's token ids, so different weights, another
boundary or another tokenizer never find it. Files are written whole (a temporary file, then a
rename); one that cannot be read is recomputed and rewritten. The folder is not bounded: it grows
by (tokens × hidden size × 4 bytes) per distinct example; delete it to reclaim the space.

Positions past an example's real tokens are filled with zeros on a cache hit: keys there are
masked, so no real position depends on them (BERT's first-token pooling, Llama's last-token
pooling). The causal-LM task is refused: generation decodes incrementally (a key/value cache,
positions past the prompt), which a per-example cache of whole prompts does not model.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pad_sequence

from fedlr.models.blocks import block_of, block_stack, modules_before_stack


def prefix_boundary(exp, adapted) -> tuple[int | None, str]:
    """(L, why the cache applies) or (None, why it does not), for ``exp`` built as ``adapted``
    (the meta-device skeleton serves: only names and the adapters' places are read)."""
    from fedlr.models.adapted import adapter_paths

    if adapted.spec.adapter is None:
        return None, "full fine-tuning trains every block"
    if exp.model.task == "causal_lm":
        return None, ("causal_lm: generation decodes incrementally (a key/value cache, positions past the "
                      "prompt), which the per-example cache does not model")
    model = adapted.model
    stack_path, _ = block_stack(model)
    blocks = {path: block_of(path, stack_path) for path in adapter_paths(adapted)}
    outside = [path for path, b in blocks.items() if b is None]
    if outside:
        return None, f"adapter outside the transformer blocks: {outside[0]}"
    lowest = min(blocks.values())
    if lowest == 0:
        return None, "adapters on block 0 (model.layers without 0 leaves frozen blocks below to cache)"
    embeddings = [name for m in modules_before_stack(model, stack_path) for name, _ in _names_in(model, m)]
    for key in adapted.trained_keys + adapted.once_keys + adapted.broadcast_keys:
        if key in embeddings:
            return None, f"trained embeddings ({key})"
        b = block_of(key, stack_path)
        if (b is None and key not in adapted.head_keys) or (b is not None and b < lowest):
            return None, f"{key} changes below block {lowest}"
    below = "block 0" if lowest == 1 else f"blocks 0-{lowest - 1}"
    return lowest, (f"the embeddings and {below} are frozen: their output is computed once per example and "
                    f"blocks {lowest}+ run on it")


def _names_in(model: nn.Module, module: nn.Module):
    """The (full name, parameter) pairs of ``module``'s parameters inside ``model``."""
    prefix = next(path for path, m in model.named_modules() if m is module)
    return [(f"{prefix}.{name}", p) for name, p in module.named_parameters()]


def attach_prefix_cache(exp, adapted) -> FrozenPrefixCache | None:
    """The cache on ``adapted.model`` where it is valid (``prefix_boundary``), else None."""
    boundary, _ = prefix_boundary(exp, adapted)
    if boundary is None:
        return None
    return FrozenPrefixCache(adapted.model, boundary, exp.model.prefix_cache_bytes, exp.model.prefix_cache_dir)


class FrozenPrefixCache:
    """Hooks on ``model`` that serve blocks ≥ ``boundary`` from stored h_L (module docstring);
    ``detach()`` restores the model."""

    def __init__(self, model: nn.Module, boundary: int, max_bytes: int, folder: str | Path | None = None):
        stack_path, stack = block_stack(model)
        self.boundary, self.max_bytes = boundary, max_bytes
        self.lower = list(stack[:boundary])
        self.prefix = modules_before_stack(model, stack_path) + self.lower  # eval mode under the cache
        self.disk = None if folder is None else DiskStore(folder, self.prefix, boundary)
        self.disk_hits = 0
        self.store: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0
        self.model = model
        self._ids: list[torch.Tensor] = []
        self._keys: list[bytes] = []
        self._computing = False
        self._forwards = {blk: blk.forward for blk in self.lower}
        for blk in self.lower:
            blk.forward = _pass_through
        self._handles = [
            model.register_forward_pre_hook(self._capture, with_kwargs=True),
            stack[boundary].register_forward_pre_hook(self._substitute, with_kwargs=True),
        ]

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        for blk in self.lower:
            del blk.forward

    def _capture(self, module, args, kwargs):
        """Before the model runs: the batch's example keys; the prefix to eval mode."""
        if self._computing:
            return
        for name in ("inputs_embeds", "position_ids", "token_type_ids"):
            if kwargs.get(name) is not None:
                raise ValueError(f"the frozen-prefix cache keys an example by its input_ids alone; got {name}")
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        mask = kwargs.get("attention_mask")
        ids = ids.cpu()
        lengths = [ids.shape[1]] * ids.shape[0] if mask is None else mask.sum(dim=1).tolist()
        if mask is not None and not torch.equal(mask.cpu().bool(), torch.arange(ids.shape[1]) < torch.tensor(lengths)[:, None]):
            raise ValueError("the frozen-prefix cache needs right-padded batches")
        self._ids = [ids[i, :n] for i, n in enumerate(lengths)]
        self._keys = [row.numpy().tobytes() for row in self._ids]
        for m in self.prefix:
            m.eval()

    def _substitute(self, module, args, kwargs):
        """Block L's input: every example's stored h_L, computed first where missing; positions
        past an example's tokens are zeros."""
        hidden, rest = args[0], args[1:]
        if self._computing:  # inside ``_compute``: the prefix of one example, then stop
            with torch.no_grad():
                for blk in self.lower:
                    hidden = self._forwards[blk](hidden, *rest, **kwargs)
            raise _Computed(hidden[0])
        rows = []
        for ids, key in zip(self._ids, self._keys):
            row = self.store.get(key)
            if row is None and self.disk is not None and (row := self.disk.get(key)) is not None:
                self.disk_hits += 1
                row = row.to(hidden.device)
                self._put(key, row)
            elif row is None:
                self.misses += 1
                row = self._compute(ids, hidden.device)
                self._put(key, row)
                if self.disk is not None:
                    self.disk.put(key, row)
            else:
                self.hits += 1
                self.store.move_to_end(key)
            rows.append(row)
        stacked = pad_sequence(rows, batch_first=True)
        return (F.pad(stacked, (0, 0, 0, hidden.shape[1] - stacked.shape[1])), *rest), kwargs

    def _compute(self, ids: torch.Tensor, device: torch.device) -> torch.Tensor:
        """h_L of one example, alone and unpadded: a function of its tokens only, whichever batch
        first met it (so a run gives the same numbers whatever its workers saw before)."""
        self._computing = True
        try:
            with torch.no_grad():
                self.model(input_ids=ids[None].to(device), attention_mask=torch.ones_like(ids[None]).to(device))
        except _Computed as done:
            return done.hidden
        finally:
            self._computing = False
        raise RuntimeError("the frozen-prefix cache did not reach block L")

    def _put(self, key: bytes, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if size > self.max_bytes or key in self.store:  # too large, or a duplicate in this batch
            return
        self.store[key] = value
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self.store.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()


class DiskStore:
    """h_L per example in ``folder``, named by the prefix's weights, L and the token ids (module
    docstring); shared by every process that uses the same folder."""

    def __init__(self, folder: str | Path, prefix: list[nn.Module], boundary: int):
        self.folder = Path(folder).expanduser()
        self._prefix, self._boundary = prefix, boundary
        self._tag: bytes | None = None

    def tag(self) -> bytes:
        """SHA-256 of the prefix's weights and L (computed once, at the first lookup: the weights
        are frozen)."""
        if self._tag is None:
            h = hashlib.sha256(f"boundary {self._boundary}".encode())
            for i, module in enumerate(self._prefix):
                for name, t in list(module.named_parameters()) + list(module.named_buffers()):
                    h.update(f"{i}.{name} {t.dtype} {tuple(t.shape)}".encode())
                    h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
            self._tag = h.digest()
        return self._tag

    def path(self, key: bytes) -> Path:
        name = hashlib.sha256(self.tag() + key).hexdigest()
        return self.folder / name[:2] / f"{name}.pt"

    def get(self, key: bytes) -> torch.Tensor | None:
        try:
            return torch.load(self.path(key), weights_only=True)
        except Exception:  # absent, or unreadable: computed and (re)written by the caller
            return None

    def put(self, key: bytes, value: torch.Tensor) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(value.detach().cpu().clone(), f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class _Computed(Exception):  # noqa: N818 - a result, not an error: ends ``_compute``'s forward at block L
    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden


def _pass_through(hidden_states, *args, **kwargs):
    """A block below L under the cache: its output is block L's (substituted) input."""
    return hidden_states
