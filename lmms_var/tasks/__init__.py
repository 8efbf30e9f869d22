"""Local spatial-reasoning tasks (BLINK, SAT-2) for lmms-eval, read from `LMMS_VAR_DATA_ROOT`.

`data_root` finds the data and its layout, `records` reads both layouts into BLINK's doc schema,
`hooks` holds the functions the YAMLs under `tasks/spatial` name (it imports lmms-eval).
"""

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

__all__ = [
    "BLINK_SUBTASKS",
    "ENV_DATA_ROOT",
    "ENV_SKIP_BAD_RECORDS",
    "SPATIAL_SUBTASKS",
    "DataRoot",
    "SpatialDataError",
    "data_root_from_env",
    "open_data_root",
    "task_suffix",
]
