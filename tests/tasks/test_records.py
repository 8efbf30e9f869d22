"""Reading both layouts into BLINK's doc schema: choices, golds, image paths and bad records."""

import io
import json
from pathlib import Path

import datasets
import pytest
from PIL import Image, ImageFile

from lmms_var.tasks.data_root import DataRoot, SpatialDataError
from lmms_var.tasks.records import (
    BadRecord,
    check_image,
    gold_letter,
    parse_choices,
    read_blink,
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
        (lambda path: path.write_bytes(b"not a png"), "is unreadable"),
        (lambda path: path.write_bytes(path.read_bytes()[:200]), "is unreadable"),
    ],
    ids=["missing", "not-an-image", "truncated"],
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
        file.write("{not json\n")
    problems = read_spatial_jsonl(DataRoot(tmp_path), path).problems
    assert len(problems) == 4
    assert "'no_image'" in problems[0] and "no image" in problems[0]
    assert "'no_choices'" in problems[1] and "no lettered choices" in problems[1]
    assert "'bad_gold'" in problems[2] and "'(F)'" in problems[2]
    assert problems[3].startswith(f"{path}:4") and "not a JSON object" in problems[3]


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
