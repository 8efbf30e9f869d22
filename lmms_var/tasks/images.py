"""Images as a person sees them: any Pillow mode to 8-bit RGB.

lmms-eval's BLINK hooks call `image.convert("RGB")`, which clips 16-bit values to 255 (a 16-bit PNG
turns almost white), drops alpha (transparent pixels show whatever colour they hide, often black)
and scales float images wrongly. `to_rgb` converts the way an image viewer shows the picture.
"""

import numpy as np
from PIL import Image

WHITE = (255, 255, 255, 255)
# Integer modes holding 16-bit samples ("I" is how Pillow opens some 16-bit files, and 32-bit integer
# images have no display range of their own, so 16 bits is the reading a viewer would choose).
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
SIXTEEN_BIT_MAX = 65535


def _grey_to_rgb(levels: np.ndarray) -> Image.Image:
    """Grey levels in [0, 1] as an 8-bit RGB image."""
    grey = np.round(np.clip(levels, 0.0, 1.0) * 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` as 8-bit RGB: 16-bit samples scaled (65535 is white), float samples read as 0..1,
    transparency composited on white, palette, CMYK, YCbCr, LAB, HSV and the rest converted by Pillow.
    An RGB image comes back unchanged. Raises ValueError for a mode Pillow cannot convert."""
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode in SIXTEEN_BIT_MODES:
        return _grey_to_rgb(np.asarray(image, dtype=np.float64) / SIXTEEN_BIT_MAX)
    if image.mode == "F":
        return _grey_to_rgb(np.asarray(image, dtype=np.float64))
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", image.size, WHITE), rgba).convert("RGB")
    return image.convert("RGB")
