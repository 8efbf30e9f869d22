"""The constructed model: VAR moves its answers in the direction VAR exists for.

The plain model's visual sinks outvote the colour of small squares; VAR, moving the sinks' attention
to the other visual tokens, recovers them. Checked in-process (attention per drawn layer, first
answer token) and end to end through lmms-eval's real CLI.
"""

import json
import random

import numpy as np
import pytest
import torch
import yaml

from lmms_var.attention_maps import MapSettings, attention_maps, map_layers
from lmms_var.leaderboard import build_leaderboard, load_run
from lmms_var.patch import enable_var
from lmms_var.sink_dims.calibration import CalibrationPrompt, encode_prompt
from lmms_var.testing.colour_squares import (
    CELL,
    COLOURS,
    SINK_COLOUR,
    colour_question,
    draw_colour_square,
    write_colour_square_root,
)
from lmms_var.testing.constructed import (
    SPEC,
    build_constructed_model,
    save_constructed_checkpoint,
    var_config,
)
from lmms_var.testing.demo import demo_runs, run_lmms_eval

DOCS = 24
MARGIN = 0.2  # VAR's accuracy must beat the plain model's by at least this much


@pytest.fixture(scope="module")
def constructed():
    return build_constructed_model()


def _squares(count: int, seed: int = 1):
    rng = random.Random(seed)
    return [draw_colour_square(rng) for _ in range(count)]


def _prompt(square, seed: int) -> CalibrationPrompt:
    return CalibrationPrompt((square.picture(seed),), colour_question())


@torch.no_grad()
def _answers(model, processor, prompts, config=None) -> list[int]:
    """The letter (0 = A) each prompt's first answer token is, with VAR attached when `config`."""
    letters = processor.tokenizer.convert_tokens_to_ids(list("ABCD"))
    answers = []
    for prompt in prompts:
        inputs = encode_prompt(processor, prompt)
        if config is None:
            token = model(**inputs).logits[0, -1].argmax()
        else:
            with enable_var(model, config):
                token = model(**inputs).logits[0, -1].argmax()
        answers.append(letters.index(int(token)))
    return answers


def test_the_answer_is_in_the_picture():
    for seed, square in enumerate(_squares(8)):
        pixels = np.asarray(square.picture(seed))
        centre = pixels[square.top + square.side // 2, square.left + square.side // 2]
        assert tuple(centre) == list(COLOURS.values())[square.colour]
        for row, col in square.sink_cells:
            assert (pixels[row * CELL : (row + 1) * CELL, col * CELL : (col + 1) * CELL] == SINK_COLOUR).all()


def test_var_recovers_answers_the_sinks_hide_and_p1_changes_none(constructed):
    model, processor = constructed
    squares = _squares(DOCS)
    prompts = [_prompt(square, seed) for seed, square in enumerate(squares)]
    gold = [square.colour for square in squares]
    plain = _answers(model, processor, prompts)
    var = _answers(model, processor, prompts, var_config())
    accuracy = {
        name: np.mean([a == g for a, g in zip(answers, gold, strict=True)])
        for name, answers in [("plain", plain), ("var", var)]
    }
    assert accuracy["var"] >= accuracy["plain"] + MARGIN, accuracy
    # The plain model answers (A), the sinks' vote, where a square is too small to outvote them.
    assert sum(answer == 0 for answer in plain) > sum(answer == 0 for answer in gold)
    assert _answers(model, processor, prompts, var_config(p=1.0)) == plain


def test_in_each_drawn_layer_var_moves_attention_from_sinks_to_content(constructed):
    model, processor = constructed
    config = var_config()
    layers = map_layers(None, SPEC.num_layers)
    assert layers and set(layers) <= set(config.active_layers(SPEC.num_layers))
    for seed, square in enumerate(_squares(4)):
        inputs = encode_prompt(processor, _prompt(square, seed))
        for layer in layers:
            with enable_var(model, config) as handle:
                maps = attention_maps(handle, processor, inputs, MapSettings(layers=[layer], heads="all"))
            # VAR selects every head on the last prompt row: its sinks' share of the image is <= rho.
            assert maps.selected_pairs[layer] == SPEC.num_heads
            (panel,) = maps.panels
            assert set(panel.sinks) == set(square.sink_cells)
            content = np.ones(panel.before.shape, dtype=bool)
            content[tuple(np.array(panel.sinks).T)] = False
            assert panel.sink_mass(panel.after) < panel.sink_mass(panel.before)
            assert panel.after[content].sum() > panel.before[content].sum()
            cells = square.cells()
            rows, cols = np.array(sorted(cells)).T
            assert panel.after[rows, cols].sum() > panel.before[rows, cols].sum()


@pytest.mark.slow
def test_var_beats_the_plain_model_through_lmms_eval(tmp_path):
    """Plain, VAR (p=0.6) and VAR with p=1 through lmms-eval's CLI, on the same 40 docs."""
    data = write_colour_square_root(tmp_path / "data", blink_subtasks=("Counting",), docs_per_subtask=40)
    checkpoint = save_constructed_checkpoint(tmp_path / "checkpoint")
    runs = demo_runs(checkpoint, tmp_path / "diagnostics.jsonl", task="spatial_blink_counting")[:2]
    identity = {
        **runs[1],
        "model_args": runs[1]["model_args"].replace("p=0.6", "p=1.0"),
        "output_path": "runs/p1",
    }
    config_file = tmp_path / "runs.yaml"
    config_file.write_text(yaml.safe_dump([*runs, identity], sort_keys=False))
    folders = run_lmms_eval(config_file, tmp_path, env={"LMMS_VAR_DATA_ROOT": str(data)})
    board = build_leaderboard([load_run(folder) for folder in folders])
    (plain, var, p1) = (row[0] for row in board.cells)
    assert var.value >= plain.value + 100 * MARGIN, board
    assert var.significance.p_value < 0.01
    answers = [_logged_answers(folder) for folder in folders]
    assert len(answers[0]) == 40 and answers[2] == answers[0]
    assert p1.delta == 0.0


def _logged_answers(folder) -> dict[str, str]:
    """Record id -> the answer lmms-eval logged for it."""
    (samples,) = folder.rglob("*_samples_*.jsonl")
    lines = [json.loads(line) for line in samples.read_text().splitlines()]
    return {line["blink_acc"]["id"]: line["filtered_resps"] for line in lines}
