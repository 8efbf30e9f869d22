"""`lmms-var check-data [ROOT]`: layouts, sub-tasks, doc counts and bad records of a data root."""

import json

from lmms_var.tasks import ENV_DATA_ROOT
from lmms_var.tasks.data_root import DataRoot
from lmms_var.testing.images import random_image
from lmms_var.testing.spatial_data import write_hub_blink_root, write_spatial_root
from lmms_var.tools.cli import main

ALL_USABLE, SOME_BAD, NOTHING_USABLE = 0, 1, 2


def test_spatial_layout_counts_docs_per_sub_task(tmp_path, capsys):
    root = write_spatial_root(
        tmp_path, blink_subtasks=("Counting", "Jigsaw"), docs_per_subtask=2, sat2_docs=3
    )
    assert main(["check-data", str(root)]) == 0
    out = capsys.readouterr().out
    assert (
        f"BLINK, spatial-reasoning layout ({root}/spatial_reasoning/blink/blink_validation.jsonl): 4 docs"
        in out
    )
    assert "  Counting                    2 docs\n" in out and "  Jigsaw                      2 docs\n" in out
    assert "SAT-2, spatial-reasoning layout" in out and "3 docs, 0 bad records" in out
    assert "not in this root (their spatial_blink_* tasks fail): Art_Style, Forensic_Detection" in out
    assert out.endswith("no bad records\n")


def test_hub_layout_and_jsonl_together(tmp_path, capsys):
    write_spatial_root(tmp_path, blink_subtasks=("Counting", "Jigsaw"), docs_per_subtask=1)
    write_hub_blink_root(tmp_path, blink_subtasks=("Counting",), docs_per_subtask=2)
    assert main(["check-data", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert (
        f"BLINK, Hub export layout ({tmp_path}/BLINK):\n  Counting                    2 docs, 0 bad records"
        in out
    )
    assert "Counting                    1 docs (not used: the Hub export has this sub-task)" in out
    assert "Jigsaw                      1 docs\n" in out


def test_bad_records_are_listed_and_fail_the_check(tmp_path, capsys):
    root = write_spatial_root(tmp_path, blink_subtasks=("Counting",), docs_per_subtask=3)
    missing = root / "spatial_reasoning/blink/images/Counting_0_1.png"
    missing.unlink()
    (root / "spatial_reasoning/sat2_test/images/sat2_1_2.png").write_bytes(b"")
    assert main(["check-data", str(root)]) == 1
    out = capsys.readouterr().out
    assert "blink_validation.jsonl): 2 docs, 1 bad records" in out
    assert "bad records and unusable files (2;" in out
    assert f"(record id 'Counting_0'): image not found: tried {missing}" in out
    assert "(record id 'sat2_1'): image_2 " in out and "sat2_1_2.png is unreadable" in out


def test_root_defaults_to_the_environment_variable(tmp_path, monkeypatch, capsys):
    root = write_spatial_root(tmp_path, blink_subtasks=("Counting",), docs_per_subtask=1, sat2_docs=1)
    monkeypatch.delenv(ENV_DATA_ROOT, raising=False)
    assert main(["check-data"]) == 2
    assert f"lmms-var check-data: error: {ENV_DATA_ROOT} is not set" in capsys.readouterr().err
    monkeypatch.setenv(ENV_DATA_ROOT, str(root))
    assert main(["check-data"]) == 0
    assert capsys.readouterr().out.startswith(f"data root: {root}\n")


def test_a_root_without_data_names_the_paths_tried(tmp_path, capsys):
    assert main(["check-data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert (
        f"error: data root {tmp_path} holds no spatial data; tried {tmp_path}/spatial_reasoning/blink" in err
    )


def test_an_empty_blink_file_alone_is_no_usable_data(tmp_path, capsys):
    root = DataRoot(tmp_path)
    root.blink_jsonl.parent.mkdir(parents=True)
    root.blink_jsonl.write_text("")
    assert main(["check-data", str(tmp_path)]) == NOTHING_USABLE
    out = capsys.readouterr().out
    assert f"BLINK, spatial-reasoning layout ({root.blink_jsonl}): no records" in out
    assert f"  {root.blink_jsonl} holds no records\n" in out
    assert out.endswith("no usable spatial data: every spatial_* task would fail\n")


def test_an_empty_file_next_to_usable_data_is_reported(tmp_path, capsys):
    root = DataRoot(
        write_spatial_root(tmp_path, blink_subtasks=("Counting",), docs_per_subtask=1, sat2_docs=1)
    )
    root.sat2_jsonl.write_text("\n")
    assert main(["check-data", str(tmp_path)]) == SOME_BAD
    assert f"  {root.sat2_jsonl} holds no records\n" in capsys.readouterr().out


def test_the_demo_root_without_sat2_is_all_usable(tmp_path, capsys):
    root = DataRoot(write_spatial_root(tmp_path, sat2_docs=0))
    assert not root.sat2_jsonl.exists()
    assert main(["check-data", str(tmp_path)]) == ALL_USABLE
    assert f"SAT-2: none (no {root.sat2_jsonl})" in capsys.readouterr().out


def test_misspelt_sub_tasks_and_refused_images_are_named(tmp_path, capsys):
    root = DataRoot(
        write_spatial_root(tmp_path, blink_subtasks=("Counting",), docs_per_subtask=3, sat2_docs=0)
    )
    records = [json.loads(line) for line in root.blink_jsonl.read_text().splitlines()]
    records[0]["sub_task"] = "counting"
    random_image(0, size=(20, 6000)).save(tmp_path / records[1]["image"])
    root.blink_jsonl.write_text("".join(json.dumps(record) + "\n" for record in records))
    assert main(["check-data", str(tmp_path)]) == SOME_BAD
    out = capsys.readouterr().out
    assert "  Counting                    1 docs\n" in out
    assert (
        "(record id 'Counting_0'): sub_task 'counting' must be spelled 'Counting', as BLINK spells it" in out
    )
    assert "(record id 'Counting_1'): image " in out and "image processors refuse its size 20x6000" in out


def test_a_root_whose_every_record_is_bad_has_no_usable_data(tmp_path, capsys):
    root = DataRoot(
        write_spatial_root(tmp_path, blink_subtasks=("Counting",), docs_per_subtask=2, sat2_docs=0)
    )
    root.blink_jsonl.write_bytes(root.blink_jsonl.read_text().replace("Counting", "counting").encode())
    assert main(["check-data", str(tmp_path)]) == NOTHING_USABLE
    assert "bad records and unusable files (2;" in capsys.readouterr().out


def test_an_unreadable_parquet_is_listed_and_the_rest_still_checked(tmp_path, capsys):
    write_hub_blink_root(tmp_path, blink_subtasks=("Counting", "Jigsaw"), docs_per_subtask=1)
    [broken] = DataRoot(tmp_path).hub_parquet_files("Jigsaw")
    broken.write_bytes(b"not parquet")
    assert main(["check-data", str(tmp_path)]) == SOME_BAD
    out = capsys.readouterr().out
    assert "  Counting                    1 docs, 0 bad records\n" in out
    assert "  Jigsaw                      no records\n" in out
    assert f"  {broken} is not a readable parquet file" in out


def test_a_folder_in_place_of_the_sat2_file_is_a_problem_named_as_such(tmp_path, capsys):
    root = write_spatial_root(tmp_path, blink_subtasks=("Counting",), docs_per_subtask=1, sat2_docs=0)
    DataRoot(root).sat2_jsonl.mkdir(parents=True)
    assert main(["check-data", str(root)]) == SOME_BAD
    out = capsys.readouterr().out
    assert f"  {DataRoot(root).sat2_jsonl} is a folder, expected a jsonl file\n" in out
