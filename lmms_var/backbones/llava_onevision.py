"""LLaVA-OneVision in transformers (`llava_onevision`, llava-hf's llava-onevision-qwen2 checkpoints).

Images as LLaVA-NeXT's (`llava_next.py`), with two differences: a high-res grid larger than
`anyres_max_9` allows is shrunk (bilinear) before the newlines are added, and an image whose prompt
holds several images (`batch_num_images`) is seen as its base only, one newline after it. A video's
frames (`pixel_values_videos`, [videos, frames, 3, S, S]) are each pooled to ceil(side / 2) tokens a
side, frame after frame, one newline after the last, all `config.video_token_id`. lmms-eval's
`llava_hf` loads it (`llava_hf_var`).
"""

import math
from collections.abc import Mapping
from typing import Any

from lmms_var.backbones.base import Backbone, ProcessorOutputs, VisualGrid
from lmms_var.backbones.llava import LLAVA_HF
from lmms_var.backbones.llava_next import (
    anyres_image_pictures,
    anyres_visual_grids,
    cut_anyres_images,
    image_range,
)
from lmms_var.backbones.pixels import seen_pictures


def _tile_side(processor, _tile: int) -> int:
    """Tokens per tile side: the processor's `num_image_tokens` is side x side (SigLIP: no class token)."""
    return math.isqrt(processor.num_image_tokens)


_image_grids = anyres_visual_grids(_tile_side)


def _video_shape(processor, tile: int) -> tuple[int, int, int]:
    """(pixels a frame's patches cover, tokens per side of the pooled frame, pixels per token of its
    picture: 27 patches of 14 px pooled to 14 tokens, 27 px each, for SigLIP-384)."""
    side = _tile_side(processor, tile)
    seen = side * (tile // side)
    pooled = math.ceil(side / 2)
    return seen, pooled, seen // pooled


def _visual_grids(inputs: Mapping[str, Any], processor) -> list[VisualGrid]:
    """The images' grids (`llava_next.anyres_visual_grids`), then one per video."""
    grids = _image_grids(inputs, processor)
    videos = inputs.get("pixel_values_videos")
    if videos is not None:
        _, pooled, per_token = _video_shape(processor, videos.shape[-1])
        side = pooled * per_token
        grids += [VisualGrid("video", videos.shape[1], pooled, pooled, side, side, tail=1)] * videos.shape[0]
    return grids


def _cut_visuals(inputs: Mapping[str, Any], grids: list[VisualGrid], kind: str, first: int, stop: int):
    """Images as LLaVA-NeXT's, and how many of them each prompt holds; videos: one entry each."""
    if kind == "video":
        return {"pixel_values_videos": inputs["pixel_values_videos"][first:stop]}
    cut = cut_anyres_images(inputs, grids, first, stop)
    counts = inputs.get("batch_num_images")
    if counts is not None:
        start, end = image_range(grids, first, stop)
        kept, offset = [], 0
        for count in counts.tolist():
            overlap = min(end, offset + count) - max(start, offset)
            kept += [overlap] if overlap > 0 else []
            offset += count
        cut["batch_num_images"] = counts.new_tensor(kept)
    return cut


def _pictures(inputs: Mapping[str, Any], processor) -> list[Any]:
    """The images' pictures, then per video Uint8[frames, H, W, 3] (each frame cut to what its patches
    cover, resized to whole pixels per token where pooling leaves none)."""
    import torch  # see base.py's docstring

    pictures = anyres_image_pictures(inputs, processor, _tile_side)
    videos = inputs.get("pixel_values_videos")
    if videos is not None:
        seen, pooled, per_token = _video_shape(processor, videos.shape[-1])
        for frames in videos:
            frames = frames[..., :seen, :seen]
            if seen != pooled * per_token:  # pooled rows that do not split the frame in whole pixels
                frames = torch.nn.functional.interpolate(frames.float(), size=[pooled * per_token] * 2)
            pictures.append(seen_pictures(frames, processor.video_processor))
    return pictures


LLAVA_ONEVISION = Backbone(
    family="LLaVA-OneVision",
    model_type="llava_onevision",
    loader="LlavaOnevisionForConditionalGeneration",
    visual_token_attributes=("image_token_id", "video_token_id"),
    projector=("multi_modal_projector.linear_1", "multi_modal_projector.linear_2"),
    visual_grids=_visual_grids,
    processor_outputs=ProcessorOutputs(
        token_inputs=("input_ids", "attention_mask"),
        visual_inputs=("pixel_values", "image_sizes", "batch_num_images", "pixel_values_videos"),
        cut_visuals=_cut_visuals,
        pictures=_pictures,
    ),
    lmms_eval=LLAVA_HF,
    head_dims=(64, 128),  # 0.5B: 896 / 14; 7B and 72B: 128
)
