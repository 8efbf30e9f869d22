"""`lmms-var leaderboard RUN_DIR...`: one table comparing lmms-eval runs, deltas against a baseline."""

import argparse
import sys
from pathlib import Path

from lmms_var.checks import check_output_file
from lmms_var.leaderboard.formats import FORMATS


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "leaderboard",
        help="compare lmms-eval runs (baseline, VAR settings, other methods) in one table",
        description=(
            "Read lmms-eval output folders (the --output_path of each run; samples when logged) and print one "
            "row per run, one column per task then per group. Cells hold each task's primary metric "
            "(accuracies in percent), the difference to the baseline and a paired p-value where samples exist."
        ),
    )
    parser.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR", help="lmms-eval output folders, one per run"
    )
    parser.add_argument(
        "--baseline",
        metavar="NAME",
        help="run name or RUN_DIR to compare against (default: the run with VAR off)",
    )
    parser.add_argument("--format", choices=FORMATS, default="md", help="output format (default: md)")
    parser.add_argument(
        "--metric",
        metavar="NAME",
        help="metric to show where a task reports it, noted where one does not (default: its first metric)",
    )
    parser.add_argument("--plot", metavar="FILE.png", type=Path, help="also save a bar chart of the deltas")
    parser.add_argument("--output", metavar="FILE", type=Path, help="write the table here instead of stdout")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from lmms_var.leaderboard import build_leaderboard, load_run, plot_deltas, render

    for path, option in ((args.output, "--output"), (args.plot, "--plot")):
        if path is not None:
            check_output_file(path, option)
    if args.plot is not None:
        _check_plot_format(args.plot)
    board = build_leaderboard([load_run(path) for path in args.run_dirs], args.baseline, args.metric)
    text = render(board, args.format)
    if args.format == "csv":  # CSV holds values only; the notes (doc sets, NaN, --metric) go to stderr
        for note in board.notes:
            print(f"lmms-var leaderboard: note: {note}", file=sys.stderr)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    if args.plot is not None:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot_deltas(board, args.plot)
    return 0


def _check_plot_format(path: Path) -> None:
    """matplotlib picks the format from the suffix; an unknown one would fail after the table."""
    from lmms_var.leaderboard.plot import plot_formats

    formats = plot_formats()
    if path.suffix.lower().lstrip(".") not in formats:
        raise ValueError(f"--plot {path}: give a file ending in one of {', '.join(f'.{f}' for f in formats)}")
