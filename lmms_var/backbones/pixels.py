"""The picture a vision tower was given, from the pixel values its processor produced.

Processors resize (and some crop) an image, rescale it to [0, 1] and normalise it with their own
mean and std; undoing the last two, with the processor's own numbers, gives back the resized image
the model saw, up to rounding. Imports no torch: it works on the tensors it is given.
"""

from typing import Any


def seen_pictures(pixels, image_processor) -> Any:
    """Uint8[N, H, W, 3] (numpy) from Float[N, 3, H, W] pixel values of `image_processor`."""
    frames = pixels.detach().float().cpu()
    if getattr(image_processor, "do_normalize", True):
        std = frames.new_tensor(image_processor.image_std).reshape(-1, 1, 1)
        frames = frames * std + frames.new_tensor(image_processor.image_mean).reshape(-1, 1, 1)
    if getattr(image_processor, "do_rescale", True):
        frames = frames / image_processor.rescale_factor
    return frames.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def stitch_tiles(tiles, rows: int, cols: int) -> Any:
    """Float[C, rows * S, cols * S]: `rows` x `cols` square tiles Float[rows * cols, C, S, S] (row-major)
    put back together."""
    channels, side = tiles.shape[1], tiles.shape[-1]
    grid = tiles.reshape(rows, cols, channels, side, side).permute(2, 0, 3, 1, 4)
    return grid.reshape(channels, rows * side, cols * side)
