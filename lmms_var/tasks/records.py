"""Read BLINK and SAT-2 records from either layout into one doc schema: BLINK's own Hub columns.

Docs carry `idx`, `sub_task`, `prompt` (question with lettered choices, no `<image>` placeholders),
`choices`, `answer` ("(A)") and `image_1` .. `image_4`, so lmms-eval's BLINK prompt and scoring
functions apply to them unchanged and local runs stay comparable with Hub runs.

Every image is opened and decoded here, at load time, so a missing or corrupt file is reported with
its record instead of failing (or vanishing) in the middle of generation.
"""

import io
import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageFile

from lmms_var.tasks.data_root import DataRoot, SpatialDataError

IMAGE_KEYS = ("image_1", "image_2", "image_3", "image_4")
HUB_COLUMNS = ("idx", "sub_task", "choices", "answer", "prompt", *IMAGE_KEYS)

# A choice line: "(A) text", "A) text" or "A. text".
_CHOICE_LINE = re.compile(r"^\s*(?:\(([A-Z])\)|([A-Z])[.)])\s*(.*?)\s*$")
# Inline choices: "(A) text, (B) text", each text ending at the next "(X)" or line end.
_INLINE_CHOICE = re.compile(r"\(([A-Z])\)\s*(.*?)[\s,;]*(?=\([A-Z]\)|\n|$)")
# A gold given as a letter: "(B)", "B", "B." .
_GOLD_LETTER = re.compile(r"^\(?([A-Z])\)?\.?$")


class BadRecord(Exception):
    """One record cannot be used; the message says why (the caller adds which record)."""


@dataclass
class Loaded:
    """Docs read from one source, and one line per record left out because it was bad."""

    source: str
    docs: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.docs) + len(self.problems)


def strip_image_placeholders(text: str) -> str:
    """The question without `<image>` placeholders, which stand for images, not for text."""
    return re.sub(r"<image>", "", text).strip()


def _first_lettered_run(pairs: list[tuple[str | None, str]]) -> list[str]:
    """Texts of the first run of (letter, text) pairs lettered A, B, C, ... in order."""
    choices: list[str] = []
    for letter, text in pairs:
        if len(choices) < len(string.ascii_uppercase) and letter == string.ascii_uppercase[len(choices)]:
            choices.append(text)
        elif choices:
            break
    return choices


def parse_choices(prompt: str) -> list[str]:
    """The texts of the lettered choices in `prompt`: one per line ("(A) left", "A. left", "A) left"),
    or else inline ("... (A) left (B) right")."""
    lines = [_CHOICE_LINE.match(line) for line in prompt.splitlines()]
    choices = _first_lettered_run(
        [(m.group(1) or m.group(2), m.group(3)) if m else (None, "") for m in lines]
    )
    if len(choices) < 2:
        choices = _first_lettered_run(_INLINE_CHOICE.findall(prompt))
    if len(choices) < 2:
        raise BadRecord("question has no lettered choices ('(A) ...', '(B) ...')")
    return choices


def gold_letter(gold: str, choices: list[str]) -> str:
    """The letter of the right choice, from a gold given as "(A)", "A" or the choice's text."""
    text = gold.strip()
    letters = string.ascii_uppercase[: len(choices)]
    match = _GOLD_LETTER.match(text)
    if match and match.group(1) in letters:
        return match.group(1)
    normalized = [choice.strip().rstrip(".").casefold() for choice in choices]
    if text.rstrip(".").casefold() in normalized:
        return letters[normalized.index(text.rstrip(".").casefold())]
    raise BadRecord(f"gold answer {gold!r} is neither a letter {', '.join(letters)} nor the text of a choice")


def check_image(source: Path | bytes, what: str) -> None:
    """Decode the image (JPEGs at reduced scale, which still reads every byte) or raise `BadRecord`.

    lmms-eval sets Pillow's `LOAD_TRUNCATED_IMAGES`, which would pad a truncated file with grey;
    the check turns it off so such a file is reported instead.
    """
    tolerant = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(source if isinstance(source, Path) else io.BytesIO(source)) as image:
            image.draft("RGB", (64, 64))
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise BadRecord(f"{what} is unreadable: {error}") from error
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = tolerant


def _resolve_image(root: DataRoot, value: Any, key: str) -> str:
    """An image path of the spatial layout: absolute, or relative to ROOT or to ROOT/spatial_reasoning."""
    if not isinstance(value, str) or not value.strip():
        raise BadRecord(f"{key} is {value!r}, expected a path relative to {root.path}")
    relative = Path(value)
    candidates = (
        [relative]
        if relative.is_absolute()
        else [root.path / relative, root.path / "spatial_reasoning" / relative]
    )
    for candidate in candidates:
        if candidate.is_file():
            check_image(candidate, f"{key} {candidate}")
            return str(candidate)
    raise BadRecord(f"{key} not found: tried {', '.join(map(str, candidates))}")


def _spatial_doc(root: DataRoot, record: dict) -> dict:
    """A doc from one spatial-layout record (`id`, `sub_task`, `conversations`, `image`/`image_N`)."""
    try:
        question, gold = record["conversations"][0]["value"], record["conversations"][1]["value"]
    except (KeyError, IndexError, TypeError) as error:
        raise BadRecord("conversations must be [{'from': 'human', ...}, {'from': 'gpt', ...}]") from error
    prompt = strip_image_placeholders(question)
    choices = parse_choices(prompt)
    keys = [key for key in ("image", *IMAGE_KEYS) if record.get(key) is not None]
    if not keys:
        raise BadRecord(f"no image: expected 'image' or {', '.join(IMAGE_KEYS)}")
    if len(keys) > len(IMAGE_KEYS):
        raise BadRecord(f"{len(keys)} images, at most {len(IMAGE_KEYS)} are supported")
    images = [_resolve_image(root, record[key], key) for key in keys]
    return {
        "idx": str(record["id"]),
        "sub_task": str(record.get("sub_task", "")),
        "prompt": prompt,
        "choices": choices,
        "answer": f"({gold_letter(str(gold), choices)})",
        **dict(zip(IMAGE_KEYS, images + [None] * (len(IMAGE_KEYS) - len(images)), strict=True)),
    }


def _jsonl_records(path: Path) -> list[tuple[str, dict | None]]:
    """(where, record) per non-empty line; a line that is not a JSON object comes back as None."""
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or "id" not in record:
            out.append((f"{path}:{number}", None))
        else:
            out.append((f"{path}:{number} (record id {record['id']!r})", record))
    return out


def read_spatial_jsonl(root: DataRoot, path: Path, sub_task: str | None = None) -> Loaded:
    """Docs from a spatial-layout jsonl file, only those of `sub_task` when it is given."""
    loaded = Loaded(source=str(path))
    for where, record in _jsonl_records(path):
        if record is None:
            loaded.problems.append(f"{where}: not a JSON object with an 'id'")
            continue
        if sub_task is not None and record.get("sub_task") != sub_task:
            continue
        try:
            loaded.docs.append(_spatial_doc(root, record))
        except BadRecord as error:
            loaded.problems.append(f"{where}: {error}")
    return loaded


def jsonl_subtasks(path: Path) -> list[str]:
    """The `sub_task` values a spatial-layout jsonl file holds."""
    return sorted({str(record.get("sub_task")) for _, record in _jsonl_records(path) if record is not None})


def _hub_doc(row: dict) -> dict:
    """A doc from one row of the Hub BLINK export, its images checked and kept as embedded bytes."""
    choices = [str(choice) for choice in row["choices"] or []]
    if len(choices) < 2:
        raise BadRecord(f"choices is {row['choices']!r}, expected at least two")
    images = []
    for key in IMAGE_KEYS:
        value = row[key]
        data = value.get("bytes") if isinstance(value, dict) else value
        if data is None:
            if key == "image_1":
                raise BadRecord("image_1 is empty")
            images.append(None)
            continue
        check_image(data, key)
        images.append({"bytes": data, "path": None})
    return {
        "idx": str(row["idx"]),
        "sub_task": str(row["sub_task"]),
        "prompt": str(row["prompt"]),
        "choices": choices,
        "answer": f"({gold_letter(str(row['answer']), choices)})",
        **dict(zip(IMAGE_KEYS, images, strict=True)),
    }


def read_hub_parquet(files: list[Path]) -> Loaded:
    """Docs from the `val-*.parquet` files of one sub-task of a local export of the Hub's BLINK."""
    import pyarrow.parquet as pq

    loaded = Loaded(source=", ".join(map(str, files)))
    for path in files:
        try:
            table = pq.read_table(path)
        except (OSError, ValueError) as error:
            raise SpatialDataError(f"{path} is not a readable parquet file: {error}") from error
        missing = [column for column in HUB_COLUMNS if column not in table.column_names]
        if missing:
            raise SpatialDataError(f"{path} lacks BLINK's columns {missing}; it has {table.column_names}")
        for number, row in enumerate(table.select(list(HUB_COLUMNS)).to_pylist()):
            try:
                loaded.docs.append(_hub_doc(row))
            except BadRecord as error:
                loaded.problems.append(f"{path} row {number} (record idx {row['idx']!r}): {error}")
    return loaded


def read_blink(root: DataRoot, sub_task: str) -> Loaded:
    """The BLINK docs of one sub-task: from the Hub export when it has the sub-task (BLINK's own
    columns), else from the spatial-reasoning jsonl."""
    hub_files = root.hub_parquet_files(sub_task)
    if hub_files:
        return read_hub_parquet(hub_files)
    tried = f"{root.hub_blink_dir / sub_task / 'val-*.parquet'}, {root.blink_jsonl}"
    if root.blink_jsonl.is_file():
        loaded = read_spatial_jsonl(root, root.blink_jsonl, sub_task)
        if loaded.total:
            return loaded
        tried += f" (holds sub-tasks {', '.join(jsonl_subtasks(root.blink_jsonl))})"
    raise SpatialDataError(f"data root {root.path} has no BLINK data for sub-task {sub_task}; tried {tried}")


def read_sat2(root: DataRoot) -> Loaded:
    """The SAT-2 docs (spatial-reasoning layout only)."""
    if not root.has_sat2():
        raise SpatialDataError(f"data root {root.path} has no SAT-2 data; tried {root.sat2_jsonl}")
    return read_spatial_jsonl(root, root.sat2_jsonl)
