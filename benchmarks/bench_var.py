"""Cost of VAR (or, with `--method`, ScalingVis, AdaptVis or PAI) side by side with plain attention.

For each variant: wall time of `generate` (prefill + 16 decoded tokens, greedy), of the prefill
alone (`generate` of one token), both timed in one process with the variants interleaved, and
peak extra memory, printed as ratios to plain attention. On a CPU peak extra memory is the peak
RSS above the level after loading the model, read exactly (VmHWM, reset after loading) in a fresh
process per variant, since RSS sampled within one long-lived process is too coarse; on CUDA it is
the allocator's peak above the level before `generate`.

    python benchmarks/bench_var.py                        # CPU: 1 image 896x896 + a short question
    python benchmarks/bench_var.py --preset cpu cpu-dense cpu-3b-width cpu-long-text cpu-8-images cpu-batch
    python benchmarks/bench_var.py --preset cpu-long-text --text-lengths 250 1000 2000 4000
    python benchmarks/bench_var.py --preset gpu-3b        # CUDA: Qwen2.5-VL-3B-shaped model, 4 images
    python benchmarks/bench_var.py --method pai --preset cpu cpu-long-text

Targets (issue 12): fused / plain <= 1.10 in time and in peak extra memory on every CPU preset,
<= 1.05 in time on `cpu` and `cpu-3b-width` (issue 25: `cpu-dense`, every pair selected, <= 1.10);
on `gpu-3b` (issue 2) <= 1.10 in time and <= 1.05 in peak memory. Issue 23: each other method's
attention part <= 1.10 on `cpu` and `cpu-long-text`; AdaptVis's confidence pass and PAI's text-only
stream are their own rows.
Models are random with planted sinks (lmms_var.testing), so VAR has real work. On CUDA fused VAR
runs the Triton row kernels; "fused VAR, PyTorch path" times the same without them.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import NamedTuple

import torch

from lmms_var import AdaptVisConfig, PAIConfig, ScalingVisConfig, VARConfig, enable_intervention
from lmms_var.sink_dims.calibration import CalibrationPrompt, encode_prompt
from lmms_var.testing import TinySpec, build_tiny_model
from lmms_var.testing.images import random_images

QUESTION = "Which point is closer to the camera? (A) the red point (B) the blue point"
NEW_TOKENS = 16
METHOD_NAMES = {"var": "VAR", "scalingvis": "ScalingVis", "adaptvis": "AdaptVis", "pai": "PAI"}
METHODS = tuple(METHOD_NAMES)
# The configs other methods are timed with: the authors' example settings.
SCALINGVIS = ScalingVisConfig(alpha=1.5)
ADAPTVIS = AdaptVisConfig(alpha_low=0.5, alpha_high=1.5, threshold=0.4)
PAI = PAIConfig(alpha=0.2, gamma=1.1)


class Variant(NamedTuple):
    """One timed variant: the intervention's config and `enable_intervention`'s keyword arguments."""

    config: object
    options: dict


def main_variant(method: str) -> str:
    """The variant whose time is the method's cost (the summary table's column)."""
    return {"var": "fused VAR", "scalingvis": "ScalingVis", "adaptvis": "AdaptVis, attention only"}.get(
        method, "PAI, attention only (gamma=1)"
    )


def diagnostics_variant(method: str) -> str:
    """The variant whose report says what the method did."""
    return main_variant(method) + " + diagnostics"


@dataclass(frozen=True)
class Prompt:
    """One prompt of a batch: its images, then `text_tokens` of filler text (if any) and the question."""

    images: int
    text_tokens: int = 0


@dataclass(frozen=True)
class Preset:
    spec: TinySpec
    prompts: tuple[Prompt, ...]
    image_side: int
    device: str
    dtype: torch.dtype
    tau: float
    repeats: int
    eager: bool = False  # also time eager VAR (full attention: too big for long prompts)
    # VARConfig's head selection; rho=1, summ=0 select every allowed (head, row) pair: VAR's worst case.
    rho: float = VARConfig.rho
    summ: float = VARConfig.summ

    def var_config(self) -> VARConfig:
        return VARConfig(self.spec.sink_dims, tau=self.tau, rho=self.rho, summ=self.summ)


CPU_SPEC = TinySpec(
    hidden_size=512,
    num_layers=6,
    num_heads=8,
    num_kv_heads=2,
    intermediate_size=1376,
    sink_dims=(45, 301),
    max_pixels=896 * 896,
)
# Qwen2.5-VL-3B's text decoder width and attention (16 heads, 2 key/value heads, head dim 128).
QWEN_3B_TEXT = {"hidden_size": 2048, "num_heads": 16, "num_kv_heads": 2, "intermediate_size": 11008}
PRESETS = {
    "cpu": Preset(CPU_SPEC, (Prompt(1),), 896, "cpu", torch.float32, tau=8.0, repeats=5, eager=True),
    # ~3.6k text tokens after the image, every allowed (head, row) pair redistributed.
    "cpu-dense": Preset(
        CPU_SPEC, (Prompt(1, text_tokens=3600),), 896, "cpu", torch.float32, 8.0, 3, rho=1.0, summ=0.0
    ),
    "cpu-3b-width": Preset(
        replace(CPU_SPEC, **QWEN_3B_TEXT, sink_dims=(318, 1874)),
        (Prompt(1),),
        896,
        "cpu",
        torch.float32,
        20.0,
        3,
    ),
    "cpu-long-text": Preset(CPU_SPEC, (Prompt(1, text_tokens=4000),), 448, "cpu", torch.float32, 8.0, 3),
    "cpu-8-images": Preset(CPU_SPEC, (Prompt(8),), 896, "cpu", torch.float32, tau=8.0, repeats=3),
    "cpu-batch": Preset(CPU_SPEC, (Prompt(4), Prompt(1)), 896, "cpu", torch.float32, tau=8.0, repeats=3),
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
        (Prompt(4),),
        image_side=672,
        device="cuda",
        dtype=torch.bfloat16,
        tau=20.0,
        repeats=7,
        eager=True,
    ),
}
# The 3B-shaped model on one image and ~4k tokens of text after it.
PRESETS["gpu-long-text"] = replace(
    PRESETS["gpu-3b"], prompts=(Prompt(1, text_tokens=4000),), repeats=5, eager=False
)


def variants_of(preset: Preset, compiled: bool, method: str = "var") -> dict[str, Variant | None]:
    """name -> what the variant enables (None: plain)."""
    main, diagnostics = main_variant(method), diagnostics_variant(method)
    if method != "var":
        attention_only = {"scalingvis": SCALINGVIS, "adaptvis": SCALINGVIS, "pai": replace(PAI, gamma=1.0)}
        variants = {
            "plain": None,
            main: Variant(attention_only[method], {}),
            diagnostics: Variant(attention_only[method], {"diagnostics": True}),
        }
        if method == "adaptvis":  # the whole method: the plain confidence pass, then the generation
            variants["AdaptVis, with its confidence pass"] = Variant(ADAPTVIS, {})
        if method == "pai":  # the whole method: the text-only stream's refine at every step
            variants["PAI, with its refine (gamma=1.1)"] = Variant(PAI, {})
        return variants
    config = preset.var_config()
    variants = {
        "plain": None,
        main: Variant(config, {"fused": True}),
        diagnostics: Variant(config, {"fused": True, "diagnostics": True}),
    }
    if preset.eager:
        variants["eager VAR"] = Variant(config, {"fused": False})
    if preset.device == "cuda":  # the fused path runs Triton kernels there unless told not to
        variants["fused VAR, PyTorch path"] = Variant(config, {"fused": True, "use_triton": False})
    if compiled:
        variants["fused VAR, compiled"] = Variant(
            config, {"fused": True, "compile": True, "use_triton": False}
        )
    return variants


def filler_text(processor, tokens: int) -> str:
    """About `tokens` tokens of text (a real question repeated), to put long text after the images."""
    sentence = QUESTION + ". "
    per_sentence = len(processor.tokenizer(sentence)["input_ids"])
    ids = processor.tokenizer(sentence * (tokens // per_sentence + 1))["input_ids"][:tokens]
    return processor.tokenizer.decode(ids) + "\n"


def prompt_inputs(processor, preset: Preset) -> dict:
    """The preset's batch, left-padded as lmms-eval batches prompts, on the preset's device."""
    encoded = []
    for index, prompt in enumerate(preset.prompts):
        side = (preset.image_side, preset.image_side)
        images = random_images(prompt.images, seed=7 + index, size=side)
        text = filler_text(processor, prompt.text_tokens) if prompt.text_tokens else ""
        encoded.append(encode_prompt(processor, CalibrationPrompt(tuple(images), text + QUESTION)))
    padded = processor.tokenizer.pad(
        [{"input_ids": one["input_ids"][0], "attention_mask": one["attention_mask"][0]} for one in encoded],
        return_tensors="pt",
    )
    inputs = dict(padded) | {
        "pixel_values": torch.cat([one["pixel_values"] for one in encoded]),
        "image_grid_thw": torch.cat([one["image_grid_thw"] for one in encoded]),
    }
    return {name: value.to(preset.device) for name, value in inputs.items()}


def load(preset: Preset) -> tuple[torch.nn.Module, object]:
    """(model, processor) of the preset; `prompt_inputs` makes its batch."""
    torch.manual_seed(0)
    model, processor = build_tiny_model(preset.spec, device=preset.device)
    return model.to(preset.dtype), processor


def load_runner(preset: Preset) -> "Runner":
    """A `Runner` of the preset's model on the preset's batch."""
    model, processor = load(preset)
    return Runner(model, processor, prompt_inputs(processor, preset), preset.device)


class Run(NamedTuple):
    wall: float  # seconds
    cpu: float  # CPU seconds of this process (with one thread, what a busy machine disturbs least)
    cuda_peak: int  # bytes allocated above the start (0 on a CPU)
    report: dict  # sample 0's diagnostics, with diagnostics on


class Runner:
    """Runs `generate` on one model and batch with an intervention as a variant asks, timing it."""

    def __init__(self, model, processor, inputs: dict, device: str) -> None:
        self.model, self.processor, self.inputs, self.device = model, processor, inputs, device
        # In real use the kernels' first-use check runs once per model; carrying its verdict from
        # one enable_var to the next keeps it out of every timed generate.
        self.kernel_verdicts: dict = {}

    def __call__(self, variant: Variant | None, new_tokens: int = NEW_TOKENS) -> "Run":
        handle = None
        if variant is not None:
            tokenizer = self.processor.tokenizer
            handle = enable_intervention(self.model, variant.config, tokenizer=tokenizer, **variant.options)
        if handle:
            handle.state.caches.kernels_agree.update(self.kernel_verdicts)
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start_bytes = torch.cuda.memory_allocated()
        start, cpu_start = time.perf_counter(), time.process_time()
        with torch.no_grad():
            self.model.generate(
                **self.inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
            )
        peak = 0
        if self.device == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - start_bytes
        run = Run(time.perf_counter() - start, time.process_time() - cpu_start, peak, {})
        if handle and handle.state.settings.collect_diagnostics:
            run = run._replace(report=handle.diagnostics()[0])
        if handle:
            self.kernel_verdicts.update(handle.state.caches.kernels_agree)
            handle.remove()
        return run


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.MULTILINE).group(1))


def measure_memory_here(preset: Preset, variant: Variant | None) -> int:
    """Peak RSS bytes above the level after loading, over one `generate` (run in a fresh process)."""
    runner = load_runner(preset)
    loaded = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets the peak RSS (VmHWM) to the current RSS
    runner(variant)
    return (_status_kib("VmHWM") - loaded) * 1024


def measure_memory_in_fresh_process(preset_name: str, variant: str, method: str) -> int:
    command = [sys.executable, __file__, "--preset", preset_name, "--method", method, "--memory-of", variant]
    command += ["--threads", str(torch.get_num_threads())]
    # glibc then returns every block over 64 KiB to the system when freed (its default threshold
    # grows with use, and freed tensors linger in RSS): RSS follows live memory within ~1 MiB.
    environment = os.environ | {"MALLOC_MMAP_THRESHOLD_": "65536"}
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=environment)
    if result.returncode != 0:
        raise RuntimeError(f"the memory run of {variant!r} failed:\n{result.stderr[-3000:]}")
    return int(result.stdout.strip().splitlines()[-1])


@dataclass
class Timings:
    generate: dict[str, list[Run]]
    prefill: dict[str, list[Run]]  # generate of one token
    report: dict


def time_variants(runner: Runner, variants: dict, repeats: int, method: str = "var") -> Timings:
    warm_up = {name: runner(options) for name, options in variants.items()}  # (and compilation)
    diagnostics = diagnostics_variant(method)
    report = warm_up[diagnostics].report if diagnostics in warm_up else {}
    timings = Timings({name: [] for name in variants}, {name: [] for name in variants}, report)
    for _ in range(repeats):
        for name, options in variants.items():
            timings.generate[name].append(runner(options))
            timings.prefill[name].append(runner(options, new_tokens=1))
    return timings


def ratio(values: dict[str, float], name: str) -> float:
    return values[name] / max(values["plain"], 1e-9)


@dataclass
class Summary:
    """Per variant: median and best (least disturbed) times, and each repeat's own wall-time ratio to plain."""

    wall_median: dict[str, float]
    wall_best: dict[str, float]
    cpu_median: dict[str, float]
    prefill_cpu_median: dict[str, float]
    paired: dict[str, list[float]]

    @classmethod
    def of(cls, timings: Timings) -> "Summary":
        def each(runs: dict[str, list[Run]], field: str, pick) -> dict[str, float]:
            return {
                variant: pick([getattr(run, field) for run in values]) for variant, values in runs.items()
            }

        generate = timings.generate
        # Each repeat runs every variant back to back, so its own ratio to plain cancels slow drifts
        # of the machine; their range shows how far one measurement can be trusted.
        paired = {
            variant: [run.wall / plain.wall for run, plain in zip(runs, generate["plain"], strict=True)]
            for variant, runs in generate.items()
        }
        return cls(
            each(generate, "wall", statistics.median),
            each(generate, "wall", min),
            each(generate, "cpu", statistics.median),
            each(timings.prefill, "cpu", statistics.median),
            paired,
        )

    def row(self, variant: str) -> str:
        """Table cells: wall time, its ratios and range, CPU time ratios of generate and of the prefill."""
        paired = self.paired[variant]
        return (
            f"{self.wall_median[variant]:.3f} | {ratio(self.wall_median, variant):.3f} | "
            f"{ratio(self.wall_best, variant):.3f} | {min(paired):.3f} to {max(paired):.3f} | "
            f"{ratio(self.cpu_median, variant):.3f} | {ratio(self.prefill_cpu_median, variant):.3f}"
        )


TIME_COLUMNS = (
    "wall time (s), median | wall median / plain | wall best / best | per-repeat wall ratio, min to max "
    "| CPU time / plain, median | prefill alone, CPU time / plain"
)


def bench_preset(name: str, preset: Preset, args) -> dict:
    runner = load_runner(preset)
    variants = variants_of(preset, args.compiled, args.method)
    repeats = args.repeats or preset.repeats
    timings = time_variants(runner, variants, repeats, args.method)
    if preset.device == "cuda":
        extra = {variant: max(run.cuda_peak for run in runs) for variant, runs in timings.generate.items()}
    else:
        extra = {variant: measure_memory_in_fresh_process(name, variant, args.method) for variant in variants}
    summary = Summary.of(timings)
    tokens = runner.inputs["input_ids"].shape[1]
    device = (
        torch.cuda.get_device_name() if preset.device == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    )
    images = "+".join(str(prompt.images) for prompt in preset.prompts)
    print(
        f"\npreset {name}: {len(preset.prompts)} prompt(s) of {images} image(s), {tokens} tokens (padded), "
        f"+{NEW_TOKENS} tokens, {device}, {repeats} repeats"
    )
    report = timings.report
    sinks = ""
    if "visual_sinks" in report:
        sinks = f"{report['visual_sinks']} visual and {report['text_sinks']} text sinks per layer, "
    verb = "redistributed" if args.method == "var" else "changed"
    print(
        f"{METHOD_NAMES[args.method]} acted (sample 0): {sinks}{report['redistributed_rows']} (head, row) pairs {verb}"
    )
    print(f"| variant | {TIME_COLUMNS} | peak extra memory (MiB) | extra / plain |")
    print("|---|---|---|---|---|---|---|---|---|")
    for variant in variants:
        print(
            f"| {variant} | {summary.row(variant)} | {extra[variant] / 2**20:.1f} | {ratio(extra, variant):.3f} |"
        )
    if args.profile:  # the same model and batch, profiled
        main = main_variant(args.method)
        profile(runner, {variant: variants[variant] for variant in ("plain", main)}, preset.device)
    return {"preset": name, "tokens": tokens, "device": device, "summary": summary, "peak_extra_bytes": extra}


def sweep_text_lengths(name: str, preset: Preset, lengths: list[int], repeats: int) -> list[dict]:
    """Fused VAR / plain time as the text after the images grows (time only: one process)."""
    variants = {
        label: variant
        for label, variant in variants_of(preset, False).items()
        if label in ("plain", "fused VAR")
    }
    print(f"\npreset {name}, text after the images growing (time only):")
    print(f"| text tokens after the image | prompt tokens | fused VAR: {TIME_COLUMNS} |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    model, processor = load(preset)  # one model: only the prompt changes
    for length in lengths:
        sized = replace(
            preset, prompts=tuple(replace(prompt, text_tokens=length) for prompt in preset.prompts)
        )
        inputs = prompt_inputs(processor, sized)
        summary = Summary.of(time_variants(Runner(model, processor, inputs, sized.device), variants, repeats))
        tokens = inputs["input_ids"].shape[1]
        print(f"| {length} | {tokens} | {summary.row('fused VAR')} |")
        rows.append({"text_tokens": length, "tokens": tokens, "summary": summary})
    return rows


def profile(runner: Runner, variants: dict, device: str) -> None:
    """One profiled `generate` per variant: host and device time, and the ops that cost the host most."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    for name, options in variants.items():
        with torch.profiler.profile(activities=activities) as profiler:
            elapsed = runner(options)[0]
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
    parser.add_argument("--preset", nargs="+", choices=sorted(PRESETS), default=["cpu"])
    parser.add_argument(
        "--method", choices=METHODS, default="var", help="the intervention timed (default: var)"
    )
    parser.add_argument("--repeats", type=int, help="timed generate calls per variant (default: per preset)")
    parser.add_argument("--json", help="also write the measurements to this file")
    parser.add_argument("--compiled", action="store_true", help="also time fused VAR with compile=True")
    parser.add_argument(
        "--profile", action="store_true", help="then profile plain and fused VAR: where the extra time goes"
    )
    parser.add_argument(
        "--text-lengths", type=int, nargs="+", help="instead: time ratio per length of text after the images"
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (default: its own choice); 1 is steadier on a busy machine",
    )
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)  # a variant's fresh memory-measuring process
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    presets = {name: PRESETS[name] for name in args.preset}
    if args.memory_of is not None:  # a child of measure_memory_in_fresh_process
        (preset,) = presets.values()
        print(measure_memory_here(preset, variants_of(preset, True, args.method)[args.memory_of]))
        return
    if args.text_lengths:
        results = [
            {
                "preset": name,
                "sweep": sweep_text_lengths(name, preset, args.text_lengths, args.repeats or preset.repeats),
            }
            for name, preset in presets.items()
        ]
    else:
        results = [bench_preset(name, preset, args) for name, preset in presets.items()]
        if len(results) > 1:
            main = main_variant(args.method)
            print(f"\n| preset | tokens | {main}: {TIME_COLUMNS} | peak extra memory / plain |")
            print("|---|---|---|---|---|---|---|---|---|")
            for result in results:
                memory = ratio(result["peak_extra_bytes"], main)
                print(
                    f"| {result['preset']} | {result['tokens']} | {result['summary'].row(main)} | {memory:.3f} |"
                )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2, default=asdict)  # a Summary as its fields


if __name__ == "__main__":
    main()
