"""`lmms-var check-data [ROOT]`: what a spatial data root holds, before a long evaluation finds out.

Reads the root exactly as the `spatial_*` tasks do (same layouts, same record and image checks) and
prints its layouts, BLINK sub-tasks and SAT-2 with doc counts, and every bad record (missing or
unreadable image, unparseable question or gold). Exits 1 when a record is bad, 0 otherwise.
"""

import argparse
from collections import Counter

from lmms_var.tasks.data_root import BLINK_SUBTASKS, ENV_DATA_ROOT, data_root_from_env, open_data_root
from lmms_var.tasks.records import Loaded, read_blink_jsonl, read_hub_parquet, read_sat2

# Bad records listed in full; the rest are counted.
MAX_LISTED_PROBLEMS = 20


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check-data",
        help="show what a spatial data root holds (layouts, sub-tasks, doc counts, bad records)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("root", nargs="?", help=f"the data root (default: ${ENV_DATA_ROOT})")
    parser.set_defaults(run=run)


def _counts_line(loaded: Loaded) -> str:
    return f"{len(loaded.docs)} docs, {len(loaded.problems)} bad records"


def run(args: argparse.Namespace) -> int:
    root = open_data_root(args.root) if args.root else data_root_from_env()
    print(f"data root: {root.path}")
    problems: list[str] = []
    found: set[str] = set()

    hub_subtasks = root.hub_subtasks()
    if hub_subtasks:
        print(f"BLINK, Hub export layout ({root.hub_blink_dir}):")
        for sub_task in hub_subtasks:
            loaded = read_hub_parquet(root.hub_parquet_files(sub_task))
            print(f"  {sub_task:<28}{_counts_line(loaded)}")
            problems += loaded.problems
            found.add(sub_task)

    if root.blink_jsonl.is_file():
        loaded = read_blink_jsonl(root)
        print(f"BLINK, spatial-reasoning layout ({root.blink_jsonl}): {_counts_line(loaded)}")
        for sub_task, count in sorted(Counter(doc["sub_task"] for doc in loaded.docs).items()):
            shadowed = " (not used: the Hub export has this sub-task)" if sub_task in hub_subtasks else ""
            print(f"  {sub_task:<28}{count} docs{shadowed}")
            found.add(sub_task)
        problems += loaded.problems

    if root.has_sat2():
        loaded = read_sat2(root)
        print(f"SAT-2, spatial-reasoning layout ({root.sat2_jsonl}): {_counts_line(loaded)}")
        problems += loaded.problems
    else:
        print(f"SAT-2: none (no {root.sat2_jsonl})")

    missing = [sub_task for sub_task in BLINK_SUBTASKS if sub_task not in found]
    if missing:
        print(f"BLINK sub-tasks not in this root (their spatial_blink_* tasks fail): {', '.join(missing)}")
    if problems:
        print(f"bad records ({len(problems)}; the tasks fail on them unless LMMS_VAR_SKIP_BAD_RECORDS=1):")
        for problem in problems[:MAX_LISTED_PROBLEMS]:
            print(f"  {problem}")
        if len(problems) > MAX_LISTED_PROBLEMS:
            print(f"  ... and {len(problems) - MAX_LISTED_PROBLEMS} more")
        return 1
    print("no bad records")
    return 0
