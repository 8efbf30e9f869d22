"""Pure-tensor VAR algorithm (VAR_SPEC.md steps 1, 3 and 4): no model, no globals, no I/O."""

from lmms_var.core.redistribution import (
    RowMasses,
    key_groups,
    receiver_gain,
    redistribute_attention,
    redistribute_with_selection,
    row_masses,
    select_heads,
    selection,
)
from lmms_var.core.sinks import find_sink_tokens, rms_normalized

__all__ = [
    "RowMasses",
    "find_sink_tokens",
    "key_groups",
    "receiver_gain",
    "redistribute_attention",
    "redistribute_with_selection",
    "rms_normalized",
    "row_masses",
    "select_heads",
    "selection",
]
