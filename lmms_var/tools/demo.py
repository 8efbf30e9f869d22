"""`lmms-var demo`: the whole workflow offline, on a constructed tiny model and synthetic data.

It saves a tiny Qwen2.5-VL whose weights are set by hand so that visual sinks draw its attention away
from the answer in the picture, writes synthetic questions whose answer is in the picture, runs
lmms-eval's real CLI with VAR off and on, prints the leaderboard (VAR's gain with its paired p-value),
plots the gains with their intervals, and draws the attention on a doc's picture before and after VAR.
The model is constructed to show the mechanism VAR targets, not what VAR does for a real model.
"""

import argparse
import tempfile
from pathlib import Path

from lmms_var.checks import check_output_folder


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole workflow offline on a constructed tiny model whose visual sinks hide the answer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--output", metavar="DIR", type=Path, help="keep checkpoint, data and runs here (default: a temp dir)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # The demo runs on test fixtures (`lmms_var.testing.demo` says why it lives there); imported here so
    # that `lmms-var --help` does not wait for torch.
    from lmms_var.testing.demo import run_demo

    output = args.output if args.output is not None else Path(tempfile.mkdtemp(prefix="lmms_var_demo_"))
    check_output_folder(output, "--output")
    if output.exists() and any(output.iterdir()):
        raise ValueError(f"--output {output} is not empty; give a new or empty folder")
    return run_demo(output.resolve())
