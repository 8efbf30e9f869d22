"""The offline fixtures themselves: planted sinks are found and draw attention in every family, a
saved checkpoint reloads as it was, letter answers depend on the image."""

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from lmms_var.backbones import backbone_for
from lmms_var.core import find_sink_tokens
from lmms_var.sink_dims.calibration import builtin_prompts
from lmms_var.sink_dims.validator import validate_sink_dims
from lmms_var.testing import TINY_TAU, TinySpec, build_tiny_model
from lmms_var.testing.images import random_images
from lmms_var.testing.tiny_families import TINY_FAMILIES
from tests.conftest import TINY_SPEC


def _inputs(processor, image, question="Which one?\n(A) a\n(B) b\n(C) c\n(D) d"):
    content = [{"type": "image"}, {"type": "text", "text": question}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    return processor(text=[text], images=[image], return_tensors="pt")


def test_planted_sinks_are_text_and_visual_tokens(family, family_model):
    model, processor = family_model
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
    facts, ids = TINY_FAMILIES[family], inputs["input_ids"][0]
    visual = ids == processor.tokenizer.convert_tokens_to_ids(facts.visual_tokens[0])
    text_sinks = torch.isin(
        ids, torch.tensor(processor.tokenizer.convert_tokens_to_ids(list(facts.text_sink_tokens)))
    )
    assert text_sinks.any() and torch.equal(sinks & ~visual, text_sinks)
    assert 0 < int((sinks & visual).sum()) < int(visual.sum()) // 2


def test_planted_sinks_draw_attention(family_model):
    """In the layers (from 2 on) where every query sees the sinks: a sliding window (Gemma 3) hides
    them from later queries, whose wired heads then pick other keys."""
    model = family_model[0]
    layers = [layer for layer in backbone_for(model).full_attention_layers(model) if layer >= 2]
    result = validate_sink_dims(
        *family_model, TINY_SPEC.sink_dims, tau=TINY_TAU, prompts=builtin_prompts(2), layers=layers
    )
    assert result.precision >= 0.9 and result.recall >= 0.9


def test_a_saved_checkpoint_reloads_as_it_was(family_model, family_checkpoint):
    model, processor = family_model
    reloaded = AutoModelForImageTextToText.from_pretrained(family_checkpoint).eval()
    reloaded_processor = AutoProcessor.from_pretrained(family_checkpoint)
    image = random_images(1, seed=4)[0]
    inputs = _inputs(processor, image)
    assert torch.equal(_inputs(reloaded_processor, image)["input_ids"], inputs["input_ids"])
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, model(**inputs).logits)


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
