"""Per-sample VAR diagnostics for lmms-eval runs: which docs, what VAR did, written as JSONL.

lmms-eval's `generate_until` batches requests itself and only hands `model.generate` tensors, so
the (task, doc_id) of each batch row is learnt by watching which docs the upstream loop reads from
`task_dict` (it reads each doc of a batch exactly once, in batch order, just before generating).
"""

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from lmms_eval.utils import sanitize_model_name
from loguru import logger as eval_logger

from lmms_var.patch import VARHandle

DIAGNOSTICS_SUFFIX = "var_diagnostics.jsonl"


def _lmms_eval_option(flags: tuple[str, ...], argv: list[str] | None) -> str | None:
    """The value of one of lmms-eval's options, which it does not pass to models, read from the command line."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument(*flags, dest="value", default=None)
    known, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return known.value


def output_path_from_argv(argv: list[str] | None = None) -> str | None:
    """lmms-eval's `--output_path`."""
    return _lmms_eval_option(("--output_path",), argv)


def lmms_eval_cache_from_argv(argv: list[str] | None = None) -> str | None:
    """lmms-eval's `--use_cache PATH` (`-c PATH`), its response cache."""
    return _lmms_eval_option(("--use_cache", "-c"), argv)


def run_output_folder(pretrained: str, argv: list[str] | None = None) -> Path | None:
    """Where lmms-eval writes this model's results (`<output_path>/<model>`), or None without `--output_path`."""
    output_path = output_path_from_argv(argv)
    if output_path is None:
        return None
    return Path(output_path) / sanitize_model_name(pretrained)


def resolve_diagnostics_path(
    diagnostics_path: str | None, pretrained: str, run_id: str, argv: list[str] | None = None
) -> Path | None:
    """A `.jsonl` file as given, a folder to put one in, or lmms-eval's own output folder for the model."""
    if diagnostics_path is not None:
        path = Path(diagnostics_path)
        return path if path.suffix == ".jsonl" else path / f"{run_id}_{DIAGNOSTICS_SUFFIX}"
    folder = run_output_folder(pretrained, argv)
    return None if folder is None else folder / f"{run_id}_{DIAGNOSTICS_SUFFIX}"


DocKey = tuple[str, str, int]  # (task, split, doc_id), as upstream reads a doc from `task_dict`
DOC_FIELDS = ("task", "split", "doc_id")


def doc_key(task: object, split: object, doc_id: object) -> DocKey:
    return str(task), str(split), int(doc_id)


class RecordedDocs:
    """`task_dict` as upstream reads it, `[task][split][doc_id]`, telling `on_read` about each doc read.

    Reads go through the wrapped object's own `__getitem__`, so an enclosing recorder hears them too.
    """

    def __init__(self, inner, on_read: Callable[[DocKey], None], path: tuple = ()) -> None:
        self._inner, self._on_read, self._path = inner, on_read, path

    def __getitem__(self, key):
        value = self._inner[key]
        if len(self._path) < 2:  # a task or a split: keep recording below it
            return RecordedDocs(value, self._on_read, (*self._path, key))
        self._on_read(doc_key(*self._path, key))
        return value

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def __iter__(self):
        return iter(self._inner)

    def __len__(self) -> int:
        return len(self._inner)

    def __contains__(self, key) -> bool:
        return key in self._inner


@contextmanager
def watching_generate(lm, after_generate: Callable[[list[dict], dict], None]) -> Iterator[None]:
    """Within: after each `lm.model.generate(**inputs)`, `after_generate(docs, inputs)` with the batch
    rows' docs as `{"task", "split", "doc_id"}`. Nests: an outer watcher runs after an inner one."""
    seen: list[DocKey] = []
    task_dict, model = lm.task_dict, lm.model
    generate = model.generate
    own_generate = model.__dict__.get("generate")  # an enclosing watcher's, restored on exit

    def generate_and_watch(*args, **kwargs):
        output = generate(*args, **kwargs)
        docs = [dict(zip(DOC_FIELDS, doc, strict=True)) for doc in seen]
        seen.clear()
        after_generate(docs, kwargs)
        return output

    lm.task_dict = RecordedDocs(task_dict, seen.append)
    model.generate = generate_and_watch
    try:
        yield
    finally:
        lm.task_dict = task_dict
        if own_generate is None:
            del model.generate
        else:
            model.generate = own_generate


class DiagnosticsRecorder:
    """Collects one record per generated sample and writes them, merged across ranks, after each call."""

    def __init__(self, handle: VARHandle, path: Path | None) -> None:
        self.handle = handle
        self.path = path
        self.records: list[dict] = []
        self._unmatched_batches = 0

    def recording(self, lm) -> AbstractContextManager[None]:
        """Within: each `generate` of `lm.model` adds one record per batch row, keyed by its doc."""
        return watching_generate(lm, lambda docs, _inputs: self._add_batch(docs, self.handle.diagnostics()))

    def _add_batch(self, docs: list[dict], samples: list[dict]) -> None:
        if len(docs) != len(samples):
            self._unmatched_batches += 1
            docs = [dict.fromkeys(DOC_FIELDS)] * len(samples)
        self.records.extend({**doc, **sample} for doc, sample in zip(docs, samples, strict=True))

    def flush(self, accelerator) -> None:
        """Gather records from all ranks; rank 0 appends them to the JSONL and logs a summary."""
        records = self.records
        self.records = []
        if accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            records = gather_object(records)
        if not accelerator.is_main_process:
            return
        if self._unmatched_batches:
            eval_logger.warning(
                f"VAR diagnostics: {self._unmatched_batches} batch(es) could not be matched to their docs; "
                "their records have doc_id null"
            )
        records.sort(key=lambda r: (str(r["task"]), r["doc_id"] if r["doc_id"] is not None else -1))
        if self.path is not None and records:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as file:
                file.writelines(json.dumps(record) + "\n" for record in records)
        eval_logger.info(summarise(records, self.path))


def summarise(records: list[dict], path: Path | None) -> str:
    """One log line: how often VAR found visual sinks and acted, and how much attention it moved."""
    where = (
        f"; per-sample records in {path}" if path else "; set diagnostics_path= to keep per-sample records"
    )
    if not records:  # nothing generated (every request answered otherwise): no file to point at
        return "VAR diagnostics: no samples generated, no records written"
    count = len(records)
    layer_slots = sum(len(r["layers"]) for r in records) or 1
    with_visual_sinks = sum(any(r["visual_sinks"]) for r in records)
    acted = sum(r["redistributed_rows"] > 0 for r in records)
    rows = sum(r["redistributed_rows"] for r in records)
    mass = sum(r["moved_mass"] for r in records)
    return (
        f"VAR diagnostics: {count} samples; visual sinks found in {with_visual_sinks}/{count} "
        f"(mean {sum(map(sum, (r['visual_sinks'] for r in records))) / layer_slots:.1f} visual and "
        f"{sum(map(sum, (r['text_sinks'] for r in records))) / layer_slots:.1f} text sinks per layer); "
        f"VAR redistributed attention in {acted}/{count} samples, {rows} (head, row) pairs in all "
        f"({rows / count:.1f} per sample), moving {mass / count:.3f} attention mass per sample{where}"
    )
