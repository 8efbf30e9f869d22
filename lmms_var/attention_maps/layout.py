"""Which visual tokens of a prompt cover which pixels: the token-to-pixel mapping behind every panel.

A vision tower cuts each image (or each group of video frames) into square patches, merges
`merge_size x merge_size` neighbouring patches into one visual token, and the text model sees those
tokens row by row, left to right. Qwen2-VL-style processors say how in their outputs: per image or
video, a grid `(t, h, w)` in patches (`image_grid_thw`, `video_grid_thw`); the image the model saw is
`w * patch_size` pixels wide and `h * patch_size` high, and each of its `(h / merge) x (w / merge)`
tokens covers a square of `patch_size * merge_size` pixels (28 for Qwen2.5-VL). A video has one such
grid per *temporal patch group* (`temporal_patch_size` consecutive frames), one after the other.

`visual_panels` is pure: the family-specific numbers come in through `VisualGrids`, so one function
serves every family whose processor reports grids this way.
"""

from collections.abc import Sequence
from dataclasses import dataclass

IMAGE, VIDEO = "image", "video"


@dataclass(frozen=True)
class VisualGrids:
    """The processor's word on one prompt's visuals (a batch of one), and the geometry to read it with."""

    image_token_id: int
    video_token_id: int | None
    image_grids: tuple[tuple[int, int, int], ...]  # (t, h, w) in patches, one per image, in prompt order
    video_grids: tuple[tuple[int, int, int], ...]  # (t, h, w) in patches, one per video, in prompt order
    patch_size: int  # pixels per patch side
    merge_size: int  # patches per visual token side


@dataclass(frozen=True)
class VisualPanel:
    """One image, or one temporal patch group of a video: what one heatmap is drawn over."""

    kind: str  # IMAGE or VIDEO
    index: int  # which image (or video) of the prompt, counted per kind from 0
    group: int | None  # the temporal patch group of a video; None for an image
    size: tuple[int, int]  # (width, height) in pixels of the resized image the model saw
    grid: tuple[int, int]  # (rows, cols) of visual tokens
    tokens: tuple[int, int]  # [start, stop) positions of its visual tokens in the prompt

    @property
    def token_pixels(self) -> int:
        """Side in pixels of the square each token covers."""
        return self.size[0] // self.grid[1]

    def label(self) -> str:
        """`image 1`, or `video 1, temporal group 2` (1-based, as people count)."""
        if self.group is None:
            return f"{self.kind} {self.index + 1}"
        return f"{self.kind} {self.index + 1}, temporal group {self.group + 1}"

    def pixel_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) pixels of the token at (row, col) of this panel's grid."""
        side = self.token_pixels
        return col * side, row * side, (col + 1) * side, (row + 1) * side


def visual_panels(input_ids: Sequence[int], grids: VisualGrids) -> list[VisualPanel]:
    """One panel per image and per video temporal group, in prompt order.

    `input_ids` is one prompt's token ids (no batch dimension). Each image (video) takes the next
    `t * h * w / merge_size**2` placeholder positions of its kind; a panel's tokens must be
    contiguous. Raises `ValueError` when the grids and the placeholders disagree.
    """
    ids = [int(token) for token in input_ids]
    panels = []
    for kind, token_id, thws in (
        (IMAGE, grids.image_token_id, grids.image_grids),
        (VIDEO, grids.video_token_id, grids.video_grids),
    ):
        positions = [position for position, token in enumerate(ids) if token == token_id]
        used = 0
        for index, (t, h, w) in enumerate(thws):
            if h % grids.merge_size or w % grids.merge_size:
                raise ValueError(
                    f"grids: {kind} {index} grid (t={t}, h={h}, w={w}) is not divisible by merge_size "
                    f"{grids.merge_size}"
                )
            rows, cols = h // grids.merge_size, w // grids.merge_size
            size = (w * grids.patch_size, h * grids.patch_size)
            for group in range(t):
                span = positions[used : used + rows * cols]
                used += rows * cols
                if len(span) < rows * cols:
                    raise ValueError(
                        f"input_ids: {len(positions)} {kind} placeholder tokens, fewer than the grids "
                        f"{list(thws)} need"
                    )
                if span[-1] - span[0] + 1 != len(span):
                    raise ValueError(
                        f"input_ids: the tokens of {kind} {index} group {group} are not contiguous"
                    )
                panels.append(
                    VisualPanel(
                        kind=kind,
                        index=index,
                        group=None if kind == IMAGE else group,
                        size=size,
                        grid=(rows, cols),
                        tokens=(span[0], span[-1] + 1),
                    )
                )
        if used != len(positions):
            raise ValueError(
                f"input_ids: {len(positions)} {kind} placeholder tokens, but the grids {list(thws)} "
                f"account for {used}"
            )
    return sorted(panels, key=lambda panel: panel.tokens[0])
