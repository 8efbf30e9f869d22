"""An eager VAR written from the spec alone, independent of `lmms_var.patch`, to check the fused path.

It materialises the full attention of every layer, finds sinks with its own hooks and applies the
core's redistribution to every allowed row — the straightforward (slow) way the spec reads.
"""

from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from lmms_var import VARConfig
from lmms_var.core import find_sink_tokens, redistribute_attention

NAME = "test_eager_var"


@contextmanager
def eager_var(model, config: VARConfig, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """Run `model` (prefill only) with the reference eager VAR for this one batch."""
    visual_ids = torch.tensor(
        [model.config.image_token_id, model.config.video_token_id], device=input_ids.device
    )
    visual = torch.isin(input_ids, visual_ids)
    valid = attention_mask.bool()
    allowed_rows = (visual.cumsum(1) > 0) & ~visual & valid
    layers = model.model.language_model.layers
    active = set(config.active_layers(len(layers)))
    sinks: dict[int, torch.Tensor] = {}

    def attention(module, query, key, value, mask, scaling, dropout=0.0, **kwargs):
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, 1).float(), value.repeat_interleave(groups, 1).float()
        scores = query.float() @ key.transpose(-1, -2) * scaling + mask.float()
        attn = torch.softmax(scores, dim=-1)
        if module.layer_idx in active:
            attn = redistribute_attention(
                attn,
                visual,
                sinks[module.layer_idx],
                allowed_rows,
                p=config.p,
                rho=config.rho,
                summ=config.summ,
            )
        return (attn @ value).to(query.dtype).transpose(1, 2).contiguous(), attn

    def sink_hook(index):
        def hook(_module, args, kwargs):
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            sinks[index] = find_sink_tokens(hidden, config.sink_dims, config.tau, valid)

        return hook

    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, eager_mask)
    text_config = model.model.language_model.config
    original = text_config._attn_implementation
    hooks = [
        layer.register_forward_pre_hook(sink_hook(i), with_kwargs=True) for i, layer in enumerate(layers)
    ]
    text_config._attn_implementation = NAME
    try:
        yield
    finally:
        text_config._attn_implementation = original
        for hook in hooks:
            hook.remove()
