"""Synthetic questions whose answer is in the picture: "What colour is the square?".

Each picture is a grey, slightly noisy background holding one coloured square (red, green, blue or
yellow; the gold answer) and a few white background cells, each exactly one visual token of
Qwen2.5-VL (28 x 28 pixels, on its token grid). The constructed checkpoint
(`lmms_var.testing.constructed`) reads the square's colour through attention and turns the white
cells into visual sinks. Squares come in several sizes, so the colour's share of the attention varies
from doc to doc. Records use the spatial-reasoning jsonl layout the `spatial_*` tasks read.
"""

import json
import random
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from lmms_var.tasks.data_root import SPATIAL_SUBTASKS

# The options, in the order every question lists them (the constructed model maps colour i to letter i).
COLOURS = {"red": (230, 20, 20), "green": (20, 210, 20), "blue": (20, 20, 230), "yellow": (230, 230, 20)}
BACKGROUND = 128
SINK_COLOUR = (255, 255, 255)
# One visual token of Qwen2.5-VL covers a CELL x CELL pixel square (14-pixel patches merged 2 x 2).
CELL = 28
GRID = 6  # pictures are GRID x GRID tokens
SQUARE_SIDES = (20, 30, 36, 44)  # pixels; the smallest cover well under one token, the largest about two
SINK_CELLS = 2
QUESTION = "What colour is the square in the picture?"


@dataclass(frozen=True)
class ColourSquare:
    """One picture: where its square is, its colour (an index into COLOURS), and its white cells."""

    colour: int
    side: int
    left: int
    top: int
    sink_cells: tuple[tuple[int, int], ...]  # (row, col) on the token grid

    def cells(self) -> set[tuple[int, int]]:
        """(row, col) of the token-grid cells the square covers, in part or whole."""
        first_row, last_row = self.top // CELL, (self.top + self.side - 1) // CELL
        first_col, last_col = self.left // CELL, (self.left + self.side - 1) // CELL
        return {
            (row, col) for row in range(first_row, last_row + 1) for col in range(first_col, last_col + 1)
        }

    def picture(self, seed: int) -> Image.Image:
        rng = np.random.default_rng(seed)
        size = GRID * CELL
        pixels = np.clip(BACKGROUND + rng.normal(0.0, 6.0, (size, size, 1)), 0, 255).repeat(3, axis=2)
        for row, col in self.sink_cells:
            pixels[row * CELL : (row + 1) * CELL, col * CELL : (col + 1) * CELL] = SINK_COLOUR
        colour = list(COLOURS.values())[self.colour]
        pixels[self.top : self.top + self.side, self.left : self.left + self.side] = colour
        return Image.fromarray(pixels.astype(np.uint8), mode="RGB")


def draw_colour_square(rng: random.Random) -> ColourSquare:
    """A random square and white cells that do not touch the square's cells."""
    side = rng.choice(SQUARE_SIDES)
    left, top = rng.randrange(GRID * CELL - side), rng.randrange(GRID * CELL - side)
    square = ColourSquare(rng.randrange(len(COLOURS)), side, left, top, ())
    free = [(row, col) for row in range(GRID) for col in range(GRID) if (row, col) not in square.cells()]
    return replace(square, sink_cells=tuple(rng.sample(free, SINK_CELLS)))


def colour_question() -> str:
    """The question with its lettered options, as BLINK's prompts list them."""
    options = "\n".join(f"({chr(ord('A') + i)}) {name}" for i, name in enumerate(COLOURS))
    return f"{QUESTION}\n{options}"


def write_colour_square_root(
    root: str | Path,
    blink_subtasks: tuple[str, ...] = SPATIAL_SUBTASKS,
    docs_per_subtask: int = 20,
    seed: int = 0,
) -> Path:
    """Write `ROOT/spatial_reasoning/blink/blink_validation.jsonl` and one PNG per record; returns ROOT.

    Every sub-task gets the same kind of question (one picture, the square's colour), so each task
    of a run is a sample of the same test.
    """
    root = Path(root)
    rng = random.Random(seed)
    folder = Path("spatial_reasoning") / "blink"
    (root / folder / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for sub_task in blink_subtasks:
        for i in range(docs_per_subtask):
            record_id = f"{sub_task}_{i}"
            square = draw_colour_square(rng)
            image = folder / "images" / f"{record_id}.png"
            square.picture(seed=rng.randrange(2**31)).save(root / image)
            question = f"<image>\n{colour_question()}"
            answer = f"({chr(ord('A') + square.colour)})"
            records.append(
                {
                    "id": record_id,
                    "sub_task": sub_task,
                    "image": image.as_posix(),
                    "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
                }
            )
    (root / folder / "blink_validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root
