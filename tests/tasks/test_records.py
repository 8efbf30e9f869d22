"""Reading both layouts into BLINK's doc schema: choices, golds, image paths and bad records."""

import contextlib
import io
import json
import re
from pathlib import Path

import datasets
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from lmms_var.tasks.data_root import DataRoot, SpatialDataError
from lmms_var.tasks.records import (
    BadRecord,
    _hub_doc,
    check_image,
    gold_letter,
    parse_choices,
    read_blink,
    read_blink_jsonl,
    read_hub_parquet,
    read_sat2,
    read_spatial_jsonl,
    strip_image_placeholders,
)
from lmms_var.testing.images import random_image
from lmms_var.testing.spatial_data import BLINK_SUBTASK_IMAGES, write_hub_blink_root, write_spatial_root


def _write_records(root: Path, records: list[dict]) -> Path:
    path = root / "spatial_reasoning" / "blink" / "blink_validation.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def _record(record_id: str, gold: str, images: dict[str, str], question: str | None = None) -> dict:
    question = (
        question
        or "<image>\nWhich is closer?\nSelect from the following choices.\n(A) left\n(B) right\n(C) neither"
    )
    return {
        "id": record_id,
        "sub_task": "Relative_Depth",
        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": gold}],
        **images,
    }


def _png(root: Path, relative: str, seed: int = 0) -> str:
    (root / relative).parent.mkdir(parents=True, exist_ok=True)
    random_image(seed).save(root / relative)
    return relative


def test_choices_are_the_first_lettered_run_in_any_common_style():
    assert parse_choices("Q?\n(A) left\n(B) right\nAnswer briefly.") == ["left", "right"]
    assert parse_choices("Q?\nA. red car\nB. blue car\nC. none") == ["red car", "blue car", "none"]
    assert parse_choices("Q?\nA) 1\nB) 2") == ["1", "2"]
    assert parse_choices("Did the camera turn? Options: (A) left, (B) right (C) no turn\nAnswer.") == [
        "left",
        "right",
        "no turn",
    ]
    with pytest.raises(BadRecord, match="no lettered choices"):
        parse_choices("How many cars are there? (B) is not a choice line")


def test_gold_is_a_letter_in_any_format_or_the_text_of_a_choice():
    choices = ["left", "right", "Neither of them"]
    assert [gold_letter(gold, choices) for gold in ("(B)", "B", "C.", " (A) ")] == ["B", "B", "C", "A"]
    assert gold_letter("neither of them.", choices) == "C"
    with pytest.raises(BadRecord, match=r"'\(D\)' is neither a letter A, B, C"):
        gold_letter("(D)", choices)
    with pytest.raises(BadRecord, match="'up'"):
        gold_letter("up", choices)


def test_image_placeholders_are_not_text():
    assert strip_image_placeholders("<image><image>\nCompare the two views.") == "Compare the two views."
    assert strip_image_placeholders("Left: <image> Right: <image>\nQ?") == "Left:  Right: \nQ?"


def test_spatial_records_become_blink_docs(tmp_path):
    records = [
        _record("r0", "(B)", {"image": _png(tmp_path, "spatial_reasoning/blink/images/r0.png")}),
        _record("r1", "C", {"image": _png(tmp_path, "spatial_reasoning/blink/images/r1.png")}),
        # relative to ROOT/spatial_reasoning instead of ROOT
        _record("r2", "left", {"image_1": "blink/images/r0.png", "image_2": "blink/images/r1.png"}),
    ]
    _write_records(tmp_path, records)
    loaded = read_blink(DataRoot(tmp_path), "Relative_Depth")
    assert loaded.problems == []
    assert [doc["answer"] for doc in loaded.docs] == ["(B)", "(C)", "(A)"]
    first = loaded.docs[0]
    assert first["idx"] == "r0"
    assert first["choices"] == ["left", "right", "neither"]
    assert first["prompt"].startswith("Which is closer?") and "<image>" not in first["prompt"]
    assert first["image_1"] == str(tmp_path / "spatial_reasoning/blink/images/r0.png")
    assert first["image_2"] is None
    assert loaded.docs[2]["image_2"] == str(tmp_path / "spatial_reasoning/blink/images/r1.png")


def test_synthetic_root_reads_completely(tmp_path):
    root = DataRoot(write_spatial_root(tmp_path, blink_subtasks=("Counting", "Jigsaw"), docs_per_subtask=2))
    jigsaw = read_blink(root, "Jigsaw")
    assert len(jigsaw.docs) == 2 and jigsaw.problems == []
    images = [key for key in ("image_1", "image_2", "image_3", "image_4") if jigsaw.docs[0][key]]
    assert len(images) == BLINK_SUBTASK_IMAGES["Jigsaw"]
    sat2 = read_sat2(root)
    assert sat2.total == 4 and sat2.problems == []


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda path: path.unlink(), "image not found: tried"),
        (lambda path: (path.unlink(), path.mkdir()), "is a folder, expected an image file"),
        (lambda path: path.write_bytes(b"not a png"), "is unreadable"),
        (lambda path: path.write_bytes(path.read_bytes()[:200]), "is unreadable"),
    ],
    ids=["missing", "a-folder", "not-an-image", "truncated"],
)
def test_a_bad_image_is_reported_with_its_file_and_record(tmp_path, damage, expected):
    _write_records(
        tmp_path,
        [
            _record("good", "A", {"image": _png(tmp_path, "spatial_reasoning/blink/images/good.png")}),
            _record("bad", "A", {"image": _png(tmp_path, "spatial_reasoning/blink/images/bad.png", seed=1)}),
        ],
    )
    damage(tmp_path / "spatial_reasoning/blink/images/bad.png")
    loaded = read_blink(DataRoot(tmp_path), "Relative_Depth")
    assert [doc["idx"] for doc in loaded.docs] == ["good"]
    [problem] = loaded.problems
    assert "record id 'bad'" in problem and "bad.png" in problem and expected in problem


def test_truncated_images_are_reported_although_lmms_eval_tolerates_them(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # what importing lmms_eval.api.task does
    path = tmp_path / "cut.png"
    random_image(0).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(BadRecord, match="is unreadable"):
        check_image(path, "image_1")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


def test_records_without_images_choices_or_json_are_bad(tmp_path):
    image = {"image": _png(tmp_path, "spatial_reasoning/blink/images/x.png")}
    path = _write_records(
        tmp_path,
        [
            _record("no_image", "A", {}),
            _record("no_choices", "A", image, question="<image>\nHow many?"),
            _record("bad_gold", "(F)", image),
        ],
    )
    with path.open("a") as file:
        file.write(json.dumps(_record("cut_short", "A", image))[:60] + "\n")
        file.write('["id", "a list"]\n{"sub_task": "Counting"}\n')
    problems = read_spatial_jsonl(DataRoot(tmp_path), path).problems
    assert len(problems) == 6
    assert "'no_image'" in problems[0] and "no image" in problems[0]
    assert "'no_choices'" in problems[1] and "no lettered choices" in problems[1]
    assert "'bad_gold'" in problems[2] and "'(F)'" in problems[2]
    # A line cut short has an 'id': the parser's own words say what is wrong with it.
    assert re.fullmatch(
        rf"{re.escape(str(path))}:4: not valid JSON \(Unterminated string starting at: line 1 column \d+ "
        r"\(char \d+\); is the line cut short\?\)",
        problems[3],
    )
    assert problems[4] == f"{path}:5: a JSON list, expected an object with an 'id'"
    assert problems[5] == f"{path}:6: a JSON object without an 'id'"


def test_choices_with_a_gap_are_named_not_blamed_on_the_gold(tmp_path):
    """(A) (B) (D): without the check the choices end at (B) and the gold (D) looks wrong."""
    gap = "<image>\nHow many?\n(A) one\n(B) two\n(D) four"
    with pytest.raises(
        BadRecord, match=r"question's choices skip a letter: \(A\) \(B\) \(D\), with no \(C\)"
    ):
        parse_choices(gap)
    with pytest.raises(BadRecord, match=r"skip a letter: \(A\) \(D\), with no \(B\)"):
        parse_choices("How many? (A) one (D) four")
    # A later mention of an earlier letter is no gap.
    assert parse_choices("How many?\n(A) one\n(B) two\n(A) again") == ["one", "two"]


def test_a_record_with_both_image_and_numbered_images_is_refused(tmp_path):
    """'image' with image_1 and image_2 was read as three pictures, the first one twice."""
    pictures = {
        key: _png(tmp_path, f"spatial_reasoning/blink/images/{key}.png")
        for key in ("image", "image_1", "image_2")
    }
    path = _write_records(tmp_path, [_record("both", "A", pictures)])
    [problem] = read_spatial_jsonl(DataRoot(tmp_path), path).problems
    assert "(record id 'both')" in problem
    assert "both 'image' and 'image_1', 'image_2' are set: give 'image' for one picture or image_1" in problem


def test_hub_export_keeps_blink_columns_and_embedded_images(tmp_path):
    root = DataRoot(write_hub_blink_root(tmp_path, blink_subtasks=("Visual_Similarity",), docs_per_subtask=2))
    [parquet] = root.hub_parquet_files("Visual_Similarity")
    rows = datasets.Dataset.from_parquet(str(parquet))
    loaded = read_blink(root, "Visual_Similarity")
    assert loaded.problems == []
    for doc, row in zip(loaded.docs, rows, strict=True):
        assert (doc["idx"], doc["answer"], doc["prompt"], doc["choices"]) == (
            row["idx"],
            row["answer"],
            row["prompt"],
            row["choices"],
        )
        assert Image.open(io.BytesIO(doc["image_3"]["bytes"])).size == row["image_3"].size
        assert doc["image_4"] is None


def test_hub_export_with_a_corrupt_image_or_missing_columns(tmp_path):
    root = DataRoot(write_hub_blink_root(tmp_path, blink_subtasks=("Counting",), docs_per_subtask=2))
    [parquet] = root.hub_parquet_files("Counting")
    table = datasets.Dataset.from_parquet(str(parquet)).cast_column("image_1", datasets.Image(decode=False))
    corrupt = table.map(
        lambda row, i: {"image_1": {"bytes": b"junk", "path": None}} if i == 1 else {}, with_indices=True
    )
    corrupt.to_parquet(str(parquet))
    loaded = read_hub_parquet([parquet])
    assert len(loaded.docs) == 1
    [problem] = loaded.problems
    assert (
        str(parquet) in problem
        and "record idx 'val_Counting_2'" in problem
        and "image_1 is unreadable" in problem
    )

    table.remove_columns(["prompt"]).to_parquet(str(parquet))
    with pytest.raises(SpatialDataError, match=r"lacks BLINK's columns \['prompt'\]"):
        read_hub_parquet([parquet])


def _png_bytes(size: tuple[int, int] = (112, 84)) -> bytes:
    buffer = io.BytesIO()
    random_image(0, size).save(buffer, format="PNG")
    return buffer.getvalue()


def _hub_row(**changes) -> dict:
    row = {
        "idx": "val_Counting_1",
        "sub_task": "Counting",
        "prompt": "How many?\n(A) one\n(B) two",
        "choices": ["one", "two"],
        "answer": "(B)",
        "image_1": {"bytes": _png_bytes(), "path": None},
        "image_2": None,
        "image_3": None,
        "image_4": None,
    }
    return row | changes


def _write_hub_rows(root: Path, rows: list[dict]) -> Path:
    """Rows written as they are, with the column types pyarrow infers (as another exporter might)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = root / "BLINK" / "Counting" / "val-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_an_image_the_processor_refuses_is_a_bad_record_in_both_layouts(tmp_path):
    narrow = "spatial_reasoning/blink/images/narrow.png"
    (tmp_path / narrow).parent.mkdir(parents=True)
    random_image(0, size=(6000, 20)).save(tmp_path / narrow)
    _write_records(tmp_path, [_record("narrow", "A", {"image": narrow})])
    [problem] = read_blink(DataRoot(tmp_path), "Relative_Depth").problems
    assert "record id 'narrow'" in problem and "narrow.png" in problem
    assert "image processors refuse its size 6000x20" in problem and "aspect ratio" in problem

    parquet = _write_hub_rows(tmp_path, [_hub_row(image_1={"bytes": _png_bytes((20, 6000)), "path": None})])
    [problem] = read_hub_parquet([parquet]).problems
    assert f"{parquet} row 0 (record idx 'val_Counting_1'): image_1: the Qwen2.5-VL, " in problem
    assert "image processors refuse its size 20x6000" in problem


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"conversations": [{"from": "human", "value": None}, {"from": "gpt", "value": "A"}]},
            "conversations[0] value (the question) is None, expected text",
        ),
        (
            {
                "conversations": [
                    {"from": "human", "value": "<image>\n(A) x\n(B) y"},
                    {"from": "gpt", "value": 1},
                ]
            },
            "conversations[1] value (the gold answer) is 1, expected text",
        ),
        ({"conversations": "Which is closer?"}, "conversations must be [{'from': 'human'"),
        ({"conversations": [None, None]}, "conversations must be"),
        ({"id": None}, "id is None, expected a string or an integer"),
        ({"sub_task": None}, "sub_task is None, expected text"),
        ({"image": ["a.png"]}, "image is ['a.png'], expected a path relative to"),
        ({"image": 7}, "image is 7, expected a path"),
    ],
    ids=[
        "null-question",
        "number-gold",
        "text-conversations",
        "null-turns",
        "null-id",
        "null-sub-task",
        "list-image",
        "number-image",
    ],
)
def test_spatial_fields_of_the_wrong_type_are_bad_records(tmp_path, change, expected):
    image = {"image": _png(tmp_path, "spatial_reasoning/blink/images/x.png")}
    record = _record("r", "A", image) | change
    path = _write_records(tmp_path, [_record("good", "A", image), record])
    loaded = read_blink_jsonl(DataRoot(tmp_path))
    assert [doc["idx"] for doc in loaded.docs] == ["good"]
    [problem] = loaded.problems
    assert problem.startswith(f"{path}:2 (record id ") and expected in problem


def test_numeric_record_ids_are_read_as_text(tmp_path):
    image = {"image": _png(tmp_path, "spatial_reasoning/blink/images/x.png")}
    _write_records(tmp_path, [_record(17, "A", image)])
    assert [doc["idx"] for doc in read_blink(DataRoot(tmp_path), "Relative_Depth").docs] == ["17"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"image_1": {"bytes": None, "path": "/exports/blink/1.png"}},
            "image_1 holds only a path ('/exports/blink/1.png') and no image bytes",
        ),
        (
            {"image_1": "/exports/blink/1.png"},
            "image_1 is '/exports/blink/1.png', expected embedded image bytes",
        ),
        ({"image_1": None}, "image_1 is empty (null)"),
        ({"image_2": {"bytes": None, "path": "2.png"}}, "image_2 holds only a path ('2.png')"),
        ({"prompt": None}, "prompt is None, expected text"),
        ({"idx": None}, "idx is None, expected a string or an integer"),
        ({"answer": None}, "answer is None, expected text"),
        ({"choices": "one, two"}, "choices is the text 'one, two', expected a list of choices"),
        ({"choices": "[1, 2]"}, "choices is [1, 2], expected a list of texts"),
        ({"choices": ["one"]}, "choices is ['one'], expected at least two"),
    ],
    ids=[
        "path-only",
        "path-string",
        "null-image",
        "path-only-second",
        "null-prompt",
        "null-idx",
        "null-answer",
        "unreadable-choices-text",
        "number-choices",
        "one-choice",
    ],
)
def test_hub_fields_of_the_wrong_type_are_bad_records(tmp_path, change, expected):
    parquet = _write_hub_rows(tmp_path, [_hub_row(**change)])
    loaded = read_hub_parquet([parquet])
    assert loaded.docs == []
    [problem] = loaded.problems
    assert problem.startswith(f"{parquet} row 0 (record idx ") and expected in problem


def test_hub_choices_written_as_the_text_of_a_list_are_a_list(tmp_path):
    parquet = _write_hub_rows(tmp_path, [_hub_row(choices="['one', 'two']", answer="two")])
    [doc] = read_hub_parquet([parquet]).docs
    assert (doc["choices"], doc["answer"]) == (["one", "two"], "(B)")


def test_a_utf8_byte_order_mark_is_accepted_and_other_encodings_name_the_line(tmp_path):
    image = {"image": _png(tmp_path, "spatial_reasoning/blink/images/x.png")}
    path = _write_records(tmp_path, [_record("first", "A", image), _record("second", "A", image)])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert [doc["idx"] for doc in read_blink_jsonl(DataRoot(tmp_path)).docs] == ["first", "second"]

    latin1 = json.dumps(_record("café", "A", image), ensure_ascii=False).encode("latin-1")
    path.write_bytes(path.read_bytes() + latin1 + b"\n")
    loaded = read_blink_jsonl(DataRoot(tmp_path))
    assert [doc["idx"] for doc in loaded.docs] == ["first", "second"]
    assert loaded.problems == [f"{path}:3: not UTF-8 text (invalid continuation byte at byte 12 of the line)"]


@pytest.mark.parametrize(
    ("sub_task", "expected"),
    [
        ("relative_depth", "sub_task 'relative_depth' must be spelled 'Relative_Depth', as BLINK spells it"),
        ("Multi-View Reasoning", "must be spelled 'Multi-view_Reasoning'"),
        ("Depth", "sub_task 'Depth' is none of BLINK's: Art_Style, Counting"),
    ],
)
def test_sub_tasks_not_spelled_as_blink_are_bad_records_never_unused(tmp_path, sub_task, expected):
    image = {"image": _png(tmp_path, "spatial_reasoning/blink/images/x.png")}
    _write_records(
        tmp_path, [_record("good", "A", image), _record("odd", "A", image) | {"sub_task": sub_task}]
    )
    loaded = read_blink(DataRoot(tmp_path), "Relative_Depth")
    assert [doc["idx"] for doc in loaded.docs] == ["good"]
    [problem] = loaded.problems
    assert "(record id 'odd')" in problem and expected in problem


def test_an_empty_blink_file_is_no_data_for_any_sub_task(tmp_path):
    _write_records(tmp_path, [])
    with pytest.raises(
        SpatialDataError, match=r"no BLINK data for sub-task Counting; .* \(holds no records\)"
    ):
        read_blink(DataRoot(tmp_path), "Counting")


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fields=st.dictionaries(
        st.sampled_from(["id", "sub_task", "conversations", "image", "image_1", "image_2"]), JSON_VALUES
    )
)
def test_any_malformed_spatial_record_is_a_bad_record(tmp_path, fields):
    image = {"image": _png(tmp_path, "spatial_reasoning/blink/images/x.png")}
    record = _record("r", "A", image) | fields
    _write_records(tmp_path, [record])
    loaded = read_blink_jsonl(DataRoot(tmp_path))
    assert len(loaded.docs) + len(loaded.problems) == 1


@settings(max_examples=60, deadline=None)
@given(fields=st.dictionaries(st.sampled_from(sorted(_hub_row())), JSON_VALUES))
def test_any_malformed_hub_row_is_a_bad_record(fields):
    with contextlib.suppress(BadRecord):
        _hub_doc(_hub_row(**fields))
