"""Step 1 of the spec: sink tokens are those with a massive RMS-normalised value in a sink dimension."""

from collections.abc import Sequence

import torch

RMS_EPS = 1e-6


def rms_normalized(hidden_states: torch.Tensor, dims: Sequence[int] | None = None) -> torch.Tensor:
    """|x / rms(x)| in float32, optionally only for the channels in `dims`.

    No learned weight is applied: sink detection looks at the raw residual stream. Selecting `dims`
    before dividing keeps the cost at O(T * |dims|) instead of O(T * hidden_size) for the output.
    """
    x = hidden_states.float()
    rms = x.pow(2).mean(dim=-1, keepdim=True).add(RMS_EPS).sqrt()
    if dims is not None:
        # Views, not an index tensor: copying indices to a GPU would synchronise it at every layer.
        x = torch.stack([x[..., dim] for dim in dims], dim=-1)
    return (x / rms).abs()


def find_sink_tokens(
    hidden_states: torch.Tensor,
    sink_dims: Sequence[int],
    tau: float,
    valid_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bool[B, T]: tokens whose RMS-normalised value exceeds `tau` in any sink dimension.

    `hidden_states` is the residual stream `[B, T, D]` entering a decoder layer; `valid_mask` (`[B, T]`,
    true for real tokens) keeps padding from ever being a sink.
    """
    if hidden_states.dim() != 3:
        raise ValueError(
            f"hidden_states must be [batch, tokens, hidden], got shape {tuple(hidden_states.shape)}"
        )
    dims = list(sink_dims)
    if not dims:
        raise ValueError("sink_dims must name at least one hidden-state channel")
    hidden_size = hidden_states.shape[-1]
    if max(dims) >= hidden_size or min(dims) < 0:
        raise ValueError(f"sink_dims {dims} must lie in [0, {hidden_size}) for hidden size {hidden_size}")
    sinks = rms_normalized(hidden_states, dims).amax(dim=-1) > tau
    if valid_mask is not None:
        sinks &= valid_mask.to(device=sinks.device, dtype=torch.bool)
    return sinks
