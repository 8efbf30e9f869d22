"""Read BLINK and SAT-2 records from either layout into one doc schema: BLINK's own Hub columns.

Docs carry `idx`, `sub_task`, `prompt` (question with lettered choices, no `<image>` placeholders),
`choices`, `answer` ("(A)") and `image_1` .. `image_4`, so lmms-eval's BLINK prompt and scoring
functions apply to them unchanged and local runs stay comparable with Hub runs.

Every record is checked here, at load time, by the same code for the tasks and `lmms-var check-data`:
each field's type, the question's choices and gold, and every image, which is decoded, converted to
RGB and sized against every supported model's image processor. So a record the run could not use is reported with
its file and id (or skipped and counted) instead of failing, or vanishing, in the middle of generation.
"""

import ast
import io
import json
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from PIL import Image, ImageFile

from lmms_var.tasks.data_root import BLINK_SUBTASKS, DataRoot, SpatialDataError
from lmms_var.tasks.images import to_rgb
from lmms_var.tasks.processor_limits import processor_refusal

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
    """Texts of the first run of (letter, text) pairs lettered A, B, C, ... in order; `BadRecord` where
    the run ends at a later letter ("(A) (B) (D)"), which would drop choices and blame the gold."""
    choices: list[str] = []
    for letter, text in pairs:
        expected = (
            string.ascii_uppercase[len(choices)] if len(choices) < len(string.ascii_uppercase) else None
        )
        if letter == expected:
            choices.append(text)
        elif choices:
            if letter is not None and expected is not None and letter > expected:
                listed = " ".join(f"({known})" for known in string.ascii_uppercase[: len(choices)])
                raise BadRecord(
                    f"question's choices skip a letter: {listed} ({letter}), with no ({expected})"
                )
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


def _text(value: Any, what: str) -> str:
    """A field that must hold text (`what` names it), or `BadRecord`."""
    if not isinstance(value, str):
        raise BadRecord(f"{what} is {value!r:.80}, expected text")
    return value


def _record_id(value: Any, what: str) -> str:
    """A record id: text or an integer (JSON ids are often numbers), as text."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadRecord(f"{what} is {value!r:.80}, expected a string or an integer")
    return str(value)


def _spelling(name: str) -> str:
    """What is left of a sub-task name when case, spaces, '-' and '_' do not count."""
    return re.sub(r"[\s_-]", "", name).casefold()


def blink_sub_task(value: Any) -> str:
    """The record's BLINK sub-task, which must be spelled as BLINK spells it, or `BadRecord` saying how."""
    name = _text(value, "sub_task")
    if name in BLINK_SUBTASKS:
        return name
    close = [known for known in BLINK_SUBTASKS if _spelling(known) == _spelling(name)]
    if close:
        raise BadRecord(f"sub_task {name!r} must be spelled {close[0]!r}, as BLINK spells it")
    raise BadRecord(f"sub_task {name!r} is none of BLINK's: {', '.join(BLINK_SUBTASKS)}")


def check_image(source: Path | bytes, what: str) -> None:
    """Decode the image (JPEGs at reduced scale, which still reads every byte), convert it to RGB and ask
    every supported model's image processor whether it takes its size; any failure is a `BadRecord`.

    lmms-eval sets Pillow's `LOAD_TRUNCATED_IMAGES`, which would pad a truncated file with grey;
    the check turns it off so such a file is reported instead.
    """
    tolerant = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(source if isinstance(source, Path) else io.BytesIO(source)) as image:
            width, height = image.size  # before `draft`, which shrinks JPEGs
            image.draft("RGB", (64, 64))
            image.load()
            to_rgb(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise BadRecord(f"{what} is unreadable: {error}") from error
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = tolerant
    refusal = processor_refusal(width, height)
    if refusal is not None:
        raise BadRecord(f"{what}: {refusal}")


def _resolve_image(root: DataRoot, value: Any, key: str) -> str:
    """An image path of the spatial layout: absolute, or relative to ROOT or to ROOT/spatial_reasoning."""
    if not isinstance(value, str) or not value.strip():
        raise BadRecord(f"{key} is {value!r:.80}, expected a path relative to {root.path}")
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
        if candidate.is_dir():
            raise BadRecord(f"{key} {candidate} is a folder, expected an image file")
    raise BadRecord(f"{key} not found: tried {', '.join(map(str, candidates))}")


def _conversation_values(conversations: Any) -> tuple[str, str]:
    """(question, gold) from `[{"from": "human", "value": ...}, {"from": "gpt", "value": ...}]`."""
    expected = "conversations must be [{'from': 'human', 'value': ...}, {'from': 'gpt', 'value': ...}]"
    if not isinstance(conversations, list) or len(conversations) < 2:
        raise BadRecord(f"{expected}, got {conversations!r:.80}")
    turns = conversations[:2]
    if not all(isinstance(turn, dict) and "value" in turn for turn in turns):
        raise BadRecord(f"{expected}, got {turns!r:.80}")
    return (
        _text(turns[0]["value"], "conversations[0] value (the question)"),
        _text(turns[1]["value"], "conversations[1] value (the gold answer)"),
    )


def _spatial_doc(root: DataRoot, record: dict, sub_task: str) -> dict:
    """A doc from one spatial-layout record (`id`, `sub_task`, `conversations`, `image`/`image_N`)."""
    question, gold = _conversation_values(record.get("conversations"))
    prompt = strip_image_placeholders(question)
    choices = parse_choices(prompt)
    keys = [key for key in ("image", *IMAGE_KEYS) if record.get(key) is not None]
    if not keys:
        raise BadRecord(f"no image: expected 'image' or {', '.join(IMAGE_KEYS)}")
    if "image" in keys and len(keys) > 1:
        raise BadRecord(
            f"both 'image' and {', '.join(repr(key) for key in keys[1:])} are set: give 'image' for one "
            f"picture or {', '.join(IMAGE_KEYS)} for several, not both"
        )
    if len(keys) > len(IMAGE_KEYS):
        raise BadRecord(f"{len(keys)} images, at most {len(IMAGE_KEYS)} are supported")
    images = [_resolve_image(root, record[key], key) for key in keys]
    return {
        "idx": _record_id(record["id"], "id"),
        "sub_task": sub_task,
        "prompt": prompt,
        "choices": choices,
        "answer": f"({gold_letter(gold, choices)})",
        **dict(zip(IMAGE_KEYS, images + [None] * (len(IMAGE_KEYS) - len(images)), strict=True)),
    }


@dataclass(frozen=True)
class JsonlLine:
    """One non-empty line of a jsonl file: where it is, and its record or why there is none."""

    where: str
    record: dict | None
    problem: str | None = None


def _jsonl_problem(text: str) -> tuple[dict | None, str | None]:
    """(record, None) for a JSON object with an `id`, else (None, what is wrong, the parser's words)."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        return None, f"not valid JSON ({error}; is the line cut short?)"
    if not isinstance(record, dict):
        return None, f"a JSON {type(record).__name__}, expected an object with an 'id'"
    if "id" not in record:
        return None, "a JSON object without an 'id'"
    return record, None


def _jsonl_lines(path: Path) -> list[JsonlLine]:
    """Every non-empty line of `path`. A UTF-8 byte-order mark is accepted; a line that is not UTF-8
    or not a JSON object with an `id` comes back with its problem, the other lines are still read."""
    if path.is_dir():
        raise SpatialDataError(f"{path} is a folder, expected a jsonl file")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SpatialDataError(f"{path} cannot be read: {error}") from error
    lines = []
    for number, raw in enumerate(data.removeprefix(b"\xef\xbb\xbf").splitlines(), start=1):
        where = f"{path}:{number}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            lines.append(
                JsonlLine(
                    where, None, f"not UTF-8 text ({error.reason} at byte {error.start + 1} of the line)"
                )
            )
            continue
        if not text.strip():
            continue
        record, problem = _jsonl_problem(text)
        if record is None:
            lines.append(JsonlLine(where, None, problem))
        else:
            lines.append(JsonlLine(f"{where} (record id {record['id']!r:.80})", record))
    return lines


def read_spatial_jsonl(root: DataRoot, path: Path) -> Loaded:
    """Docs from a spatial-layout jsonl file whose `sub_task` is free text (SAT-2)."""
    return _read_jsonl(root, path, lambda record: _text(record.get("sub_task", ""), "sub_task"))


def read_blink_jsonl(root: DataRoot, sub_task: str | None = None) -> Loaded:
    """Docs of BLINK's spatial-layout jsonl, only those of `sub_task` when it is given. Every record's
    `sub_task` must be spelled as BLINK spells it: a misspelt record is bad, never silently unused."""
    return _read_jsonl(
        root, root.blink_jsonl, lambda record: blink_sub_task(record.get("sub_task")), sub_task
    )


def _read_jsonl(
    root: DataRoot, path: Path, read_sub_task: Callable[[dict], str], wanted: str | None = None
) -> Loaded:
    loaded = Loaded(source=str(path))
    for line in _jsonl_lines(path):
        if line.record is None:
            loaded.problems.append(f"{line.where}: {line.problem}")
            continue
        try:
            sub_task = read_sub_task(line.record)
            if wanted is None or sub_task == wanted:
                loaded.docs.append(_spatial_doc(root, line.record, sub_task))
        except BadRecord as error:
            loaded.problems.append(f"{line.where}: {error}")
    return loaded


def jsonl_subtasks(path: Path) -> list[str]:
    """The `sub_task` values a spatial-layout jsonl file holds."""
    return sorted(
        {str(line.record.get("sub_task")) for line in _jsonl_lines(path) if line.record is not None}
    )


def hub_choices(value: Any) -> list[str]:
    """The `choices` column: a list of texts, or the text of one (`"['one', 'two']"`, as some exports
    write it), which is read as a list rather than split into characters."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError, RecursionError) as error:
            raise BadRecord(f"choices is the text {value!r:.80}, expected a list of choices") from error
    if not isinstance(value, list | tuple) or not all(isinstance(choice, str) for choice in value):
        raise BadRecord(f"choices is {value!r:.80}, expected a list of texts")
    if len(value) < 2:
        raise BadRecord(f"choices is {value!r:.80}, expected at least two")
    return list(value)


def _hub_image(value: Any, key: str) -> dict | None:
    """An image column's cell as `{"bytes": ..., "path": None}` (checked), None for an unused slot."""
    if value is None:
        if key == "image_1":
            raise BadRecord("image_1 is empty (null): every question has at least one image")
        return None
    data = value.get("bytes") if isinstance(value, dict) else value
    if data is None and isinstance(value, dict) and value.get("path"):
        raise BadRecord(
            f"{key} holds only a path ({value['path']!r}) and no image bytes: export BLINK with its "
            "images embedded"
        )
    if not isinstance(data, bytes):
        raise BadRecord(f"{key} is {value!r:.80}, expected embedded image bytes")
    check_image(data, key)
    return {"bytes": data, "path": None}


def _hub_doc(row: dict) -> dict:
    """A doc from one row of the Hub BLINK export, its images checked and kept as embedded bytes."""
    choices = hub_choices(row["choices"])
    return {
        "idx": _record_id(row["idx"], "idx"),
        "sub_task": _text(row["sub_task"], "sub_task"),
        "prompt": _text(row["prompt"], "prompt"),
        "choices": choices,
        "answer": f"({gold_letter(_text(row['answer'], 'answer'), choices)})",
        **{key: _hub_image(row[key], key) for key in IMAGE_KEYS},
    }


def read_hub_parquet(files: list[Path]) -> Loaded:
    """Docs from the `val-*.parquet` files of one sub-task of a local export of the Hub's BLINK."""
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
    if root.blink_jsonl.exists():  # a folder there is named by the reader
        loaded = read_blink_jsonl(root, sub_task)
        if loaded.docs or loaded.problems:
            return loaded
        held = jsonl_subtasks(root.blink_jsonl)
        tried += f" (holds sub-tasks {', '.join(held)})" if held else " (holds no records)"
    raise SpatialDataError(f"data root {root.path} has no BLINK data for sub-task {sub_task}; tried {tried}")


def read_sat2(root: DataRoot) -> Loaded:
    """The SAT-2 docs (spatial-reasoning layout only)."""
    if not root.sat2_jsonl.exists():  # a folder there is named by the reader
        raise SpatialDataError(f"data root {root.path} has no SAT-2 data; tried {root.sat2_jsonl}")
    return read_spatial_jsonl(root, root.sat2_jsonl)
