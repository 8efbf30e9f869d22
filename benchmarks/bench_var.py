"""Cost of VAR side by side: plain attention, fused VAR and eager VAR on the same prompt.

For each variant: wall time of `generate` (prefill + 16 decoded tokens, greedy), of the prefill
alone (`generate` of one token), and peak memory, measured in one process with the variants
interleaved, printed as ratios to plain attention.

    python benchmarks/bench_var.py                  # CPU: 6-layer 512-wide model, 1 image, ~1,100 tokens
    python benchmarks/bench_var.py --preset gpu-3b  # CUDA: Qwen2.5-VL-3B-shaped random model, 4 images

Targets (issue 2): fused / plain <= 1.15 on the CPU preset; <= 1.10 time and <= 1.05 peak memory
on the GPU preset. Models are random with planted sinks (lmms_var.testing), so VAR has real work.
On CUDA fused VAR runs the Triton row kernels; "fused VAR, PyTorch path" times the same without them.
"""

import argparse
import json
import statistics
import threading
import time
from dataclasses import dataclass

import torch

from lmms_var import VARConfig, enable_var
from lmms_var.sink_dims.calibration import CalibrationPrompt, encode_prompt
from lmms_var.testing import TinySpec, build_tiny_model
from lmms_var.testing.images import random_images


@dataclass(frozen=True)
class Preset:
    spec: TinySpec
    images: int
    image_side: int
    device: str
    dtype: torch.dtype
    tau: float
    repeats: int


PRESETS = {
    "cpu": Preset(
        TinySpec(
            hidden_size=512,
            num_layers=6,
            num_heads=8,
            num_kv_heads=2,
            intermediate_size=1376,
            sink_dims=(45, 301),
            max_pixels=896 * 896,
        ),
        images=1,
        image_side=896,
        device="cpu",
        dtype=torch.float32,
        tau=8.0,
        repeats=5,
    ),
    "gpu-3b": Preset(
        TinySpec(
            hidden_size=2048,
            num_layers=36,
            num_heads=16,
            num_kv_heads=2,
            intermediate_size=11008,
            vision_hidden_size=1280,
            vision_depth=32,
            vision_heads=16,
            sink_dims=(318, 1874),
            sink_value=1000.0,  # keeps sinks massive through 36 random layers, as in real checkpoints
            max_pixels=672 * 672,
        ),
        images=4,
        image_side=672,
        device="cuda",
        dtype=torch.bfloat16,
        tau=20.0,
        repeats=7,
    ),
}
NEW_TOKENS = 16


class PeakMemory:
    """Peak memory above the level at entry: the CUDA allocator's counter, or sampled RSS on a CPU."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * 4096

    def __enter__(self) -> "PeakMemory":
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.start = self._rss()
            self._running = True
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def _sample(self) -> None:
        while self._running:
            self.peak = max(self.peak, self._rss() - self.start)
            time.sleep(0.002)

    def __exit__(self, *exc_info) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start
        else:
            self._running = False
            self._sampler.join()
        self.total = self.start + self.peak


def prompt(processor, preset: Preset, device: str) -> dict:
    images = random_images(preset.images, seed=7, size=(preset.image_side, preset.image_side))
    question = "Which point is closer to the camera? (A) the red point (B) the blue point"
    inputs = encode_prompt(processor, CalibrationPrompt(tuple(images), question))
    return {name: value.to(device) for name, value in inputs.items()}


def profile(run, variants: dict, device: str) -> None:
    """One profiled `generate` per variant: host and device time, and the ops that cost the host most."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    for name, options in variants.items():
        with torch.profiler.profile(activities=activities) as profiler:
            elapsed = run(options)[0]
        events = profiler.key_averages()
        device_time = sum(event.self_device_time_total for event in events) / 1e6
        print(
            f"\n### profile: {name}: {elapsed:.3f} s wall (profiled), {device_time:.3f} s busy on the device"
        )
        print(events.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=50))
        if device == "cuda":
            print(events.table(sort_by="self_device_time_total", row_limit=8, max_name_column_width=50))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--repeats", type=int, help="timed generate calls per variant (default: per preset)")
    parser.add_argument("--json", help="also write the measurements to this file")
    parser.add_argument("--compiled", action="store_true", help="also time fused VAR with compile=True")
    parser.add_argument(
        "--profile", action="store_true", help="then profile plain and fused VAR: where the extra time goes"
    )
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    repeats = args.repeats or preset.repeats
    torch.manual_seed(0)
    model, processor = build_tiny_model(preset.spec, device=preset.device)
    model = model.to(preset.dtype)
    inputs = prompt(processor, preset, preset.device)
    config = VARConfig(preset.spec.sink_dims, tau=preset.tau)
    # name -> enable_var keyword arguments (None: VAR off)
    variants = {
        "plain": None,
        "fused VAR": {"fused": True},
        "fused VAR + diagnostics": {"fused": True, "diagnostics": True},
        "eager VAR": {"fused": False},
    }
    if preset.device == "cuda":  # the fused path runs Triton kernels there unless told not to
        variants["fused VAR, PyTorch path"] = {"fused": True, "use_triton": False}
    if args.compiled:
        variants["fused VAR, compiled"] = {"fused": True, "compile": True, "use_triton": False}

    # In real use the kernels' first-use check runs once per model; carrying its verdict from one
    # enable_var to the next keeps it out of every timed generate.
    kernel_verdicts: dict = {}

    def run(options: dict | None, new_tokens: int = NEW_TOKENS) -> tuple[float, PeakMemory, dict]:
        handle = enable_var(model, config, **options) if options is not None else None
        if handle:
            handle.state.kernels_agree.update(kernel_verdicts)
        with PeakMemory(preset.device) as memory:
            start = time.perf_counter()
            with torch.no_grad():
                model.generate(
                    **inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
                )
            if preset.device == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
        report = handle.diagnostics()[0] if handle and handle.state.collect_diagnostics else {}
        if handle:
            kernel_verdicts.update(handle.state.kernels_agree)
            handle.remove()
        return elapsed, memory, report

    for options in variants.values():  # warm-up (and compilation)
        run(options)
    fused_report = run(variants["fused VAR + diagnostics"])[2]
    times = {name: [] for name in variants}
    prefill_times = {name: [] for name in variants}  # generate of one token: the prefill alone
    memory = {name: [] for name in variants}
    for _ in range(repeats):
        for name, options in variants.items():
            elapsed, peak, _ = run(options)
            times[name].append(elapsed)
            memory[name].append(peak)
            prefill_times[name].append(run(options, new_tokens=1)[0])
    median = {name: statistics.median(values) for name, values in times.items()}
    prefill = {name: statistics.median(values) for name, values in prefill_times.items()}
    extra = {name: max(m.peak for m in values) for name, values in memory.items()}
    total = {name: max(m.total for m in values) for name, values in memory.items()}
    tokens = inputs["input_ids"].shape[1]
    device = (
        torch.cuda.get_device_name() if preset.device == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    )
    print(
        f"preset {args.preset}: {tokens} prompt tokens, {preset.images} image(s), +{NEW_TOKENS} tokens, {device}"
    )
    print(
        f"VAR acted: {fused_report['visual_sinks']} visual and {fused_report['text_sinks']} text sinks per layer, "
        f"{fused_report['redistributed_rows']} (head, row) pairs redistributed"
    )
    # Each repeat runs every variant back to back, so its own ratio to plain cancels slow drifts of
    # the machine; their range shows how far one measurement can be trusted.
    paired = {name: [t / p for t, p in zip(times[name], times["plain"], strict=True)] for name in variants}
    print(
        "| variant | time (s) | time / plain | per-repeat ratio, min to max | prefill alone / plain "
        "| peak extra memory (MiB) | extra / plain | peak total / plain |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in variants:
        print(
            f"| {name} | {median[name]:.3f} | {median[name] / median['plain']:.3f} | "
            f"{min(paired[name]):.3f} to {max(paired[name]):.3f} | "
            f"{prefill[name] / prefill['plain']:.3f} | {extra[name] / 2**20:.1f} | "
            f"{extra[name] / max(extra['plain'], 1):.3f} | {total[name] / total['plain']:.3f} |"
        )
    if args.profile:
        profile(run, {name: variants[name] for name in ("plain", "fused VAR")}, preset.device)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {
                    "preset": args.preset,
                    "tokens": tokens,
                    "device": device,
                    "median_s": median,
                    "per_repeat_ratio": paired,
                    "prefill_median_s": prefill,
                    "peak_extra_bytes": extra,
                    "peak_total_bytes": total,
                },
                out,
                indent=2,
            )


if __name__ == "__main__":
    main()
