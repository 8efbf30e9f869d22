"""The delta bar chart: one bar per compared run and task, heights equal to the table's deltas."""

import math

import pytest
from PIL import Image

from lmms_var.leaderboard import build_leaderboard, load_run, plot_deltas
from tests.leaderboard.results_files import write_run


def _board(tmp_path, specs):
    runs = []
    for index, (args, results) in enumerate(specs):
        write_run(
            tmp_path / f"run{index}",
            "qwen2_5_vl_var",
            args,
            results,
            groups=("grp",) if "grp" in results else (),
        )
        runs.append(load_run(tmp_path / f"run{index}"))
    return build_leaderboard(runs)


def test_bars_are_the_deltas_of_tasks_not_groups(tmp_path):
    board = _board(
        tmp_path,
        [
            ("var=false", {"a": {"acc": 0.5}, "b": {"acc": 0.5}, "grp": {"acc": 0.5}}),
            ("var=true,p=0.4", {"a": {"acc": 0.6}, "b": {"acc": 0.45}, "grp": {"acc": 0.52}}),
            ("var=true,p=0.8", {"a": {"acc": 0.4}, "grp": {"acc": 0.4}}),
        ],
    )
    figure = plot_deltas(board, tmp_path / "deltas.png")
    with Image.open(tmp_path / "deltas.png") as image:
        assert image.format == "PNG" and image.width > 300
    axes = figure.axes[0]
    assert [label.get_text() for label in axes.get_xticklabels()] == ["a", "b"]
    assert [text.get_text() for text in axes.get_legend().get_texts()] == board.runs[1:]
    heights = [patch.get_height() for patch in axes.patches]
    assert heights[:2] == [pytest.approx(10.0), pytest.approx(-5.0)]
    assert heights[2] == pytest.approx(-10.0) and math.isnan(heights[3])  # the p=0.8 run has no task b


def test_plot_without_baseline_is_refused(tmp_path):
    board = _board(tmp_path, [("p=0.4", {"a": {"acc": 0.6}}), ("p=0.8", {"a": {"acc": 0.4}})])
    with pytest.raises(ValueError, match="--plot needs a baseline"):
        plot_deltas(board, tmp_path / "deltas.png")
