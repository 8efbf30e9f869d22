"""Synthetic inputs of one attention layer for VAR's row computations, and what they must give.

The reference is `rows_arithmetic` over whole rows (every key of every row, as VAR computed prefill rows
before it walked only visual and sink keys), checked in turn against the eager reference at model level.
"""

import torch
import torch.nn.functional as F

from lmms_var.core import plan_keys
from lmms_var.patch.explicit import LayerCall, Normaliser, explicit_attention, scores, times_values
from lmms_var.patch.masks import blocked_keys
from lmms_var.patch.normaliser import LogSumExpCapture
from lmms_var.patch.var import rows_arithmetic

PROMPT = 40
PADDING = (0, 4, 0)  # left padding per sample
ONE_IMAGE = (range(5, 30),)  # then 10 text rows, 30..39
TWO_IMAGES = (range(5, 15), range(25, 30))  # text rows 15..24 between them, 30..39 after


def attention_case(
    dtype: torch.dtype,
    decode: bool,
    padded: bool,
    seed: int = 0,
    device: str = "cpu",
    images: tuple[range, ...] = ONE_IMAGE,
) -> dict:
    """A layer's attention inputs for 3 samples, GQA 6/2 heads, at prefill or at decode.

    At prefill the rows are the text after the first image (10, or 20 with `TWO_IMAGES`); sample 1
    allows one row fewer. Sample 0 has text and visual sinks, and the heads on key/value head 0 mostly
    look at its visual sinks (not image-centric); sample 1 has a visual sink and, if `padded`, 4
    padding positions holding a text sink; sample 2 has text sinks only.
    """
    generator = torch.Generator().manual_seed(seed)
    batch, heads, kv_heads, head_dim = 3, 6, 2, 48
    keys = PROMPT + 1 if decode else PROMPT
    queries = 1 if decode else PROMPT
    # Laid out [B, Q, H, d] and transposed, as Hugging Face attention modules pass it.
    query = torch.randn(batch, queries, heads, head_dim, generator=generator).transpose(1, 2) * 2
    key = torch.randn(batch, kv_heads, keys, head_dim, generator=generator)
    value = torch.randn(batch, kv_heads, keys, head_dim, generator=generator)
    direction = torch.randn(head_dim, generator=generator)
    query[0, :3] += direction  # these heads share key/value head 0, whose visual sinks point that way
    key[0, 0, [7, 8]] = 3 * direction
    image = torch.zeros(batch, PROMPT, dtype=torch.bool)
    for positions in images:
        image[:, positions] = True
    sinks = torch.zeros(batch, PROMPT, dtype=torch.bool)
    sinks[0, [0, 7, 8]] = True
    sinks[1, [2, 4, 10]] = True
    sinks[2, [0, 35]] = True
    if decode:
        rows = torch.zeros(batch, 1, dtype=torch.long)
        row_valid = torch.ones(batch, 1, dtype=torch.bool)
    else:
        first = images[0].start
        text = [position for position in range(first, PROMPT) if not image[0, position]]
        rows = torch.tensor(text).repeat(batch, 1)
        row_valid = torch.ones(batch, len(text), dtype=torch.bool)
        row_valid[1, -1] = False
    mask = None
    if padded:
        visible = torch.arange(keys)[None, :] >= torch.tensor(PADDING)[:, None]
        causal = torch.arange(keys)[None, :] <= torch.arange(keys - queries, keys)[:, None]
        mask = (visible[:, None, None, :] & causal[None, None]).to(device)
    tensors = {
        "output": torch.randn(batch, queries, heads, head_dim, generator=generator),
        "query": query,
        "key": key,
        "value": value,
    }
    case = {name: tensor.to(device, dtype) for name, tensor in tensors.items()}
    plan = plan_keys(image, sinks, p=0.3, rho=0.6, summ=0.1)
    case["plan"] = type(plan)(*(tensor.to(device) for tensor in plan))
    case["rows"], case["row_valid"] = rows.to(device), row_valid.to(device)
    case["mask"], case["scaling"] = mask, head_dim**-0.5
    return case


def layer_call(case: dict, normaliser: Normaliser | None = None) -> LayerCall:
    normaliser = normaliser or Normaliser()
    return LayerCall(case["query"], case["key"], case["value"], case["mask"], case["scaling"], normaliser)


def _blocked_everywhere(case: dict) -> torch.Tensor:
    query = case["query"]
    every_row = torch.arange(query.shape[2], device=query.device).expand(query.shape[0], -1)
    return blocked_keys(case["mask"], every_row, query.shape[2], case["key"].shape[2])


def full_attention(case: dict) -> torch.Tensor:
    """Float32 softmax(q k^T) [B, H, Q, K] of every query row, masked as the base kernels mask it."""
    return explicit_attention(case["query"], case["key"], _blocked_everywhere(case), case["scaling"], True)


def full_log_sum_exp(case: dict) -> torch.Tensor:
    """Float32[B, H, Q]: every query row's log-sum-exp over the keys it sees, as a base kernel has it."""
    logits = scores(case["query"], case["key"], case["scaling"])
    return logits.masked_fill_(_blocked_everywhere(case), float("-inf")).logsumexp(dim=-1)


def plain_attention(case: dict) -> torch.Tensor:
    """softmax(q k^T) V [B, Q, H, d] of every query row in float32: what a base kernel computes."""
    return times_values(full_attention(case), case["value"]).transpose(1, 2)


def pytorch_path(case: dict, whole_rows: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The corrected (or, `whole_rows`, written) output, selection and budgets over whole rows."""
    query, rows, output = case["query"], case["rows"], case["output"]
    heads, query_length, head_dim = query.shape[1:]
    rows_query = query.gather(2, rows[:, None, :, None].expand(-1, heads, -1, head_dim))
    blocked = blocked_keys(case["mask"], rows, query_length, case["key"].shape[2])
    computed, selected, budget = rows_arithmetic(
        rows_query,
        case["key"],
        case["value"],
        blocked,
        case["plan"],
        case["row_valid"],
        scaling=case["scaling"],
        in_prefill=query_length > 1,
        whole_rows=whole_rows,
    )
    if whole_rows:
        return computed.transpose(1, 2).to(output.dtype), selected, budget
    index = rows[:, :, None, None].expand(-1, -1, heads, head_dim)
    corrected = output.clone().scatter_add_(1, index, computed.transpose(1, 2).to(output.dtype))
    return corrected, selected, budget


def touched_rows(case: dict, selected: torch.Tensor) -> torch.Tensor:
    """Bool[B, Q, H]: the (row, head) pairs VAR changes, from the selection [B, H, R]."""
    touched = torch.zeros(case["output"].shape[:3], dtype=torch.bool, device=selected.device)
    touched.scatter_(1, case["rows"][..., None].expand(-1, -1, selected.shape[1]), selected.transpose(1, 2))
    return touched


def normaliser_for(case: dict, source: str) -> Normaliser:
    """The normaliser a base kernel would hand over: SDPA's log-sum-exp, eager's weights, or none."""
    if source == "sdpa":
        with LogSumExpCapture() as capture:
            F.scaled_dot_product_attention(
                case["query"],
                case["key"],
                case["value"],
                attn_mask=case["mask"],
                scale=case["scaling"],
                is_causal=case["mask"] is None,
                enable_gqa=True,
            )
        if capture.log_sum_exp is None:  # on CUDA some SDPA backends do not give it
            assert case["query"].device.type != "cpu", "SDPA's CPU flash kernel gives the log-sum-exp"
            return Normaliser(log_sum_exp=full_log_sum_exp(case))
        return Normaliser(log_sum_exp=capture.log_sum_exp)
    if source == "eager weights":
        return Normaliser(weights=full_attention(case).to(case["query"].dtype))
    return Normaliser()


def assert_matches_whole_rows(
    case: dict, corrected: torch.Tensor, expected: torch.Tensor, selected: torch.Tensor, **tolerance: float
) -> None:
    """`corrected` is `expected` (the whole-row path) within `tolerance`, and rows no head selects stay
    bit-identical; `selected` [B, H, R] is the mix `attention_case` is built for."""
    assert selected[0].any() and not selected[0].all(), "sample 0 should mix selected and unselected heads"
    assert selected[1].any() and not selected[2].any()
    torch.testing.assert_close(corrected, expected, **tolerance)
    untouched = ~touched_rows(case, selected)
    assert torch.equal(corrected[untouched], case["output"][untouched]), (
        "rows no head selects stay bit-identical"
    )
