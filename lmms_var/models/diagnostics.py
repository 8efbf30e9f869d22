"""Per-sample diagnostics for lmms-eval runs: which docs, what the intervention did, written as JSONL.

A `Watcher` of upstream's loop (`lmms_eval_loop`): after each batch it reads what the intervention (VAR,
ScalingVis, AdaptVis, PAI) did to each row, keyed by the row's doc and naming the `method`, and after
each `generate_until` call writes the records, merged across ranks. (The file keeps VAR's name,
`*_var_diagnostics.jsonl`, for every method.)
"""

import json
from pathlib import Path

from lmms_eval.api.instance import Instance
from loguru import logger as eval_logger

from lmms_var.models.lmms_eval_loop import DOC_FIELDS, Watcher, run_output_folder
from lmms_var.patch import InterventionHandle

DIAGNOSTICS_SUFFIX = "var_diagnostics.jsonl"


def resolve_diagnostics_path(
    diagnostics_path: str | None, pretrained: str, run_id: str, argv: list[str] | None = None
) -> Path | None:
    """A `.jsonl` file as given, a folder to put one in, or lmms-eval's own output folder for the model."""
    if diagnostics_path is not None:
        path = Path(diagnostics_path)
        return path if path.suffix == ".jsonl" else path / f"{run_id}_{DIAGNOSTICS_SUFFIX}"
    folder = run_output_folder(pretrained, argv)
    return None if folder is None else folder / f"{run_id}_{DIAGNOSTICS_SUFFIX}"


class DiagnosticsRecorder(Watcher):
    """Collects one record per generated sample and writes them, merged across ranks, after each call;
    `method` is the model arg's value, which each record holds."""

    def __init__(self, handle: InterventionHandle, method: str, path: Path | None, accelerator) -> None:
        self.handle, self.method = handle, method
        self.path = path
        self.accelerator = accelerator
        self.records: list[dict] = []
        self._unmatched_batches = 0

    def needs(self, request: Instance) -> str | None:
        return "diagnostics"  # every doc's record

    def after_batch(self, docs: list[dict], inputs: dict) -> None:
        """One record per batch row, keyed by its doc."""
        samples = self.handle.diagnostics()
        if len(docs) != len(samples):
            self._unmatched_batches += 1
            docs = [dict.fromkeys(DOC_FIELDS)] * len(samples)
        self.records.extend(
            {**doc, "method": self.method, **sample} for doc, sample in zip(docs, samples, strict=True)
        )

    def after_call(self) -> None:
        """Gather records from all ranks; rank 0 appends them to the JSONL and logs a summary."""
        accelerator = self.accelerator
        records = self.records
        self.records = []
        if accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            records = gather_object(records)
        if not accelerator.is_main_process:
            return
        if self._unmatched_batches:
            eval_logger.warning(
                f"{self.handle.intervention.name} diagnostics: {self._unmatched_batches} batch(es) could not be matched to their docs; "
                "their records have doc_id null"
            )
        records.sort(key=lambda r: (str(r["task"]), r["doc_id"] if r["doc_id"] is not None else -1))
        if self.path is not None and records:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as file:
                file.writelines(json.dumps(record) + "\n" for record in records)
        eval_logger.info(summarise(records, self.path, self.handle.intervention.name))


def summarise(records: list[dict], path: Path | None, name: str = "VAR") -> str:
    """One log line: how often the intervention `name` acted and how much attention it moved; for VAR
    also how often it found visual sinks."""
    where = (
        f"; per-sample records in {path}" if path else "; set diagnostics_path= to keep per-sample records"
    )
    if not records:  # nothing generated (every request answered otherwise): no file to point at
        return f"{name} diagnostics: no samples generated, no records written"
    count = len(records)
    acted = sum(r["redistributed_rows"] > 0 for r in records)
    rows = sum(r["redistributed_rows"] for r in records)
    mass = sum(r["moved_mass"] for r in records)
    sinks = ""
    if "visual_sinks" in records[0]:
        layer_slots = sum(len(r["layers"]) for r in records) or 1
        with_visual_sinks = sum(any(r["visual_sinks"]) for r in records)
        sinks = (
            f" visual sinks found in {with_visual_sinks}/{count} "
            f"(mean {sum(map(sum, (r['visual_sinks'] for r in records))) / layer_slots:.1f} visual and "
            f"{sum(map(sum, (r['text_sinks'] for r in records))) / layer_slots:.1f} text sinks per layer);"
        )
    verb = "redistributed" if name == "VAR" else "changed"
    return (
        f"{name} diagnostics: {count} samples;{sinks} {name} {verb} attention in {acted}/{count} samples, "
        f"{rows} (head, row) pairs in all ({rows / count:.1f} per sample), moving {mass / count:.3f} "
        f"attention mass per sample{where}"
    )
