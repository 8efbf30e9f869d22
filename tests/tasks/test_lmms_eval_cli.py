"""End to end through the real `lmms-eval` CLI: both layouts, groups, bad data, and a real (tiny) model."""

import json
from pathlib import Path

import pytest

from lmms_var.tasks import BLINK_SUBTASKS, ENV_SKIP_BAD_RECORDS, SPATIAL_SUBTASKS, task_suffix
from lmms_var.tasks.data_root import DataRoot
from lmms_var.tasks.records import read_blink, read_sat2
from lmms_var.testing.images import picture_in_mode, random_image
from lmms_var.testing.spatial_data import write_hub_blink_root, write_spatial_root

pytestmark = pytest.mark.slow

DUMMY_REPLY = "The answer is (B)."


def _accuracy_of_always_b(docs: list[dict]) -> float:
    return sum(doc["answer"] == "(B)" for doc in docs) / len(docs)


def _blink_acc(results: dict, task: str) -> float:
    return results["results"][task]["blink_acc,none"]


def test_spatial_layout_groups_and_sat2_skipping_a_bad_record(lmms_eval_cli, tmp_path):
    root = write_spatial_root(tmp_path / "root")
    (root / "spatial_reasoning/blink/images/Counting_1_1.png").unlink()
    results, log = lmms_eval_cli(
        root,
        "spatial_blink,spatial_sat2",
        *("--model", "dummy", "--model_args", f"response={DUMMY_REPLY}"),
        env={ENV_SKIP_BAD_RECORDS: "1"},
    )
    assert results is not None, log[-3000:]
    assert "spatial_blink_counting: skipped 1 of 3 records" in log
    data = DataRoot(root)
    expected = {}
    for sub_task in SPATIAL_SUBTASKS:
        task = f"spatial_blink_{task_suffix(sub_task)}"
        docs = read_blink(data, sub_task).docs
        expected[task] = _accuracy_of_always_b(docs)
        assert results["n-samples"][task]["effective"] == len(docs) == (2 if sub_task == "Counting" else 3)
        assert _blink_acc(results, task) == pytest.approx(expected[task])
    # the group reports the mean of its sub-tasks, like lmms-eval's own `blink` group
    assert _blink_acc(results, "spatial_blink") == pytest.approx(sum(expected.values()) / len(expected))
    assert _blink_acc(results, "spatial_sat2") == pytest.approx(_accuracy_of_always_b(read_sat2(data).docs))


def test_hub_layout_all_fourteen_sub_tasks(lmms_eval_cli, tmp_path):
    root = write_hub_blink_root(tmp_path / "root", blink_subtasks=BLINK_SUBTASKS, docs_per_subtask=2)
    results, log = lmms_eval_cli(root, "spatial_blink_all", "--model", "dummy", "--model_args", "response=B")
    assert results is not None, log[-3000:]
    tasks = [f"spatial_blink_{task_suffix(sub_task)}" for sub_task in BLINK_SUBTASKS]
    assert sorted(results["group_subtasks"]["spatial_blink_all"]) == sorted(tasks)
    accuracies = []
    for sub_task, task in zip(BLINK_SUBTASKS, tasks, strict=True):
        accuracies.append(_accuracy_of_always_b(read_blink(DataRoot(root), sub_task).docs))
        assert _blink_acc(results, task) == pytest.approx(accuracies[-1])
    assert _blink_acc(results, "spatial_blink_all") == pytest.approx(sum(accuracies) / len(accuracies))


def test_a_bad_image_stops_the_run_with_its_file_and_record_in_the_log(lmms_eval_cli, tmp_path):
    root = write_spatial_root(tmp_path / "root", blink_subtasks=("Counting",), docs_per_subtask=3)
    (root / "spatial_reasoning/blink/images/Counting_1_1.png").write_bytes(b"corrupt")
    results, log = lmms_eval_cli(root, "spatial_blink_counting", "--model", "dummy")
    assert results is None
    # lmms-eval itself only reports "RetryError[...]"; the clear message is logged by the task
    assert "spatial_blink_counting: " in log and "(record id 'Counting_1')" in log
    assert "Counting_1_1.png is unreadable" in log and ENV_SKIP_BAD_RECORDS in log


def test_tiny_qwen2_5_vl_answers_multi_image_questions(lmms_eval_cli, hub_root, tiny_checkpoint, tmp_path):
    model_args = f"pretrained={tiny_checkpoint},device=cpu,device_map=cpu,min_pixels=3136,max_pixels=12544"
    results, log = lmms_eval_cli(
        hub_root,
        "spatial_blink_multi_view_reasoning",
        *("--model", "qwen2_5_vl", "--model_args", model_args),
        *("--gen_kwargs", "max_new_tokens=16", "--limit", "2"),
    )
    assert results is not None, log[-3000:]
    assert 0.0 <= _blink_acc(results, "spatial_blink_multi_view_reasoning") <= 1.0
    [samples] = Path(tmp_path / "lmms_eval_output").rglob(
        "*_samples_spatial_blink_multi_view_reasoning.jsonl"
    )
    records = [json.loads(line) for line in samples.read_text().splitlines()]
    assert [record["blink_acc"]["id"] for record in records] == [
        "val_Multi-view_Reasoning_1",
        "val_Multi-view_Reasoning_2",
    ]
    assert all(0 < record["token_counts"][0]["output_tokens"] <= 16 for record in records)


def test_records_the_model_cannot_take_are_skipped_not_fatal(lmms_eval_cli, tiny_checkpoint, tmp_path):
    """The tiny Qwen2.5-VL over a root with an image its processor refuses (6000x20), a null question and
    a 16-bit PNG: with the skip switch the run completes on the other docs (16-bit PNG included) and the
    log counts the two skipped. (Unchecked, the 6000x20 image stops generation at its doc.)"""
    root = write_spatial_root(
        tmp_path / "root", blink_subtasks=("Counting",), docs_per_subtask=4, sat2_docs=0
    )
    blink = DataRoot(root).blink_jsonl
    records = [json.loads(line) for line in blink.read_text().splitlines()]
    random_image(0, size=(6000, 20)).save(root / records[0]["image"])
    records[1]["conversations"][0]["value"] = None
    stored, _ = picture_in_mode("I;16", size=(112, 84))
    stored.save(root / records[2]["image"])
    blink.write_text("".join(json.dumps(record) + "\n" for record in records))
    model = (
        "--model",
        "qwen2_5_vl",
        "--model_args",
        f"pretrained={tiny_checkpoint},device=cpu,device_map=cpu",
    )
    args = (*model, "--gen_kwargs", "max_new_tokens=4")
    results, log = lmms_eval_cli(root, "spatial_blink_counting", *args, env={ENV_SKIP_BAD_RECORDS: "1"})
    assert results is not None, log[-3000:]
    assert "spatial_blink_counting: skipped 2 of 4 records" in log
    assert results["n-samples"]["spatial_blink_counting"]["effective"] == 2
