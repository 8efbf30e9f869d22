"""`Backbone.visual_grids`: every family's grids account for exactly the visual tokens of its prompts."""

import torch

from lmms_var.backbones import backbone_for_model_type
from lmms_var.testing.images import random_images
from lmms_var.testing.tiny_families import TINY_FAMILIES
from tests.patch.conftest import QUESTIONS, chat_text


def test_grids_cover_each_image_token_run_in_order(family, family_model):
    """Two prompts with images of different sizes: grid i has as many tokens as the i-th run."""
    processor = family_model[1]
    sizes = [(112, 56), (56, 112), (84, 84)]
    images = [image.resize(size) for image, size in zip(random_images(3, seed=9), sizes, strict=True)]
    texts = [chat_text(processor, 2, QUESTIONS[0]), chat_text(processor, 1, QUESTIONS[1])]
    inputs = processor(text=texts, images=[images[:2], images[2:]], return_tensors="pt", padding=True)
    grids = backbone_for_model_type(family).visual_grids(inputs, processor)

    image_token = processor.tokenizer.convert_tokens_to_ids(TINY_FAMILIES[family].visual_tokens[0])
    runs = []  # lengths of the runs of image placeholder tokens, batch order
    for row in (inputs["input_ids"] == image_token).int():
        edges = torch.diff(torch.cat([torch.zeros(1, dtype=row.dtype), row, torch.zeros(1, dtype=row.dtype)]))
        starts, ends = (edges == 1).nonzero().flatten(), (edges == -1).nonzero().flatten()
        runs += (ends - starts).tolist()
    images = []  # per image, its grids: one, or its parts (InternVL's tiles, then its thumbnail)
    for grid in grids:
        if grid.continues:
            images[-1].append(grid)
        else:
            images.append([grid])
    assert [grid.kind for grid in grids] == ["image"] * len(grids) and len(images) == 3
    assert [sum(grid.tokens for grid in parts) for parts in images] == runs
    for (grid, *_), (width, height) in zip(images, sizes, strict=True):
        assert grid.height % grid.rows == 0 and grid.width % grid.cols == 0  # whole pixels per token
        # The picture keeps its orientation (or becomes a square crop, as LLaVA's).
        assert (grid.width - grid.height) * (
            width - height
        ) >= 0 and grid.rows * grid.width == grid.cols * grid.height
