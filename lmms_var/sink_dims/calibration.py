"""Prompts to measure sink dimensions on: built-in ones (no dataset needed) or records of a spatial root.

Sink channels are a property of the backbone, not of the data, so a handful of prompts that look like
real use (the model's own chat template, one or two images, a question after them) is enough. The
built-in prompts are generated deterministically, so a measurement is reproducible for a given model.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

DEFAULT_NUM_SAMPLES = 8
BLINK_JSONL = Path("spatial_reasoning") / "blink" / "blink_validation.jsonl"

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
    # Imported here: `lmms_var.testing` pulls in the Qwen2.5-VL modeling code, which `--help` must not.
    from lmms_var.testing.images import random_image

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
    """The first `num_samples` BLINK records of a spatial root (`ROOT/spatial_reasoning/blink/...`)."""
    _check_num_samples(num_samples)
    root = Path(root)
    path = root / BLINK_JSONL
    if not path.is_file():
        raise FileNotFoundError(
            f"--data {root}: expected a spatial root with {BLINK_JSONL}, not found at {path}"
        )
    prompts = []
    with path.open() as lines:
        for line_number, line in enumerate(lines, start=1):
            if len(prompts) == num_samples:
                break
            if line.strip():
                prompts.append(_record_prompt(root, json.loads(line), f"{path}:{line_number}"))
    if not prompts:
        raise ValueError(f"--data {root}: {path} holds no records")
    return prompts


def _record_prompt(root: Path, record: dict, where: str) -> CalibrationPrompt:
    """A record's images (`image` or `image_1`, `image_2`, ...) and its question without `<image>` tags."""
    numbered = (key for key in record if re.fullmatch(r"image_\d+", key))
    keys = (
        ["image"] if "image" in record else sorted(numbered, key=lambda key: int(key.removeprefix("image_")))
    )
    try:
        question = record["conversations"][0]["value"]
    except (KeyError, IndexError, TypeError) as error:
        raise ValueError(f"{where}: a record needs conversations[0].value (the question)") from error
    images = []
    for key in keys:
        image_path = root / record[key]
        if not image_path.is_file():
            raise FileNotFoundError(f"{where}: image {record[key]!r} not found under {root}")
        with Image.open(image_path) as image:
            images.append(image.convert("RGB"))
    if not images:
        raise ValueError(f"{where}: the record has no image (keys `image` or `image_N`)")
    return CalibrationPrompt(tuple(images), question.replace("<image>", "").strip())


def encode_prompt(processor, prompt: CalibrationPrompt) -> dict:
    """Model inputs for one prompt, through the processor's own chat template (batch of one, no padding)."""
    content = [{"type": "image"} for _ in prompt.images] + [{"type": "text", "text": prompt.question}]
    text = processor.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )
    return dict(processor(text=[text], images=list(prompt.images), return_tensors="pt"))


def _check_num_samples(num_samples: int) -> None:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"--num-samples must be a positive integer, got {num_samples!r}")
