"""One prompt's processor outputs as the attention maps run them: the model's inputs only, cut out
of a padded batch, or with an answer appended.

What the outputs are (which are per token, which describe the visuals, how to cut one visual's out)
is the family's `Backbone.processor_outputs`; this module only follows it.
"""

from collections.abc import Mapping

import torch

from lmms_var.backbones import Backbone, backbone_for


def model_inputs(backbone: Backbone, inputs: Mapping) -> dict:
    """The processor outputs the forward takes (generation settings and the like left out)."""
    return {
        key: inputs[key] for key in backbone.processor_outputs.model_inputs if inputs.get(key) is not None
    }


def split_batch(model: torch.nn.Module, processor, inputs: Mapping) -> list[dict]:
    """A padded batch's model inputs as one batch-of-one dict per prompt, padding removed.

    Each prompt takes the next visuals of each kind (in processor order) whose tokens fill its
    placeholders of that kind. Raises `ValueError` when they do not add up.
    """
    backbone = backbone_for(model)
    outputs = backbone.processor_outputs
    placeholder_ids = backbone.placeholder_ids(model.config)
    grids = backbone.visual_grids(inputs, processor)
    tokens = {kind: [grid.tokens for grid in grids if grid.kind == kind] for kind in placeholder_ids}
    input_ids, mask = inputs["input_ids"], inputs.get("attention_mask")
    taken = dict.fromkeys(placeholder_ids, 0)  # visuals of each kind used by earlier prompts
    samples = []
    for row in range(input_ids.shape[0]):
        keep = mask[row].bool() if mask is not None else torch.ones_like(input_ids[row], dtype=torch.bool)
        sample = {
            key: inputs[key][row][keep][None] for key in outputs.token_inputs if inputs.get(key) is not None
        }
        for kind, token_id in placeholder_ids.items():
            placeholders = int((sample["input_ids"] == token_id).sum())
            first = taken[kind]
            while placeholders > 0 and taken[kind] < len(tokens[kind]):
                placeholders -= tokens[kind][taken[kind]]
                taken[kind] += 1
            if placeholders != 0:
                raise ValueError(
                    f"inputs: prompt {row}'s {kind} placeholders do not match the batch's {kind} grids"
                )
            if taken[kind] > first:
                kind_grids = [grid for grid in grids if grid.kind == kind]
                sample |= outputs.cut_visuals(inputs, kind_grids, kind, first, taken[kind])
        samples.append(sample)
    return samples


def with_answer(backbone: Backbone, inputs: Mapping, answer: torch.Tensor) -> dict:
    """One prompt's inputs with the text tokens `answer` (Long[n]) appended, for one forward over both.

    The answer's `attention_mask` is 1; any other per-token output is 0 there, as at any text token.
    """
    extended = dict(inputs)
    for key in backbone.processor_outputs.token_inputs:
        if inputs.get(key) is not None:
            if key == "input_ids":
                tail = answer[None]
            else:
                tail = torch.full_like(answer[None], int(key == "attention_mask"))
            extended[key] = torch.cat([inputs[key], tail.to(inputs[key].dtype)], dim=1)
    return extended
