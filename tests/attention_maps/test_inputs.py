"""One prompt's inputs out of a padded batch, for every family, as the processor gives them alone."""

import pytest
import torch

from lmms_var.attention_maps.inputs import model_inputs, split_batch, with_answer
from lmms_var.backbones import backbone_for
from lmms_var.testing.images import random_image
from tests.patch.conftest import QUESTIONS, chat_text, prompt_inputs


def test_a_padded_batch_splits_into_the_prompts_processed_alone(family_model):
    model, processor = family_model
    specs = [(1, QUESTIONS[1]), (2, QUESTIONS[0]), (0, "no image here")]
    batch = prompt_inputs(processor, specs)
    assert not batch["attention_mask"].all()  # there is padding to remove
    samples = split_batch(model, processor, {**batch, "max_new_tokens": 4})  # generate's kwargs are ignored
    assert len(samples) == len(specs)
    for index, (sample, spec) in enumerate(zip(samples, specs, strict=True)):
        alone = prompt_inputs(processor, [spec], seed=5 + index)  # the same images as in the batch
        assert set(sample) == set(model_inputs(backbone_for(model), alone))
        for key, value in sample.items():
            torch.testing.assert_close(value, alone[key], msg=f"prompt {index}: {key}")


def test_a_batch_whose_grids_miss_an_image_is_refused(tiny_model):
    model, processor = tiny_model
    batch = prompt_inputs(processor, [(1, QUESTIONS[1]), (1, QUESTIONS[0])])
    batch["image_grid_thw"] = batch["image_grid_thw"][:1]
    with pytest.raises(
        ValueError, match="prompt 1's image placeholders do not match the batch's image grids"
    ):
        split_batch(model, processor, batch)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_split_batch_removes_padding_on_either_side(family_model, padding_side):
    model, processor = family_model
    texts = [chat_text(processor, 1, QUESTIONS[0]), chat_text(processor, 1, "?")]
    images = [random_image(1), random_image(2)]
    per_prompt = [[image] for image in images]
    batch = processor(
        text=texts, images=per_prompt, return_tensors="pt", padding=True, padding_side=padding_side
    )
    samples = split_batch(model, processor, batch)
    for sample, text, image in zip(samples, texts, images, strict=True):
        alone = processor(text=[text], images=[image], return_tensors="pt")
        assert torch.equal(sample["input_ids"], alone["input_ids"])
        assert torch.equal(sample["pixel_values"], alone["pixel_values"])


def test_an_answer_is_appended_as_text(family_model):
    model, processor = family_model
    inputs = model_inputs(backbone_for(model), prompt_inputs(processor, [(1, QUESTIONS[1])]))
    answer = torch.tensor([5, 6, 7])
    extended = with_answer(backbone_for(model), inputs, answer)
    length = inputs["input_ids"].shape[1]
    assert extended["input_ids"][0, length:].tolist() == [5, 6, 7]
    assert extended["attention_mask"][0, length:].tolist() == [1, 1, 1]
    for key, value in extended.items():  # per-token type ids (where the family has them): text, 0
        if value.shape[:2] == extended["input_ids"].shape and key not in ("input_ids", "attention_mask"):
            assert value[0, length:].tolist() == [0, 0, 0] and torch.equal(value[:, :length], inputs[key])
    assert torch.equal(extended["pixel_values"], inputs["pixel_values"])
