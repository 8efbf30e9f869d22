"""The offline fixtures themselves: planted sinks are found, letter answers depend on the image."""

import pytest
import torch

from lmms_var.core import find_sink_tokens
from lmms_var.testing import TINY_TAU, TinySpec, build_tiny_model
from lmms_var.testing.images import random_images
from tests.conftest import TINY_SPEC


def _inputs(processor, image, question="Which one?\n(A) a\n(B) b\n(C) c\n(D) d"):
    content = [{"type": "image"}, {"type": "text", "text": question}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    return processor(text=[text], images=[image], return_tensors="pt")


def test_planted_sinks_are_text_and_visual_tokens(tiny_model):
    model, processor = tiny_model
    inputs = _inputs(processor, random_images(1, seed=3)[0])
    captured = []
    hook = model.model.language_model.layers[2].register_forward_pre_hook(
        lambda _m, args, kwargs: captured.append(kwargs.get("hidden_states", args[0] if args else None)),
        with_kwargs=True,
    )
    with torch.no_grad():
        model(**inputs)
    hook.remove()
    sinks = find_sink_tokens(captured[0], TINY_SPEC.sink_dims, TINY_TAU)[0]
    visual = inputs["input_ids"][0] == model.config.image_token_id
    im_start = inputs["input_ids"][0] == processor.tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert torch.equal(sinks & ~visual, im_start)
    assert 0 < int((sinks & visual).sum()) < int(visual.sum()) // 2


def test_letter_answers_follow_the_image():
    model, processor = build_tiny_model(TinySpec(answers_letters=True))
    answers = []
    for image in random_images(8, seed=40):
        inputs = _inputs(processor, image)
        generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        answers.append(processor.batch_decode(generated[:, inputs["input_ids"].shape[1] :])[0])
    assert all(answer[0] in "ABCD" and answer[1:] == "<|im_end|>" for answer in answers), answers
    assert len({answer[0] for answer in answers}) >= 2, answers


def test_sink_dims_must_avoid_the_answer_channels():
    with pytest.raises(ValueError, match="must avoid channels"):
        build_tiny_model(TinySpec(sink_dims=(1, 17), answers_letters=True))
