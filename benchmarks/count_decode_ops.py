"""PyTorch operations per decode step: plain attention, VAR's PyTorch path, VAR's Triton path.

A decode step on a GPU is bound by host time, which grows with every operation dispatched; this
counts them on any machine, with no GPU. The Triton path is taken on the CPU through Triton's
interpreter, with its kernel launch replaced by a counter (the kernel's own work is not counted).

    TRITON_INTERPRET=1 python benchmarks/count_decode_ops.py
"""

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lmms_var import VARConfig, enable_var
from lmms_var.patch import row_kernels
from lmms_var.sink_dims.calibration import CalibrationPrompt, encode_prompt
from lmms_var.testing import TINY_TAU, TinySpec, build_tiny_model
from lmms_var.testing.images import random_images

DECODE_STEPS = 4
LAYERS = (4, 8)
CONFIG = VARConfig(sink_dims=TinySpec().sink_dims, tau=TINY_TAU)
_launches: list[int] = []  # one entry per stubbed launch of VAR's kernel


class CountCalls(TorchDispatchMode):
    """Counts the aten operations dispatched inside the `with` block."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def per_decode_step(model, inputs: dict, options: dict | None) -> tuple[float, float]:
    """aten calls and VAR kernel launches per decode step (generate of 1 + N tokens minus 1 token)."""
    handle = enable_var(model, CONFIG, **options) if options is not None else None
    if handle:  # the kernels' first-use checks would compare garbage from the stubbed launch
        variants = row_kernels.specializations((TinySpec().shape.head_dim,), (torch.float32,))
        handle.state.caches.kernels_agree.update(
            {(torch.device("cpu"), variant): True for variant in variants}
        )
    calls, launches = [], []
    for tokens in (1, 1 + DECODE_STEPS):
        _launches.clear()
        with torch.no_grad(), CountCalls() as count:
            model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        calls.append(count.calls)
        launches.append(len(_launches))
    if handle:
        handle.remove()
    return (calls[1] - calls[0]) / DECODE_STEPS, (launches[1] - launches[0]) / DECODE_STEPS


def main() -> None:
    if not row_kernels.INTERPRETED:
        raise SystemExit("run with TRITON_INTERPRET=1, so that the Triton path runs on the CPU")
    row_kernels._launch_redistribute_rows = lambda *arguments: _launches.append(1)
    # Two depths: the difference is what each layer VAR acts on costs, the rest is per step.
    models, inputs = {}, {}
    question = CalibrationPrompt(tuple(random_images(1, seed=0)), "Which is closer?")
    for depth in LAYERS:
        models[depth], processor = build_tiny_model(TinySpec(num_layers=depth))
        inputs[depth] = encode_prompt(processor, question)
    active = {depth: len(CONFIG.active_layers(depth)) for depth in LAYERS}
    print(f"tiny models of {' and '.join(map(str, LAYERS))} layers; per decode step:")
    print(
        "| variant | aten calls over plain, per layer VAR acts on | and per step | VAR kernel launches per layer |"
    )
    print("|---|---|---|---|")
    plain = {depth: per_decode_step(models[depth], inputs[depth], None)[0] for depth in LAYERS}
    for name, options in (("fused VAR, PyTorch path", {"use_triton": False}), ("fused VAR, Triton path", {})):
        extra, launches = {}, {}
        for depth in LAYERS:
            calls, launches[depth] = per_decode_step(models[depth], inputs[depth], options)
            extra[depth] = calls - plain[depth]
        shallow, deep = LAYERS
        per_layer = (extra[deep] - extra[shallow]) / (active[deep] - active[shallow])
        per_step = extra[shallow] - per_layer * active[shallow]
        print(f"| {name} | {per_layer:+.1f} | {per_step:+.1f} | {launches[deep] / active[deep]:.0f} |")


if __name__ == "__main__":
    main()
