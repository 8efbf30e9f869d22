"""`text_only_inputs`: PAI's text-only prompt is the prompt with each image's whole placeholder span
removed, the family's delimiters included, left-padded again."""

import re

import pytest
import torch

from lmms_var.backbones import PlaceholderTokens, backbone_for_model_type, text_only_inputs
from lmms_var.testing.images import random_images
from lmms_var.testing.tiny_families import TINY_FAMILIES
from tests.patch.conftest import BATCH, QUESTIONS, chat_text, prompt_inputs

# The tokens around each run of placeholders, as each family's processor writes them (stated here,
# apart from the backbones' tables).
QWEN = ("<|vision_start|>", "<|vision_end|>")
DELIMITERS = {
    "qwen2_vl": QWEN,
    "qwen2_5_vl": QWEN,
    "qwen3_vl": QWEN,
    "qwen3_vl_moe": QWEN,
    "qwen3_5": QWEN,
    "internvl": ("<img>", "</img>"),
    "gemma3": ("<start_of_image>", "<end_of_image>"),
    "llava": ("", ""),
    "llava_next": ("", ""),
    "llava_onevision": ("", ""),
}


def placeholder_tokens(model, processor) -> PlaceholderTokens:
    backbone = backbone_for_model_type(model.config.model_type)
    return PlaceholderTokens.of(backbone, model.config, processor.tokenizer)


def without_visuals(text: str, family: str) -> str:
    """The decoded prompt with each delimited run of placeholder tokens cut out of the string."""
    opening, closing = (re.escape(token) for token in DELIMITERS[family])
    visual = "|".join(re.escape(token) for token in TINY_FAMILIES[family].visual_tokens)
    return re.sub(f"{opening}(?:{visual})+{closing}", "", text)


def assert_text_only(processor, family: str, inputs, text_ids, text_mask) -> None:
    decode = processor.tokenizer.decode
    width = int(text_mask.sum(dim=1).max())
    assert text_ids.shape == text_mask.shape == (inputs["input_ids"].shape[0], width)
    for row, (ids, mask) in enumerate(zip(inputs["input_ids"], inputs["attention_mask"], strict=True)):
        kept = text_ids[row, text_mask[row].bool()]
        length = len(kept)
        assert text_mask[row].tolist() == [0] * (width - length) + [1] * length  # padded on the left
        assert (text_ids[row, : width - length] == processor.tokenizer.pad_token_id).all()
        expected = without_visuals(decode(ids[mask.bool()]), family)
        assert decode(kept) == expected
    assert len(text_ids[text_mask.bool()]) < len(inputs["input_ids"][inputs["attention_mask"].bool()])


def test_each_families_images_go_with_their_delimiters(family, family_model):
    model, processor = family_model
    inputs = prompt_inputs(processor, BATCH)
    text_ids, text_mask = text_only_inputs(
        placeholder_tokens(model, processor), inputs["input_ids"], inputs["attention_mask"]
    )
    assert_text_only(processor, family, inputs, text_ids, text_mask)
    tokens = [
        processor.tokenizer.convert_tokens_to_ids(token) for token in TINY_FAMILIES[family].visual_tokens
    ]
    delimiters = [processor.tokenizer.convert_tokens_to_ids(token) for token in DELIMITERS[family] if token]
    assert not torch.isin(text_ids, torch.tensor(tokens + delimiters)).any()
    # The questions survive whole, in a form the tokenizer gives back.
    for row, (_, question) in enumerate(BATCH):
        assert question in processor.tokenizer.decode(text_ids[row])


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_videos_go_too(family, tiny_models):
    model, processor = tiny_models(family)
    texts = [chat_text(processor, 1, QUESTIONS[1], video=True)]
    inputs = processor(text=texts, videos=[random_images(4, seed=3)], return_tensors="pt")
    text_ids, text_mask = text_only_inputs(
        placeholder_tokens(model, processor), inputs["input_ids"], inputs["attention_mask"]
    )
    assert_text_only(processor, family, inputs, text_ids, text_mask)


def test_right_padding_and_a_prompt_without_images():
    """Hand-written ids: a delimiter goes only next to a placeholder run; a prompt without one keeps
    every token; right padding comes back as left padding."""
    tokens = PlaceholderTokens(visual=(7, 8), delimiters=(5, 6), pad=0)
    input_ids = torch.tensor([[1, 5, 7, 7, 6, 2, 5, 8, 6, 3], [1, 5, 2, 6, 3, 4, 0, 0, 0, 0]])
    attention_mask = torch.tensor([[1] * 10, [1] * 6 + [0] * 4])
    text_ids, text_mask = text_only_inputs(tokens, input_ids, attention_mask)
    assert text_ids.tolist() == [[0, 0, 0, 1, 2, 3], [1, 5, 2, 6, 3, 4]]
    assert text_mask.tolist() == [[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]]


def test_a_tokenizer_without_the_delimiters_is_named(tiny_models):
    model = tiny_models("qwen2_5_vl")[0]
    llava_tokenizer = tiny_models("llava")[1].tokenizer
    with pytest.raises(
        ValueError, match=r"tokenizer: the Qwen2.5-VL tokenizer has no <\|vision_start\|> token"
    ):
        PlaceholderTokens.of(backbone_for_model_type("qwen2_5_vl"), model.config, llava_tokenizer)
