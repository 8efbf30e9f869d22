"""What attention maps need to know about a model family, in one place (Qwen2-VL-style models here).

Qwen2-VL, Qwen2.5-VL and Qwen3-VL processors report each image's and video's grid in patches
(`image_grid_thw`, `video_grid_thw`) and hand the vision tower flat rows of patches
(`pixel_values`); the model's config names the placeholder token ids. Everything else in
`lmms_var.attention_maps` is family-agnostic and reaches the model only through these functions,
so they can move into the per-family backbone adapters as they are.
"""

from collections.abc import Mapping

import numpy as np
import torch

from lmms_var.attention_maps.layout import IMAGE, VIDEO, VisualGrids, VisualPanel
from lmms_var.backbones import backbone_for

# The processor outputs the model's forward takes; generation settings are not among them.
MODEL_INPUTS = (
    "input_ids",
    "attention_mask",
    "mm_token_type_ids",
    "pixel_values",
    "image_grid_thw",
    "pixel_values_videos",
    "video_grid_thw",
    "second_per_grid_ts",
)
# Inputs with one entry per token (text, image or video type in `mm_token_type_ids`; text is 0).
PER_TOKEN_INPUTS = ("input_ids", "attention_mask", "mm_token_type_ids")
_PIXELS = {IMAGE: "pixel_values", VIDEO: "pixel_values_videos"}
_GRIDS = {IMAGE: "image_grid_thw", VIDEO: "video_grid_thw"}


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The text decoder's layers (their `self_attn` modules return attention weights under eager)."""
    return backbone_for(model).decoder_layers(model)


def text_config(model: torch.nn.Module):
    """The config whose `_attn_implementation` the text decoder's attention reads."""
    return backbone_for(model).text_config(model)


def visual_grids(model: torch.nn.Module, processor, inputs: Mapping) -> VisualGrids:
    """The layout inputs of a processor's outputs: token ids, grids, patch and merge sizes."""
    config = backbone_for(model).multimodal_model(model).config

    def thws(kind: str) -> tuple[tuple[int, int, int], ...]:
        grid = inputs.get(_GRIDS[kind])
        return () if grid is None else tuple(tuple(int(n) for n in row) for row in grid.tolist())

    return VisualGrids(
        image_token_id=config.image_token_id,
        video_token_id=getattr(config, "video_token_id", None),
        image_grids=thws(IMAGE),
        video_grids=thws(VIDEO),
        patch_size=processor.image_processor.patch_size,
        merge_size=processor.image_processor.merge_size,
    )


def _unpatchify(
    rows: torch.Tensor, thw: tuple[int, int, int], grids: VisualGrids, temporal: int
) -> torch.Tensor:
    """Float[t, C, H, W]: the first frame of each temporal group, from the processor's flat patch rows.

    The processors flatten `(t, h/m, w/m, m, m, C, temporal, p, p)`; this undoes that order.
    """
    t, h, w = thw
    merge, patch = grids.merge_size, grids.patch_size
    blocks = rows.reshape(t, h // merge, w // merge, merge, merge, -1, temporal, patch, patch)
    frames = blocks.permute(0, 6, 5, 1, 3, 7, 2, 4, 8).reshape(t, temporal, -1, h * patch, w * patch)
    return frames[:, 0]


def seen_images(
    processor, inputs: Mapping, grids: VisualGrids, panels: list[VisualPanel]
) -> list[np.ndarray]:
    """Uint8[H, W, 3] per panel: the resized image (or the group's first frame) the model saw.

    Rebuilt from the pixels the processor produced, normalisation undone, so a heatmap is drawn on
    exactly what the vision tower was given (up to rounding).
    """
    seen: dict[tuple[str, int, int], np.ndarray] = {}
    for kind in (IMAGE, VIDEO):
        thws = grids.image_grids if kind == IMAGE else grids.video_grids
        if not thws:
            continue
        sub_processor = processor.image_processor if kind == IMAGE else processor.video_processor
        pixels = inputs[_PIXELS[kind]].detach().float().cpu()
        start = 0
        for index, thw in enumerate(thws):
            count = thw[0] * thw[1] * thw[2]
            frames = _unpatchify(pixels[start : start + count], thw, grids, sub_processor.temporal_patch_size)
            start += count
            if getattr(sub_processor, "do_normalize", True):
                mean = torch.tensor(sub_processor.image_mean)[:, None, None]
                frames = frames * torch.tensor(sub_processor.image_std)[:, None, None] + mean
            if getattr(sub_processor, "do_rescale", True):
                frames = frames / sub_processor.rescale_factor
            frames = frames.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
            for group, frame in enumerate(frames):
                seen[kind, index, group] = frame
    return [seen[panel.kind, panel.index, panel.group or 0] for panel in panels]


def split_batch(inputs: Mapping, grids: VisualGrids) -> list[dict]:
    """A padded batch's model inputs as one batch-of-one dict per sample, padding removed.

    `grids` describes the whole batch (its grids in processor order): each sample takes the next
    images and videos whose token counts fill its placeholders.
    """
    input_ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    tokens_per_visual = grids.merge_size**2
    taken = {IMAGE: 0, VIDEO: 0}  # visuals used so far
    pixel_rows = {IMAGE: 0, VIDEO: 0}
    samples = []
    for index in range(input_ids.shape[0]):
        keep = mask[index].bool() if mask is not None else torch.ones_like(input_ids[index], dtype=torch.bool)
        ids = input_ids[index][keep]
        sample = {
            key: inputs[key][index][keep][None] for key in PER_TOKEN_INPUTS if inputs.get(key) is not None
        }
        for kind, token_id in ((IMAGE, grids.image_token_id), (VIDEO, grids.video_token_id)):
            thws = grids.image_grids if kind == IMAGE else grids.video_grids
            placeholders = int((ids == token_id).sum()) if token_id is not None else 0
            first = taken[kind]
            while placeholders > 0:
                t, h, w = thws[taken[kind]]
                placeholders -= t * h * w // tokens_per_visual
                taken[kind] += 1
            if taken[kind] == first:
                continue
            rows = sum(t * h * w for t, h, w in thws[first : taken[kind]])
            sample[_PIXELS[kind]] = inputs[_PIXELS[kind]][pixel_rows[kind] : pixel_rows[kind] + rows]
            sample[_GRIDS[kind]] = inputs[_GRIDS[kind]][first : taken[kind]]
            pixel_rows[kind] += rows
            if kind == VIDEO and inputs.get("second_per_grid_ts") is not None:
                sample["second_per_grid_ts"] = inputs["second_per_grid_ts"][first : taken[kind]]
        samples.append(sample)
    return samples


def with_answer(inputs: Mapping, answer: torch.Tensor) -> dict:
    """One prompt's inputs with the text tokens `answer` (Long[n]) appended, for one forward over both."""
    extended = dict(inputs)
    for key in PER_TOKEN_INPUTS:
        if inputs.get(key) is not None:
            tail = (
                answer[None]
                if key == "input_ids"
                else torch.full_like(answer[None], int(key == "attention_mask"))
            )
            extended[key] = torch.cat([inputs[key], tail.to(inputs[key].dtype)], dim=1)
    return extended
