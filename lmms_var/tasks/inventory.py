"""What a spatial data root holds, read exactly as the `spatial_*` tasks read it (same layouts, same
record, image and image-processor checks): per source its docs and bad records, the BLINK sub-tasks
it has, and every problem. `lmms-var check-data` prints it before a long evaluation finds out.
"""

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from lmms_var.tasks.data_root import BLINK_SUBTASKS, DataRoot, SpatialDataError
from lmms_var.tasks.records import Loaded, read_blink_jsonl, read_hub_parquet, read_sat2


@dataclass(frozen=True)
class Inventory:
    """One data root's sources, each None where it holds no record at all (its problem says why)."""

    hub: dict[str, Loaded | None]  # BLINK sub-task -> its Hub export's parquet files, read
    blink_jsonl: Loaded | None  # the spatial-reasoning layout's BLINK file, read
    sat2: Loaded | None  # its SAT-2 file, read
    has_blink_jsonl: bool  # whether there is one (None above: absent, or holding no record)
    has_sat2: bool
    problems: tuple[str, ...]  # bad records and unusable files

    def blink_jsonl_subtasks(self) -> dict[str, int]:
        """The BLINK file's sub-tasks (sorted) -> their docs."""
        docs = self.blink_jsonl.docs if self.blink_jsonl is not None else []
        return dict(sorted(Counter(doc["sub_task"] for doc in docs).items()))

    def shadowed(self, sub_task: str) -> bool:
        """The tasks read `sub_task` from the Hub export, not from the BLINK file (`records.read_blink`)."""
        return sub_task in self.hub

    def missing_subtasks(self) -> list[str]:
        """BLINK sub-tasks with no doc in the root: their `spatial_blink_*` tasks fail."""
        found = {sub_task for sub_task, loaded in self.hub.items() if loaded is not None}
        found |= set(self.blink_jsonl_subtasks())
        return [sub_task for sub_task in BLINK_SUBTASKS if sub_task not in found]

    def usable_docs(self) -> int:
        """The docs the tasks would evaluate, all tasks together."""
        hub = sum(len(loaded.docs) for loaded in self.hub.values() if loaded is not None)
        jsonl = sum(
            count for sub_task, count in self.blink_jsonl_subtasks().items() if not self.shadowed(sub_task)
        )
        return hub + jsonl + (len(self.sat2.docs) if self.sat2 is not None else 0)


def take_inventory(root: DataRoot) -> Inventory:
    """Read every source of `root`; a source that cannot be read or holds no record is a problem."""
    problems: list[str] = []

    def read(source: str, reader: Callable[[], Loaded]) -> Loaded | None:
        try:
            loaded = reader()
        except SpatialDataError as error:
            problems.append(str(error))
            return None
        problems.extend(loaded.problems)
        if not loaded.total:
            problems.append(f"{source} holds no records")
            return None
        return loaded

    hub = {}
    for sub_task in root.hub_subtasks():
        files = root.hub_parquet_files(sub_task)
        hub[sub_task] = read(", ".join(map(str, files)), lambda files=files: read_hub_parquet(files))
    has_blink_jsonl = root.blink_jsonl.exists()  # a folder there is reported by the reader
    blink_jsonl = read(str(root.blink_jsonl), lambda: read_blink_jsonl(root)) if has_blink_jsonl else None
    has_sat2 = root.sat2_jsonl.exists()
    sat2 = read(str(root.sat2_jsonl), lambda: read_sat2(root)) if has_sat2 else None
    return Inventory(hub, blink_jsonl, sat2, has_blink_jsonl, has_sat2, tuple(problems))
