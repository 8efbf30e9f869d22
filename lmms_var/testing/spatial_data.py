"""Synthetic spatial-reasoning data in the layouts `tasks/` reads, written with Pillow.

The records mimic BLINK and SAT-2 in shape only (sub-tasks, image counts, lettered choices,
the three gold formats); their answers are random, so accuracy on them measures nothing.
`write_spatial_root` writes the spatial-reasoning jsonl layout, `write_hub_blink_root` a local
export of the Hub's BLINK (parquet files with BLINK's own columns and embedded images).
"""

import io
import json
import random
from pathlib import Path

import datasets

from lmms_var.tasks.data_root import SPATIAL_SUBTASKS
from lmms_var.testing.images import random_image

# BLINK's 14 sub-tasks with their number of images per question.
BLINK_SUBTASK_IMAGES = {
    "Art_Style": 3,
    "Counting": 1,
    "Forensic_Detection": 4,
    "Functional_Correspondence": 2,
    "IQ_Test": 1,
    "Jigsaw": 3,
    "Multi-view_Reasoning": 2,
    "Object_Localization": 1,
    "Relative_Depth": 1,
    "Relative_Reflectance": 1,
    "Semantic_Correspondence": 2,
    "Spatial_Relation": 1,
    "Visual_Correspondence": 2,
    "Visual_Similarity": 3,
}
SAT2_SUBTASKS = ("ego_movement", "obj_movement", "action_consequence", "goal_aim", "perspective")


def _choices(rng: random.Random) -> tuple[list[str], int, str]:
    """(choices, index of the right one, the choices as BLINK's lettered lines)."""
    choices = [f"option {chr(ord('a') + i)}" for i in range(rng.choice((2, 3, 4)))]
    answer = rng.randrange(len(choices))
    options = "\n".join(f"({chr(ord('A') + i)}) {choice}" for i, choice in enumerate(choices))
    return choices, answer, options


def _record(
    root: Path, folder: str, record_id: str, sub_task: str, n_images: int, rng: random.Random, seed: int
) -> dict:
    choices, answer, options = _choices(rng)
    letter = chr(ord("A") + answer)
    question = f"{'<image>' * n_images}\nQuestion about {sub_task.replace('_', ' ').lower()}?\n{options}"
    gold = rng.choice((f"({letter})", letter, choices[answer]))
    record = {
        "id": record_id,
        "sub_task": sub_task,
        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": gold}],
    }
    for i in range(n_images):
        relative = Path("spatial_reasoning") / folder / "images" / f"{record_id}_{i + 1}.png"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        random_image(seed + i, size=(rng.choice((84, 112, 140)), 112)).save(root / relative)
        record[f"image_{i + 1}" if n_images > 1 else "image"] = relative.as_posix()
    return record


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def write_spatial_root(
    root: str | Path,
    blink_subtasks: tuple[str, ...] = SPATIAL_SUBTASKS,
    docs_per_subtask: int = 3,
    sat2_docs: int = 4,
    seed: int = 0,
) -> Path:
    """Write `ROOT/spatial_reasoning/{blink,sat2_test}` jsonl files and PNG images; returns ROOT.

    With `sat2_docs=0` the root has no SAT-2 file at all: an empty one would be unusable data.
    """
    root = Path(root)
    rng = random.Random(seed)
    blink = [
        _record(
            root,
            "blink",
            f"{sub_task}_{i}",
            sub_task,
            BLINK_SUBTASK_IMAGES[sub_task],
            rng,
            seed * 10_000 + n * 10,
        )
        for n, (sub_task, i) in enumerate((s, i) for s in blink_subtasks for i in range(docs_per_subtask))
    ]
    _write_jsonl(root / "spatial_reasoning" / "blink" / "blink_validation.jsonl", blink)
    sat2 = [
        _record(
            root,
            "sat2_test",
            f"sat2_{i}",
            SAT2_SUBTASKS[i % len(SAT2_SUBTASKS)],
            1 + i % 2,
            rng,
            seed * 10_000 + 5000 + i * 10,
        )
        for i in range(sat2_docs)
    ]
    if sat2:
        _write_jsonl(root / "spatial_reasoning" / "sat2_test" / "sat2_test.jsonl", sat2)
    return root


def _png_bytes(seed: int, size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    random_image(seed, size=size).save(buffer, format="PNG")
    return buffer.getvalue()


def write_hub_blink_root(
    root: str | Path,
    blink_subtasks: tuple[str, ...] = SPATIAL_SUBTASKS,
    docs_per_subtask: int = 3,
    seed: int = 0,
) -> Path:
    """Write `ROOT/BLINK/<Subtask>/val-00000-of-00001.parquet` as a local export of the Hub's BLINK
    (its columns, images as embedded PNG bytes, unused image slots null); returns ROOT."""
    features = datasets.Features(
        {
            "idx": datasets.Value("string"),
            "question": datasets.Value("string"),
            "sub_task": datasets.Value("string"),
            **{f"image_{i}": datasets.Image() for i in range(1, 5)},
            "choices": datasets.List(datasets.Value("string")),
            "answer": datasets.Value("string"),
            "prompt": datasets.Value("string"),
            "explanation": datasets.Value("string"),
        }
    )
    root = Path(root)
    rng = random.Random(seed)
    for s, sub_task in enumerate(blink_subtasks):
        rows = []
        for i in range(docs_per_subtask):
            choices, answer, options = _choices(rng)
            question = f"Question about {sub_task.replace('_', ' ').lower()}?"
            n_images = BLINK_SUBTASK_IMAGES[sub_task]
            images = {
                f"image_{k + 1}": {
                    "bytes": _png_bytes(seed * 10_000 + s * 100 + i * 10 + k, (112, 84)),
                    "path": None,
                }
                if k < n_images
                else None
                for k in range(4)
            }
            rows.append(
                {
                    "idx": f"val_{sub_task}_{i + 1}",
                    "question": question,
                    "sub_task": sub_task,
                    **images,
                    "choices": choices,
                    "answer": f"({chr(ord('A') + answer)})",
                    "prompt": f"{question}\nSelect from the following choices.\n{options}",
                    "explanation": "",
                }
            )
        folder = root / "BLINK" / sub_task
        folder.mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_list(rows, features=features).to_parquet(folder / "val-00000-of-00001.parquet")
    return root
