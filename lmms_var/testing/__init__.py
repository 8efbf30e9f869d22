"""Offline fixtures: tiny random Qwen2.5-VL checkpoints with planted sinks, synthetic images.

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
