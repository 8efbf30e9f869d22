"""Cost of one call of VAR's row kernels on a GPU: host time and device time, per tile shape.

A decode step of the 3B preset is bound by kernel launches, so what VAR adds there is mostly the
host time of its launches; at prefill the device time of many rows matters more. This prints both
for a decode row (`redistribute_rows`, written whole: SDPA does not run there) and for a prefill's
text rows (`correct_prefill_rows` over the visual and sink keys, correcting SDPA's output), next to
one SDPA call of the same layer and an empty Triton launch (the floor), so tile and chunk choices
can be compared side by side.

    python benchmarks/bench_row_kernels.py          # needs CUDA
"""

import argparse
import functools
import time
from collections.abc import Callable

import torch
import triton

from lmms_var.core import plan_keys
from lmms_var.patch import row_kernels
from lmms_var.patch.explicit import LayerCall, Normaliser
from lmms_var.patch.prefill import relevant_keys

HEADS, KV_HEADS, HEAD_DIM = 16, 2, 128  # Qwen2.5-VL-3B's attention
SCALING = HEAD_DIM**-0.5
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
    decode = layer_inputs(1, 1, dtype)
    sdpa_decode = functools.partial(sdpa, decode, causal=False)
    print_row("decode row: SDPA (for scale)", sdpa_decode)
    print_row(
        "decode row: SDPA + VAR correction (before whole rows)", lambda: (sdpa_decode(), whole_row(decode))
    )
    for block_k, chunks in ((None, None), (64, None), (None, 8), (None, 64)):
        label = f"block_k {block_k or 'default'}, chunks {chunks or 'default'}"
        print_row(f"decode row: VAR whole row, {label}", lambda b=block_k, c=chunks: whole_row(decode, b, c))

    rows = args.prefill_rows
    prefill = layer_inputs(PROMPT, rows, dtype)
    print_row(f"prefill, {rows} rows: SDPA (for scale)", functools.partial(sdpa, prefill, causal=True))
    with_lse = LayerCall(
        *(prefill[name] for name in ("query", "key", "value")),
        None,
        SCALING,
        Normaliser(log_sum_exp=log_sum_exp(prefill)),
    )
    without_lse = with_lse._replace(normaliser=Normaliser())
    keys = relevant_keys(prefill["plan"])
    for call, tile_rows, chunks in (
        (with_lse, 16, None),
        (with_lse, 16, 1),
        (with_lse, 1, None),
        (with_lse, 64, None),
        (without_lse, 16, None),
    ):
        label = f"{'base kernel' if call is with_lse else 'own'} log-sum-exp, tile {tile_rows}, chunks {chunks or 'default'}"

        def correct(call=call, tile_rows=tile_rows, chunks=chunks) -> None:
            row_kernels.correct_prefill_rows(
                prefill["output"],
                call,
                prefill["plan"],
                keys,
                prefill["rows"],
                prefill["row_valid"],
                counters=None,
                tile_rows=tile_rows,
                chunks=chunks,
            )

        print_row(f"prefill, {rows} rows: VAR correction, {label}", correct)


def sdpa(inputs: dict, causal: bool) -> None:
    torch.nn.functional.scaled_dot_product_attention(
        inputs["query"], inputs["key"], inputs["value"], is_causal=causal, enable_gqa=True
    )


def whole_row(inputs: dict, block_k: int | None = None, chunks: int | None = None) -> None:
    row_kernels.redistribute_rows(
        inputs["output"],
        LayerCall(inputs["query"], inputs["key"], inputs["value"], None, SCALING),
        inputs["plan"],
        inputs["rows"],
        inputs["row_valid"],
        counters=None,
        whole_rows=True,
        block_k=block_k,
        chunks=chunks,
    )


def log_sum_exp(inputs: dict) -> torch.Tensor:
    """Float32[1, H, Q]: every row's causal log-sum-exp, as SDPA's fused kernels give it."""
    query, key = inputs["query"].float(), inputs["key"].float().repeat_interleave(HEADS // KV_HEADS, 1)
    scores = query @ key.mT * SCALING
    causal = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
    return scores.masked_fill_(~causal, float("-inf")).logsumexp(dim=-1)


if __name__ == "__main__":
    main()
