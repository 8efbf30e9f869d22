"""The attention function VAR registers with transformers' `AttentionInterface`.

It wraps the model's own kernel (sdpa, eager or flash): every row is first computed by that kernel,
then, in layers where VAR acts, the rows spec step 2 allows are recomputed explicitly in float32,
redistributed, and written back where a head was selected. Only those rows are materialised
(`[H, R, K]` per sample), so memory stays linear in sequence length. With `fused=False` the whole
`[H, Q, K]` attention is materialised instead (the reference "eager VAR", for checks and benchmarks).
"""

import sys
from collections.abc import Callable

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from lmms_var.core import redistribute_with_selection

STATE_ATTRIBUTE = "_lmms_var_state"
BASE_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
_PREFIX = "lmms_var_"


def registered_name(base_implementation: str) -> str:
    """The name VAR registers for a base kernel, e.g. `lmms_var_sdpa`."""
    if base_implementation not in BASE_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation must be one of {list(BASE_IMPLEMENTATIONS)} under VAR, got {base_implementation!r}"
        )
    name = _PREFIX + base_implementation
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, var_attention_forward)
        # The mask must be built for the wrapped kernel, or padded batches run unmasked.
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base_implementation])
    return name


def _base_kernel(module: torch.nn.Module, base_implementation: str) -> Callable:
    if base_implementation == "eager":
        # Eager attention lives in each modeling file, not in the registry.
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[base_implementation]


def var_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Base kernel for all rows, then VAR for the allowed rows of layers with visual sinks."""
    state = getattr(module, STATE_ATTRIBUTE)
    base = _base_kernel(module, state.base_implementation)
    output, weights = base(
        module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
    )
    layer = module.layer_idx
    if not state.acts_on(layer):
        return output, weights
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    recompute = _redistribute_rows if state.fused else _redistribute_all_rows
    recompute(state, layer, output, query, key, value, attention_mask, scaling)
    return output, weights


def _allowed_keys(
    attention_mask: torch.Tensor | None, sample: int, rows: torch.Tensor, query_length: int, key_length: int
) -> torch.Tensor:
    """Bool[R, K]: keys each of `rows` may attend to, from any mask format the base kernels use."""
    device = rows.device
    if attention_mask is not None and attention_mask.dim() == 4:
        mask = attention_mask[sample, 0].index_select(0, rows.to(attention_mask.device)).to(device)
        return mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    # No mask (sdpa's causal skip) or a 2D padding mask (flash): causal from the cache offset.
    positions = rows + (key_length - query_length)
    allowed = torch.arange(key_length, device=device)[None, :] <= positions[:, None]
    if attention_mask is not None:
        allowed &= attention_mask[sample, -key_length:].bool().to(device)[None, :]
    return allowed


def _explicit_attention(
    query: torch.Tensor, key: torch.Tensor, allowed: torch.Tensor, scaling: float
) -> torch.Tensor:
    """Float32 softmax(q k^T) for query [H, R, d] and key [Hkv, K, d] (GQA without repeating keys)."""
    heads, rows, head_dim = query.shape
    kv_heads = key.shape[0]
    grouped = query.float().reshape(kv_heads, heads // kv_heads * rows, head_dim)
    scores = (grouped @ key.float().transpose(-1, -2)).view(heads, rows, -1) * scaling
    scores = scores.masked_fill(~allowed[None], float("-inf"))
    return torch.softmax(scores, dim=-1).nan_to_num(0.0)


def _apply_values(attn: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """[H, R, K] @ [Hkv, K, d] -> [H, R, d] in float32."""
    heads, rows, keys = attn.shape
    kv_heads = value.shape[0]
    return (attn.reshape(kv_heads, heads // kv_heads * rows, keys) @ value.float()).view(heads, rows, -1)


def _redistribute_sample(
    state,
    layer: int,
    sample: int,
    rows: torch.Tensor,
    output,
    query,
    key,
    value,
    attention_mask,
    scaling,
    row_mask: torch.Tensor | None = None,
) -> None:
    """Recompute `rows` of one sample explicitly and redistribute those in `row_mask` (default: all).

    Without `row_mask` (fused path) only selected heads are written back, so untouched rows keep the
    base kernel's exact output; with it (eager path) every recomputed row is written.
    """
    config = state.config
    query_length, key_length = query.shape[2], key.shape[2]
    image_mask, sink_mask = state.key_masks(layer, key_length, query.device)
    allowed = _allowed_keys(attention_mask, sample, rows, query_length, key_length)
    attn = _explicit_attention(query[sample, :, rows], key[sample], allowed, scaling)
    new_attn, selected = redistribute_with_selection(
        attn[None],
        image_mask[sample : sample + 1],
        sink_mask[sample : sample + 1],
        (row_mask if row_mask is not None else torch.ones_like(rows, dtype=torch.bool))[None],
        p=config.p,
        rho=config.rho,
        summ=config.summ,
    )
    selected = selected[0]  # [H, R]
    new_output = _apply_values(new_attn[0], value[sample]).transpose(0, 1)  # [R, H, d]
    if row_mask is None:  # output is [B, Q, H, d]
        new_output = torch.where(
            selected.transpose(0, 1)[..., None], new_output, output[sample, rows].float()
        )
    output[sample, rows] = new_output.to(output.dtype)
    if state.collect_diagnostics:
        sink_mass = (attn * sink_mask[sample]).sum(-1)
        moved = ((1.0 - config.p) * sink_mass * selected).sum()
        state.activity[layer].add(int(selected.sum()), float(moved), sample)


@torch.no_grad()
def _redistribute_rows(state, layer, output, query, key, value, attention_mask, scaling) -> None:
    eligible = state.query_mask(query.shape[2], query.device)
    for sample in range(query.shape[0]):
        rows = eligible[sample].nonzero().squeeze(-1)
        if rows.numel():
            _redistribute_sample(
                state, layer, sample, rows, output, query, key, value, attention_mask, scaling
            )


@torch.no_grad()
def _redistribute_all_rows(state, layer, output, query, key, value, attention_mask, scaling) -> None:
    """Eager VAR: every row of every sample through the explicit path, selection by the query mask."""
    eligible = state.query_mask(query.shape[2], query.device)
    all_rows = torch.arange(query.shape[2], device=query.device)
    for sample in range(query.shape[0]):
        _redistribute_sample(
            state,
            layer,
            sample,
            all_rows,
            output,
            query,
            key,
            value,
            attention_mask,
            scaling,
            eligible[sample],
        )
