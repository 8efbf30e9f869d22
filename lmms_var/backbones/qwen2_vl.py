"""Qwen2-VL (`qwen2_vl`), and the lmms-eval setup its successors Qwen2.5-VL and Qwen3-VL share.

lmms-eval's `qwen2_vl` has a simple class only, loads the checkpoint's own dtype (`torch_dtype="auto"`),
selects flash attention with `use_flash_attention_2`, and defaults to smaller images than
`qwen2_5_vl` (`min_pixels=3136`, `max_pixels=602112`).
"""

from collections.abc import Mapping
from typing import Any

from lmms_var.backbones.base import Backbone, LmmsEvalModel, VisualGrid
from lmms_var.backbones.qwen_vl_outputs import QWEN_VL_OUTPUTS


def qwen_visual_grids(inputs: Mapping[str, Any], processor) -> list[VisualGrid]:
    """Qwen-VL grids from `image_grid_thw` / `video_grid_thw` (in patches; tokens merge
    `merge_size` x `merge_size` patches)."""
    image_processor = processor.image_processor
    merge, patch = image_processor.merge_size, image_processor.patch_size
    return [
        VisualGrid(kind, frames, height // merge, width // merge, height * patch, width * patch)
        for kind in ("image", "video")
        if inputs.get(f"{kind}_grid_thw") is not None
        for frames, height, width in inputs[f"{kind}_grid_thw"].tolist()
    ]


def qwen_image_size_refusal(width: int, height: int) -> str | None:
    """Why the Qwen-VL image processor (Qwen2-VL's, which Qwen2.5-VL and Qwen3-VL use too) would
    refuse a `width` x `height` image: its own `smart_resize` is asked, with the processor's defaults.
    It refuses an aspect ratio over 200 (e.g. 6000x20), in the middle of generation."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import (  # see base.py's docstring
        Qwen2VLImageProcessor,
        smart_resize,
    )

    processor = Qwen2VLImageProcessor
    try:
        smart_resize(
            height,
            width,
            factor=processor.patch_size * processor.merge_size,
            min_pixels=processor.size["shortest_edge"],
            max_pixels=processor.size["longest_edge"],
        )
    except (ValueError, ZeroDivisionError) as error:
        return str(error) or type(error).__name__
    return None


def qwen_pixel_bounds(args: Mapping[str, Any]) -> None:
    """lmms-eval's Qwen-VL models hand `min_pixels` and `max_pixels` to the processor, which takes a
    minimum above the maximum without a word (and then resizes every image against one of them)."""
    bounds = {name: args[name] for name in ("min_pixels", "max_pixels")}
    for name, value in bounds.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
            raise ValueError(f"{name} must be a positive number of pixels, got {value!r}")
    if bounds["min_pixels"] > bounds["max_pixels"]:
        raise ValueError(
            f"min_pixels must be at most max_pixels, got min_pixels={bounds['min_pixels']} > "
            f"max_pixels={bounds['max_pixels']}"
        )


# Upstream args that lmms-eval's Qwen-VL `__init__`s do not store under their own names.
_NOT_STORED = ("reasoning_prompt", "max_length", "use_flash_attention_2")


def qwen_state(pretrained: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """What lmms-eval's Qwen-VL `__init__`s set: every other upstream arg under its own name, the
    reasoning prompt with `\\n` unescaped, the length limit, a processor with the pixel bounds and a tokenizer."""
    from transformers import AutoProcessor, AutoTokenizer  # see base.py's docstring

    reasoning_prompt = args["reasoning_prompt"]
    return {
        **{name: value for name, value in args.items() if name not in _NOT_STORED},
        "reasoning_prompt": reasoning_prompt.replace("\\n", "\n") if reasoning_prompt else None,
        "_max_length": args.get("max_length", 2048),
        "processor": AutoProcessor.from_pretrained(
            pretrained, max_pixels=args["max_pixels"], min_pixels=args["min_pixels"]
        ),
        "_tokenizer": AutoTokenizer.from_pretrained(pretrained),
    }


# The tokens around each image's (and each video frame group's) placeholders, in every Qwen-VL family.
QWEN_VISUAL_DELIMITERS = ("<|vision_start|>", "<|vision_end|>")

QWEN2_VL = Backbone(
    family="Qwen2-VL",
    model_type="qwen2_vl",
    loader="Qwen2VLForConditionalGeneration",
    visual_token_attributes=("image_token_id", "video_token_id"),
    visual_delimiters=QWEN_VISUAL_DELIMITERS,
    projector=("visual.merger.mlp.0", "visual.merger.mlp.2"),
    visual_grids=qwen_visual_grids,
    processor_outputs=QWEN_VL_OUTPUTS,
    image_size_refusal=qwen_image_size_refusal,
    lmms_eval=LmmsEvalModel(
        model_id="qwen2_vl_var",
        upstream_id="qwen2_vl",
        simple_class="lmms_eval.models.simple.qwen2_vl.Qwen2_VL",
        chat_class=None,
        default_pretrained="Qwen/Qwen2-VL-7B-Instruct",
        upstream_args={
            "use_cache": True,
            "use_flash_attention_2": False,
            "max_length": 2048,
            "max_pixels": 602112,
            "min_pixels": 3136,
            "max_num_frames": 32,
            "system_prompt": "You are a helpful assistant.",
            "interleave_visuals": False,
            "reasoning_prompt": None,
        },
        state=qwen_state,
        cuda_dtype="auto",
        flash_attention_flag="use_flash_attention_2",
        check_upstream_args=qwen_pixel_bounds,
    ),
    head_dims=(128,),  # 2B, 7B and 72B
)
