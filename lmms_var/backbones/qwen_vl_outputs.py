"""How Qwen-VL processors (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) hand images and videos to the model.

Per image or video, a grid `(t, h, w)` in patches (`image_grid_thw`, `video_grid_thw`) and `t * h * w`
flat rows of pixels (`pixel_values`, `pixel_values_videos`), one per patch of `temporal_patch_size`
frames x 3 channels x `patch_size` x `patch_size` pixels, ordered so that the `merge_size` x
`merge_size` patches of one visual token are consecutive. An image is a video of one temporal group.
"""

from collections.abc import Mapping
from typing import Any

from lmms_var.backbones.base import ProcessorOutputs
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


QWEN_VL_OUTPUTS = ProcessorOutputs(
    token_inputs=("input_ids", "attention_mask", "mm_token_type_ids"),
    visual_inputs=(*_PIXELS.values(), *_GRIDS.values(), _VIDEO_TIMING),
    cut_visuals=_cut_visuals,
    pictures=_pictures,
)
