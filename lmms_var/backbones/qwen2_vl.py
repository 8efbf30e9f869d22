"""Qwen2-VL (`qwen2_vl`); what its successors share with it is in `qwen_common.py`.

lmms-eval's `qwen2_vl` has a simple class only, loads the checkpoint's own dtype (`torch_dtype="auto"`),
selects flash attention with `use_flash_attention_2`, and defaults to smaller images than
`qwen2_5_vl` (`min_pixels=3136`, `max_pixels=602112`).
"""

from lmms_var.backbones import qwen_common
from lmms_var.backbones.base import Backbone, LmmsEvalModel

QWEN2_VL = Backbone(
    family="Qwen2-VL",
    model_type="qwen2_vl",
    loader="Qwen2VLForConditionalGeneration",
    visual_token_attributes=("image_token_id", "video_token_id"),
    visual_delimiters=qwen_common.QWEN_VISUAL_DELIMITERS,
    projector=("visual.merger.mlp.0", "visual.merger.mlp.2"),
    visual_grids=qwen_common.qwen_visual_grids,
    processor_outputs=qwen_common.QWEN_VL_OUTPUTS,
    image_size_refusal=qwen_common.qwen_image_size_refusal,
    lmms_eval=LmmsEvalModel(
        model_id="qwen2_vl_var",
        upstream_id="qwen2_vl",
        simple_class="lmms_eval.models.simple.qwen2_vl.Qwen2_VL",
        chat_class=None,
        default_pretrained="Qwen/Qwen2-VL-7B-Instruct",
        upstream_args={
            "use_cache": True,
            "use_flash_attention_2": False,
            "max_length": 2048,
            "max_pixels": 602112,
            "min_pixels": 3136,
            "max_num_frames": 32,
            "system_prompt": "You are a helpful assistant.",
            "interleave_visuals": False,
            "reasoning_prompt": None,
        },
        state=qwen_common.qwen_state,
        cuda_dtype="auto",
        flash_attention_flag="use_flash_attention_2",
        check_upstream_args=qwen_common.qwen_pixel_bounds,
    ),
    head_dims=(128,),  # 2B, 7B and 72B
)
