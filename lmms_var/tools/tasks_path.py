"""`lmms-var tasks-path`: where the installed package keeps its lmms-eval task YAMLs.

lmms-eval finds tasks outside its own package only through `--include_path`, so a wheel's tasks are
one step away: `lmms-eval --include_path "$(lmms-var tasks-path)" --tasks spatial_blink ...`.
"""

import argparse

from lmms_var.tasks import TASKS_PATH


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tasks-path",
        help="print the folder of the spatial_* task YAMLs, for lmms-eval's --include_path",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    print(TASKS_PATH)
    return 0
