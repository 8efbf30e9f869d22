"""`lmms-var doctor`'s checks: is this machine ready to run VAR fast and exactly?

Versions and the GPU; whether every Triton kernel specialisation a 3B- and a 7B-shaped model uses
compiles (ahead of time, for this GPU, or for A100 and H100 without one), agrees with the PyTorch
path on the device and launches without synchronising it; whether the base kernel's log-sum-exp
shortcut (`normaliser.py`) is bit-identical to SDPA there; and the cost of VAR on a random
3B-shaped model (`benchmarks/bench_var.py`, where the checkout has it). What a machine cannot check
(no GPU, no Triton) is said, never passed over.
"""

import contextlib
import importlib.metadata
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from lmms_var.core import plan_keys
from lmms_var.patch.explicit import LayerCall, Normaliser
from lmms_var.patch.masks import MaskKind, blocked_keys
from lmms_var.patch.normaliser import LogSumExpCapture
from lmms_var.patch.prefill import correct_in_blocks, relevant_keys
from lmms_var.patch.var import rows_arithmetic

OK, PROBLEM, NOT_CHECKED = "ok", "problem", "not checked"
PACKAGES = ("torch", "triton", "transformers", "lmms_eval", "lmms_var")


class LayerShape(NamedTuple):
    """One attention layer's sizes, and the prompt length a check runs it at."""

    heads: int
    kv_heads: int
    head_dim: int
    prompt: int = 640  # tokens: a quarter of them text rows VAR may change, after visual tokens


# Qwen2.5-VL-3B's and -7B's attention: what VAR's kernels see in practice.
MODEL_SHAPES = {"3B": LayerShape(16, 2, 128), "7B": LayerShape(28, 4, 128)}
BENCH_PRESETS = ("gpu-3b", "gpu-long-text")
BENCH_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_var.py"


@dataclass
class Finding:
    """One check: what, its outcome (OK, PROBLEM or NOT_CHECKED) and the detail."""

    check: str
    status: str
    detail: str = ""


@dataclass
class Report:
    versions: dict[str, str | None]
    device: str
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0

    def verdict(self) -> str:
        problems = [finding.check for finding in self.findings if finding.status == PROBLEM]
        unchecked = [finding.check for finding in self.findings if finding.status == NOT_CHECKED]
        if problems:
            return f"NOT READY: {len(problems)} problem(s): " + "; ".join(problems)
        if unchecked:
            return (
                f"READY as far as checked; {len(unchecked)} check(s) need a GPU or a checkout: "
                + "; ".join(unchecked)
            )
        return "READY: VAR's kernels compile, agree with the PyTorch path and never synchronise here"

    def as_json(self) -> dict:
        return asdict(self) | {"verdict": self.verdict()}


def versions() -> dict[str, str | None]:
    """Installed versions of the packages VAR runs on (None: not installed), and CUDA's."""
    found: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    found["cuda"] = torch.version.cuda
    return found


def _row_kernels():
    """`row_kernels` and `kernel_builds`, or None where Triton is not installed."""
    try:
        from lmms_var.patch import kernel_builds, row_kernels
    except ImportError:
        return None
    return row_kernels, kernel_builds


def model_specializations(row_kernels, dtype: torch.dtype) -> list:
    """Every kernel specialisation a 3B- or 7B-shaped model launches in `dtype` (heads are arguments)."""
    head_dims = tuple(sorted({shape.head_dim for shape in MODEL_SHAPES.values()}))
    return row_kernels.specializations(head_dims, (dtype,))


def check_compilation(report: Report, specializations: list, device: torch.device) -> None:
    """Ahead-of-time compilation for this GPU (or A100 and H100), shared memory against its limit."""
    _, kernel_builds = _row_kernels()
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        gpus = [
            kernel_builds.GPU(
                properties.name,
                properties.major * 10 + properties.minor,
                properties.shared_memory_per_block_optin,
            )
        ]
    else:
        gpus = list(kernel_builds.GPUS)
    builds = kernel_builds.compile_all(specializations, gpus)
    for build in builds:
        problem = build.problem()
        detail = problem or (
            f"{build.shared_memory / 1024:.1f} KiB shared memory, {build.registers} registers, "
            f"{build.spilled} bytes spilled, {build.seconds:.1f} s"
        )
        report.findings.append(
            Finding(f"compiles for {build.gpu}: {build.specialization}", PROBLEM if problem else OK, detail)
        )


def _layer_inputs(shape: LayerShape, dtype, device, decode: bool, seed: int = 0) -> dict:
    """One layer's VAR inputs of a model shape: text rows after an image (or a decode step's row)."""
    heads, kv_heads, head_dim, prompt = shape
    generator = torch.Generator().manual_seed(seed)
    keys, queries = (prompt + 1, 1) if decode else (prompt, prompt)

    def random(*size):
        return torch.randn(*size, generator=generator).to(device, dtype)

    text_rows = prompt // 4
    image = torch.zeros(1, prompt, dtype=torch.bool)
    image[:, 2 : prompt - text_rows] = True
    sinks = torch.zeros_like(image)
    sinks[:, [0, 3, prompt // 2, prompt - 2]] = True  # a text sink, visual sinks, a text sink
    rows = torch.zeros(1, 1, dtype=torch.long) if decode else torch.arange(prompt - text_rows, prompt)[None]
    return {
        "output": random(1, queries, heads, head_dim),
        "query": random(1, queries, heads, head_dim).transpose(1, 2) * 2,
        "key": random(1, kv_heads, keys, head_dim),
        "value": random(1, kv_heads, keys, head_dim),
        # rho=1, summ=0: every head selects every row, so every row's correction is checked.
        "plan": plan_keys(image.to(device), sinks.to(device), p=0.6, rho=1.0, summ=0.0),
        "rows": rows.to(device),
        "row_valid": torch.ones(rows.shape, dtype=torch.bool, device=device),
        "scaling": head_dim**-0.5,
    }


def _mask(kind: MaskKind, inputs: dict) -> torch.Tensor | None:
    """The base kernel's mask of a kind (every key visible but causality)."""
    query_length, key_length = inputs["query"].shape[2], inputs["key"].shape[2]
    device, dtype = inputs["query"].device, inputs["query"].dtype
    if kind == MaskKind.CAUSAL_ONLY:
        return None
    if kind == MaskKind.PADDING:
        return torch.ones(1, key_length, dtype=torch.long, device=device)
    causal = torch.ones(query_length, key_length, dtype=torch.bool, device=device).tril(
        key_length - query_length
    )
    if kind == MaskKind.BOOL:
        return causal[None, None]
    return torch.zeros(1, 1, query_length, key_length, dtype=dtype, device=device).masked_fill(
        ~causal, torch.finfo(dtype).min
    )


def _log_sum_exp(inputs: dict, mask: torch.Tensor | None) -> torch.Tensor:
    """Float32[1, H, Q]: every row's log-sum-exp over the keys it sees, as SDPA's fused kernels give it."""
    group = inputs["query"].shape[1] // inputs["key"].shape[1]
    key = inputs["key"].float().repeat_interleave(group, 1)
    scores = inputs["query"].float() @ key.mT * inputs["scaling"]
    every_row = torch.arange(scores.shape[2], device=scores.device)[None]
    blocked = blocked_keys(mask, every_row, scores.shape[2], scores.shape[3])
    return scores.masked_fill(blocked, float("-inf")).logsumexp(dim=-1)


@contextlib.contextmanager
def _no_synchronisation(device: torch.device):
    """Any operation that synchronises the GPU raises inside (CUDA only)."""
    if device.type != "cuda":
        yield
        return
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def run_on_device(row_kernels, specialization, shape: LayerShape, device: torch.device):
    """(kernel output, PyTorch path output) of one specialisation on a layer of `shape`.

    The kernel runs with synchronisation forbidden on a GPU; its launch must be `specialization`.
    """
    decode = isinstance(specialization, row_kernels.RowsSpecialization)
    inputs = _layer_inputs(shape, specialization.dtype, device, decode)
    through_kernels, expected = inputs["output"].clone(), inputs["output"].clone()
    if decode:
        mask = _mask(MaskKind.BOOL, inputs) if specialization.blocked else None
        blocked = blocked_keys(mask, inputs["rows"], 1, inputs["key"].shape[2]) if mask is not None else None
        launched = row_kernels.rows_specialization(
            specialization.dtype, shape[2], blocked=blocked is not None, whole_rows=specialization.whole_rows
        )
        computed = rows_arithmetic(
            *(inputs[name] for name in ("query", "key", "value")),
            blocked,
            inputs["plan"],
            inputs["row_valid"],
            scaling=inputs["scaling"],
            in_prefill=False,
            whole_rows=specialization.whole_rows,
        )[0].transpose(1, 2)
        expected = (
            computed.to(expected.dtype)
            if specialization.whole_rows
            else expected + computed.to(expected.dtype)
        )
        with _no_synchronisation(device):
            row_kernels.redistribute_rows(
                through_kernels,
                LayerCall(*(inputs[name] for name in ("query", "key", "value")), mask, inputs["scaling"]),
                inputs["plan"],
                inputs["rows"],
                inputs["row_valid"],
                counters=None,
                whole_rows=specialization.whole_rows,
            )
    else:
        mask = _mask(specialization.mask_kind, inputs)
        lse = _log_sum_exp(inputs, mask) if specialization.log_sum_exp else None
        call = LayerCall(
            *(inputs[name] for name in ("query", "key", "value")), mask, inputs["scaling"], Normaliser(lse)
        )
        chunks = 4 if specialization.chunked else 1  # chosen, not left to the GPU's size
        planned, rows = inputs["plan"].weights.shape[1], inputs["rows"].shape[1]
        launched = row_kernels.prefill_specialization(call, planned, rows, chunks=chunks)
        correct_in_blocks(expected, call, inputs["plan"], inputs["rows"], inputs["row_valid"])
        keys = relevant_keys(inputs["plan"])
        with _no_synchronisation(device):
            row_kernels.correct_prefill_rows(
                through_kernels,
                call,
                inputs["plan"],
                keys,
                inputs["rows"],
                inputs["row_valid"],
                counters=None,
                chunks=chunks,
            )
    if launched != specialization:
        raise AssertionError(f"launched {launched.describe()}, not {specialization.describe()}")
    return through_kernels, expected


def check_agreement(
    report: Report, specializations: list, device: torch.device, shapes: dict[str, LayerShape] = MODEL_SHAPES
) -> None:
    """Each specialisation against the PyTorch path on the device, for the 3B and 7B shapes."""
    row_kernels, _ = _row_kernels()
    for name, shape in shapes.items():
        for specialization in specializations:
            check = f"agrees on {device.type}, {name}-shaped: {specialization.describe()}"
            try:
                through_kernels, expected = run_on_device(row_kernels, specialization, shape, device)
            except Exception as error:  # a launch failure, or a synchronisation the debug mode caught
                report.findings.append(Finding(check, PROBLEM, f"{type(error).__name__}: {error}"))
                continue
            # As the run's own first-use check: absolute and relative tolerance (a bfloat16 ulp grows with |x|).
            tolerance = 1e-4 if specialization.dtype == torch.float32 else 2e-2
            expected = expected.float()
            difference = (through_kernels.float() - expected).abs()
            excess = (difference - tolerance * expected.abs()).max().item()
            status = OK if excess <= tolerance else PROBLEM
            detail = (
                f"largest difference {difference.max().item():.2e} (tolerance {tolerance:g} + "
                f"{tolerance:g} x |value|), no synchronisation"
            )
            report.findings.append(Finding(check, status, detail))


def check_log_sum_exp_shortcut(report: Report, device: torch.device, dtype: torch.dtype) -> None:
    """Whether SDPA's own operation with the log-sum-exp gives SDPA's output bit for bit here."""
    shape = MODEL_SHAPES["3B"]
    inputs = _layer_inputs(shape, dtype, device, decode=False)
    group = shape.heads // shape.kv_heads
    key, value = (inputs[name].repeat_interleave(group, 1) for name in ("key", "value"))
    for masked in (False, True):
        mask = _mask(MaskKind.BOOL, inputs) if masked else None
        with LogSumExpCapture() as capture:
            F.scaled_dot_product_attention(inputs["query"], key, value, attn_mask=mask, is_causal=not masked)
        kind = "a boolean mask" if masked else "causal, no mask"
        if capture.log_sum_exp is not None:
            detail = "bit-identical: VAR reads SDPA's log-sum-exp"
        else:
            detail = "not bit-identical or not available: VAR computes it (slower, same numbers)"
        report.findings.append(Finding(f"log-sum-exp shortcut on {device.type}, {dtype}, {kind}", OK, detail))


def check_cost(report: Report, device: torch.device, repeats: int) -> None:
    """`bench_var.py` on the 3B-shaped presets: fused VAR / plain wall time, side by side."""
    check = "cost on a random 3B-shaped model (" + ", ".join(BENCH_PRESETS) + ")"
    if device.type != "cuda":
        report.findings.append(Finding(check, NOT_CHECKED, "needs a CUDA GPU"))
        return
    if not BENCH_SCRIPT.exists():
        report.findings.append(Finding(check, NOT_CHECKED, f"needs a checkout with {BENCH_SCRIPT.name}"))
        return
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "bench.json"
        command = [sys.executable, str(BENCH_SCRIPT), "--preset", *BENCH_PRESETS, "--repeats", str(repeats)]
        result = subprocess.run(
            [*command, "--json", str(output)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            report.findings.append(Finding(check, PROBLEM, result.stderr[-2000:]))
            return
        for measured in json.loads(output.read_text()):
            wall = measured["summary"]["wall_median"]
            ratio = wall["fused VAR"] / wall["plain"]
            detail = f"fused VAR / plain wall time {ratio:.3f} (target <= 1.10), {measured['tokens']} tokens"
            report.findings.append(
                Finding(f"cost, {measured['preset']}", OK if ratio <= 1.10 else PROBLEM, detail)
            )


def diagnose(device: str | None = None, compile_kernels: bool = True, bench_repeats: int = 2) -> Report:
    """Every check this machine allows; `device` defaults to the GPU, or the CPU without one."""
    start = time.perf_counter()
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = torch.cuda.get_device_name(target) if target.type == "cuda" else "no GPU (CPU only)"
    report = Report(versions(), name)
    dtype = torch.bfloat16 if target.type == "cuda" else torch.float32
    kernels = _row_kernels()
    if kernels is None:
        report.findings.append(
            Finding("Triton kernels", NOT_CHECKED, "Triton is not installed: VAR uses PyTorch")
        )
    else:
        row_kernels, _ = kernels
        variants = model_specializations(row_kernels, torch.bfloat16)
        if compile_kernels:
            check_compilation(report, variants, target)
        if target.type == "cuda" or row_kernels.INTERPRETED:
            check_agreement(report, model_specializations(row_kernels, dtype), target)
        else:
            detail = "needs a CUDA GPU (or TRITON_INTERPRET=1, which runs them on the CPU)"
            report.findings.append(Finding("kernels agree with the PyTorch path", NOT_CHECKED, detail))
    check_log_sum_exp_shortcut(report, target, dtype)
    check_cost(report, target, bench_repeats)
    report.seconds = time.perf_counter() - start
    return report
