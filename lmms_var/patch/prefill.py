"""VAR's prefill rows in PyTorch operations, over the keys they depend on and in bounded blocks.

A row's statistics (spec steps 3-4) and its correction of the base kernel's output,

    A'V - AV = (p - 1) * sum over sinks of A_k V_k  +  gain * sum over visual non-sinks of A_k V_k,

are sums over visual and sink keys only: every other key has zero weight in the row's `KeyPlan`.
With the row's log-sum-exp over all the keys it sees, `A_k = exp(s_k - lse)` for those keys alone,
so a layer costs O(R x (visual + sinks)) rather than O(R x K) however long the text is. The
log-sum-exp comes from the base kernel (`normaliser.py`); eager attention's weights are read
directly; otherwise one pass over all keys computes it. Rows and keys go in blocks of at most
`block_elements` float32 values per [B, H, rows, keys] tensor, so memory is bounded too.
"""

from typing import NamedTuple

import torch

from lmms_var.core import BUDGET, STATISTICS, KeyPlan, attention_change, row_statistics, selected_rows
from lmms_var.patch.explicit import LayerCall, grouped, scores
from lmms_var.patch.masks import blocked_keys

# Float32 values in one [B, H, rows, keys] block (4 MiB): one or two such tensors are VAR's extra memory.
DEFAULT_BLOCK_ELEMENTS = 2**20
# A block whose selected (head, row) pairs are at least 1 / _DENSE_SHARE of all is corrected whole.
_DENSE_SHARE = 2


class RelevantKeys(NamedTuple):
    """Per sample, the keys a prefill row's correction depends on (visual or sink), first in `order`."""

    order: torch.Tensor  # Long[B, P]: the planned key positions, the sample's relevant keys first
    counts: torch.Tensor  # Long[B]: how many of them are relevant


def relevant_keys(plan: KeyPlan) -> RelevantKeys:
    """Keys with a nonzero statistic weight: visual keys and sinks (their only ones to change, too)."""
    relevant = plan.weights.ne(0).any(dim=-1)
    order = torch.argsort((~relevant).to(torch.int8), dim=1, stable=True)
    return RelevantKeys(order, relevant.sum(dim=1))


class _GatheredKeys(NamedTuple):
    # Long[B, M]: key positions. Past a sample's own count come keys that are not relevant to it:
    # their weights, sink change and receiver flag are zero, so they add nothing and need no mask.
    index: torch.Tensor
    key: torch.Tensor  # [B, Hkv, M, d]
    value: torch.Tensor  # Float32[B, Hkv, M, d]
    plan: KeyPlan  # the layer's plan at those keys, with zero offsets (a row adds them once)


def _gather_keys(plan: KeyPlan, call: LayerCall) -> _GatheredKeys:
    """The relevant keys of every sample side by side, with their values and plan."""
    keys = relevant_keys(plan)
    count = int(keys.counts.max())  # shapes need it on the host: free on a CPU, one sync on a GPU
    index = keys.order[:, :count]
    kv_heads, head_dim = call.key.shape[1], call.key.shape[3]
    per_head = index[:, None, :, None].expand(-1, kv_heads, -1, head_dim)
    per_key = index[:, None, None, :]
    gathered_plan = KeyPlan(
        plan.weights.gather(1, index[..., None].expand(-1, -1, STATISTICS)),
        torch.zeros_like(plan.offsets),
        plan.sink_change.gather(3, per_key),
        plan.receivers.gather(3, per_key),
    )
    return _GatheredKeys(
        index, call.key.gather(2, per_head), call.value.gather(2, per_head).float(), gathered_plan
    )


def _slice(plan: KeyPlan, start: int, stop: int) -> KeyPlan:
    """The plan of keys `start:stop` (offsets as they are)."""
    return KeyPlan(plan.weights[:, start:stop], plan.offsets, *(x[..., start:stop] for x in plan[2:]))


def _block_rows(batch_heads: int, rows: int, widest: int, block_elements: int) -> int:
    """Rows per block: as many as fit next to `widest` keys (one, if not even a row of keys fits)."""
    return max(1, min(rows, block_elements // (batch_heads * max(1, widest))))


def _block_keys(batch_heads: int, rows: int, keys: int, block_elements: int) -> int:
    """Keys per block for `rows` rows: all of them unless a block would exceed `block_elements`."""
    return max(1, min(keys, block_elements // (batch_heads * rows)))


def _log_sum_exp(call: LayerCall, query: torch.Tensor, rows: torch.Tensor, step: int) -> torch.Tensor:
    """Float32[B, H, r]: the rows' log-sum-exp over every key they see, `step` keys at a time."""
    query_length, key_length = call.query.shape[2], call.key.shape[2]
    total = query.new_full(query.shape[:3], float("-inf"))
    for start in range(0, key_length, step):
        keys = torch.arange(start, min(start + step, key_length), device=rows.device).expand(
            rows.shape[0], -1
        )
        logits = scores(query, call.key[:, :, start : start + step], call.scaling)
        logits.masked_fill_(
            blocked_keys(call.attention_mask, rows, query_length, key_length, keys), float("-inf")
        )
        total = torch.logaddexp(total, logits.logsumexp(dim=-1))
    return total


def rows_log_sum_exp(
    call: LayerCall, query: torch.Tensor, rows: torch.Tensor, block_elements: int
) -> torch.Tensor | None:
    """Float32[B, H, r]: the rows' log-sum-exp from the base kernel, or computed over every key;
    None where eager attention's weights are read instead."""
    heads = query.shape[1]
    if call.normaliser.log_sum_exp is not None:
        return call.normaliser.log_sum_exp.gather(2, rows[:, None, :].expand(-1, heads, -1))
    if call.normaliser.weights is not None:
        return None
    step = _block_keys(rows.shape[0] * heads, rows.shape[1], call.key.shape[2], block_elements)
    return _log_sum_exp(call, query, rows, step)


def _attention_on(
    call: LayerCall, keys: _GatheredKeys, query, rows, log_sum_exp, start: int, stop: int
) -> torch.Tensor:
    """Float32[B, H, r, m]: the rows' attention on relevant keys `start:stop`, zero where blocked."""
    index = keys.index[:, start:stop]
    query_length, key_length = call.query.shape[2], call.key.shape[2]
    weights = call.normaliser.weights
    if weights is not None:  # eager attention: read its own weights
        blocked = blocked_keys(call.attention_mask, rows, query_length, key_length, index)
        samples = torch.arange(rows.shape[0], device=rows.device)[:, None, None]
        attn = weights[samples, :, rows[:, :, None], index[:, None, :]].permute(0, 3, 1, 2).float()
        return attn.masked_fill_(blocked, 0.0)
    attn = scores(query, keys.key[:, :, start:stop], call.scaling, shift=-log_sum_exp)
    seen = _seen_by_every_row(call, index, rows)  # only the keys after them may be blocked
    blocked = blocked_keys(call.attention_mask, rows, query_length, key_length, index[:, seen:])
    attn[..., seen:].masked_fill_(blocked, float("-inf"))
    return attn.exp_()


def _seen_by_every_row(call: LayerCall, index: torch.Tensor, rows: torch.Tensor) -> int:
    """How many leading keys of `index` (Long[B, m]) every row sees, so that only the rest need a mask.

    Only without a mask (causal only), where visual keys mostly come before the text rows: a key
    at or before every row's position is seen by all of them. 0 where there is a mask.
    """
    if call.attention_mask is not None:
        return 0
    first_position = rows.min() + (call.key.shape[2] - call.query.shape[2])
    return int((index <= first_position).all(dim=0).cumprod(dim=0).sum())  # a synchronisation on a GPU


class _Pairs(NamedTuple):
    """The selected (sample, head, row) pairs of a block of rows, by sample and then head.

    Only they get a correction, A'V - AV: computing it for them alone spares most of the work,
    since most heads select few rows.
    """

    sample: torch.Tensor  # Long[N]
    head: torch.Tensor  # Long[N]
    row: torch.Tensor  # Long[N]: in the block
    per_group: list[int]  # how many pairs share each key/value head, in order (B * Hkv of them)

    @property
    def count(self) -> int:
        return self.sample.numel()

    @classmethod
    def of(cls, selected: torch.Tensor, kv_heads: int) -> "_Pairs":
        sample, head, row = selected.nonzero(as_tuple=True)  # a synchronisation on a GPU
        group_size = selected.shape[1] // kv_heads
        groups = torch.bincount(
            sample * kv_heads + head // group_size, minlength=selected.shape[0] * kv_heads
        )
        return cls(sample, head, row, groups.tolist())

    def correction(
        self, attn: torch.Tensor, statistics: torch.Tensor, keys: _GatheredKeys, start: int, stop: int
    ):
        """Float32[N, d]: the pairs' A'V - AV over relevant keys `start:stop` (0.0 without pairs)."""
        if not self.count:
            return 0.0
        plan = _slice(keys.plan, start, stop)
        # Each pair's keys change as its sample's do (`attention_change` reads only these two).
        per_pair = plan._replace(
            sink_change=plan.sink_change[self.sample, 0, 0], receivers=plan.receivers[self.sample, 0, 0]
        )
        change = attention_change(statistics[self.sample, self.head, self.row], per_pair)
        weights = attn[self.sample, self.head, self.row].mul_(change)
        values = keys.value[:, :, start:stop].flatten(0, 1)  # [B * Hkv, m, d]
        products = [
            group_weights @ values[group]
            for group, group_weights in enumerate(weights.split(self.per_group))
            if group_weights.numel()
        ]
        return torch.cat(products)

    def dense_correction(
        self, attn: torch.Tensor, statistics: torch.Tensor, keys: _GatheredKeys, start: int, stop: int
    ) -> torch.Tensor:
        """As `correction`, computed for every row of the block (`attn` is overwritten) and then picked.

        Where most rows are selected this is cheaper: no [N, keys] gathers, one product per key/value head.
        """
        batch, heads, rows, _ = attn.shape
        values = keys.value[:, :, start:stop]
        weights = attn.mul_(attention_change(statistics, _slice(keys.plan, start, stop)))
        products = torch.bmm(grouped(weights, values.shape[1]), values.flatten(0, 1))
        return products.view(batch, heads, rows, -1)[self.sample, self.head, self.row]


def correct_in_blocks(
    output: torch.Tensor,
    call: LayerCall,
    plan: KeyPlan,
    rows: torch.Tensor,
    row_valid: torch.Tensor,
    *,
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Add A'V - AV to the base kernel's `output` [B, Q, H, d] at `rows` (Long[B, R]) where a head selects them.

    `row_valid` Bool[B, R] says which rows spec step 2 allows. Returns the selection and the
    budgets, Bool/Float32[B, H, R], for diagnostics.
    """
    batch, heads = call.query.shape[:2]
    batch_heads = batch * heads
    keys = _gather_keys(plan, call)
    relevant_count = keys.index.shape[1]
    # Without a normaliser from the base kernel, a block of rows also spans all keys to compute it.
    given = call.normaliser.log_sum_exp is not None or call.normaliser.weights is not None
    widest = relevant_count if given else call.key.shape[2]
    row_step = _block_rows(batch_heads, rows.shape[1], widest, block_elements)
    samples = torch.arange(batch, device=rows.device)[:, None]
    selections, budgets = [], []
    for row_start in range(0, rows.shape[1], row_step):
        block_rows = rows[:, row_start : row_start + row_step]
        query = call.query[samples, :, block_rows].transpose(1, 2)  # indexing beats gather on a CPU
        log_sum_exp = rows_log_sum_exp(call, query, block_rows, block_elements)
        key_step = _block_keys(batch_heads, block_rows.shape[1], relevant_count, block_elements)
        key_ranges = [(start, start + key_step) for start in range(0, relevant_count, key_step)]
        statistics = plan.offsets[:, None]
        for start, stop in key_ranges:
            attn = _attention_on(call, keys, query, block_rows, log_sum_exp, start, stop)
            statistics = statistics + row_statistics(attn, _slice(keys.plan, start, stop))
        selected = selected_rows(statistics, row_valid[:, row_start : row_start + row_step])
        pairs = _Pairs.of(selected, keys.value.shape[1])
        # With most rows selected, correcting every row beats gathering the selected ones.
        correct = (
            pairs.dense_correction if pairs.count * _DENSE_SHARE >= selected.numel() else pairs.correction
        )
        correction = 0.0
        for start, stop in key_ranges:
            if len(key_ranges) > 1:  # one block of keys is still there; several are recomputed
                attn = _attention_on(call, keys, query, block_rows, log_sum_exp, start, stop)
            if pairs.count:
                correction = correction + correct(attn, statistics, keys, start, stop)
        if pairs.count:
            target = (pairs.sample, block_rows[pairs.sample, pairs.row], pairs.head)
            output.index_put_(target, correction.to(output.dtype), accumulate=True)
        selections.append(selected)
        budgets.append(statistics[..., BUDGET])
    return torch.cat(selections, dim=-1), torch.cat(budgets, dim=-1)
