"""The functions the task YAMLs (`tasks/spatial/`) name with `!function`.

Each task's YAML loads a one-line placeholder file (lmms-eval needs some `dataset_path`, and YAML
cannot read `LMMS_VAR_DATA_ROOT`); its `process_docs` hook replaces the placeholder with the docs read
from the data root. Prompts, visuals and scoring are lmms-eval's own BLINK functions, so scores of a
local run and a Hub run of BLINK mean the same thing. Its scoring logs each doc's `idx`, the record's
own id, as `id` in every sample's `blink_acc`: `lmms-var leaderboard` pairs two runs' docs by it
(lmms-eval 0.7.3 logs neither the doc nor a hash that tells docs apart).

Only the images change on their way to lmms-eval's functions: they are converted to RGB as a person
sees them (`images.to_rgb`), since lmms-eval's `convert("RGB")` turns a 16-bit PNG white and
transparent pixels to whatever colour they hide. This happens here, per doc when the model needs it,
rather than at load, which would re-encode every image of the data root into the docs table; an RGB
image passes through untouched, so ordinary data gives exactly lmms-eval's inputs.
"""

from collections.abc import Callable
from typing import Any

import datasets
from lmms_eval.tasks.blink import utils as lmms_eval_blink
from lmms_eval.tasks.blink.utils import blink_aggregate_results, blink_doc_to_text, blink_process_results
from loguru import logger

from lmms_var.tasks.data_root import (
    ENV_SKIP_BAD_RECORDS,
    DataRoot,
    SpatialDataError,
    data_root_from_env,
    skip_bad_records,
    task_suffix,
)
from lmms_var.tasks.images import to_rgb
from lmms_var.tasks.records import IMAGE_KEYS, Loaded, read_blink, read_sat2

__all__ = [
    "blink_aggregate_results",
    "blink_doc_to_messages",
    "blink_doc_to_text",
    "blink_doc_to_visual",
    "blink_process_results",
    "spatial_blink_art_style_docs",
    "spatial_blink_counting_docs",
    "spatial_blink_forensic_detection_docs",
    "spatial_blink_functional_correspondence_docs",
    "spatial_blink_iq_test_docs",
    "spatial_blink_jigsaw_docs",
    "spatial_blink_multi_view_reasoning_docs",
    "spatial_blink_object_localization_docs",
    "spatial_blink_relative_depth_docs",
    "spatial_blink_relative_reflectance_docs",
    "spatial_blink_semantic_correspondence_docs",
    "spatial_blink_spatial_relation_docs",
    "spatial_blink_visual_correspondence_docs",
    "spatial_blink_visual_similarity_docs",
    "spatial_sat2_docs",
]

DOC_FEATURES = datasets.Features(
    {
        "idx": datasets.Value("string"),
        "sub_task": datasets.Value("string"),
        "prompt": datasets.Value("string"),
        "choices": datasets.List(datasets.Value("string")),
        "answer": datasets.Value("string"),
        **{key: datasets.Image() for key in IMAGE_KEYS},
    }
)


def _as_seen(doc: dict) -> dict:
    """`doc` with each of its images in 8-bit RGB as a person sees it."""
    return {
        key: to_rgb(value) if key in IMAGE_KEYS and value is not None else value for key, value in doc.items()
    }


def blink_doc_to_visual(doc: dict) -> list:
    """lmms-eval's BLINK visuals, from images converted as a person sees them."""
    return lmms_eval_blink.blink_doc_to_visual(_as_seen(doc))


def blink_doc_to_messages(doc: dict, lmms_eval_specific_kwargs: dict[str, Any] | None = None) -> list:
    """lmms-eval's BLINK chat messages, from images converted as a person sees them."""
    return lmms_eval_blink.blink_doc_to_messages(_as_seen(doc), lmms_eval_specific_kwargs)


# Errors already logged: lmms-eval retries a failed dataset load five times.
_reported: set[str] = set()


def usable_docs(task: str, loaded: Loaded) -> list[dict]:
    """The docs to evaluate: bad records fail the task unless `LMMS_VAR_SKIP_BAD_RECORDS=1`, and a task
    is never silently empty."""
    bad = len(loaded.problems)
    if bad and not skip_bad_records():
        more = f" ({bad} bad records in all)" if bad > 1 else ""
        raise SpatialDataError(
            f"{loaded.problems[0]}{more}; set {ENV_SKIP_BAD_RECORDS}=1 to skip bad records"
        )
    if bad:
        logger.warning(
            f"{task}: skipped {bad} of {loaded.total} records ({ENV_SKIP_BAD_RECORDS}=1); "
            f"first: {loaded.problems[0]}"
        )
    if not loaded.docs:
        raise SpatialDataError(f"{task}: no usable records in {loaded.source}")
    return loaded.docs


def load_task_docs(task: str, read: Callable[[DataRoot], Loaded]) -> datasets.Dataset:
    """The task's docs from the data root. A failure is logged here, once, because lmms-eval replaces
    dataset-loading errors with a `RetryError` that does not show the message."""
    try:
        docs = usable_docs(task, read(data_root_from_env()))
    except SpatialDataError as error:
        message = f"{task}: {error}"
        if message not in _reported:
            _reported.add(message)
            logger.error(message)
        raise SpatialDataError(message) from error
    logger.info(f"{task}: {len(docs)} docs")
    return datasets.Dataset.from_list(docs, features=DOC_FEATURES)


def _blink_docs(sub_task: str) -> Callable[[datasets.Dataset], datasets.Dataset]:
    """The `process_docs` hook of one BLINK sub-task; it ignores the placeholder docs it is given."""
    task = f"spatial_blink_{task_suffix(sub_task)}"

    def process_docs(placeholder: datasets.Dataset) -> datasets.Dataset:
        return load_task_docs(task, lambda root: read_blink(root, sub_task))

    process_docs.__name__ = f"{task}_docs"
    return process_docs


spatial_blink_art_style_docs = _blink_docs("Art_Style")
spatial_blink_counting_docs = _blink_docs("Counting")
spatial_blink_forensic_detection_docs = _blink_docs("Forensic_Detection")
spatial_blink_functional_correspondence_docs = _blink_docs("Functional_Correspondence")
spatial_blink_iq_test_docs = _blink_docs("IQ_Test")
spatial_blink_jigsaw_docs = _blink_docs("Jigsaw")
spatial_blink_multi_view_reasoning_docs = _blink_docs("Multi-view_Reasoning")
spatial_blink_object_localization_docs = _blink_docs("Object_Localization")
spatial_blink_relative_depth_docs = _blink_docs("Relative_Depth")
spatial_blink_relative_reflectance_docs = _blink_docs("Relative_Reflectance")
spatial_blink_semantic_correspondence_docs = _blink_docs("Semantic_Correspondence")
spatial_blink_spatial_relation_docs = _blink_docs("Spatial_Relation")
spatial_blink_visual_correspondence_docs = _blink_docs("Visual_Correspondence")
spatial_blink_visual_similarity_docs = _blink_docs("Visual_Similarity")


def spatial_sat2_docs(placeholder: datasets.Dataset) -> datasets.Dataset:
    """The `process_docs` hook of SAT-2; it ignores the placeholder docs it is given."""
    return load_task_docs("spatial_sat2", read_sat2)
