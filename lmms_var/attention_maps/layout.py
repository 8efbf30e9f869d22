"""Which visual tokens of a prompt cover which pixels: the token-to-pixel mapping behind every panel.

The family's backbone reads the processor's outputs into one `VisualGrid` per image or video
(`Backbone.visual_grids`): the picture the model saw is `width` x `height` pixels, cut into `rows` x
`cols` tokens, one token per `width / cols` x `height / rows` block, row by row, left to right (a
tiled picture: tile after tile, each row by row). A video repeats that grid once per *temporal patch
group* (`frames`), one after the other. An image seen as several parts (InternVL's tiles and
thumbnail) has one grid, and one panel, per part.
`visual_panels` is pure: it places those grids on the prompt's placeholder tokens, whatever the family.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lmms_var.backbones import VisualGrid
from lmms_var.backbones.base import VISUAL_KINDS

IMAGE, VIDEO = VISUAL_KINDS


@dataclass(frozen=True)
class VisualPanel:
    """One image, or one temporal patch group of a video: what one heatmap is drawn over."""

    kind: str  # IMAGE or VIDEO
    index: int  # which image (or video) of the prompt, counted per kind from 0
    group: int | None  # the temporal patch group of a video; None for an image
    size: tuple[int, int]  # (width, height) in pixels of the resized image the model saw
    grid: tuple[int, int]  # (rows, cols) of visual tokens
    tokens: tuple[int, int]  # [start, stop) positions of its visual tokens in the prompt
    tiles: tuple[int, int] = (1, 1)  # (rows, cols) of tiles the tokens come in, tile after tile
    part: str = ""  # which part of its image the panel shows ("thumbnail"), "" for the whole
    row_tail: int = 0  # tokens after each row that cover no pixels (newline features)
    tail: int = 0  # tokens after the last row that cover no pixels

    def cells(self) -> list[tuple[int, int] | None]:
        """(row, col) in `grid` of each of its tokens in prompt order; None for one covering no pixels."""
        (rows, cols), (tile_rows, tile_cols) = self.grid, self.tiles
        height, width = rows // tile_rows, cols // tile_cols
        cells: list[tuple[int, int] | None] = []
        for tile_row in range(tile_rows):
            for tile_col in range(tile_cols):
                for row in range(height):
                    cells += [(tile_row * height + row, tile_col * width + col) for col in range(width)]
                    cells += [None] * self.row_tail
        return cells + [None] * self.tail

    @property
    def token_size(self) -> tuple[int, int]:
        """(width, height) in pixels of the block each token covers."""
        return self.size[0] // self.grid[1], self.size[1] // self.grid[0]

    def label(self) -> str:
        """`image 1`, `image 1, thumbnail` or `video 1, temporal group 2` (1-based, as people count)."""
        label = f"{self.kind} {self.index + 1}"
        if self.part:
            label += f", {self.part}"
        if self.group is not None:
            label += f", temporal group {self.group + 1}"
        return label

    def pixel_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) pixels of the token at (row, col) of this panel's grid."""
        width, height = self.token_size
        return col * width, row * height, (col + 1) * width, (row + 1) * height


def _per_kind(grids: Sequence[VisualGrid]) -> list[tuple[str, int, VisualGrid]]:
    """(kind, index of its visual among that kind's, grid) for each grid, in the given order (a grid
    that `continues` belongs to the visual of the kind's previous grid)."""
    counted: dict[str, int] = {}
    indexed = []
    for grid in grids:
        if not grid.continues:
            counted[grid.kind] = counted.get(grid.kind, 0) + 1
        indexed.append((grid.kind, counted[grid.kind] - 1, grid))
    return indexed


def visual_panels(
    input_ids: Sequence[int], grids: Sequence[VisualGrid], placeholder_ids: Mapping[str, int]
) -> list[VisualPanel]:
    """One panel per image and per video temporal group, in prompt order.

    `input_ids` is one prompt's token ids (no batch dimension), `grids` its visuals' grids (the
    i-th grid of a kind takes the next `grid.tokens` placeholders of that kind, `placeholder_ids[kind]`).
    A panel's tokens must be contiguous. Raises `ValueError` when the grids and the placeholders disagree.
    """
    ids = [int(token) for token in input_ids]
    kinds = {grid.kind for grid in grids} | set(placeholder_ids)
    unknown = sorted(kinds - set(placeholder_ids))
    if unknown:
        raise ValueError(
            f"grids: {unknown} visuals, but the model has placeholders for {sorted(placeholder_ids)} only"
        )
    positions = {kind: [p for p, token in enumerate(ids) if token == placeholder_ids[kind]] for kind in kinds}
    used = dict.fromkeys(kinds, 0)
    panels = []
    for kind, index, grid in _per_kind(grids):
        if grid.width % grid.cols or grid.height % grid.rows:
            raise ValueError(
                f"grids: {kind} {index}'s {grid.rows} x {grid.cols} tokens do not tile its "
                f"{grid.width} x {grid.height} px picture in whole pixels"
            )
        for group in range(grid.frames):
            tail = grid.tail if group == grid.frames - 1 else 0  # on the last frame's panel
            count = grid.rows * (grid.cols + grid.row_tail) + tail
            span = positions[kind][used[kind] : used[kind] + count]
            used[kind] += count
            if len(span) < count:
                raise ValueError(
                    f"input_ids: {len(positions[kind])} {kind} placeholder tokens, fewer than the grids need"
                )
            if span[-1] - span[0] + 1 != len(span):
                raise ValueError(f"input_ids: the tokens of {kind} {index} group {group} are not contiguous")
            panels.append(
                VisualPanel(
                    kind=kind,
                    index=index,
                    group=None if kind == IMAGE else group,
                    size=(grid.width, grid.height),
                    grid=(grid.rows, grid.cols),
                    tokens=(span[0], span[-1] + 1),
                    tiles=grid.tiles,
                    part=grid.part,
                    row_tail=grid.row_tail,
                    tail=tail,
                )
            )
    for kind in kinds:
        if used[kind] != len(positions[kind]):
            raise ValueError(
                f"input_ids: {len(positions[kind])} {kind} placeholder tokens, but the grids account for {used[kind]}"
            )
    return sorted(panels, key=lambda panel: panel.tokens[0])


def panel_pictures(
    panels: Sequence[VisualPanel], grids: Sequence[VisualGrid], pictures: Sequence[Any]
) -> list[Any]:
    """Uint8[H, W, 3] per panel: its picture, from `pictures` (per grid, Uint8[frames, H, W, 3]).

    Raises `ValueError` when a picture's shape is not its grid's (the two are read from different
    processor outputs: the pixels and the grids).
    """
    if len(pictures) != len(grids):
        raise ValueError(f"{len(pictures)} pictures for {len(grids)} visual grids")
    by_visual = {}
    for (kind, index, grid), picture in zip(_per_kind(grids), pictures, strict=True):
        if tuple(picture.shape) != (grid.frames, grid.height, grid.width, 3):
            raise ValueError(
                f"{kind} {index}{grid.part and ' ' + grid.part}: the processor's pixels are {tuple(picture.shape)}, its grid says "
                f"{grid.frames} x {grid.height} x {grid.width} x 3"
            )
        by_visual[kind, index, grid.part] = picture
    return [by_visual[panel.kind, panel.index, panel.part][panel.group or 0] for panel in panels]
