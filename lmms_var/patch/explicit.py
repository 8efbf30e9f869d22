"""What VAR's explicit float32 rows are computed from: one layer's attention call, GQA (masks: `masks.py`).

Shared by the decode path (`attention.py`), the prefill correction (`prefill.py`) and the tests.
"""

from typing import NamedTuple

import torch

from lmms_var.patch.normaliser import Normaliser


class LayerCall(NamedTuple):
    """One layer's attention call as the attention interface receives it, plus the base kernel's normaliser."""

    query: torch.Tensor  # [B, H, Q, d]
    key: torch.Tensor  # [B, Hkv, K, d]
    value: torch.Tensor  # [B, Hkv, K, d]
    attention_mask: (
        torch.Tensor | None
    )  # any `masks.MaskKind`: 4D [B, 1, Q, K] bool or additive, 2D [B, K], or None
    scaling: float
    normaliser: Normaliser = Normaliser()


def grouped(tensor: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """[B, H, R, X] -> [B * Hkv, G * R, X]: query heads grouped by the key/value head they share (GQA)."""
    batch, heads, rows, last = tensor.shape
    return tensor.reshape(batch * kv_heads, heads // kv_heads * rows, last)


def scores(
    query: torch.Tensor, key: torch.Tensor, scaling: float, shift: torch.Tensor | None = None
) -> torch.Tensor:
    """Float32 q k^T * scaling [B, H, R, M] for query [B, H, R, d] and key [B, Hkv, M, d],
    plus `shift` [B, H, R] per row if given (in the same operation)."""
    batch, heads, rows, _ = query.shape
    keys = key.float().flatten(0, 1)
    start, beta = (keys.new_zeros(()), 0) if shift is None else (grouped(shift[..., None], key.shape[1]), 1)
    products = torch.baddbmm(start, grouped(query.float(), key.shape[1]), keys.mT, beta=beta, alpha=scaling)
    return products.view(batch, heads, rows, -1)


def explicit_attention(query, key, blocked, scaling: float, may_be_empty: bool) -> torch.Tensor:
    """Float32 softmax(q k^T) [B, H, R, K] for query [B, H, R, d] and key [B, Hkv, K, d].

    `may_be_empty`: some rows may block every key (padding rows at prefill); they become zeros.
    """
    logits = scores(query, key, scaling)
    if blocked is not None:
        logits.masked_fill_(blocked, float("-inf"))
    attn = torch.softmax(logits, dim=-1)
    return attn.nan_to_num_(0.0) if may_be_empty else attn


def times_values(attn: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """[B, H, R, M] @ [B, Hkv, M, X] -> [B, H, R, X] in float32, without repeating key/value heads."""
    batch, heads, rows, keys = attn.shape
    values = value[:, :, :keys].float().flatten(0, 1)
    return torch.bmm(grouped(attn, value.shape[1]), values).view(batch, heads, rows, -1)
