"""Local spatial-reasoning tasks (BLINK, SAT-2) for lmms-eval, read from `LMMS_VAR_DATA_ROOT`.

`data_root` finds the data and its layout, `records` reads both layouts into BLINK's doc schema,
`hooks` holds the functions the YAMLs under `spatial/` name (it imports lmms-eval). The YAMLs ship
inside the package, so an installed wheel has them: `TASKS_PATH` (printed by `lmms-var tasks-path`)
is the folder to give lmms-eval's `--include_path`.
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

# The folder holding the task YAMLs (under `spatial/`), for lmms-eval's `--include_path`. It is this
# package's own folder, which is also where lmms-eval's `LMMS_EVAL_PLUGINS` convention looks.
TASKS_PATH = Path(__file__).resolve().parent

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
