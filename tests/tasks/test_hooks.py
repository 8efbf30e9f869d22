"""The lmms-eval side: docs as a `datasets.Dataset`, the bad-record policy, scoring, and the YAMLs."""

from pathlib import Path

import lmms_eval.tasks.blink.utils as blink_utils
import pytest
from lmms_eval.utils import load_yaml_config
from PIL import Image

from lmms_var.tasks import (
    BLINK_SUBTASKS,
    ENV_DATA_ROOT,
    ENV_SKIP_BAD_RECORDS,
    SPATIAL_SUBTASKS,
    hooks,
    task_suffix,
)
from lmms_var.tasks.data_root import SpatialDataError
from lmms_var.tasks.records import Loaded
from lmms_var.testing.spatial_data import BLINK_SUBTASK_IMAGES, write_spatial_root

from .conftest import TASKS_DIR


def test_docs_come_back_as_a_dataset_with_decoded_images(monkeypatch, hub_root):
    monkeypatch.setenv(ENV_DATA_ROOT, str(hub_root))
    docs = hooks.spatial_blink_multi_view_reasoning_docs(placeholder=None)
    assert len(docs) == 3
    visuals = hooks.blink_doc_to_visual(docs[0])
    assert len(visuals) == BLINK_SUBTASK_IMAGES["Multi-view_Reasoning"]
    assert all(isinstance(image, Image.Image) and image.mode == "RGB" for image in visuals)
    [message] = hooks.blink_doc_to_messages(docs[0], {"pre_prompt": "Answer with {}.\n"})
    assert [part["type"] for part in message["content"]] == ["image", "image", "text"]
    assert message["content"][-1]["text"].startswith(
        f"Answer with {', '.join('ABCD'[: len(docs[0]['choices'])])}.\n"
    )


def test_sat2_docs_from_the_spatial_layout(monkeypatch, spatial_root):
    monkeypatch.setenv(ENV_DATA_ROOT, str(spatial_root))
    docs = hooks.spatial_sat2_docs(placeholder=None)
    assert [doc["idx"] for doc in docs] == [f"sat2_{i}" for i in range(4)]
    assert [len(hooks.blink_doc_to_visual(doc)) for doc in docs] == [1, 2, 1, 2]


def test_a_bad_record_fails_the_task_with_a_hint_to_skip_it():
    loaded = Loaded(
        source="f.jsonl", docs=[{"idx": "ok"}], problems=["f.jsonl:2 (record id 'x'): gone", "other"]
    )
    with pytest.raises(
        SpatialDataError, match=r"record id 'x'\): gone \(2 bad records in all\); set LMMS_VAR_SKIP"
    ):
        hooks.usable_docs("spatial_sat2", loaded)


def test_skipped_records_are_counted_in_the_log(monkeypatch, log_lines):
    monkeypatch.setenv(ENV_SKIP_BAD_RECORDS, "1")
    loaded = Loaded(source="f.jsonl", docs=[{"idx": "ok"}], problems=["f.jsonl:2 (record id 'x'): gone"])
    assert hooks.usable_docs("spatial_sat2", loaded) == [{"idx": "ok"}]
    assert any(
        "spatial_sat2: skipped 1 of 2 records" in line and "record id 'x'" in line for line in log_lines
    )


def test_a_task_is_never_silently_empty(monkeypatch):
    monkeypatch.setenv(ENV_SKIP_BAD_RECORDS, "1")
    with pytest.raises(SpatialDataError, match=r"spatial_sat2: no usable records in f\.jsonl"):
        hooks.usable_docs("spatial_sat2", Loaded(source="f.jsonl", problems=["f.jsonl:1: gone"]))


def test_load_errors_are_logged_once_despite_lmms_eval_retries(monkeypatch, tmp_path, log_lines):
    root = write_spatial_root(tmp_path, blink_subtasks=("Counting",), docs_per_subtask=2)
    (root / "spatial_reasoning/blink/images/Counting_1_1.png").unlink()
    monkeypatch.setenv(ENV_DATA_ROOT, str(root))
    for _ in range(3):
        with pytest.raises(
            SpatialDataError, match=r"spatial_blink_counting: .*'Counting_1'.*Counting_1_1\.png"
        ):
            hooks.spatial_blink_counting_docs(placeholder=None)
    assert len([line for line in log_lines if "Counting_1_1.png" in line]) == 1


@pytest.mark.parametrize(
    ("response", "parsed"),
    [
        ("B", "B"),
        ("The answer is (B).", "B"),
        ("I think the correct answer is B because it is nearer.", "B"),
        ("(A)", "A"),
        ("(D)", ""),  # not one of this doc's letters
        ("Depth is hard to judge.", ""),  # the D of "Depth" is no answer either
    ],
)
def test_scoring_reads_verbose_replies_and_only_the_docs_own_letters(response, parsed):
    doc = {"idx": "d", "sub_task": "Relative_Depth", "choices": ["x", "y", "z"], "answer": "(B)"}
    result = hooks.blink_process_results(doc, [response])["blink_acc"]
    assert result["pred_parsed"] == parsed
    assert result["is_correct"] is (parsed == "B")
    assert hooks.blink_aggregate_results([result, {"is_correct": True}]) == (1.0 if parsed == "B" else 0.5)


def _config(name: str) -> dict:
    return load_yaml_config(str(TASKS_DIR / "spatial" / f"{name}.yaml"), mode="full")


def test_every_blink_sub_task_has_a_task_whose_hook_reads_that_sub_task():
    for sub_task in BLINK_SUBTASKS:
        name = f"spatial_blink_{task_suffix(sub_task)}"
        config = _config(name)
        assert config["task"] == name
        assert config["dataset_kwargs"]["data_files"]["val"] == str(
            TASKS_DIR / "spatial" / "_placeholder.jsonl"
        )
        assert config["metric_list"][0]["metric"] == "blink_acc"


def test_groups_list_their_sub_tasks():
    assert _config("spatial_blink")["task"] == [f"spatial_blink_{task_suffix(s)}" for s in SPATIAL_SUBTASKS]
    assert _config("spatial_blink_all")["task"] == [f"spatial_blink_{task_suffix(s)}" for s in BLINK_SUBTASKS]
    assert _config("spatial_sat2")["process_docs"] is not None


def test_yaml_hooks_read_the_sub_task_of_their_task(monkeypatch, tmp_path):
    write_spatial_root(tmp_path, blink_subtasks=tuple(BLINK_SUBTASKS), docs_per_subtask=1, sat2_docs=1)
    monkeypatch.setenv(ENV_DATA_ROOT, str(tmp_path))
    for sub_task in BLINK_SUBTASKS:
        docs = _config(f"spatial_blink_{task_suffix(sub_task)}")["process_docs"](None)
        assert docs["sub_task"] == [sub_task]


def test_prompts_and_generation_follow_lmms_eval_blink():
    upstream = load_yaml_config(
        str(Path(blink_utils.__file__).parent / "_default_template_yaml"), mode="full"
    )
    ours = _config("spatial_blink_counting")
    assert ours["lmms_eval_specific_kwargs"]["default"] == upstream["lmms_eval_specific_kwargs"]["default"]
    assert ours["generation_kwargs"] == upstream["generation_kwargs"]
    assert ours["doc_to_target"] == upstream["doc_to_target"] == "answer"
