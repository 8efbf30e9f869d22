"""LLaVA-1.5 in transformers (`llava`, the llava-hf checkpoints): the paper's own backbone.

lmms-eval's `llava_hf` (simple and chat) loads `dtype=auto` (the checkpoint's), generates one prompt
at a time, keeps the processor as `_image_processor` with left padding, and catches every generation
error, answering "" instead (our model lets the error through). Its CLIP image processor takes an
image of any size (shortest side resized, then a centre crop), so it has no `image_size_refusal`.
"""

from collections.abc import Mapping
from typing import Any

from lmms_var.backbones.base import Backbone, LmmsEvalModel, ProcessorOutputs, VisualGrid
from lmms_var.backbones.pixels import seen_pictures


def _visual_grids(inputs: Mapping[str, Any], processor) -> list[VisualGrid]:
    """One grid per image: the crop the vision tower saw, cut into `patch_size` squares (its class
    token dropped, as the "default" feature strategy does)."""
    pixel_values = inputs.get("pixel_values")
    if pixel_values is None:
        return []
    height, width = pixel_values.shape[-2:]
    patch = processor.patch_size
    return [VisualGrid("image", 1, height // patch, width // patch, height, width)] * pixel_values.shape[0]


def _cut_visuals(inputs: Mapping[str, Any], _grids, _kind: str, first: int, stop: int) -> dict[str, Any]:
    """The images `[first, stop)`: one `pixel_values` entry each."""
    return {"pixel_values": inputs["pixel_values"][first:stop]}


def _pictures(inputs: Mapping[str, Any], processor) -> list[Any]:
    """Per image, Uint8[1, H, W, 3]: CLIP's processor resized it (shortest edge) and cropped the centre
    square (336 x 336 for LLaVA-1.5); `pixel_values` holds that square as it is."""
    return [picture[None] for picture in seen_pictures(inputs["pixel_values"], processor.image_processor)]


def _hub_options(args: Mapping[str, Any]) -> dict[str, Any]:
    return {"revision": args["revision"], "trust_remote_code": args["trust_remote_code"]}


def _state(pretrained: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """What lmms-eval's `LlavaHf.__init__` sets besides the model and devices."""
    from transformers import AutoProcessor  # see base.py's docstring

    processor = AutoProcessor.from_pretrained(pretrained, **_hub_options(args))
    processor.tokenizer.padding_side = "left"
    return {
        "pretrained": pretrained,
        "_image_processor": processor,
        "_tokenizer": processor.tokenizer,
        "chat_template": args["chat_template"],
        "use_cache": args["use_cache"],
        "max_frames_num": args["max_frames_num"],
    }


# lmms-eval's llava_hf loads LLaVA-1.5, LLaVA-NeXT and LLaVA-OneVision checkpoints (by model type):
# `llava_hf_var` serves the three backbones.
LLAVA_HF = LmmsEvalModel(
    model_id="llava_hf_var",
    upstream_id="llava_hf",
    simple_class="lmms_eval.models.simple.llava_hf.LlavaHf",
    chat_class="lmms_eval.models.chat.llava_hf.LlavaHf",
    default_pretrained="llava-hf/llava-1.5-7b-hf",
    upstream_args={
        "revision": "main",
        "trust_remote_code": False,
        "chat_template": None,
        "use_cache": True,
        "max_frames_num": 32,
    },
    state=_state,
    cuda_dtype="auto",
    hub_options=_hub_options,
    max_batch_size=1,
    processor_attribute="_image_processor",
)

LLAVA = Backbone(
    family="LLaVA-1.5",
    model_type="llava",
    loader="LlavaForConditionalGeneration",
    visual_token_attributes=("image_token_id",),
    projector=("multi_modal_projector.linear_1", "multi_modal_projector.linear_2"),
    visual_grids=_visual_grids,
    processor_outputs=ProcessorOutputs(
        token_inputs=("input_ids", "attention_mask"),
        visual_inputs=("pixel_values",),
        cut_visuals=_cut_visuals,
        pictures=_pictures,
    ),
    lmms_eval=LLAVA_HF,
    head_dims=(128,),  # 7B and 13B: 4096 / 32 and 5120 / 40
)
