"""`attention_maps=N`: an attention-map figure (and its JSON) for the first N docs of each task.

After each `generate` of the upstream loop, the docs of the batch are known (a `Watcher`);
for each doc whose id is below N, its prompt is taken out of the batch and run twice more, without
and with VAR, as `lmms-var show` does. With `attention_maps=0` (the default) nothing is attached.
"""

import re
from dataclasses import dataclass
from pathlib import Path

from loguru import logger as eval_logger

from lmms_var.attention_maps import MapSettings, attention_maps, model_note, save_attention_maps
from lmms_var.attention_maps.inputs import split_batch
from lmms_var.model_args import ModelArgError, model_arg
from lmms_var.models.lmms_eval_loop import Watcher, run_output_folder
from lmms_var.patch import InterventionHandle

MAPS_FOLDER_SUFFIX = "attention_maps"


@dataclass(frozen=True)
class AttentionMapOptions:
    """How many docs per task get a figure (0: off), where figures go, and for which checkpoint."""

    per_task: int
    folder: Path | None
    pretrained: str

    def recorder(self, handle: InterventionHandle | None, processor) -> "AttentionMapRecorder | None":
        """The recorder for `handle`'s model, or None when off (then nothing is attached at all)."""
        if not self.per_task:
            return None
        return AttentionMapRecorder(handle, processor, self)


def parse_attention_maps(
    attention_maps: object,
    attention_maps_path: object,
    *,
    var: bool,
    method: str,
    pretrained: str,
    run_id: str,
) -> AttentionMapOptions:
    """Check the two model args, and find the figures' folder, before any weights are loaded. The
    figures draw what VAR changes (`lmms_var.attention_maps`): another method's run is refused.

    The folder is `attention_maps_path`, else `<run_id>_attention_maps` next to lmms-eval's outputs
    for the model (as diagnostics).
    """
    per_task = model_arg("attention_maps").parsed(attention_maps)
    if not per_task:
        if attention_maps_path is not None:
            raise ModelArgError(
                "attention_maps_path is set but attention_maps=0; give attention_maps=N (docs per task)"
            )
        return AttentionMapOptions(0, None, pretrained)
    if not var:
        raise ModelArgError(f"attention_maps draws what method={method} changes; it needs var=true")
    if attention_maps_path is not None:
        return AttentionMapOptions(per_task, Path(str(attention_maps_path)), pretrained)
    folder = run_output_folder(pretrained)
    if folder is None:
        raise ModelArgError(
            "attention_maps needs lmms-eval's --output_path or attention_maps_path= (runs started from "
            "--config must give attention_maps_path=)"
        )
    return AttentionMapOptions(per_task, folder / f"{run_id}_{MAPS_FOLDER_SUFFIX}", pretrained)


def figure_name(task: str, doc_id: int) -> str:
    """`<task>_doc<doc_id>.png`, with anything but letters, digits, `-`, `_` and `.` in the task replaced."""
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', task)}_doc{doc_id}.png"


class AttentionMapRecorder(Watcher):
    """Draws the figure of each doc with `doc_id < per_task`, once per (task, doc), as the run reaches it."""

    def __init__(self, handle: InterventionHandle, processor, options: AttentionMapOptions) -> None:
        self.handle, self.processor, self.options = handle, processor, options
        self.drawn: set[tuple[str, int]] = set()

    def needs(self, request) -> str | None:
        """Generating `request` draws a figure: its doc is among the first N and not drawn yet."""
        doc_id, task, _split = request.args[-3:]
        return "attention_maps" if self._wanted(task, doc_id) else None

    def _wanted(self, task: str, doc_id: int | None) -> bool:
        return doc_id is not None and doc_id < self.options.per_task and (task, doc_id) not in self.drawn

    def after_batch(self, docs: list[dict], inputs: dict) -> None:
        """Draw the figures of the batch's docs that are wanted."""
        wanted = [(row, doc) for row, doc in enumerate(docs) if self._wanted(doc["task"], doc["doc_id"])]
        if not wanted:
            return
        samples = split_batch(self.handle.model, self.processor, inputs)
        if len(samples) != len(docs):
            eval_logger.warning(
                f"attention_maps: a batch of {len(samples)} prompts came with {len(docs)} docs; skipped"
            )
            return
        for row, doc in wanted:
            self.drawn.add((doc["task"], doc["doc_id"]))
            self._draw(samples[row], doc)

    def _draw(self, sample: dict, doc: dict) -> None:
        path = self.options.folder / figure_name(doc["task"], doc["doc_id"])
        try:
            maps = attention_maps(self.handle, self.processor, sample, MapSettings())
            after_visuals = sample["input_ids"][0, maps.panels[-1].panel.tokens[1] :].tolist()
            text = self.processor.tokenizer.decode(after_visuals, skip_special_tokens=True)
            save_attention_maps(
                maps,
                path,
                model=self.options.pretrained,
                question=f"({doc['task']} doc {doc['doc_id']}) {' '.join(text.split())}",
                note=model_note(self.options.pretrained),
            )
        except (ValueError, RuntimeError, OSError) as error:  # a figure must not cost the evaluation
            eval_logger.error(f"attention_maps: no figure for {doc['task']} doc {doc['doc_id']}: {error}")
            return
        eval_logger.info(f"attention_maps: wrote {path}")
