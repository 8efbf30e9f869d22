"""Qwen3.5 (`qwen3_5`, dense): Qwen3-VL's vision side and processor, a hybrid text decoder.

Three of every four decoder layers are linear attention (Gated DeltaNet, `linear_attn`): no attention
rows exist there to redistribute, so VAR acts on the full-attention layers only (`self_attn`), and
its log line and diagnostics name those layers. A full-attention layer's query projection also
gives each head an output gate (`gated_query`), and only a quarter of each head's dims rotate.
No deepstack mergers.

lmms-eval's `qwen3_5` is its `qwen3_vl` with other defaults (pixel bounds in 32-pixel units, thinking
on, sampling at temperature 0.7 unless the task sets 0, `max_frames` as an alias of
`max_num_frames`), so it shares its fixes; it loads the MoE class only for a checkpoint named `A<n>B`.
"""

from collections.abc import Mapping
from typing import Any

from lmms_var.backbones import qwen_common
from lmms_var.backbones.base import Backbone, LmmsEvalModel


def _state(pretrained: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """Qwen-VL's state, `max_frames` (when given) replacing `max_num_frames` as upstream does."""
    frames = args["max_frames"] if args["max_frames"] is not None else args["max_num_frames"]
    state = qwen_common.qwen_state(pretrained, {**args, "max_num_frames": frames})
    del state["max_frames"]
    return state


QWEN3_5 = Backbone(
    family="Qwen3.5",
    model_type="qwen3_5",
    loader="Qwen3_5ForConditionalGeneration",
    visual_token_attributes=("image_token_id", "video_token_id"),
    visual_delimiters=qwen_common.QWEN_VISUAL_DELIMITERS,
    projector=("visual.merger.linear_fc1", "visual.merger.linear_fc2"),
    query_key_norms=("self_attn.q_norm", "self_attn.k_norm"),
    gated_query=True,
    layer_residual_writers=("linear_attn.out_proj",),
    visual_grids=qwen_common.qwen_visual_grids,
    processor_outputs=qwen_common.QWEN_VL_OUTPUTS,
    image_size_refusal=qwen_common.qwen_image_size_refusal,
    lmms_eval=LmmsEvalModel(
        model_id="qwen3_5_var",
        upstream_id="qwen3_5",
        simple_class="lmms_eval.models.simple.qwen3_5.Qwen3_5",
        chat_class="lmms_eval.models.chat.qwen3_5.Qwen3_5",
        default_pretrained="Qwen/Qwen3.5-4B",
        upstream_args={
            "use_cache": True,
            "min_pixels": 64 * 32 * 32,
            "max_pixels": 128 * 32 * 32,
            "total_pixels": 224 * 1024 * 32 * 32,
            "max_num_frames": 768,
            "max_frames": None,
            "fps": None,
            "system_prompt": "You are a helpful assistant.",
            "interleave_visuals": False,
            "enable_thinking": True,
            "reasoning_prompt": None,
        },
        check_upstream_args=qwen_common.qwen_pixel_bounds,
        state=_state,
    ),
    head_dims=(256,),  # the full-attention layers (`head_dim` 256)
)
