"""InternVL in transformers (`internvl`, the OpenGVLab `...-hf` checkpoints: InternVL3, InternVL3.5).

The processor cuts each image into square tiles (448 px in InternVL) on the grid whose aspect ratio
is closest to the image's (`min_patches`..`max_patches` tiles), resized to fill it, and adds a
thumbnail of the whole image when there is more than one tile. Each tile becomes
`image_seq_length` tokens (16 x 16, row-major), tile after tile, the thumbnail last, all one run of
the context token (`config.image_token_id`) between `<img>` and `</img>`. A video's frames are one
tile each, so they read as images here. The processor returns neither the tile counts nor the grids:
a run's length gives the count, and the grid is the arrangement whose tiles, put together and
shrunk, best match the thumbnail.

lmms-eval's `internvl_hf` has a chat class only; it loads bfloat16 with `device_map=auto` and moves
inputs to `device` (`cuda` by default), and generates one prompt at a time (it asserts so).
"""

from collections.abc import Mapping
from typing import Any

from lmms_var.backbones.base import Backbone, LmmsEvalModel, ProcessorOutputs, VisualGrid
from lmms_var.backbones.pixels import seen_pictures, stitch_tiles


def _runs(input_ids, token_id: int) -> list[int]:
    """Lengths of the runs of `token_id` in a batch of prompts, prompt after prompt."""
    lengths = []
    for row in input_ids.tolist():
        length = 0
        for token in [*row, None]:
            if token == token_id:
                length += 1
            elif length:
                lengths.append(length)
                length = 0
    return lengths


def _tile_grid(tiles, thumbnail) -> tuple[int, int]:
    """(rows, cols) of the tiles: of the arrangements of their number, the one that, shrunk to the
    thumbnail's size (block means), differs least from it."""
    count, side = tiles.shape[0], tiles.shape[-1]

    def mismatch(rows: int, cols: int) -> float:
        shrunk = stitch_tiles(tiles, rows, cols).reshape(3, side, rows, side, cols).mean(dim=(2, 4))
        return float((shrunk - thumbnail).square().mean())

    shapes = [(rows, count // rows) for rows in range(1, count + 1) if count % rows == 0]
    return min(shapes, key=lambda shape: mismatch(*shape))


def _images(inputs: Mapping[str, Any], processor) -> list[tuple[Any, tuple[int, int] | None]]:
    """Per image (batch order): (its pixel rows Float[n, 3, S, S], (rows, cols) of its tiles, or None
    for a single tile); the thumbnail, when there is one, is the last row."""
    pixel_values = inputs.get("pixel_values")
    if pixel_values is None:
        return []
    images, start = [], 0
    for run in _runs(inputs["input_ids"], processor.image_token_id):
        count = run // processor.image_seq_length
        rows = pixel_values[start : start + count]
        images.append((rows, None if count == 1 else _tile_grid(rows[:-1], rows[-1])))
        start += count
    return images


def _visual_grids(inputs: Mapping[str, Any], processor) -> list[VisualGrid]:
    """Per image: its tiles as one grid over the resized image they were cut from, then its thumbnail."""
    side = round(processor.image_seq_length**0.5)
    grids = []
    for rows, tiles in _images(inputs, processor):
        pixels = rows.shape[-1]
        if tiles is None:
            grids.append(VisualGrid("image", 1, side, side, pixels, pixels))
            continue
        tile_rows, tile_cols = tiles
        grids += [
            VisualGrid(
                "image",
                1,
                tile_rows * side,
                tile_cols * side,
                tile_rows * pixels,
                tile_cols * pixels,
                tiles=tiles,
                part=f"{tile_rows}x{tile_cols} tiles",
            ),
            VisualGrid("image", 1, side, side, pixels, pixels, part="thumbnail", continues=True),
        ]
    return grids


def _cut_visuals(
    inputs: Mapping[str, Any], grids: list[VisualGrid], _kind: str, first: int, stop: int
) -> dict[str, Any]:
    """The pixel rows of grids `[first, stop)`: one per tile (a thumbnail is one tile)."""
    rows = [grid.tiles[0] * grid.tiles[1] for grid in grids]
    return {"pixel_values": inputs["pixel_values"][sum(rows[:first]) : sum(rows[:stop])]}


def _pictures(inputs: Mapping[str, Any], processor) -> list[Any]:
    """Per grid, Uint8[1, H, W, 3]: the tiles put together (the image as resized for tiling), the thumbnail."""
    pictures = []
    for rows, tiles in _images(inputs, processor):
        parts = [rows] if tiles is None else [stitch_tiles(rows[:-1], *tiles)[None], rows[-1:]]
        pictures += [seen_pictures(part, processor.image_processor) for part in parts]
    return pictures


def _state(pretrained: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """What lmms-eval's `InternVLHf.__init__` sets besides the model and devices."""
    from transformers import AutoProcessor  # see base.py's docstring

    processor = AutoProcessor.from_pretrained(
        pretrained, revision=args["revision"], trust_remote_code=args["trust_remote_code"]
    )
    return {
        "path": pretrained,
        **{name: args[name] for name in ("min_patches", "max_patches", "num_frames", "fps", "use_cache")},
        "processor": processor,
        "_tokenizer": processor.tokenizer,
    }


def _hub_options(args: Mapping[str, Any]) -> dict[str, Any]:
    return {"revision": args["revision"], "trust_remote_code": args["trust_remote_code"]}


INTERNVL = Backbone(
    family="InternVL",
    model_type="internvl",
    loader="InternVLForConditionalGeneration",
    visual_token_attributes=("image_token_id",),
    visual_delimiters=("<img>", "</img>"),
    projector=("multi_modal_projector.linear_1", "multi_modal_projector.linear_2"),
    visual_grids=_visual_grids,
    processor_outputs=ProcessorOutputs(
        token_inputs=("input_ids", "attention_mask"),
        visual_inputs=("pixel_values",),
        cut_visuals=_cut_visuals,
        pictures=_pictures,
    ),
    lmms_eval=LmmsEvalModel(
        model_id="internvl_hf_var",
        upstream_id="internvl_hf",
        simple_class=None,
        chat_class="lmms_eval.models.chat.internvl_hf.InternVLHf",
        default_pretrained="OpenGVLab/InternVL3_5-8B-HF",
        upstream_args={
            "revision": "main",
            "min_patches": 1,
            "max_patches": 12,
            "num_frames": 32,
            "fps": None,
            "trust_remote_code": False,
            "low_cpu_mem_usage": False,
            "use_cache": True,
        },
        state=_state,
        hub_options=_hub_options,
        max_batch_size=1,
    ),
    head_dims=(64, 128),  # InternVL3-1B: 896 / 14; 2B, 8B, 14B, 38B, 78B: 128
)
