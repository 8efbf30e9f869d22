"""An eager VAR written from the spec alone, independent of `lmms_var.patch` and `lmms_var.backbones`.

It materialises the full attention of every layer, finds sinks with its own hooks at prefill and
applies the core's redistribution to every allowed row — the straightforward (slow) way the spec
reads — at prefill and at every decode step of `generate`. What it knows about a family (the visual
placeholder tokens) comes from the testing package; every family in the test matrix keeps its text
decoder at `model.model.language_model`.
"""

from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from lmms_var import VARConfig
from lmms_var.core import find_sink_tokens, redistribute_attention
from lmms_var.testing.tiny_families import TINY_FAMILIES

NAME = "test_eager_var"


def visual_token_ids(model_type: str, processor) -> list[int]:
    """Ids of a family's image and video placeholder tokens, from the testing package's facts."""
    return processor.tokenizer.convert_tokens_to_ids(list(TINY_FAMILIES[model_type].visual_tokens))


@contextmanager
def eager_var(model, config: VARConfig, inputs, visual_ids: list[int]):
    """Run `model` with the reference eager VAR on this one prompt batch (a forward or a `generate`)."""
    input_ids, valid = inputs["input_ids"], inputs["attention_mask"].bool()
    prompt_length = input_ids.shape[1]
    visual = torch.isin(input_ids, torch.tensor(visual_ids, device=input_ids.device))
    # Spec step 2: at prefill the text after the first visual token; at decode the new token's row.
    allowed_rows = (visual.cumsum(1) > 0) & ~visual & valid
    decode_rows = visual.any(dim=1)
    text_model = model.get_submodule("model.language_model")
    active = set(config.active_layers(len(text_model.layers)))
    sinks: dict[int, torch.Tensor] = {}
    positions = [0]  # seen so far: a layer whose cache holds fewer keys (a sliding window) is left alone

    def attention(module, query, key, value, mask, scaling, dropout=0.0, **kwargs):
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, 1).float(), value.repeat_interleave(groups, 1).float()
        scores = query.float() @ key.transpose(-1, -2) * scaling + mask.float()
        attn = torch.softmax(scores, dim=-1)
        if module.layer_idx in active and key.shape[2] == positions[0]:
            new = key.shape[2] - prompt_length  # generated positions: never visual, never sinks
            if query.shape[2] == prompt_length:
                rows = allowed_rows
            else:
                rows = decode_rows[:, None].expand(-1, query.shape[2])
            attn = redistribute_attention(
                attn,
                torch.nn.functional.pad(visual, (0, new)),
                torch.nn.functional.pad(sinks[module.layer_idx], (0, new)),
                rows,
                p=config.p,
                rho=config.rho,
                summ=config.summ,
            )
        return (attn @ value).to(query.dtype).transpose(1, 2).contiguous(), attn

    def sink_hook(index):
        def hook(_module, args, kwargs):
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            if hidden.shape[1] == prompt_length:  # prefill: decode steps reuse its sinks
                sinks[index] = find_sink_tokens(hidden, config.sink_dims, config.tau, valid)

        return hook

    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, eager_mask)
    text_config = text_model.config
    original = text_config._attn_implementation

    def count_positions(_module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        new = (embeds if embeds is not None else kwargs.get("input_ids", args[0] if args else None)).shape[1]
        positions[0] = new if new == prompt_length else positions[0] + new

    hooks = [
        layer.register_forward_pre_hook(sink_hook(i), with_kwargs=True)
        for i, layer in enumerate(text_model.layers)
    ]
    hooks.append(text_model.register_forward_pre_hook(count_positions, with_kwargs=True))
    text_config._attn_implementation = NAME
    try:
        yield
    finally:
        text_config._attn_implementation = original
        for hook in hooks:
            hook.remove()
