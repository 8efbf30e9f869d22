"""Pure-tensor VAR algorithm (VAR_SPEC.md steps 1, 3 and 4): no model, no globals, no I/O."""

from lmms_var.core.redistribution import (
    BUDGET,
    RECEIVERS,
    STATISTICS,
    ImagePlan,
    KeyPlan,
    attention_change,
    plan_image,
    plan_keys,
    plan_layer,
    redistribute_attention,
    redistribute_with_selection,
    row_statistics,
    select_heads,
    selected_rows,
)
from lmms_var.core.sinks import find_sink_tokens, rms_normalized

__all__ = [
    "BUDGET",
    "RECEIVERS",
    "STATISTICS",
    "ImagePlan",
    "KeyPlan",
    "attention_change",
    "find_sink_tokens",
    "plan_image",
    "plan_keys",
    "plan_layer",
    "redistribute_attention",
    "redistribute_with_selection",
    "rms_normalized",
    "row_statistics",
    "select_heads",
    "selected_rows",
]
