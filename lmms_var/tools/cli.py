"""`lmms-var`: one command, one subcommand per tool module.

Each module in `TOOL_MODULES` exposes `register(subparsers)`, which adds its subcommands with
`set_defaults(run=callable)`; the callable takes the parsed arguments and returns an exit code.
Modules keep heavy imports (torch, lmms-eval) inside their functions so `--help` stays fast.
"""

import argparse
import importlib
import sys

TOOL_MODULES = ("check_data", "tasks_path", "sink_dims", "leaderboard", "demo", "show", "doctor")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmms-var", description="VAR (Visual Attention Redistribution) in lmms-eval: tools."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in TOOL_MODULES:
        importlib.import_module(f"lmms_var.tools.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError, NotADirectoryError) as error:
        print(f"lmms-var {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
