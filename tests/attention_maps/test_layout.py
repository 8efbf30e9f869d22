"""The token-to-pixel mapping, checked by hand on grids a Qwen2.5-VL processor produces (patch 14, merge 2)."""

import pytest

from lmms_var.attention_maps.layout import IMAGE, VIDEO, VisualGrids, VisualPanel, visual_panels

IMG, VID, TXT = 7, 8, 1  # image placeholder, video placeholder, any text token


def grids(images=(), videos=()) -> VisualGrids:
    return VisualGrids(
        image_token_id=IMG,
        video_token_id=VID,
        image_grids=tuple(images),
        video_grids=tuple(videos),
        patch_size=14,
        merge_size=2,
    )


def test_a_square_image_is_a_grid_of_28_pixel_tokens():
    # 4 x 4 patches of 14 px -> a 56 x 56 image, 2 x 2 tokens of 28 x 28 px, after two text tokens.
    (panel,) = visual_panels([TXT, TXT, IMG, IMG, IMG, IMG, TXT], grids(images=[(1, 4, 4)]))
    assert panel == VisualPanel(kind=IMAGE, index=0, group=None, size=(56, 56), grid=(2, 2), tokens=(2, 6))
    assert panel.token_pixels == 28
    assert [panel.pixel_box(r, c) for r in range(2) for c in range(2)] == [
        (0, 0, 28, 28),
        (28, 0, 56, 28),
        (0, 28, 28, 56),
        (28, 28, 56, 56),
    ]


def test_a_non_square_image_has_rows_for_its_height_and_columns_for_its_width():
    # h = 6 patches (84 px) by w = 4 patches (56 px): 3 rows of 2 tokens; tokens go row by row.
    (panel,) = visual_panels([TXT, *[IMG] * 6, TXT], grids(images=[(1, 6, 4)]))
    assert (panel.size, panel.grid, panel.tokens) == ((56, 84), (3, 2), (1, 7))
    assert panel.pixel_box(2, 1) == (28, 56, 56, 84)  # the last token: bottom right


def test_two_images_of_different_sizes_take_their_own_tokens_in_order():
    ids = [TXT, *[IMG] * 4, TXT, TXT, *[IMG] * 3, TXT]
    first, second = visual_panels(ids, grids(images=[(1, 4, 4), (1, 2, 6)]))
    assert (first.index, first.size, first.grid, first.tokens) == (0, (56, 56), (2, 2), (1, 5))
    assert (second.index, second.size, second.grid, second.tokens) == (1, (84, 28), (1, 3), (7, 10))
    assert second.label() == "image 2"


def test_a_video_gives_one_panel_per_temporal_group_after_an_image():
    # An image (2 x 2 tokens), then a video of 3 temporal groups of 2 x 3 tokens each (6 frames).
    ids = [TXT, *[IMG] * 4, TXT, *[VID] * 18, TXT]
    panels = visual_panels(ids, grids(images=[(1, 4, 4)], videos=[(3, 4, 6)]))
    assert [p.kind for p in panels] == [IMAGE, VIDEO, VIDEO, VIDEO]
    video = panels[1:]
    assert [p.group for p in video] == [0, 1, 2]
    assert [p.tokens for p in video] == [(6, 12), (12, 18), (18, 24)]
    assert all(p.size == (84, 56) and p.grid == (2, 3) for p in video)
    assert video[1].label() == "video 1, temporal group 2"


def test_panels_follow_the_prompt_order_when_a_video_comes_first():
    ids = [*[VID] * 4, TXT, *[IMG] * 1]
    panels = visual_panels(ids, grids(images=[(1, 2, 2)], videos=[(1, 4, 4)]))
    assert [(p.kind, p.tokens) for p in panels] == [(VIDEO, (0, 4)), (IMAGE, (5, 6))]


@pytest.mark.parametrize(
    ("ids", "images", "message"),
    [
        ([TXT, IMG, IMG, IMG], [(1, 4, 4)], "fewer than the grids"),
        ([IMG, IMG, IMG, IMG, IMG], [(1, 4, 4)], "account for 4"),
        ([IMG, IMG, TXT, IMG, IMG], [(1, 4, 4)], "not contiguous"),
        ([IMG, IMG, IMG], [(1, 2, 3)], "not divisible by merge_size 2"),
    ],
)
def test_grids_that_disagree_with_the_placeholders_are_refused(ids, images, message):
    with pytest.raises(ValueError, match=message):
        visual_panels(ids, grids(images=images))
