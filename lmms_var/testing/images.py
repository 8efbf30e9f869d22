"""Deterministic synthetic images (Pillow), shared by the checkpoint builder, tests and the demo.

`random_image` itself is library code (`lmms_var.sink_dims.synthetic_images`, the calibration
prompts' pictures); it is re-exported here for the fixtures.
"""

import numpy as np
from PIL import Image

from lmms_var.sink_dims.synthetic_images import random_image

__all__ = ["IMAGE_MODES", "picture_in_mode", "random_image", "random_images"]


def random_images(count: int, seed: int = 0, size: tuple[int, int] = (112, 112)) -> list[Image.Image]:
    return [random_image(seed * 1000 + i, size) for i in range(count)]


# Image modes that files really come in, beyond 8-bit RGB, for the tests of `lmms_var.tasks.images`.
IMAGE_MODES = ("L", "1", "P", "P+transparency", "RGBA", "LA", "CMYK", "YCbCr", "HSV", "I;16", "I", "F")


def picture_in_mode(mode: str, size: tuple[int, int] = (48, 32)) -> tuple[Image.Image, Image.Image]:
    """(a picture stored in `mode`, the 8-bit RGB picture an image viewer shows for it).

    Grey modes hold a horizontal ramp from black to white, so a wrong scale shows as a wrong ramp;
    modes with transparency have a transparent (black, when its colour is read) left half, which a
    viewer shows on white; colour modes hold `random_image`. "P+transparency" is a palette image
    whose palette entry 0 is transparent.
    """
    width, height = size
    ramp = np.tile(np.linspace(0, 255, width).round().astype(np.uint8), (height, 1))
    grey = Image.fromarray(ramp, mode="L")
    colour = random_image(0, size)
    transparent = np.zeros((height, width), dtype=bool)
    transparent[:, : width // 2] = True

    def on_white(picture: Image.Image) -> Image.Image:
        pixels = np.asarray(picture.convert("RGB")).copy()
        pixels[transparent] = 255
        return Image.fromarray(pixels, mode="RGB")

    if mode in ("L", "1", "CMYK", "YCbCr", "HSV"):
        stored = (grey if mode in ("L", "1") else colour).convert(mode)
        shown = colour if mode in ("CMYK", "YCbCr", "HSV") else stored.convert("RGB")
        return stored, shown
    if mode == "P":
        stored = colour.quantize(32)
        return stored, stored.convert("RGB")
    if mode == "P+transparency":
        pixels = np.asarray(colour.quantize(32)).copy()
        pixels = np.where(transparent, 0, np.maximum(pixels, 1)).astype(np.uint8)
        stored = Image.fromarray(pixels, mode="P")
        stored.putpalette([0, 0, 0, *colour.quantize(32).getpalette()[3:]])
        stored.info["transparency"] = 0
        return stored, on_white(stored)
    if mode in ("RGBA", "LA"):
        base = colour if mode == "RGBA" else grey
        alpha = Image.fromarray(np.where(transparent, 0, 255).astype(np.uint8), mode="L")
        black = Image.new(base.mode, size)  # a transparent pixel's colour, which a viewer does not show
        stored = Image.composite(base, black, alpha).convert(mode)
        stored.putalpha(alpha)
        return stored, on_white(base)
    if mode in ("I;16", "I"):
        levels = ramp.astype(np.uint16 if mode == "I;16" else np.int32) * 257  # the ramp in 16 bits
        return Image.fromarray(levels), grey.convert("RGB")
    if mode == "F":
        return Image.fromarray(ramp.astype(np.float32) / 255), grey.convert("RGB")
    raise ValueError(f"mode must be one of {', '.join(IMAGE_MODES)}, got {mode!r}")
