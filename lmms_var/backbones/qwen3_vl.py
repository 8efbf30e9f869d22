"""Qwen3-VL (`qwen3_vl`, dense models).

Its forward differs from Qwen2.5-VL's in two ways VAR must know of. Queries and keys are normalised
per head (`q_norm`, `k_norm`) before the rotary embedding. And *deepstack*: features of early vision
layers go through their own mergers and are added to the outputs of the first decoder layers at the
visual positions. VAR reads sinks from each layer's input, after that addition, so nothing changes
for it; but those mergers also write into the residual stream (`visual_residual_writers`).

lmms-eval's `qwen3_vl` (simple and chat) hard-codes bfloat16 and `device_map=auto`, then moves inputs
to `"cuda"`; it also loads MoE checkpoints (`qwen3_vl_moe.py`, which shares this model) and Qwen3.5
ones (lmms-eval's `qwen3_5` model, `qwen3_5.py`).
"""

from lmms_var.backbones import qwen_common
from lmms_var.backbones.base import Backbone, LmmsEvalModel

QWEN3_VL = Backbone(
    family="Qwen3-VL",
    model_type="qwen3_vl",
    loader="Qwen3VLForConditionalGeneration",
    visual_token_attributes=("image_token_id", "video_token_id"),
    visual_delimiters=qwen_common.QWEN_VISUAL_DELIMITERS,
    projector=("visual.merger.linear_fc1", "visual.merger.linear_fc2"),
    visual_residual_writers=("visual.deepstack_merger_list.*.linear_fc2",),
    query_key_norms=("self_attn.q_norm", "self_attn.k_norm"),
    visual_grids=qwen_common.qwen_visual_grids,
    processor_outputs=qwen_common.QWEN_VL_OUTPUTS,
    image_size_refusal=qwen_common.qwen_image_size_refusal,
    lmms_eval=LmmsEvalModel(
        model_id="qwen3_vl_var",
        upstream_id="qwen3_vl",
        simple_class="lmms_eval.models.simple.qwen3_vl.Qwen3_VL",
        chat_class="lmms_eval.models.chat.qwen3_vl.Qwen3_VL",
        default_pretrained="Qwen/Qwen3-VL-4B-Instruct",
        upstream_args={
            "use_cache": True,
            "min_pixels": 256 * 28 * 28,
            "max_pixels": 1605632,
            "total_pixels": None,
            "max_num_frames": 32,
            "fps": None,
            "system_prompt": "You are a helpful assistant.",
            "interleave_visuals": False,
            "enable_thinking": None,
            "reasoning_prompt": None,
        },
        check_upstream_args=qwen_common.qwen_pixel_bounds,
        state=qwen_common.qwen_state,
    ),
    head_dims=(128,),  # every size (an explicit `head_dim` in the config)
)
