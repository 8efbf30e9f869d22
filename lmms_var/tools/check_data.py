"""`lmms-var check-data [ROOT]`: what a spatial data root holds, before a long evaluation finds out.

Reads the root exactly as the `spatial_*` tasks do (`lmms_var.tasks.inventory`) and prints its
layouts, BLINK sub-tasks and SAT-2 with doc counts, and every bad record or unusable file. Exit status: 0 when every record is usable, 1 when some records or files
are not (the tasks fail on them unless LMMS_VAR_SKIP_BAD_RECORDS=1), 2 when the root holds no usable
spatial data at all.
"""

import argparse
from typing import TYPE_CHECKING

from lmms_var.tasks.data_root import ENV_DATA_ROOT, ENV_SKIP_BAD_RECORDS, data_root_from_env, open_data_root

if TYPE_CHECKING:
    from lmms_var.tasks.inventory import Inventory
    from lmms_var.tasks.records import Loaded

# Bad records listed in full; the rest are counted.
MAX_LISTED_PROBLEMS = 20
ALL_USABLE, SOME_BAD, NOTHING_USABLE = 0, 1, 2


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check-data",
        help="show what a spatial data root holds (layouts, sub-tasks, doc counts, bad records)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("root", nargs="?", help=f"the data root (default: ${ENV_DATA_ROOT})")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # Pillow, numpy and pyarrow, which reading records needs, are imported only when checking.
    from lmms_var.tasks.inventory import take_inventory

    root = open_data_root(args.root) if args.root else data_root_from_env()
    print(f"data root: {root.path}")
    inventory = take_inventory(root)
    if inventory.hub:
        print(f"BLINK, Hub export layout ({root.hub_blink_dir}):")
        for sub_task, loaded in inventory.hub.items():
            print(f"  {sub_task:<28}{_counts(loaded)}")
    if inventory.has_blink_jsonl:
        print(f"BLINK, spatial-reasoning layout ({root.blink_jsonl}): {_counts(inventory.blink_jsonl)}")
        for sub_task, count in inventory.blink_jsonl_subtasks().items():
            unused = " (not used: the Hub export has this sub-task)" * inventory.shadowed(sub_task)
            print(f"  {sub_task:<28}{count} docs{unused}")
    if inventory.has_sat2:
        print(f"SAT-2, spatial-reasoning layout ({root.sat2_jsonl}): {_counts(inventory.sat2)}")
    else:
        print(f"SAT-2: none (no {root.sat2_jsonl})")
    missing = inventory.missing_subtasks()
    if missing:
        print(f"BLINK sub-tasks not in this root (their spatial_blink_* tasks fail): {', '.join(missing)}")
    return _verdict(inventory)


def _counts(loaded: "Loaded | None") -> str:
    return "no records" if loaded is None else f"{len(loaded.docs)} docs, {len(loaded.problems)} bad records"


def _verdict(inventory: "Inventory") -> int:
    problems = inventory.problems
    if problems:
        print(
            f"bad records and unusable files ({len(problems)}; the tasks fail on them unless {ENV_SKIP_BAD_RECORDS}=1):"
        )
        for problem in problems[:MAX_LISTED_PROBLEMS]:
            print(f"  {problem}")
        if len(problems) > MAX_LISTED_PROBLEMS:
            print(f"  ... and {len(problems) - MAX_LISTED_PROBLEMS} more")
    if not inventory.usable_docs():
        print("no usable spatial data: every spatial_* task would fail")
        return NOTHING_USABLE
    if problems:
        return SOME_BAD
    print("no bad records")
    return ALL_USABLE
