"""`lmms-var check-data [ROOT]`: layouts, sub-tasks, doc counts and bad records of a data root."""

from lmms_var.tasks import ENV_DATA_ROOT
from lmms_var.testing.spatial_data import write_hub_blink_root, write_spatial_root
from lmms_var.tools.cli import main


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
    assert "bad records (2;" in out
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
