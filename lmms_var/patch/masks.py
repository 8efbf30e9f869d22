"""The attention masks the base kernels get, classified once for the PyTorch paths and the kernels.

transformers hands an attention function one of four masks (see `LayerCall.attention_mask`): none
(SDPA's causal skip), a bool [B, 1, Q, K] mask, an additive [B, 1, Q, K] float mask, or flash
attention's 2D padding mask [B, K] (causality then implied). `classify` names which; `blocked_keys`
reads any of them for the PyTorch paths, and the Triton launchers (`row_kernels.py`) pass the
kind to the kernels as a constexpr. No Triton here: the PyTorch paths run where it is missing.
"""

import enum

import torch


class MaskKind(enum.IntEnum):
    """How a mask is read; the values are the kernels' `MASK_KIND` constexpr."""

    CAUSAL_ONLY = 0  # no mask: every earlier key, counted from the cache's end
    BOOL = 1  # [B, 1, Q, K], True where the key is seen
    ADDITIVE = 2  # [B, 1, Q, K] float, added to the scores: blocked below `additive_threshold`
    PADDING = 3  # [B, K] 2D padding mask, nonzero where the key is real; causal besides

    @property
    def label(self) -> str:
        """As `describe()` and `lmms-var doctor` print it."""
        return self.name.lower().replace("_", " ")


def classify(attention_mask: torch.Tensor | None) -> MaskKind:
    """The kind of a mask as the base kernels get it."""
    if attention_mask is None:
        return MaskKind.CAUSAL_ONLY
    if attention_mask.dim() == 2:
        return MaskKind.PADDING
    return MaskKind.BOOL if attention_mask.dtype == torch.bool else MaskKind.ADDITIVE


def additive_threshold(dtype: torch.dtype) -> float:
    """An additive mask blocks a key where its entry is below this: half of the dtype's lowest value
    (transformers writes the lowest value itself, which a fully masked row may offset a little)."""
    return torch.finfo(dtype).min / 2


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
    kind = classify(attention_mask)
    if kind == MaskKind.CAUSAL_ONLY and query_length == 1 and keys is None:
        return None
    batch = rows.shape[0]
    if keys is None:
        keys = torch.arange(key_length, device=rows.device).expand(batch, -1)
    if kind in (MaskKind.BOOL, MaskKind.ADDITIVE):
        mask = attention_mask[:, 0, :, -key_length:].expand(batch, -1, -1)
        samples = torch.arange(batch, device=mask.device)[:, None, None]
        picked = mask[samples, rows.to(mask.device)[:, :, None], keys.to(mask.device)[:, None, :]]
        picked = picked.to(rows.device)
        blocked = ~picked if kind == MaskKind.BOOL else picked < additive_threshold(picked.dtype)
        return blocked[:, None]
    # Causal only (sdpa's causal skip) or a 2D padding mask (flash): causal from the cache offset.
    positions = rows + (key_length - query_length)
    blocked = keys[:, None, :] > positions[..., None]
    if kind == MaskKind.PADDING:
        padding = ~attention_mask[:, -key_length:].bool().to(rows.device)
        blocked |= padding.gather(1, keys)[:, None, :]
    return blocked[:, None]
