"""`ProcessorOutputs.pictures`: the picture each family's vision tower was given, rebuilt from the
processor's own pixels (normalisation undone), at the size and crop the grids describe."""

import copy

import numpy as np
import pytest
from PIL import Image

from lmms_var.backbones import backbone_for_model_type
from lmms_var.backbones.pixels import seen_pictures
from lmms_var.testing.images import random_image
from tests.patch.conftest import chat_text

QWEN_FAMILIES = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl")


def grids_and_pictures(model_type: str, processor, inputs):
    backbone = backbone_for_model_type(model_type)
    return backbone.visual_grids(inputs, processor), backbone.processor_outputs.pictures(inputs, processor)


def token_side(processor) -> int:
    """Pixels per Qwen visual token side: patch size times merge size."""
    return processor.image_processor.patch_size * processor.image_processor.merge_size


@pytest.mark.parametrize("model_type", QWEN_FAMILIES)
def test_an_image_the_processor_does_not_resize_comes_back_as_it_was(tiny_models, model_type):
    processor = tiny_models(model_type)[1]
    side = token_side(processor)
    image = random_image(7, size=(2 * side, 3 * side))  # whole tokens, within the tiny pixel range
    inputs = processor(text=[chat_text(processor, 1, "?")], images=[image], return_tensors="pt")
    (grid,), (picture,) = grids_and_pictures(model_type, processor, inputs)
    assert (grid.width, grid.height, grid.rows, grid.cols) == (2 * side, 3 * side, 3, 2)
    assert picture.shape == (1, 3 * side, 2 * side, 3) and picture.dtype == np.uint8
    assert np.abs(picture[0].astype(int) - np.asarray(image).astype(int)).max() <= 1  # up to rounding


def test_a_resized_image_is_the_picture_at_the_size_the_model_saw(tiny_models):
    processor = tiny_models("qwen2_5_vl")[1]
    image = random_image(8, size=(100, 60))
    inputs = processor(text=[chat_text(processor, 1, "?")], images=[image], return_tensors="pt")
    (grid,), (picture,) = grids_and_pictures("qwen2_5_vl", processor, inputs)
    _, h, w = inputs["image_grid_thw"][0].tolist()
    assert (grid.width, grid.height) == (w * 14, h * 14) and picture.shape == (1, h * 14, w * 14, 3)
    resized = np.asarray(image.resize((grid.width, grid.height), Image.Resampling.BICUBIC)).astype(float)
    assert np.abs(picture[0] - resized).mean() < 8  # the same picture (resampling filters differ slightly)


@pytest.mark.parametrize("model_type", QWEN_FAMILIES)
def test_a_video_shows_the_first_frame_of_each_temporal_group(tiny_models, model_type):
    processor = tiny_models(model_type)[1]
    side = token_side(processor)
    colours = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0)]
    frames = np.stack([np.full((2 * side, 2 * side, 3), colour, dtype=np.uint8) for colour in colours])
    inputs = processor(text=[chat_text(processor, 1, "?", video=True)], videos=[frames], return_tensors="pt")
    (grid,), (picture,) = grids_and_pictures(model_type, processor, inputs)
    assert (grid.kind, grid.frames, grid.width, grid.height) == (
        "video",
        2,
        grid.cols * side,
        grid.rows * side,
    )
    assert picture.shape == (2, grid.height, grid.width, 3)  # (the video processor may enlarge the frames)
    for frame, colour in zip(picture, (colours[0], colours[2]), strict=True):
        assert np.abs(frame.astype(int) - np.array(colour)).max() <= 1


def test_llava_sees_the_centre_square_of_a_wide_image_resized_to_its_short_side(tiny_models):
    """CLIP's processor: shortest edge to the crop side (56 px in the tiny processor, 336 in LLaVA-1.5),
    then the centre square; the grid is that square in 7 px patches (14 px in LLaVA-1.5), one token each."""
    processor = tiny_models("llava")[1]
    # Wide, with a ramp from black (left) to white (right): resized to 93 x 56, then 18 px cut on each side.
    ramp = np.linspace(0, 255, 200)[None, :, None] * np.ones((120, 1, 3))
    ramp[:, :, 1] = np.linspace(0, 255, 120)[:, None]  # and green from top to bottom
    image = Image.fromarray(ramp.round().astype(np.uint8))
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]}],
        add_generation_prompt=True,
    )
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    (grid,), (picture,) = grids_and_pictures("llava", processor, inputs)
    assert (grid.kind, grid.frames, grid.rows, grid.cols, grid.height, grid.width) == (
        "image",
        1,
        8,
        8,
        56,
        56,
    )
    resized = image.resize((93, 56), Image.Resampling.BICUBIC)
    centre = np.asarray(resized.crop((18, 0, 74, 56))).astype(float)
    assert picture.shape == (1, 56, 56, 3)
    assert np.abs(picture[0] - centre).max() <= 3
    assert picture[0, :, 0, 0].mean() > 40 and picture[0, :, -1, 0].mean() < 215  # the ramp's ends were cut


def test_internvl_places_each_tile_where_it_was_cut(tiny_models):
    """A 3:2 image in 3 x 2 tiles of 56 px and a thumbnail: the tiles put back together are the image
    resized to 168 x 112 (the arrangement is read from the thumbnail: 6 tiles could also be 3 x 2)."""
    processor = tiny_models("internvl")[1]
    image = random_image(11, size=(300, 200))
    inputs = processor(text=[chat_text(processor, 1, "?")], images=[image], return_tensors="pt")
    tiles, thumbnail = backbone_for_model_type("internvl").visual_grids(inputs, processor)
    assert (tiles.tiles, tiles.width, tiles.height, tiles.rows, tiles.cols) == ((2, 3), 168, 112, 8, 12)
    assert (thumbnail.part, thumbnail.continues, thumbnail.width, thumbnail.tiles) == (
        "thumbnail",
        True,
        56,
        (1, 1),
    )
    stitched, small = backbone_for_model_type("internvl").processor_outputs.pictures(inputs, processor)
    resized = np.asarray(image.resize((168, 112), Image.Resampling.BICUBIC)).astype(float)
    assert stitched.shape == (1, 112, 168, 3) and np.abs(stitched[0] - resized).mean() < 8
    whole = np.asarray(image.resize((56, 56), Image.Resampling.BICUBIC)).astype(float)
    assert small.shape == (1, 56, 56, 3) and np.abs(small[0] - whole).mean() < 8


def test_llava_any_res_shows_the_base_and_the_unpadded_high_res_view(tiny_models):
    """LLaVA-NeXT, a 2:1 image: the base is the whole image squashed to one 28 px tile; the high-res
    view is the image resized onto the 56 x 28 px canvas (2 tiles), nothing padded to cut off."""
    processor = tiny_models("llava_next")[1]
    image = random_image(12, size=(200, 100))
    inputs = processor(text=[chat_text(processor, 1, "?")], images=[image], return_tensors="pt")
    base, high_res = backbone_for_model_type("llava_next").visual_grids(inputs, processor)
    assert (base.part, base.width, base.height, base.rows, base.row_tail) == ("base", 28, 28, 4, 0)
    assert (high_res.part, high_res.continues, high_res.row_tail) == ("1x2 tiles", True, 1)
    assert (high_res.width, high_res.height, high_res.rows, high_res.cols) == (56, 28, 4, 8)
    squashed, resized = backbone_for_model_type("llava_next").processor_outputs.pictures(inputs, processor)
    for picture, size in ((squashed, (28, 28)), (resized, (56, 28))):
        expected = np.asarray(image.resize(size, Image.Resampling.BICUBIC)).astype(float)
        assert picture.shape == (1, size[1], size[0], 3) and np.abs(picture[0] - expected).mean() < 12


def test_onevision_shows_only_the_pixels_its_patches_cover(tiny_models):
    """SigLIP-384's 27 patches of 14 px leave 6 px of each tile unseen; so do 4 patches of 7 px in a
    30 px tile: the base grid and its picture are the 28 px the patches cover."""
    processor = copy.deepcopy(tiny_models("llava_onevision")[1])
    processor.image_processor.size = {"height": 30, "width": 30}
    processor.image_processor.image_grid_pinpoints = [[30, 60], [60, 30], [60, 60]]
    inputs = processor(text=[chat_text(processor, 1, "?")], images=[random_image(13)], return_tensors="pt")
    assert inputs["pixel_values"].shape[-1] == 30
    grids = backbone_for_model_type("llava_onevision").visual_grids(inputs, processor)
    pictures = backbone_for_model_type("llava_onevision").processor_outputs.pictures(inputs, processor)
    assert [(grid.height, grid.width) for grid in grids] == [(28, 28), (56, 56)]
    assert [picture.shape for picture in pictures] == [(1, 28, 28, 3), (1, 56, 56, 3)]
    tile = seen_pictures(inputs["pixel_values"][0, :1], processor.image_processor)
    assert np.array_equal(pictures[0][0], tile[0, :28, :28])
