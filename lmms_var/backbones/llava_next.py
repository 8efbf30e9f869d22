"""LLaVA-NeXT in transformers (`llava_next`, llava-hf's llava-v1.6 checkpoints), and the any-resolution
images it shares with LLaVA-OneVision (`llava_onevision.py`).

Each image is seen twice: the *base* (the whole image squashed to one tile, `side` x `side` tokens),
then the *high-res* view: the image resized onto the best of `image_grid_pinpoints`, padded, cut into
tiles, whose tokens are laid back out as one grid over the whole canvas, the padding cut off, and a
newline feature after each row. All of it is one run of `config.image_token_id`: the newline
features are placeholders that stand for no pixels (`VisualGrid.row_tail`). The processor returns the
tiles (`pixel_values`, [images, tiles, 3, S, S], padded with all-zero tiles to the batch's most) and
the original sizes (`image_sizes`); the tile grid and the unpadded region are computed again here by
the processor's and the model's own functions.

lmms-eval's `llava_hf` loads all three llava-hf families (LLaVA-1.5, NeXT, OneVision): one lmms-eval
model, `llava_hf_var`, serves the three backbones (`llava.LLAVA_HF`).
"""

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from lmms_var.backbones.base import Backbone, ProcessorOutputs, VisualGrid
from lmms_var.backbones.llava import LLAVA_HF
from lmms_var.backbones.pixels import seen_pictures, stitch_tiles

# (processor, tile size in pixels) -> tokens per side of one tile.
TileSide = Callable[[Any, int], int]


def next_tile_side(processor, tile: int) -> int:
    """LLaVA-NeXT: one token per vision patch (`processor.patch_size` pixels)."""
    return tile // processor.patch_size


def image_groups(inputs: Mapping[str, Any]) -> list[int]:
    """Per image, how many images its prompt's group holds (`batch_num_images`, OneVision; else 1)."""
    counts = inputs.get("batch_num_images")
    if counts is None:
        return [1] * len(inputs["image_sizes"])
    return [count for count in counts.tolist() for _ in range(count)]


class _HighRes(NamedTuple):
    """Where an image's high-res tokens lie."""

    tiles: tuple[int, int]  # rows, cols of tiles on the canvas
    region: tuple[int, int, int, int]  # top, left, rows, cols of the unpadded part, in tokens of the canvas
    tokens: tuple[int, int]  # rows, cols the model packs (fewer than the region's where OneVision shrinks it)


def _high_res(image_size: list[int], processor, tile: int, side: int) -> _HighRes:
    """The high-res view of an image of `image_size` (height, width), as the processor's and the
    model's own functions compute it."""
    import torch  # see base.py's docstring
    from transformers.models.llava_next.modeling_llava_next import (
        get_anyres_image_grid_shape,
        unpad_image,
    )

    tile_rows, tile_cols = get_anyres_image_grid_shape(
        image_size, processor.image_processor.image_grid_pinpoints, tile
    )
    height, width = tile_rows * side, tile_cols * side
    kept = unpad_image(torch.arange(height * width).reshape(1, height, width), torch.tensor(image_size))
    first = int(kept[0, 0, 0])
    features, newlines = processor._get_unpadded_features(*image_size, side, side, tile_rows, tile_cols)
    return _HighRes(
        tiles=(tile_rows, tile_cols),
        region=(first // width, first % width, *kept.shape[1:]),
        tokens=(newlines, features // newlines),
    )


def anyres_visual_grids(tile_side: TileSide) -> Callable[[Mapping[str, Any], Any], list[VisualGrid]]:
    """`Backbone.visual_grids` for any-resolution images: per image its base, then (unless its prompt
    holds several images and the family then sees the base only, OneVision) its high-res view."""

    def grids(inputs: Mapping[str, Any], processor) -> list[VisualGrid]:
        if inputs.get("pixel_values") is None:
            return []
        tile = inputs["pixel_values"].shape[-1]
        side = tile_side(processor, tile)
        per_token = tile // side
        seen = side * per_token  # the pixels of a tile the patches cover (378 of SigLIP's 384)
        made = []
        for size, group in zip(inputs["image_sizes"].tolist(), image_groups(inputs), strict=True):
            if group > 1:  # OneVision, several images in a prompt: the base and one newline
                made.append(VisualGrid("image", 1, side, side, seen, seen, tail=1))
                continue
            high_res = _high_res(size, processor, tile, side)
            rows, cols = high_res.tokens
            made += [
                VisualGrid("image", 1, side, side, seen, seen, part="base"),
                VisualGrid(
                    "image",
                    1,
                    rows,
                    cols,
                    rows * per_token,
                    cols * per_token,
                    part="{}x{} tiles".format(*high_res.tiles),
                    continues=True,
                    row_tail=1,
                ),
            ]
        return made

    return grids


def anyres_image_pictures(inputs: Mapping[str, Any], processor, tile_side: TileSide) -> list[Any]:
    """Per grid of `anyres_visual_grids`, Uint8[1, H, W, 3]: the base tile; the tiles put together
    with the padding cut off (resized to the token grid where the model shrank it). A tile is cut to
    the pixels its patches cover (SigLIP's 27 patches of 14 px leave 6 of 384 unseen)."""
    import torch  # see base.py's docstring

    pixels = inputs.get("pixel_values")
    if pixels is None:
        return []
    tile = pixels.shape[-1]
    side = tile_side(processor, tile)
    per_token = tile // side
    pictures = []
    for tiles, size, group in zip(pixels, inputs["image_sizes"].tolist(), image_groups(inputs), strict=True):
        image = tiles[..., : side * per_token, : side * per_token]  # what the patches cover
        pictures.append(seen_pictures(image[:1], processor.image_processor))
        if group > 1:
            continue
        high_res = _high_res(size, processor, tile, side)
        tile_rows, tile_cols = high_res.tiles
        top, left, rows, cols = (value * per_token for value in high_res.region)
        canvas = stitch_tiles(image[1 : 1 + tile_rows * tile_cols], tile_rows, tile_cols)
        seen = canvas[None, :, top : top + rows, left : left + cols]
        shape = [count * per_token for count in high_res.tokens]
        if list(seen.shape[-2:]) != shape:
            seen = torch.nn.functional.interpolate(seen.float(), size=shape, mode="bilinear")
        pictures.append(seen_pictures(seen, processor.image_processor))
    return pictures


def image_range(grids: list[VisualGrid], first: int, stop: int) -> tuple[int, int]:
    """[start, end) of the images whose grids are `[first, stop)` (a grid that `continues` belongs to
    the image before it)."""
    images = [index for index, grid in enumerate(grids) if not grid.continues]
    return sum(index < first for index in images), sum(index < stop for index in images)


def cut_anyres_images(
    inputs: Mapping[str, Any], grids: list[VisualGrid], first: int, stop: int
) -> dict[str, Any]:
    """The images of grids `[first, stop)` (a grid that `continues` belongs to the image before):
    their tiles, without the all-zero tiles that pad them to the batch's most, and their sizes."""
    start, end = image_range(grids, first, stop)
    tiles = inputs["pixel_values"][start:end]
    real = tiles.flatten(2).any(dim=2)  # [images, tiles]: not a padding tile
    used = int(real.int().cumsum(dim=1).argmax(dim=1).max()) + 1 if end > start else 0
    return {"pixel_values": tiles[:, :used], "image_sizes": inputs["image_sizes"][start:end]}


def _cut_visuals(inputs: Mapping[str, Any], grids: list[VisualGrid], _kind: str, first: int, stop: int):
    return cut_anyres_images(inputs, grids, first, stop)


def _pictures(inputs: Mapping[str, Any], processor) -> list[Any]:
    return anyres_image_pictures(inputs, processor, next_tile_side)


LLAVA_NEXT = Backbone(
    family="LLaVA-NeXT",
    model_type="llava_next",
    loader="LlavaNextForConditionalGeneration",
    visual_token_attributes=("image_token_id",),
    projector=("multi_modal_projector.linear_1", "multi_modal_projector.linear_2"),
    visual_grids=anyres_visual_grids(next_tile_side),
    processor_outputs=ProcessorOutputs(
        token_inputs=("input_ids", "attention_mask"),
        visual_inputs=("pixel_values", "image_sizes"),
        cut_visuals=_cut_visuals,
        pictures=_pictures,
    ),
    lmms_eval=LLAVA_HF,
    head_dims=(128,),  # Vicuna/Mistral 7B, 13B and Yi-34B: 128
)
