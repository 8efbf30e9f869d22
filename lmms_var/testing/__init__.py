"""Offline fixtures: tiny random checkpoints with planted sinks, synthetic images and data, and
(`constructed`) a tiny Qwen2.5-VL built by hand so that its visual sinks hide the answer, for the demo.

Importable by tests, benchmarks and the demo, so none of them needs the Hugging Face Hub.
"""

from lmms_var.testing.tiny_checkpoint import (
    TINY_TAU,
    TinySpec,
    build_tiny_model,
    build_tiny_processor,
    save_tiny_checkpoint,
)

__all__ = ["TINY_TAU", "TinySpec", "build_tiny_model", "build_tiny_processor", "save_tiny_checkpoint"]
