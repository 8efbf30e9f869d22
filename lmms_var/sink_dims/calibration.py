"""Prompts to measure sink dimensions on: built-in ones (no dataset needed) or records of a spatial root.

Sink channels are a property of the backbone, not of the data, so a handful of prompts that look like
real use (the model's own chat template, one or two images, a question after them) is enough. The
built-in prompts are generated deterministically, so a measurement is reproducible for a given model.
"""

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from lmms_var.sink_dims.defaults import DEFAULT_NUM_SAMPLES
from lmms_var.sink_dims.synthetic_images import random_image
from lmms_var.tasks.data_root import DataRoot
from lmms_var.tasks.images import to_rgb
from lmms_var.tasks.records import IMAGE_KEYS, read_blink_jsonl

# Questions in the style of the spatial benchmarks VAR is evaluated on.
_QUESTIONS = (
    "Which point is closer to the camera? Answer with the option's letter.\n(A) the red point\n(B) the blue point",
    "Is the circle on the left or on the right of the square?",
    "How many objects are in the picture? Answer with a number.",
    "Describe the picture in one sentence.",
    "Are the two pictures taken from the same viewpoint? Answer yes or no.",
    "Which object is above the others?\n(A) the first\n(B) the second\n(C) the third",
)
# Sizes vary so that the image processor produces different grids (and so different token counts).
_IMAGE_SIZES = ((224, 224), (336, 224), (224, 336), (280, 280))


@dataclass(frozen=True)
class CalibrationPrompt:
    """One user turn: images first, then the question, as the benchmarks present them."""

    images: tuple[Image.Image, ...]
    question: str


def builtin_prompts(num_samples: int = DEFAULT_NUM_SAMPLES, seed: int = 0) -> list[CalibrationPrompt]:
    """`num_samples` deterministic prompts with one or two generated images each."""
    _check_num_samples(num_samples)
    prompts = []
    for i in range(num_samples):
        n_images = 1 + i % 2
        images = tuple(
            random_image(seed * 10_000 + i * 10 + j, _IMAGE_SIZES[(i + j) % len(_IMAGE_SIZES)])
            for j in range(n_images)
        )
        prompts.append(CalibrationPrompt(images, _QUESTIONS[i % len(_QUESTIONS)]))
    return prompts


def data_prompts(root: str | Path, num_samples: int = DEFAULT_NUM_SAMPLES) -> list[CalibrationPrompt]:
    """The first `num_samples` BLINK records of a spatial root, read as the spatial tasks read them."""
    _check_num_samples(num_samples)
    data_root = DataRoot(Path(root))
    path = data_root.blink_jsonl
    if not path.is_file():
        raise FileNotFoundError(f"spatial root {root}: no {path.relative_to(root)} in it")
    loaded = read_blink_jsonl(data_root)
    if loaded.problems:
        raise ValueError(
            f"spatial root {root}: {len(loaded.problems)} bad record(s), first: {loaded.problems[0]}"
        )
    if not loaded.docs:
        raise ValueError(f"spatial root {root}: {path} holds no records")
    prompts = []
    for doc in loaded.docs[:num_samples]:
        images = []
        for key in IMAGE_KEYS:
            if doc[key] is not None:
                image = Image.open(doc[key])
                image.load()  # reads the pixels and closes the file (`to_rgb` may return this very image)
                images.append(to_rgb(image))
        prompts.append(CalibrationPrompt(tuple(images), doc["prompt"]))
    return prompts


def encode_prompt(processor, prompt: CalibrationPrompt) -> dict:
    """Model inputs for one prompt, through the processor's own chat template (batch of one, no padding)."""
    content = [{"type": "image"} for _ in prompt.images] + [{"type": "text", "text": prompt.question}]
    text = processor.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )
    return dict(processor(text=[text], images=list(prompt.images), return_tensors="pt"))


def _check_num_samples(num_samples: int) -> None:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
