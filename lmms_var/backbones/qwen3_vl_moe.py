"""Qwen3-VL-MoE (`qwen3_vl_moe`, e.g. Qwen3-VL-30B-A3B): Qwen3-VL with mixture-of-experts MLPs.

Attention, deepstack and the processor are Qwen3-VL's, so VAR attaches exactly as there; only the
MLP differs: its experts' down projections are one 3-D parameter `[experts, hidden, intermediate]`
(`mlp.experts.down_proj`), not a linear module. lmms-eval runs it with its `qwen3_vl` model (which
picks the MoE class when the checkpoint's name matches `A<n>B`), so ours is `qwen3_vl_var` too: it
shares Qwen3-VL's `LmmsEvalModel` and loads the MoE class from the checkpoint's config instead.
"""

from dataclasses import replace

from lmms_var.backbones.qwen3_vl import QWEN3_VL

QWEN3_VL_MOE = replace(
    QWEN3_VL,
    family="Qwen3-VL-MoE",
    model_type="qwen3_vl_moe",
    loader="Qwen3VLMoeForConditionalGeneration",
    mlp_output="mlp.experts.down_proj",
)
