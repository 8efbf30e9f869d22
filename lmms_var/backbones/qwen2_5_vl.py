"""Qwen2.5-VL (`qwen2_5_vl`): lmms-eval's `qwen2_5_vl` (simple and chat) loads bfloat16."""

from lmms_var.backbones import qwen_common
from lmms_var.backbones.base import Backbone, LmmsEvalModel

QWEN2_5_VL = Backbone(
    family="Qwen2.5-VL",
    model_type="qwen2_5_vl",
    loader="Qwen2_5_VLForConditionalGeneration",
    visual_token_attributes=("image_token_id", "video_token_id"),
    visual_delimiters=qwen_common.QWEN_VISUAL_DELIMITERS,
    projector=("visual.merger.mlp.0", "visual.merger.mlp.2"),
    visual_grids=qwen_common.qwen_visual_grids,
    processor_outputs=qwen_common.QWEN_VL_OUTPUTS,
    image_size_refusal=qwen_common.qwen_image_size_refusal,
    lmms_eval=LmmsEvalModel(
        model_id="qwen2_5_vl_var",
        upstream_id="qwen2_5_vl",
        simple_class="lmms_eval.models.simple.qwen2_5_vl.Qwen2_5_VL",
        chat_class="lmms_eval.models.chat.qwen2_5_vl.Qwen2_5_VL",
        default_pretrained="Qwen/Qwen2.5-VL-3B-Instruct",
        upstream_args={
            "use_cache": True,
            "min_pixels": 256 * 28 * 28,
            "max_pixels": 1605632,
            "max_num_frames": 32,
            "fps": None,
            "system_prompt": "You are a helpful assistant.",
            "interleave_visuals": False,
            "reasoning_prompt": None,
            "max_length": 2048,
        },
        check_upstream_args=qwen_common.qwen_pixel_bounds,
        state=qwen_common.qwen_state,
    ),
    head_dims=(128,),  # 3B, 7B, 32B and 72B
)
