"""What VAR's explicit float32 rows are computed from: one layer's attention call, its masks, GQA.

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
    attention_mask: torch.Tensor | None  # 4D [B, 1, Q, K] (bool or additive), 2D padding [B, K], or None
    scaling: float
    normaliser: Normaliser = Normaliser()


def blocked_keys(
    attention_mask: torch.Tensor | None,
    rows: torch.Tensor,
    query_length: int,
    key_length: int,
    keys: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Bool[B, 1, R, M] keys each row may not attend to, from any mask format the base kernels use.

    `rows` Long[B, R] are query indices of this forward; `keys` Long[B, M] the key positions to
    look at (all K of them when None), so a caller that needs a few keys never builds [R, K].
    None when nothing is blocked: a decode step without padding sees every key.
    """
    if attention_mask is None and query_length == 1 and keys is None:
        return None
    batch = rows.shape[0]
    if keys is None:
        keys = torch.arange(key_length, device=rows.device).expand(batch, -1)
    if attention_mask is not None and attention_mask.dim() == 4:
        mask = attention_mask[:, 0, :, -key_length:].expand(batch, -1, -1)
        samples = torch.arange(batch, device=mask.device)[:, None, None]
        picked = mask[samples, rows.to(mask.device)[:, :, None], keys.to(mask.device)[:, None, :]]
        picked = picked.to(rows.device)
        blocked = ~picked if picked.dtype == torch.bool else picked < torch.finfo(picked.dtype).min / 2
        return blocked[:, None]
    # No mask (sdpa's causal skip) or a 2D padding mask (flash): causal from the cache offset.
    positions = rows + (key_length - query_length)
    blocked = keys[:, None, :] > positions[..., None]
    if attention_mask is not None:
        padding = ~attention_mask[:, -key_length:].bool().to(rows.device)
        blocked |= padding.gather(1, keys)[:, None, :]
    return blocked[:, None]


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
