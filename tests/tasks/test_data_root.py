"""Finding the data root and its layouts, and the errors when it is unset, wrong or incomplete."""

import pytest

from lmms_var.tasks import (
    BLINK_SUBTASKS,
    ENV_DATA_ROOT,
    ENV_SKIP_BAD_RECORDS,
    SpatialDataError,
    data_root_from_env,
    task_suffix,
)
from lmms_var.tasks.data_root import DataRoot, skip_bad_records
from lmms_var.tasks.records import read_blink, read_sat2
from lmms_var.testing.spatial_data import write_hub_blink_root, write_spatial_root


def test_task_suffixes_are_snake_case():
    assert task_suffix("Multi-view_Reasoning") == "multi_view_reasoning"
    assert task_suffix("IQ_Test") == "iq_test"
    assert len({task_suffix(sub_task) for sub_task in BLINK_SUBTASKS}) == 14


@pytest.mark.parametrize("value", [None, "", "  "])
def test_unset_variable_is_named_with_the_layouts_expected(monkeypatch, value):
    if value is None:
        monkeypatch.delenv(ENV_DATA_ROOT, raising=False)
    else:
        monkeypatch.setenv(ENV_DATA_ROOT, value)
    with pytest.raises(SpatialDataError, match=f"{ENV_DATA_ROOT} is not set") as error:
        data_root_from_env()
    assert "spatial_reasoning/blink/blink_validation.jsonl" in str(error.value)
    assert "BLINK/<Subtask>/val-*.parquet" in str(error.value)


def test_wrong_root_names_the_variable_and_the_paths_tried(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_DATA_ROOT, str(tmp_path / "missing"))
    with pytest.raises(SpatialDataError, match=f"{ENV_DATA_ROOT}=.*missing is not a directory"):
        data_root_from_env()
    monkeypatch.setenv(ENV_DATA_ROOT, str(tmp_path))
    with pytest.raises(SpatialDataError, match="holds no spatial data") as error:
        data_root_from_env()
    message = str(error.value)
    assert message.startswith(f"{ENV_DATA_ROOT}={tmp_path}")
    for place in DataRoot(tmp_path).places():
        assert place in message


def test_a_folder_where_a_jsonl_file_belongs_is_named(monkeypatch, tmp_path):
    """Not 'holds no spatial data': the root holds a folder at the jsonl's place."""
    root = DataRoot(tmp_path)
    root.blink_jsonl.mkdir(parents=True)
    monkeypatch.setenv(ENV_DATA_ROOT, str(tmp_path))
    with pytest.raises(SpatialDataError, match=rf"{root.blink_jsonl} is a folder, expected a jsonl file"):
        data_root_from_env()
    # With other data there, the task that reads the folder's place names it too.
    other = DataRoot(write_spatial_root(tmp_path / "other", blink_subtasks=("Counting",), sat2_docs=0))
    other.sat2_jsonl.mkdir(parents=True)
    monkeypatch.setenv(ENV_DATA_ROOT, str(other.path))
    with pytest.raises(SpatialDataError, match=rf"{other.sat2_jsonl} is a folder, expected a jsonl file"):
        read_sat2(data_root_from_env())


def test_a_root_with_either_layout_is_accepted(monkeypatch, spatial_root, hub_root):
    for root in (spatial_root, hub_root):
        monkeypatch.setenv(ENV_DATA_ROOT, str(root))
        assert data_root_from_env().path == root


def test_missing_sub_task_or_sat2_is_an_error_naming_what_was_tried(spatial_root, hub_root):
    with pytest.raises(SpatialDataError, match="no BLINK data for sub-task Jigsaw") as error:
        read_blink(DataRoot(spatial_root), "Jigsaw")
    assert "BLINK/Jigsaw/val-*.parquet" in str(error.value)
    assert "holds sub-tasks Counting, Multi-view_Reasoning" in str(error.value)
    with pytest.raises(SpatialDataError, match=r"no SAT-2 data; tried .*sat2_test\.jsonl"):
        read_sat2(DataRoot(hub_root))


def test_hub_export_is_used_for_its_sub_tasks_and_the_jsonl_for_the_rest(tmp_path):
    write_spatial_root(tmp_path, blink_subtasks=("Counting", "Jigsaw"), docs_per_subtask=2)
    write_hub_blink_root(tmp_path, blink_subtasks=("Counting",), docs_per_subtask=3)
    root = DataRoot(tmp_path)
    assert [doc["idx"] for doc in read_blink(root, "Counting").docs] == [
        f"val_Counting_{i}" for i in (1, 2, 3)
    ]
    assert [doc["idx"] for doc in read_blink(root, "Jigsaw").docs] == ["Jigsaw_0", "Jigsaw_1"]


@pytest.mark.parametrize(("value", "expected"), [("", False), ("0", False), ("1", True), ("true", True)])
def test_skip_bad_records_switch(monkeypatch, value, expected):
    monkeypatch.setenv(ENV_SKIP_BAD_RECORDS, value)
    assert skip_bad_records() is expected


def test_skip_bad_records_rejects_other_values(monkeypatch):
    monkeypatch.setenv(ENV_SKIP_BAD_RECORDS, "maybe")
    with pytest.raises(SpatialDataError, match=f"{ENV_SKIP_BAD_RECORDS}='maybe': expected 1"):
        skip_bad_records()
