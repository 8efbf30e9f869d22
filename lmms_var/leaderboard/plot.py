"""Bar chart of per-subtask deltas against the baseline, each with its 95% interval, for papers and slides.

The interval is the paired bootstrap's over the docs both runs evaluated (`significance`), so a
+0.00 bar and a +12 bar both show how sure they are; a bar whose runs logged no samples has none.
Runs of one method (VAR, ScalingVis, ...) share a hue, each of its runs a shade, so a grid of one
method's settings reads as one family next to the other methods.
"""

import math
from pathlib import Path

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lmms_var.leaderboard.table import Cell, Column, Leaderboard

# One sequential colour map per method, in the order methods first appear among the plotted runs.
METHOD_COLOURMAPS = ("Blues", "Oranges", "Greens", "Reds", "Purples", "Greys", "YlOrBr", "PuRd")


def plot_formats() -> list[str]:
    """The file suffixes (without the dot) `plot_deltas` can save to: matplotlib's, read without drawing."""
    return sorted(FigureCanvasAgg.get_supported_filetypes())


def plot_deltas(board: Leaderboard, path: str | Path):
    """Save grouped bars (one group per task, one bar per compared run) to `path`; returns the figure."""
    if board.baseline is None:
        raise ValueError("--plot needs a baseline: no run has VAR off, so name one with --baseline")
    tasks = [col for col, column in enumerate(board.columns) if not column.is_group]
    rows = [row for row in range(len(board.runs)) if row != board.baseline]
    if not tasks or not rows:
        raise ValueError("--plot needs at least one task and one run besides the baseline")
    width = 0.8 / len(rows)
    # A `Figure` of its own, not pyplot's: no global backend to set, no figure to close.
    figure = Figure(
        # About 0.6 inch a bar, so that each bar's delta and p-value stay apart (a sweep has many).
        figsize=(max(6.0, 0.6 * len(tasks) * max(1.5, len(rows))), 4.5 + 0.2 * len(rows)),
        layout="constrained",
    )
    axes = figure.subplots()
    colours = _method_colours([board.methods[row] for row in rows])
    for rank, row in enumerate(rows):
        cells = [board.cells[row][col] for col in tasks]
        # No bar (NaN) where a run lacks the task or there is no baseline value.
        heights = [float("nan") if cell.delta is None else cell.delta for cell in cells]
        intervals = [_interval(cell, board.columns[col]) for cell, col in zip(cells, tasks, strict=True)]
        below = [height - low for height, (low, _) in zip(heights, intervals, strict=True)]
        above = [high - height for height, (_, high) in zip(heights, intervals, strict=True)]
        positions = [index + (rank - (len(rows) - 1) / 2) * width for index in range(len(tasks))]
        axes.bar(
            positions,
            heights,
            width=width,
            label=board.runs[row],
            color=colours[rank],
            yerr=[below, above],
            capsize=3,
            error_kw={"elinewidth": 1.0, "ecolor": "black"},
        )
        for position, height, (low, high), cell in zip(positions, heights, intervals, cells, strict=True):
            if not math.isnan(height):  # the label beyond the bar's end or its interval, whichever is further
                end = max(height, high) if height >= 0 else min(height, low)
                end = height if math.isnan(end) else end
                axes.annotate(
                    _bar_label(cell),
                    (position, end),
                    xytext=(0, 3 if height >= 0 else -3),
                    textcoords="offset points",
                    ha="center",
                    va="bottom" if height >= 0 else "top",
                    fontsize="x-small",
                )
    axes.axhline(0.0, color="black", linewidth=0.8)
    axes.set_xticks(range(len(tasks)))
    axes.set_xticklabels([board.columns[col].task for col in tasks], rotation=30, ha="right")
    percent = all(board.columns[col].percent for col in tasks)
    axes.set_ylabel("difference (points)" if percent else "difference")
    axes.set_title(
        f"Per-task difference to {board.runs[board.baseline]}\n"
        "error bars: 95% paired bootstrap interval over the shared docs",
        fontsize="medium",
    )
    axes.margins(y=0.2)
    figure.legend(loc="outside lower center", fontsize="small")
    figure.savefig(path, dpi=150)
    return figure


def _method_colours(methods: list[str | None]) -> list[tuple[float, ...]]:
    """A colour per run: one colour map per method (runs with no method count as one more), shades
    from mid to dark for that method's runs in the order given."""
    maps = {
        method: METHOD_COLOURMAPS[rank % len(METHOD_COLOURMAPS)]
        for rank, method in enumerate(dict.fromkeys(methods))
    }
    colours, seen = [], dict.fromkeys(methods, 0)
    for method in methods:
        count = methods.count(method)
        shade = 0.65 if count == 1 else 0.45 + 0.45 * seen[method] / (count - 1)
        colours.append(colormaps[maps[method]](shade))
        seen[method] += 1
    return colours


def _interval(cell: Cell, column: Column) -> tuple[float, float]:
    """The cell's 95% interval in display units; (NaN, NaN), drawn as no error bar, where there is none."""
    significance = cell.significance
    if cell.delta is None or significance is None or significance.low is None or significance.high is None:
        return float("nan"), float("nan")
    scale = 100.0 if column.percent else 1.0
    return significance.low * scale, significance.high * scale


def _bar_label(cell: Cell) -> str:
    """The delta and its p-value, as the table writes them."""
    text = f"{cell.delta:+.2f}"
    return f"{text}\np={cell.significance.p_value:.3f}" if cell.significance is not None else text
