"""`lmms-var check-data [ROOT]`: what a spatial data root holds, before a long evaluation finds out.

Reads the root exactly as the `spatial_*` tasks do (same layouts, same record, image and
image-processor checks) and prints its layouts, BLINK sub-tasks and SAT-2 with doc counts, and every
bad record or unusable file. Exit status: 0 when every record is usable, 1 when some records or files
are not (the tasks fail on them unless LMMS_VAR_SKIP_BAD_RECORDS=1), 2 when the root holds no usable
spatial data at all.
"""

import argparse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from lmms_var.tasks.data_root import (
    BLINK_SUBTASKS,
    ENV_DATA_ROOT,
    ENV_SKIP_BAD_RECORDS,
    SpatialDataError,
    data_root_from_env,
    open_data_root,
)

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


@dataclass
class Report:
    """What the check found: docs the tasks would use, and every problem."""

    usable_docs: int = 0
    problems: list[str] = field(default_factory=list)


def run(args: argparse.Namespace) -> int:
    # Pillow and numpy, which the records module needs, are imported only when checking.
    from lmms_var.tasks.records import Loaded, read_blink_jsonl, read_hub_parquet, read_sat2

    root = open_data_root(args.root) if args.root else data_root_from_env()
    print(f"data root: {root.path}")
    report = Report()
    found: set[str] = set()

    def read(source: str, reader: Callable[[], Loaded]) -> Loaded | None:
        """The source's docs, or None (and a problem) when it holds no record at all."""
        try:
            loaded = reader()
        except SpatialDataError as error:
            report.problems.append(str(error))
            return None
        report.problems.extend(loaded.problems)
        if not loaded.total:
            report.problems.append(f"{source} holds no records")
            return None
        return loaded

    def counts(loaded: Loaded | None) -> str:
        return (
            "no records" if loaded is None else f"{len(loaded.docs)} docs, {len(loaded.problems)} bad records"
        )

    hub_subtasks = root.hub_subtasks()
    if hub_subtasks:
        print(f"BLINK, Hub export layout ({root.hub_blink_dir}):")
        for sub_task in hub_subtasks:
            files = root.hub_parquet_files(sub_task)
            loaded = read(", ".join(map(str, files)), lambda files=files: read_hub_parquet(files))
            print(f"  {sub_task:<28}{counts(loaded)}")
            if loaded is not None:
                report.usable_docs += len(loaded.docs)
                found.add(sub_task)

    if root.blink_jsonl.exists():  # a folder there is reported by the reader
        loaded = read(str(root.blink_jsonl), lambda: read_blink_jsonl(root))
        print(f"BLINK, spatial-reasoning layout ({root.blink_jsonl}): {counts(loaded)}")
        for sub_task, count in sorted(
            Counter(doc["sub_task"] for doc in (loaded.docs if loaded else [])).items()
        ):
            shadowed = sub_task in hub_subtasks
            print(f"  {sub_task:<28}{count} docs{' (not used: the Hub export has this sub-task)' * shadowed}")
            report.usable_docs += 0 if shadowed else count
            found.add(sub_task)

    if root.sat2_jsonl.exists():
        loaded = read(str(root.sat2_jsonl), lambda: read_sat2(root))
        print(f"SAT-2, spatial-reasoning layout ({root.sat2_jsonl}): {counts(loaded)}")
        report.usable_docs += len(loaded.docs) if loaded else 0
    else:
        print(f"SAT-2: none (no {root.sat2_jsonl})")

    missing = [sub_task for sub_task in BLINK_SUBTASKS if sub_task not in found]
    if missing:
        print(f"BLINK sub-tasks not in this root (their spatial_blink_* tasks fail): {', '.join(missing)}")
    return _verdict(report)


def _verdict(report: Report) -> int:
    problems = report.problems
    if problems:
        print(
            f"bad records and unusable files ({len(problems)}; the tasks fail on them unless {ENV_SKIP_BAD_RECORDS}=1):"
        )
        for problem in problems[:MAX_LISTED_PROBLEMS]:
            print(f"  {problem}")
        if len(problems) > MAX_LISTED_PROBLEMS:
            print(f"  ... and {len(problems) - MAX_LISTED_PROBLEMS} more")
    if not report.usable_docs:
        print("no usable spatial data: every spatial_* task would fail")
        return NOTHING_USABLE
    if problems:
        return SOME_BAD
    print("no bad records")
    return ALL_USABLE
