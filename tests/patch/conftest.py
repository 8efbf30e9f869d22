"""Inputs for model-level VAR tests: a left-padded batch of a 2-image and a 1-image prompt, and a
private copy of the tiny model to patch."""

import copy

import pytest
from transformers import Gemma3Processor

from lmms_var.testing.images import random_images

QUESTIONS = ("Which point is closer to the camera? (A) red (B) blue", "How many objects are there?")
# The padded batch's prompts, as (number of images, question).
BATCH = [(2, QUESTIONS[0]), (1, QUESTIONS[1])]


def chat_text(processor, n_images: int, question: str, video: bool = False) -> str:
    content = [{"type": "video"} if video else {"type": "image"} for _ in range(n_images)]
    messages = [{"role": "user", "content": [*content, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def prompt_inputs(processor, specs: list[tuple[int, str]], seed: int = 5):
    """Processor outputs for prompts given as (number of images, question); images drawn per prompt.

    Handed over as one flat list, as lmms-eval's models do (LLaVA-OneVision's processor would read
    a prompt's images in a nested list as a multi-image prompt, base resolution only), except to
    Gemma 3's processor, which takes no flat list for several prompts."""
    texts = [chat_text(processor, n_images, question) for n_images, question in specs]
    images = [random_images(n_images, seed=seed + index) for index, (n_images, _) in enumerate(specs)]
    if not isinstance(processor, Gemma3Processor):
        images = [image for prompt_images in images for image in prompt_images]
    return processor(text=texts, images=images if any(images) else None, return_tensors="pt", padding=True)


@pytest.fixture
def model(tiny_model):
    """A private copy of the tiny Qwen2.5-VL model: tests may patch it freely."""
    return copy.deepcopy(tiny_model[0])


@pytest.fixture(scope="session")
def padded_batch(tiny_model):
    return prompt_inputs(tiny_model[1], BATCH)


@pytest.fixture(scope="session")
def family_batch(family_model):
    """The padded batch for each family of the test matrix."""
    return prompt_inputs(family_model[1], BATCH)


@pytest.fixture
def copies(tiny_models):
    """`get(model_type)` -> (private copy of the tiny model, processor)."""

    def get(model_type: str):
        model, processor = tiny_models(model_type)
        return copy.deepcopy(model), processor

    return get
