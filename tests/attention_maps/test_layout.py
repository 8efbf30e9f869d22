"""The token-to-pixel mapping, checked by hand on grids a Qwen2.5-VL processor produces (patches of
14 px, 2 x 2 merged into one token of 28 px) and on LLaVA-1.5's (a 336 px square, 14 px per token)."""

import numpy as np
import pytest

from lmms_var.attention_maps.layout import IMAGE, VIDEO, VisualPanel, panel_pictures, visual_panels
from lmms_var.backbones import VisualGrid

IMG, VID, TXT = 7, 8, 1  # image placeholder, video placeholder, any text token
PLACEHOLDERS = {IMAGE: IMG, VIDEO: VID}


def qwen_grid(t: int, h: int, w: int, kind: str = IMAGE) -> VisualGrid:
    """The grid of `image_grid_thw` (t, h, w) in 14 px patches, 2 x 2 patches per token."""
    return VisualGrid(kind, frames=t, rows=h // 2, cols=w // 2, height=h * 14, width=w * 14)


def layout(ids, *grids: VisualGrid) -> list[VisualPanel]:
    return visual_panels(ids, grids, PLACEHOLDERS)


def test_a_square_image_is_a_grid_of_28_pixel_tokens():
    # 4 x 4 patches of 14 px -> a 56 x 56 image, 2 x 2 tokens of 28 x 28 px, after two text tokens.
    (panel,) = layout([TXT, TXT, IMG, IMG, IMG, IMG, TXT], qwen_grid(1, 4, 4))
    assert panel == VisualPanel(kind=IMAGE, index=0, group=None, size=(56, 56), grid=(2, 2), tokens=(2, 6))
    assert panel.token_size == (28, 28)
    assert [panel.pixel_box(r, c) for r in range(2) for c in range(2)] == [
        (0, 0, 28, 28),
        (28, 0, 56, 28),
        (0, 28, 28, 56),
        (28, 28, 56, 56),
    ]


def test_a_non_square_image_has_rows_for_its_height_and_columns_for_its_width():
    # h = 6 patches (84 px) by w = 4 patches (56 px): 3 rows of 2 tokens; tokens go row by row.
    (panel,) = layout([TXT, *[IMG] * 6, TXT], qwen_grid(1, 6, 4))
    assert (panel.size, panel.grid, panel.tokens) == ((56, 84), (3, 2), (1, 7))
    assert panel.pixel_box(2, 1) == (28, 56, 56, 84)  # the last token: bottom right


def test_two_images_of_different_sizes_take_their_own_tokens_in_order():
    ids = [TXT, *[IMG] * 4, TXT, TXT, *[IMG] * 3, TXT]
    first, second = layout(ids, qwen_grid(1, 4, 4), qwen_grid(1, 2, 6))
    assert (first.index, first.size, first.grid, first.tokens) == (0, (56, 56), (2, 2), (1, 5))
    assert (second.index, second.size, second.grid, second.tokens) == (1, (84, 28), (1, 3), (7, 10))
    assert second.label() == "image 2"


def test_a_video_gives_one_panel_per_temporal_group_after_an_image():
    # An image (2 x 2 tokens), then a video of 3 temporal groups of 2 x 3 tokens each (6 frames).
    ids = [TXT, *[IMG] * 4, TXT, *[VID] * 18, TXT]
    panels = layout(ids, qwen_grid(1, 4, 4), qwen_grid(3, 4, 6, VIDEO))
    assert [p.kind for p in panels] == [IMAGE, VIDEO, VIDEO, VIDEO]
    video = panels[1:]
    assert [p.group for p in video] == [0, 1, 2]
    assert [p.tokens for p in video] == [(6, 12), (12, 18), (18, 24)]
    assert all(p.size == (84, 56) and p.grid == (2, 3) for p in video)
    assert video[1].label() == "video 1, temporal group 2"


def test_panels_follow_the_prompt_order_when_a_video_comes_first():
    ids = [*[VID] * 4, TXT, *[IMG] * 1]
    panels = layout(ids, qwen_grid(1, 2, 2), qwen_grid(1, 4, 4, VIDEO))
    assert [(p.kind, p.tokens) for p in panels] == [(VIDEO, (0, 4)), (IMAGE, (5, 6))]


def test_llava_sees_a_336_px_square_of_14_px_tokens_without_merging():
    # LLaVA-1.5: CLIP's 336 x 336 crop, 24 x 24 patches of 14 px, each patch one token (576), after "<s> USER:".
    ids = [TXT, TXT, *[IMG] * 576, TXT]
    (panel,) = layout(ids, VisualGrid(IMAGE, frames=1, rows=24, cols=24, height=336, width=336))
    assert (panel.size, panel.grid, panel.tokens, panel.token_size) == (
        (336, 336),
        (24, 24),
        (2, 578),
        (14, 14),
    )
    assert panel.pixel_box(0, 1) == (14, 0, 28, 14)  # token 1: second from the left, top row
    assert panel.pixel_box(1, 0) == (0, 14, 14, 28)  # token 24: first of the second row
    assert panel.pixel_box(23, 23) == (322, 322, 336, 336)


def test_tokens_need_not_be_square():
    (panel,) = layout([IMG] * 6, VisualGrid(IMAGE, frames=1, rows=2, cols=3, height=40, width=90))
    assert panel.token_size == (30, 20) and panel.pixel_box(1, 2) == (60, 20, 90, 40)


def test_each_panel_gets_its_pictures_frame():
    grids = [qwen_grid(1, 2, 2), qwen_grid(2, 2, 4, VIDEO)]
    image = np.zeros((1, 28, 28, 3), np.uint8)
    video = np.stack([np.full((28, 56, 3), 1, np.uint8), np.full((28, 56, 3), 2, np.uint8)])
    found = layout([VID, VID, TXT, VID, VID, TXT, IMG], *grids)
    pictures = panel_pictures(found, grids, [image, video])
    assert [int(picture.max()) for picture in pictures] == [1, 2, 0]  # prompt order: video groups, then image
    with pytest.raises(ValueError, match=r"image 0: the processor's pixels are \(1, 28, 30, 3\)"):
        panel_pictures(found, grids, [np.zeros((1, 28, 30, 3), np.uint8), video])


@pytest.mark.parametrize(
    ("ids", "grid", "message"),
    [
        ([TXT, IMG, IMG, IMG], qwen_grid(1, 4, 4), "fewer than the grids"),
        ([IMG, IMG, IMG, IMG, IMG], qwen_grid(1, 4, 4), "account for 4"),
        ([IMG, IMG, TXT, IMG, IMG], qwen_grid(1, 4, 4), "not contiguous"),
        ([IMG, IMG, IMG], VisualGrid(IMAGE, 1, 1, 3, 28, 80), "do not tile its 80 x 28 px picture"),
        ([IMG], VisualGrid("audio", 1, 1, 1, 14, 14), "'audio'"),
    ],
)
def test_grids_that_disagree_with_the_placeholders_are_refused(ids, grid, message):
    with pytest.raises(ValueError, match=message):
        layout(ids, grid)
