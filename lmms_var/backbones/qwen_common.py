"""What the Qwen-VL families (Qwen2-VL, Qwen2.5-VL, Qwen3-VL and its MoE, Qwen3.5) share: their
visual grids, processor outputs and image-size limits, and lmms-eval's setup of their models. Each
family's own file holds its `Backbone` only.

How their processors hand images and videos to the model: per image or video, a grid `(t, h, w)` in
patches (`image_grid_thw`, `video_grid_thw`) and `t * h * w` flat rows of pixels (`pixel_values`,
`pixel_values_videos`), one per patch of `temporal_patch_size` frames x 3 channels x `patch_size` x
`patch_size` pixels, ordered so that the `merge_size` x `merge_size` patches of one visual token are
consecutive. An image is a video of one temporal group.
"""

from collections.abc import Mapping
from typing import Any

from lmms_var.backbones.base import ProcessorOutputs, VisualGrid
from lmms_var.backbones.pixels import seen_pictures

_PIXELS = {"image": "pixel_values", "video": "pixel_values_videos"}
_GRIDS = {"image": "image_grid_thw", "video": "video_grid_thw"}
_SUB_PROCESSORS = {"image": "image_processor", "video": "video_processor"}
_VIDEO_TIMING = "second_per_grid_ts"  # Qwen2.5-VL: seconds per temporal group, one per video


def _cut_visuals(inputs: Mapping[str, Any], _grids, kind: str, first: int, stop: int) -> dict[str, Any]:
    """The pixel rows and grids of the `kind` visuals `[first, stop)` (each takes t * h * w rows)."""
    grids = inputs[_GRIDS[kind]]
    rows = grids.prod(dim=-1).tolist()
    start, end = sum(rows[:first]), sum(rows[:stop])
    cut = {_PIXELS[kind]: inputs[_PIXELS[kind]][start:end], _GRIDS[kind]: grids[first:stop]}
    if kind == "video" and inputs.get(_VIDEO_TIMING) is not None:
        cut[_VIDEO_TIMING] = inputs[_VIDEO_TIMING][first:stop]
    return cut


def _unpatchify(rows, thw: list[int], sub_processor):
    """Float[t, 3, H, W]: the first frame of each temporal group, the processor's patch order undone.

    The processors flatten `(t, h/m, w/m, m, m, C, temporal, p, p)`.
    """
    t, h, w = thw
    merge, patch, temporal = (
        sub_processor.merge_size,
        sub_processor.patch_size,
        sub_processor.temporal_patch_size,
    )
    blocks = rows.reshape(t, h // merge, w // merge, merge, merge, -1, temporal, patch, patch)
    frames = blocks.permute(0, 6, 5, 1, 3, 7, 2, 4, 8).reshape(t, temporal, -1, h * patch, w * patch)
    return frames[:, 0]


def _pictures(inputs: Mapping[str, Any], processor) -> list[Any]:
    """Per image, then per video: Uint8[t, H, W, 3], the resized picture of each temporal group."""
    pictures = []
    for kind, grids_key in _GRIDS.items():
        if inputs.get(grids_key) is None:
            continue
        sub_processor = getattr(processor, _SUB_PROCESSORS[kind])
        start = 0
        for thw in inputs[grids_key].tolist():
            count = thw[0] * thw[1] * thw[2]
            frames = _unpatchify(inputs[_PIXELS[kind]][start : start + count], thw, sub_processor)
            pictures.append(seen_pictures(frames, sub_processor))
            start += count
    return pictures


# The tokens around each image's (and each video frame group's) placeholders, in every Qwen-VL family.
QWEN_VISUAL_DELIMITERS = ("<|vision_start|>", "<|vision_end|>")

QWEN_VL_OUTPUTS = ProcessorOutputs(
    token_inputs=("input_ids", "attention_mask", "mm_token_type_ids"),
    visual_inputs=(*_PIXELS.values(), *_GRIDS.values(), _VIDEO_TIMING),
    cut_visuals=_cut_visuals,
    pictures=_pictures,
)


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
