"""Cost of one `redistribute_rows` call on a GPU: host time and device time, per tile shape.

A decode step of the 3B preset is bound by kernel launches, so what VAR adds there is mostly the
host time of its launches; at prefill the device time of many rows matters more. This prints both
for a decode row (written whole: SDPA does not run there) and for a prefill's text rows (a
correction of SDPA's), next to one SDPA call of the same layer and an empty Triton launch (the
floor), so tile and chunk choices can be compared side by side.

    python benchmarks/bench_row_kernels.py          # needs CUDA
"""

import argparse
import time
from collections.abc import Callable

import torch
import triton

from lmms_var.core import plan_keys
from lmms_var.patch import row_kernels

HEADS, KV_HEADS, HEAD_DIM = 16, 2, 128  # Qwen2.5-VL-3B's attention
PROMPT, VISUAL = 2375, range(20, 2340)  # the 3B preset's 4-image prompt
CALLS = 200


@triton.jit
def _empty(x_ptr):
    pass


def host_and_device_us(call: Callable[[], None]) -> tuple[float, float]:
    """Microseconds per call: of host time, and of device time with the host far ahead of the device."""
    for _ in range(3):
        call()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(CALLS):
        call()
    host = (time.perf_counter() - start) / CALLS * 1e6
    torch.cuda.synchronize()
    torch.cuda._sleep(200_000_000)  # the device waits while the host queues every call
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(CALLS):
        call()
    end.record()
    torch.cuda.synchronize()
    return host, begin.elapsed_time(end) / CALLS * 1e3


def print_row(case: str, call: Callable[[], None]) -> None:
    host, device = host_and_device_us(call)
    print(f"| {case} | {host:.1f} | {device:.1f} |")


def layer_inputs(query_length: int, rows: int, dtype: torch.dtype) -> dict:
    """One layer's VAR inputs: `rows` text rows at the end of a prompt (or a decode step's one row)."""
    keys = PROMPT + (1 if query_length == 1 else 0)
    image = torch.zeros(1, PROMPT, dtype=torch.bool, device="cuda")
    image[:, VISUAL] = True
    sinks = torch.zeros_like(image)
    sinks[:, [0, 100, 900, 1700]] = True
    return {
        "output": torch.randn(1, query_length, HEADS, HEAD_DIM, device="cuda", dtype=dtype),
        "query": torch.randn(1, query_length, HEADS, HEAD_DIM, device="cuda", dtype=dtype).transpose(1, 2),
        "key": torch.randn(1, KV_HEADS, keys, HEAD_DIM, device="cuda", dtype=dtype),
        "value": torch.randn(1, KV_HEADS, keys, HEAD_DIM, device="cuda", dtype=dtype),
        "plan": plan_keys(image, sinks, p=0.6, rho=0.5, summ=0.2),
        "rows": torch.arange(query_length - rows, query_length, device="cuda")[None],
        "row_valid": torch.ones(1, rows, dtype=torch.bool, device="cuda"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prefill-rows", type=int, default=32, help="text rows VAR may change at prefill")
    args = parser.parse_args()
    dtype = torch.bfloat16
    marker = torch.empty(1, device="cuda")
    print(f"{torch.cuda.get_device_name()}, triton {triton.__version__}, torch {torch.__version__}")
    print("| case | host us / call | device us / call |")
    print("|---|---|---|")
    print_row("empty Triton launch", lambda: _empty[(1,)](marker))
    for name, query_length, rows in (
        ("decode row", 1, 1),
        (f"prefill, {args.prefill_rows} rows", PROMPT, args.prefill_rows),
    ):
        inputs = layer_inputs(query_length, rows, dtype)
        query, key, value = inputs["query"], inputs["key"], inputs["value"]
        decode = query_length == 1

        def sdpa(query=query, key=key, value=value, causal=not decode) -> None:
            torch.nn.functional.scaled_dot_product_attention(
                query, key, value, is_causal=causal, enable_gqa=True
            )

        def var(block_k=None, chunks=None, whole_rows=False, inputs=inputs) -> None:
            row_kernels.redistribute_rows(
                inputs["output"],
                inputs["query"],
                inputs["key"],
                inputs["value"],
                None,
                inputs["plan"],
                inputs["rows"],
                inputs["row_valid"],
                scaling=HEAD_DIM**-0.5,
                activity=None,
                whole_rows=whole_rows,
                block_k=block_k,
                chunks=chunks,
            )

        print_row(f"{name}: SDPA (for scale)", sdpa)
        # At decode VAR writes whole rows and SDPA does not run; at prefill it corrects SDPA's rows.
        if decode:
            print_row(f"{name}: SDPA + VAR correction (before whole rows)", lambda s=sdpa, v=var: (s(), v()))
        for block_k, chunks in ((None, None), (64, None), (None, 8), (None, 64)):
            label = f"block_k {block_k or 'default'}, chunks {chunks or 'default'}"
            kind = "VAR whole row" if decode else "VAR correction"
            print_row(f"{name}: {kind}, {label}", lambda b=block_k, c=chunks, w=decode: var(b, c, w))


if __name__ == "__main__":
    main()
