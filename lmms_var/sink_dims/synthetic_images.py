"""Deterministic synthetic images (Pillow): the pictures of the built-in calibration prompts.

Library code, so that `calibration` needs no test fixture; `lmms_var.testing.images` re-exports
`random_image` for the tiny checkpoints, the synthetic data and the tests.
"""

import random

from PIL import Image, ImageDraw


def random_image(seed: int, size: tuple[int, int] = (112, 112)) -> Image.Image:
    """A noisy background with a few coloured shapes: enough structure for a vision tower to vary."""
    rng = random.Random(seed)
    # Pillow's effect_noise is not seedable; bytes from our own generator are.
    image = Image.frombytes("L", size, rng.randbytes(size[0] * size[1])).convert("RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(2, 5)):
        x0, y0 = rng.randrange(size[0] - 8), rng.randrange(size[1] - 8)
        x1, y1 = x0 + rng.randint(8, size[0] // 2), y0 + rng.randint(8, size[1] // 2)
        colour = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    return image
