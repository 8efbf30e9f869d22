"""Local spatial-reasoning tasks (BLINK, SAT-2) for lmms-eval, read from `LMMS_VAR_DATA_ROOT`.

`data_root` finds the data and its layout, `records` reads both layouts into BLINK's doc schema,
`hooks` holds the functions the task YAMLs name (it imports lmms-eval). The YAMLs live at the top of
the repository, in `tasks/` (`--include_path tasks` from a checkout), and the wheel ships the same
files as `lmms_var/task_yamls/` (setup.cfg's `package_dir`): `TASKS_PATH` (printed by `lmms-var
tasks-path`) is whichever of the two this installation has, the folder to give `--include_path`.
"""

from pathlib import Path

from lmms_var.tasks.data_root import (
    BLINK_SUBTASKS,
    ENV_DATA_ROOT,
    ENV_SKIP_BAD_RECORDS,
    SPATIAL_SUBTASKS,
    DataRoot,
    SpatialDataError,
    data_root_from_env,
    open_data_root,
    task_suffix,
)


def _tasks_path() -> Path:
    """The installed copy (a wheel's `lmms_var/task_yamls`) if there is one, else the checkout's `tasks/`.
    Found on disk, not imported: in a checkout `lmms_var.task_yamls` exists only as setup.cfg's mapping."""
    package = Path(__file__).resolve().parents[1]
    installed, checkout = package / "task_yamls", package.parent / "tasks"
    return installed if installed.is_dir() else checkout


# The folder holding the task YAMLs (under `spatial/`), for lmms-eval's `--include_path`.
TASKS_PATH = _tasks_path()

__all__ = [
    "BLINK_SUBTASKS",
    "ENV_DATA_ROOT",
    "ENV_SKIP_BAD_RECORDS",
    "SPATIAL_SUBTASKS",
    "TASKS_PATH",
    "DataRoot",
    "SpatialDataError",
    "data_root_from_env",
    "open_data_root",
    "task_suffix",
]
