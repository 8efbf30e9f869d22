"""Bar chart of per-subtask deltas against the baseline, for papers and slides."""

from pathlib import Path

from lmms_var.leaderboard.table import Leaderboard


def plot_formats() -> list[str]:
    """The file suffixes (without the dot) `plot_deltas` can save to: matplotlib's, read without drawing."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    return sorted(FigureCanvasAgg.get_supported_filetypes())


def plot_deltas(board: Leaderboard, path: str | Path):
    """Save grouped bars (one group per task, one bar per compared run) to `path`; returns the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if board.baseline is None:
        raise ValueError("--plot needs a baseline: no run has VAR off, so name one with --baseline")
    tasks = [col for col, column in enumerate(board.columns) if not column.is_group]
    rows = [row for row in range(len(board.runs)) if row != board.baseline]
    if not tasks or not rows:
        raise ValueError("--plot needs at least one task and one run besides the baseline")
    width = 0.8 / len(rows)
    figure, axes = plt.subplots(figsize=(max(6.0, 0.9 * len(tasks) * max(1, len(rows) / 2)), 4.0))
    for rank, row in enumerate(rows):
        # No bar (NaN) where a run lacks the task or there is no baseline value.
        deltas = [board.cells[row][col].delta for col in tasks]
        axes.bar(
            [index + (rank - (len(rows) - 1) / 2) * width for index in range(len(tasks))],
            [float("nan") if delta is None else delta for delta in deltas],
            width=width,
            label=board.runs[row],
        )
    axes.axhline(0.0, color="black", linewidth=0.8)
    axes.set_xticks(range(len(tasks)))
    axes.set_xticklabels([board.columns[col].task for col in tasks], rotation=30, ha="right")
    percent = all(board.columns[col].percent for col in tasks)
    axes.set_ylabel("difference (points)" if percent else "difference")
    axes.set_title(f"Per-task difference to {board.runs[board.baseline]}")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=150)
    plt.close(figure)
    return figure
