"""Pure-tensor VAR algorithm (VAR_SPEC.md steps 1, 3 and 4): no model, no globals, no I/O."""

from lmms_var.core.redistribution import redistribute_attention, redistribute_with_selection, select_heads
from lmms_var.core.sinks import find_sink_tokens, rms_normalized

__all__ = [
    "find_sink_tokens",
    "redistribute_attention",
    "redistribute_with_selection",
    "rms_normalized",
    "select_heads",
]
