"""Where the local spatial data lives: the `LMMS_VAR_DATA_ROOT` variable and the two layouts it may hold.

lmms-eval task YAMLs cannot expand environment variables, so the tasks' `process_docs` hook calls
`data_root_from_env()` at load time; `lmms-var check-data` uses the same detection.
"""

import os
from dataclasses import dataclass
from pathlib import Path

ENV_DATA_ROOT = "LMMS_VAR_DATA_ROOT"
ENV_SKIP_BAD_RECORDS = "LMMS_VAR_SKIP_BAD_RECORDS"

# BLINK's 14 sub-tasks, spelled as the Hub dataset's configs (and its `sub_task` column).
BLINK_SUBTASKS = (
    "Art_Style",
    "Counting",
    "Forensic_Detection",
    "Functional_Correspondence",
    "IQ_Test",
    "Jigsaw",
    "Multi-view_Reasoning",
    "Object_Localization",
    "Relative_Depth",
    "Relative_Reflectance",
    "Semantic_Correspondence",
    "Spatial_Relation",
    "Visual_Correspondence",
    "Visual_Similarity",
)
# The sub-tasks of the `spatial_blink` group.
SPATIAL_SUBTASKS = (
    "Spatial_Relation",
    "Relative_Depth",
    "Object_Localization",
    "Counting",
    "Multi-view_Reasoning",
)


class SpatialDataError(ValueError):
    """The data root, a data file or a record is not usable; the message names the file or record."""


def task_suffix(sub_task: str) -> str:
    """BLINK's sub-task name in snake case, as used in task names: `Multi-view_Reasoning` -> `multi_view_reasoning`."""
    return sub_task.lower().replace("-", "_")


@dataclass(frozen=True)
class DataRoot:
    """A local data root; each property is a place one of the layouts keeps its files."""

    path: Path

    @property
    def blink_jsonl(self) -> Path:
        return self.path / "spatial_reasoning" / "blink" / "blink_validation.jsonl"

    @property
    def sat2_jsonl(self) -> Path:
        return self.path / "spatial_reasoning" / "sat2_test" / "sat2_test.jsonl"

    @property
    def hub_blink_dir(self) -> Path:
        return self.path / "BLINK"

    def hub_parquet_files(self, sub_task: str) -> list[Path]:
        return sorted((self.hub_blink_dir / sub_task).glob("val-*.parquet"))

    def hub_subtasks(self) -> list[str]:
        """Sub-task folders of the Hub export that hold at least one `val-*.parquet` file."""
        if not self.hub_blink_dir.is_dir():
            return []
        return sorted(
            d.name for d in self.hub_blink_dir.iterdir() if d.is_dir() and self.hub_parquet_files(d.name)
        )

    def has_blink(self) -> bool:
        return bool(self.hub_subtasks()) or self.blink_jsonl.is_file()

    def has_sat2(self) -> bool:
        return self.sat2_jsonl.is_file()

    def folders_for_files(self) -> list[Path]:
        """The layouts' jsonl paths that are folders: a mistake to name, rather than 'no data'."""
        return [path for path in (self.blink_jsonl, self.sat2_jsonl) if path.is_dir()]

    def places(self) -> list[str]:
        """Every place looked at, for error messages."""
        return [
            str(self.blink_jsonl),
            str(self.sat2_jsonl),
            str(self.hub_blink_dir / "<Subtask>" / "val-*.parquet"),
        ]


def open_data_root(path: str | Path, label: str | None = None) -> DataRoot:
    """A `DataRoot` for `path`, checked to hold data in at least one layout; `label` names it in errors."""
    root = DataRoot(Path(path).expanduser())
    label = label or f"data root {root.path}"
    if not root.path.is_dir():
        raise SpatialDataError(f"{label} is not a directory")
    if not root.has_blink() and not root.has_sat2():
        folders = root.folders_for_files()
        if folders:
            raise SpatialDataError(
                f"{label}: {', '.join(map(str, folders))} {'is a folder' if len(folders) == 1 else 'are folders'}, "
                "expected a jsonl file"
            )
        raise SpatialDataError(f"{label} holds no spatial data; tried {', '.join(root.places())}")
    return root


def data_root_from_env() -> DataRoot:
    """The data root named by `LMMS_VAR_DATA_ROOT`, or an error naming the variable and the paths tried."""
    value = os.environ.get(ENV_DATA_ROOT, "").strip()
    if not value:
        expected = ", ".join(DataRoot(Path("ROOT")).places())
        raise SpatialDataError(f"{ENV_DATA_ROOT} is not set; point it at a data root holding {expected}")
    return open_data_root(value, label=f"{ENV_DATA_ROOT}={value}")


def skip_bad_records() -> bool:
    """Whether `LMMS_VAR_SKIP_BAD_RECORDS` asks to skip (and count) bad records instead of failing."""
    value = os.environ.get(ENV_SKIP_BAD_RECORDS, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise SpatialDataError(f"{ENV_SKIP_BAD_RECORDS}={value!r}: expected 1 (skip bad records) or 0")
