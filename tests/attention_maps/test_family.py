"""The family glue on a real Qwen2.5-VL processor: grids, the images the model saw, batches split per prompt."""

import numpy as np
import pytest
import torch
from PIL import Image

from lmms_var.attention_maps.family import seen_images, split_batch, visual_grids
from lmms_var.attention_maps.layout import VIDEO, visual_panels
from lmms_var.testing.images import random_image
from tests.patch.conftest import QUESTIONS, chat_text, prompt_inputs


def panels_and_images(model, processor, inputs):
    grids = visual_grids(model, processor, inputs)
    panels = visual_panels(inputs["input_ids"][0].tolist(), grids)
    return panels, seen_images(processor, inputs, grids, panels)


def test_an_image_the_processor_does_not_resize_comes_back_as_it_was(tiny_model):
    model, processor = tiny_model
    image = random_image(7, size=(56, 84))  # multiples of 28 within the tiny processor's pixel range
    inputs = processor(text=[chat_text(processor, 1, "?")], images=[image], return_tensors="pt")
    (panel,), (seen,) = panels_and_images(model, processor, inputs)
    assert (panel.size, panel.grid) == ((56, 84), (3, 2))
    # Normalisation undone: equal up to rounding.
    assert np.abs(seen.astype(int) - np.asarray(image).astype(int)).max() <= 1


def test_a_resized_image_is_drawn_at_the_size_the_model_saw(tiny_model):
    model, processor = tiny_model
    image = random_image(8, size=(100, 60))
    inputs = processor(text=[chat_text(processor, 1, "?")], images=[image], return_tensors="pt")
    (panel,), (seen,) = panels_and_images(model, processor, inputs)
    _, h, w = inputs["image_grid_thw"][0].tolist()
    assert panel.size == (w * 14, h * 14) and seen.shape == (h * 14, w * 14, 3)
    resized = np.asarray(image.resize(panel.size, Image.Resampling.BICUBIC)).astype(float)
    assert np.abs(seen - resized).mean() < 8  # the same picture (resampling filters differ slightly)


def test_a_video_shows_the_first_frame_of_each_temporal_group(tiny_model):
    model, processor = tiny_model
    colours = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0)]
    frames = np.stack([np.full((56, 56, 3), colour, dtype=np.uint8) for colour in colours])
    inputs = processor(text=[chat_text(processor, 1, "?", video=True)], videos=[frames], return_tensors="pt")
    panels, seen = panels_and_images(model, processor, inputs)
    assert [(p.kind, p.group, p.grid) for p in panels] == [(VIDEO, 0, (2, 2)), (VIDEO, 1, (2, 2))]
    for image, colour in zip(seen, (colours[0], colours[2]), strict=True):
        assert np.abs(image.astype(int) - np.array(colour)).max() <= 1


def test_a_padded_batch_splits_into_the_prompts_processed_alone(tiny_model):
    model, processor = tiny_model
    specs = [(1, QUESTIONS[1]), (2, QUESTIONS[0]), (0, "no image here")]
    batch = prompt_inputs(processor, specs)
    assert not batch["attention_mask"].all()  # there is padding to remove
    samples = split_batch(batch, visual_grids(model, processor, batch))
    assert len(samples) == len(specs)
    for index, (sample, spec) in enumerate(zip(samples, specs, strict=True)):
        alone = prompt_inputs(processor, [spec], seed=5 + index)  # the same images as in the batch
        assert set(sample) == {key for key in alone if alone[key] is not None}
        for key, value in alone.items():
            torch.testing.assert_close(sample[key], value, msg=f"prompt {index}: {key}")


def test_visual_grids_read_the_processor_and_the_config(tiny_model):
    model, processor = tiny_model
    inputs = prompt_inputs(processor, [(2, QUESTIONS[0])])
    grids = visual_grids(model, processor, inputs)
    assert (grids.patch_size, grids.merge_size) == (14, 2)
    assert grids.image_token_id == model.config.image_token_id
    assert grids.image_grids == tuple(tuple(row) for row in inputs["image_grid_thw"].tolist())
    assert grids.video_grids == ()


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_split_batch_removes_padding_on_either_side(tiny_model, padding_side):
    model, processor = tiny_model
    texts = [chat_text(processor, 1, QUESTIONS[0]), chat_text(processor, 1, "?")]
    images = [random_image(1), random_image(2)]
    batch = processor(text=texts, images=images, return_tensors="pt", padding=True, padding_side=padding_side)
    samples = split_batch(batch, visual_grids(model, processor, batch))
    for sample, text, image in zip(samples, texts, images, strict=True):
        alone = processor(text=[text], images=[image], return_tensors="pt")
        assert torch.equal(sample["input_ids"], alone["input_ids"])
        assert torch.equal(sample["pixel_values"], alone["pixel_values"])
