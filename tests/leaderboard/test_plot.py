"""The delta bar chart: one bar per compared run and task, heights equal to the table's deltas."""

import math

import pytest
from PIL import Image

from lmms_var.leaderboard import build_leaderboard, load_run, plot_deltas
from lmms_var.leaderboard.significance import bootstrap_interval
from tests.leaderboard.results_files import doc_samples, write_run


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
    assert [text.get_text() for text in figure.legends[0].get_texts()] == board.runs[1:]
    heights = [patch.get_height() for patch in axes.patches]
    assert heights[:2] == [pytest.approx(10.0), pytest.approx(-5.0)]
    assert heights[2] == pytest.approx(-10.0) and math.isnan(heights[3])  # the p=0.8 run has no task b
    # Without samples there is no paired interval: no error bar, and the label is the delta alone.
    assert all(math.isnan(low) for low, _ in _error_bars(axes))
    assert [text.get_text() for text in axes.texts] == ["+10.00", "-5.00", "-10.00"]


def _error_bars(axes) -> list[tuple[float, float]]:
    """(low, high) of each bar's error bar, in the order the bars were drawn; NaN where it has none."""
    from matplotlib.container import BarContainer

    return [
        tuple(segment[:, 1]) if len(segment) else (math.nan, math.nan)
        for container in axes.containers
        if isinstance(container, BarContainer)
        for segment in container.errorbar.lines[2][0].get_segments()
    ]


def test_each_bar_carries_the_paired_bootstrap_interval_and_p_value(tmp_path):
    """A +40 bar and a +0.00 bar both say how sure they are: the bootstrap interval over the shared docs."""
    gains = [0.0] * 8 + [1.0] * 6 + [0.0] * 6  # the run is right on 8 more docs of 20
    run_gains = [1.0] * 14 + [0.0] * 6
    swaps_base = [1.0, 0.0] * 10  # same accuracy, half the docs swapped
    swaps_run = [0.0, 1.0] * 10
    specs = [("var=false", gains, swaps_base), ("var=true", run_gains, swaps_run)]
    for index, (args, gain, swap) in enumerate(specs):
        write_run(
            tmp_path / f"run{index}",
            "qwen2_5_vl_var",
            args,
            {"gain": {"acc": sum(gain) / 20}, "swap": {"acc": sum(swap) / 20}},
            samples={"gain": doc_samples("acc", gain), "swap": doc_samples("acc", swap)},
        )
    board = build_leaderboard([load_run(tmp_path / "run0"), load_run(tmp_path / "run1")])
    axes = plot_deltas(board, tmp_path / "deltas.png").axes[0]
    assert [patch.get_height() for patch in axes.patches] == [pytest.approx(40.0), pytest.approx(0.0)]
    (gain_low, gain_high), (swap_low, swap_high) = _error_bars(axes)
    _, low, high = bootstrap_interval(gains, run_gains)
    assert (gain_low, gain_high) == (pytest.approx(100 * low), pytest.approx(100 * high))
    assert 0 < gain_low < 40 < gain_high
    assert swap_low < -20 and swap_high > 20  # a zero delta with a wide interval
    p_values = [cell.significance.p_value for cell in board.cells[1]]
    assert [text.get_text() for text in axes.texts] == [
        f"+40.00\np={p_values[0]:.3f}",
        f"+0.00\np={p_values[1]:.3f}",
    ]


def test_plot_without_baseline_is_refused(tmp_path):
    board = _board(tmp_path, [("p=0.4", {"a": {"acc": 0.6}}), ("p=0.8", {"a": {"acc": 0.4}})])
    with pytest.raises(ValueError, match="--plot needs a baseline"):
        plot_deltas(board, tmp_path / "deltas.png")
