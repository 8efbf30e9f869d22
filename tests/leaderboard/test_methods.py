"""Runs of different methods (baseline, VAR, ScalingVis, AdaptVis, PAI) in one table and one plot."""

from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_hex
from PIL import Image

from lmms_var.leaderboard import build_leaderboard, load_run, plot_deltas, render
from lmms_var.leaderboard.significance import mcnemar_exact
from tests.leaderboard.results_files import METHOD_RUNS, METHOD_TASKS, write_method_runs


@pytest.fixture
def board(tmp_path):
    return build_leaderboard([load_run(folder) for folder in write_method_runs(tmp_path / "runs")])


def test_one_row_per_method_against_one_baseline(board):
    assert board.baseline == 0 and len(board.runs) == 5
    assert board.methods == [None, "var", "scalingvis", "adaptvis", "pai"]
    base, var, scalingvis, adaptvis, pai = board.runs
    assert base == "qwen2_5_vl_var var=false"
    assert var.startswith("qwen2_5_vl_var var=true") and "p=0.6 rho=0.5" in var
    # Each label names its method and the args given for it (read from the table of model args).
    assert "method=scalingvis" in scalingvis and "alpha=1.5" in scalingvis
    assert all(
        f"{arg}" in adaptvis
        for arg in ("method=adaptvis", "alpha_low=0.5", "alpha_high=1.5", "threshold=0.4")
    )
    assert "method=pai" in pai and "alpha=0.2" in pai and "gamma=1.1" in pai
    assert "gamma" not in scalingvis and "alpha_low" not in pai
    base_scores = METHOD_RUNS["baseline"][1]
    for row, (_args, scores) in enumerate(list(METHOD_RUNS.values())[1:], start=1):
        for col, task in enumerate(METHOD_TASKS):
            cell = board.cells[row][board.columns.index(next(c for c in board.columns if c.task == task))]
            assert cell.delta == pytest.approx(100 * (np.mean(scores[col]) - np.mean(base_scores[col])))
            # Paired over the same ten docs: McNemar's exact test on the 0/1 scores.
            assert cell.significance.p_value == pytest.approx(mcnemar_exact(base_scores[col], scores[col]))


def test_the_table_prints_five_rows_with_deltas_and_p_values(board):
    lines = render(board, "md").splitlines()
    rows = [line for line in lines if line.startswith("| qwen2_5_vl_var")]
    assert len(rows) == 5
    assert all("p=" in row and ("(+" in row or "(-" in row) for row in rows[1:])
    assert "p=" not in rows[0]


def test_the_plot_has_each_methods_bars_in_its_own_colour(board, tmp_path):
    figure = plot_deltas(board, tmp_path / "methods.png")
    with Image.open(tmp_path / "methods.png") as image:
        assert image.format == "PNG"
    axes = figure.axes[0]
    assert [label.get_text() for label in axes.get_xticklabels()] == list(METHOD_TASKS)
    legend = figure.legends[0]
    assert [text.get_text() for text in legend.get_texts()] == board.runs[1:]
    bars = axes.patches
    assert len(bars) == 4 * len(METHOD_TASKS)
    colours = [to_hex(bar.get_facecolor()) for bar in bars]
    per_run = [colours[rank * len(METHOD_TASKS)] for rank in range(4)]
    assert len(set(per_run)) == 4  # one hue per method
    assert all(colours[rank * len(METHOD_TASKS) + 1] == per_run[rank] for rank in range(4))
    heights = [bar.get_height() for bar in bars]
    expected = [board.cells[row][col].delta for row in range(1, 5) for col in range(len(METHOD_TASKS))]
    assert heights == pytest.approx(expected)


def test_runs_of_one_method_share_its_hue_in_shades(tmp_path):
    """A grid of one method's settings (ScalingVis's alphas) reads as one family: shades of one map."""
    from lmms_var.leaderboard.plot import _method_colours

    colours = _method_colours(["var", "scalingvis", "scalingvis", "scalingvis", "pai"])
    assert len({to_hex(colour) for colour in colours}) == 5
    reds, greens, blues = (np.array([colour[channel] for colour in colours[1:4]]) for channel in range(3))
    # Oranges get darker along the grid: every channel falls.
    assert all(np.all(np.diff(channel) <= 0) for channel in (reds, greens, blues))


def test_the_readmes_methods_table_is_this_ones(board):
    """README's "Methods side by side" quotes this table row for row."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start, end = readme.index("**Methods side by side.**"), readme.index("`make demo` prints the five")
    section = readme[start:end]
    quoted = [line.strip() for line in section.splitlines() if line.strip().startswith("| qwen2_5_vl_var")]
    rendered = [line for line in render(board, "md").splitlines() if line.startswith("| qwen2_5_vl_var")]
    assert quoted == rendered
