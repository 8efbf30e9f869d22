"""Gemma 3 (`gemma3`): a SigLIP tower, pooled to a fixed square of tokens per image, into Gemma 3.

What VAR must know: the tokens of one image attend to each other bidirectionally and most decoder
layers attend within a sliding window, both through the 4-D mask transformers builds (Gemma 3 refuses
flash attention, which would drop the image part). VAR's rows are text rows and its explicit paths
read that mask, never assume causality; at a decode step where a sliding layer's cache has dropped
the oldest keys, VAR leaves that layer alone (its keys no longer line up with the prompt's positions).
Every image becomes `mm_tokens_per_image` tokens, a square grid over the resized picture (pan and
scan, off by default, adds crops: each is an image of its own here, in processor order).

lmms-eval's `gemma3` (simple only) loads bfloat16 with `device_map=auto`, casts the processor's
outputs to bfloat16 whatever the model's dtype, and moves inputs to `"cuda"` under `device_map=auto`.
"""

import math
from collections.abc import Mapping
from typing import Any

from lmms_var.backbones.base import Backbone, LmmsEvalModel, ProcessorOutputs, VisualGrid
from lmms_var.backbones.pixels import seen_pictures


def _visual_grids(inputs: Mapping[str, Any], processor) -> list[VisualGrid]:
    """One square grid per image: `image_seq_length` tokens pooled from the resized picture."""
    pixel_values = inputs.get("pixel_values")
    if pixel_values is None:
        return []
    height, width = pixel_values.shape[-2:]
    side = math.isqrt(processor.image_seq_length)
    return [VisualGrid("image", 1, side, side, height, width)] * pixel_values.shape[0]


def _cut_visuals(inputs: Mapping[str, Any], _grids, _kind: str, first: int, stop: int) -> dict[str, Any]:
    """The images `[first, stop)`: one `pixel_values` entry each."""
    return {"pixel_values": inputs["pixel_values"][first:stop]}


def _pictures(inputs: Mapping[str, Any], processor) -> list[Any]:
    """Per image, Uint8[1, H, W, 3]: the picture resized to the tower's square, as `pixel_values` holds it."""
    return [picture[None] for picture in seen_pictures(inputs["pixel_values"], processor.image_processor)]


def _state(pretrained: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """What lmms-eval's `Gemma3.__init__` sets besides the model and devices."""
    from transformers import AutoProcessor, AutoTokenizer  # see base.py's docstring

    reasoning_prompt = args["reasoning_prompt"]
    return {
        "_tokenizer": AutoTokenizer.from_pretrained(pretrained, trust_remote_code=args["trust_remote_code"]),
        "processor": AutoProcessor.from_pretrained(
            pretrained, max_pixels=args["max_pixels"], min_pixels=args["min_pixels"]
        ),
        "_max_length": 2048,
        "use_cache": args["use_cache"],
        "system_prompt": args["system_prompt"],
        "interleave_visuals": args["interleave_visuals"],
        "max_pixels": args["max_pixels"],
        "min_pixels": args["min_pixels"],
        "max_num_frames": args["max_num_frames"],
        "reasoning_prompt": reasoning_prompt.replace("\\n", "\n") if reasoning_prompt else None,
    }


GEMMA3 = Backbone(
    family="Gemma 3",
    model_type="gemma3",
    loader="Gemma3ForConditionalGeneration",
    visual_token_attributes=("image_token_id",),
    visual_delimiters=("<start_of_image>", "<end_of_image>"),
    projector=None,  # a norm and a bare [vision, text] matrix
    query_key_norms=("self_attn.q_norm", "self_attn.k_norm"),
    visual_grids=_visual_grids,
    processor_outputs=ProcessorOutputs(
        token_inputs=("input_ids", "attention_mask", "token_type_ids"),
        visual_inputs=("pixel_values",),
        cut_visuals=_cut_visuals,
        pictures=_pictures,
    ),
    lmms_eval=LmmsEvalModel(
        model_id="gemma3_var",
        upstream_id="gemma3",
        simple_class="lmms_eval.models.simple.gemma3.Gemma3",
        chat_class=None,
        default_pretrained="google/gemma-3-4b-it",
        upstream_args={
            "trust_remote_code": True,
            "use_cache": True,
            "min_pixels": 256 * 28 * 28,
            "max_pixels": 1605632,
            "max_num_frames": 32,
            "interleave_visuals": False,
            "system_prompt": "You are a helpful assistant.",
            "reasoning_prompt": None,
        },
        state=_state,
    ),
    head_dims=(128, 256),  # 4B and 12B: 256; 27B: 128 (explicit `head_dim` in the config)
)
