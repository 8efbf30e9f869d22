"""Compare lmms-eval runs (a baseline and VAR settings) across tasks: read, tabulate, test, render, plot."""

from lmms_var.leaderboard.formats import FORMATS, render
from lmms_var.leaderboard.plot import plot_deltas
from lmms_var.leaderboard.runs import Run, TaskResult, load_run, model_args_as_text
from lmms_var.leaderboard.table import Cell, Column, Leaderboard, build_leaderboard

__all__ = [
    "FORMATS",
    "Cell",
    "Column",
    "Leaderboard",
    "Run",
    "TaskResult",
    "build_leaderboard",
    "load_run",
    "model_args_as_text",
    "plot_deltas",
    "render",
]
