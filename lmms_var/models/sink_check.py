"""Warn, once per model, when VAR finds no visual sink in its first batch: then it changes nothing.

Sink dims that never fire on a model, or a tau above what its hidden states reach, make a VAR run
the plain model's run, scored as if VAR had been tried. After the first `generate` whose prompts
hold an image, the check reads how many visual sinks VAR found (one read of tensors VAR keeps, once
per run) and, if none in any layer, logs one warning saying what to try.
"""

from loguru import logger as eval_logger

from lmms_var.models.lmms_eval_loop import Watcher
from lmms_var.patch import VARHandle


class FirstBatchSinkCheck(Watcher):
    """Watches the batches until one with visual tokens has been checked, then nothing more."""

    def __init__(self, handle: VARHandle, model_id: str, pretrained: str) -> None:
        self.handle, self.model_id, self.pretrained = handle, model_id, pretrained
        self.pending = True

    def after_batch(self, docs: list[dict], inputs: dict) -> None:
        self.check_last_prefill()

    def check_last_prefill(self) -> None:
        """Warn if the last prefill held images and VAR found no visual sink in any layer; the first
        prefill with images is the only one checked (a batch without images waits for the next)."""
        if not self.pending:
            return
        prompts = self.handle.prefill_sinks()
        if not any(prompt.visual_tokens for prompt in prompts):
            return
        self.pending = False
        if any(prompt.visual_sinks for prompt in prompts):
            return
        config = self.handle.config
        eval_logger.warning(
            f"{self.model_id}: VAR found no visual sink in any layer of the first batch "
            f"(sink_dims={list(config.sink_dims)}, tau={config.tau:g}; {len(prompts)} prompt(s), "
            f"{sum(prompt.visual_tokens for prompt in prompts)} visual tokens): VAR changes nothing. "
            "Try a lower tau, sink_dims=auto, or measure this model's sink dims with "
            f"`lmms-var find-sink-dims --model {self.pretrained} --output dims.json` and check them with "
            f"`lmms-var validate-sink-dims --model {self.pretrained} --dims ... --output check.json`"
        )
