"""The model classes driven directly with lmms-eval `Instance`s on the tiny checkpoints (no CLI).

Tests taking `family` run for every backbone of the test matrix; the others on the tiny Qwen2.5-VL.
"""

import functools
import json
import sys
from pathlib import Path

import pytest
import torch
from lmms_eval.api.instance import Instance
from lmms_eval.models import get_model

from lmms_var.backbones import BACKBONES, backbone_for_model_type
from lmms_var.backbones.qwen_common import qwen_pixel_bounds
from lmms_var.models.args import ModelArgError
from lmms_var.models.classes import Qwen2_5_VL_VAR, Qwen2_5_VL_VAR_Chat
from lmms_var.models.diagnostics import summarise
from lmms_var.models.var_model import _upstream_flags
from lmms_var.testing.images import random_image
from tests.conftest import FAMILIES, TINY_SPEC, TINY_TAU
from tests.models.conftest import thinks_by_default
from tests.models.instances import LMMS_EVAL_OPTIONS, SPLIT, TASK, make_requests

# Small images keep prompts short; the four sizes give four different visual-token counts.
PIXELS = {"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 16}
SIZES = [(56, 112), (84, 112), (112, 112), (56, 56)]
DOCS = [
    {
        "question": f"Question {i}: is the red point left of the blue one? (A) yes (B) no",
        "image": random_image(i, size),
    }
    for i, size in enumerate(SIZES)
]
GEN_KWARGS = {"max_new_tokens": 6, "temperature": 0, "until": ["\n\n"]}
CLASSES = {"chat": Qwen2_5_VL_VAR_Chat, "simple": Qwen2_5_VL_VAR}
QWEN2_5_VL = backbone_for_model_type(TINY_SPEC.model_type)


# The classes compared with upstream here: the lmms-eval CLI tests run every family's default class on
# chat tasks (the chat class where upstream has one), so this covers the simple classes beside them.
PARITY_HERE = [
    (TINY_SPEC.model_type, "chat"),
    *(
        (family, "simple")
        for family in FAMILIES
        if backbone_for_model_type(family).lmms_eval.chat_class
        and backbone_for_model_type(family).lmms_eval.simple_class
    ),
]
# llava_hf's simple class writes its own prompt (image tokens in a text turn), not the chat prompts the
# tiny checkpoints' letter answers are planted on: there every doc gets the same letter.
ANSWERS_ALIKE = {("llava", "simple"), ("llava_next", "simple")}


def model_args(backbone, **args) -> dict:
    """Small images where the family takes pixel bounds, and the largest batch it allows (up to 2).

    Tests add `device="cpu"` (ours) or `device="cpu", device_map="cpu"` (upstream): both default to
    CUDA where there is one."""
    spec = backbone.lmms_eval
    pixels = PIXELS if "min_pixels" in spec.upstream_args else {}
    thinking = {"enable_thinking": False} if thinks_by_default(backbone) else {}
    return {"batch_size": min(2, spec.max_batch_size or 2), **pixels, **thinking, **args}


def var_class(backbone, kind: str) -> type:
    return get_model(backbone.lmms_eval.model_id, force_simple=kind == "simple")


def requests(kind: str) -> list[Instance]:
    """DOCS as lmms-eval hands them to a chat or simple model."""
    return make_requests(DOCS, GEN_KWARGS, kind)


def spy_generated_ids(monkeypatch, loader: type) -> list[list[list[int]]]:
    """Token ids of every `generate` call (per batch, per row), captured below lmms-eval's decoding."""
    calls: list[list[list[int]]] = []
    original = loader.generate

    def spy(self, *args, **kwargs):
        output = original(self, *args, **kwargs)
        calls.append(output[:, kwargs["input_ids"].shape[1] :].tolist())
        return output

    monkeypatch.setattr(loader, "generate", spy)
    return calls


def spy_prefill_logits(monkeypatch, loader: type) -> list[torch.Tensor]:
    """Next-token logits of every prefill forward: where VAR acts, they must move."""
    calls: list[torch.Tensor] = []
    original = loader.forward

    @functools.wraps(original)  # generate() inspects forward's signature
    def spy(self, *args, **kwargs):
        output = original(self, *args, **kwargs)
        if kwargs["input_ids"].shape[1] > 1:
            calls.append(output.logits[:, -1].detach().clone())
        return output

    monkeypatch.setattr(loader, "forward", spy)
    return calls


@pytest.fixture
def prefill_logits(monkeypatch) -> list[torch.Tensor]:
    return spy_prefill_logits(monkeypatch, QWEN2_5_VL.loader_class())


def generate(lm, kind: str, ids: list) -> tuple[list[str], list]:
    lm.task_dict = {TASK: {SPLIT: DOCS}}
    start = len(ids)
    texts = [getattr(out, "text", out) for out in lm.generate_until(requests(kind))]
    return texts, ids[start:]


@pytest.mark.parametrize(("model_type", "kind"), PARITY_HERE)
def test_var_off_matches_upstream(model_type, kind, answering_checkpoints, monkeypatch):
    """var=false is lmms-eval's own model: same dtype (upstream's on a GPU), same tokens.

    Upstream runs on the CPU with device=cpu,device_map=cpu (its defaults need CUDA, and llava_hf's
    `device_map=""` no longer loads in transformers 5); ours needs only the dtype where upstream
    forces bfloat16.
    """
    backbone = backbone_for_model_type(model_type)
    spec = backbone.lmms_eval
    generated_ids = spy_generated_ids(monkeypatch, backbone.loader_class())
    upstream_class = get_model(spec.upstream_id, force_simple=kind == "simple")
    common = model_args(backbone, pretrained=str(answering_checkpoints(model_type)))
    upstream = upstream_class(device="cpu", device_map="cpu", **common)
    dtype = {"dtype": "bfloat16"} if spec.cuda_dtype == "bfloat16" else {}
    ours = var_class(backbone, kind)(var=False, device="cpu", **dtype, **common)
    assert isinstance(ours, upstream_class) and ours.intervention_handle is None
    assert ours.model.dtype == upstream.model.dtype
    upstream_out = generate(upstream, kind, generated_ids)
    assert generate(ours, kind, generated_ids) == upstream_out
    if (model_type, kind) not in ANSWERS_ALIKE:
        # The letter-answering checkpoint answers per doc: docs mixed up would not match.
        assert len(set(upstream_out[0])) > 1
    assert len(upstream_out[1]) == len(DOCS) // common["batch_size"]  # batches of two pad on the left


@pytest.mark.parametrize("kind", ["chat", "simple"])
def test_var_on_changes_logits_and_records_each_doc(
    tiny_checkpoint, tmp_path, kind, prefill_logits, log_lines
):
    path = tmp_path / "diagnostics.jsonl"
    common = dict(pretrained=str(tiny_checkpoint), batch_size=2, device="cpu", **PIXELS)
    on = CLASSES[kind](sink_dims="17;93", tau=TINY_TAU, p=0.0, diagnostics_path=str(path), **common)
    assert on.model.dtype == torch.float32  # the CPU default
    assert on.intervention_handle.config.sink_dims == (17, 93) and on.intervention_handle.config.p == 0.0
    off = CLASSES[kind](var=False, **common)
    on.task_dict = off.task_dict = {TASK: {SPLIT: DOCS}}
    assert len(on.generate_until(requests(kind))) == len(DOCS)
    on_logits = prefill_logits[:]
    off.generate_until(requests(kind))
    off_logits = prefill_logits[len(on_logits) :]
    assert len(on_logits) == len(off_logits) == 2
    assert not all(map(torch.allclose, on_logits, off_logits)), (
        "p=0 moves all sink attention: logits must change"
    )

    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["task"], r["split"], r["doc_id"]) for r in records] == [
        (TASK, SPLIT, i) for i in range(len(DOCS))
    ]
    # Each record belongs to its doc: the visual-token count follows that doc's image size.
    grids = [on.processor.image_processor(images=[doc["image"]], **PIXELS)["image_grid_thw"] for doc in DOCS]
    assert [r["visual_tokens"] for r in records] == [int(grid.prod()) // 4 for grid in grids]
    assert len({r["visual_tokens"] for r in records}) == len(DOCS)
    assert all(r["layers"] == [2] and r["text_sinks"][0] > 0 for r in records)
    assert any(r["redistributed_rows"] > 0 and r["moved_mass"] > 0 for r in records)
    assert not any("found no visual sink" in line for line in log_lines)  # the planted sinks fire
    summary = next(line for line in log_lines if line.startswith("VAR diagnostics:"))
    assert f"{len(DOCS)} samples" in summary and str(path) in summary
    assert any("VAR on: sink_dims=[17, 93] from model args" in line for line in log_lines)


# Each attribute upstream keeps its processor in (`processor`, `_image_processor`), every family added
# since Qwen2.5-VL (none has published dims).
@pytest.mark.parametrize(
    "model_type",
    ["qwen2_5_vl", "llava", "internvl", "llava_next", "llava_onevision", "qwen3_vl_moe", "gemma3", "qwen3_5"],
)
def test_sink_dims_auto_measures_then_reuses_the_cache(
    model_type, tiny_checkpoints, tmp_path, monkeypatch, log_lines
):
    monkeypatch.setenv("LMMS_VAR_CACHE_DIR", str(tmp_path))
    backbone = backbone_for_model_type(model_type)
    checkpoint = tiny_checkpoints(model_type)
    for source in ("sink_dims=auto (measured)", "sink_dims=auto (cache:"):
        args = model_args(backbone, pretrained=str(checkpoint), sink_dims="auto", tau=TINY_TAU, device="cpu")
        lm = var_class(backbone, "chat")(**args)
        assert lm.intervention_handle.config.sink_dims == (17, 93)
        assert any(f"from {source}" in line for line in log_lines)


@pytest.mark.parametrize(
    ("model_type", "name", "dims"),
    [
        ("qwen2_5_vl", "Qwen2.5-VL-7B-Instruct", "458, 2570"),
        ("qwen2_vl", "Qwen2-VL-7B-Instruct", "458, 2570"),
        ("llava", "llava-1.5-13b-hf", "2100, 4743"),
    ],
)
def test_published_dims_are_looked_up_by_checkpoint_name(
    model_type, name, dims, tiny_checkpoints, tmp_path, no_weights
):
    """A checkpoint named like a published one gets its dims, which the tiny model is too narrow for:
    its config says so before the weights load."""
    renamed = tmp_path / name
    renamed.symlink_to(tiny_checkpoints(model_type), target_is_directory=True)
    backbone = backbone_for_model_type(model_type)
    expected = rf"sink_dims \[{dims}\] \(from configs/sink_dims.yaml .*\) are beyond the hidden size 128 of"
    with pytest.raises(ModelArgError, match=expected):
        var_class(backbone, "simple")(**model_args(backbone, pretrained=str(renamed), device="cpu"))


def test_unknown_model_without_sink_dims_says_how_to_get_them(tiny_checkpoint, no_weights):
    with pytest.raises(ModelArgError) as error:
        Qwen2_5_VL_VAR_Chat(pretrained=str(tiny_checkpoint))
    message = str(error.value)
    assert "no published sink_dims" in message and "hidden_size=128, num_hidden_layers=4" in message
    for hint in ("sink_dims=458;2570", "sink_dims=auto", "lmms-var find-sink-dims --model", "var=false"):
        assert hint in message


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"p": 2}, "p must be in [0, 1], got 2"),
        ({"sink_dims": "abc"}, "sink_dims must be non-negative integers separated by ';'"),
        ({"attn_implementation": "flex_attention"}, "attn_implementation must be one of"),
        ({"device_map": "auto", "device": "cpu"}, "device_map=auto needs CUDA GPUs"),
        ({"batch_size": "auto"}, "batch_size must be a positive integer, got 'auto'"),
        ({"dtype": "int4"}, "dtype must be one of"),
    ],
)
def test_bad_model_args_are_rejected_by_name(tiny_checkpoint, no_weights, args, message):
    with pytest.raises(ModelArgError) as error:
        Qwen2_5_VL_VAR_Chat(pretrained=str(tiny_checkpoint), **{"sink_dims": "17;93", **args})
    assert message in str(error.value)


def test_unknown_model_arg_is_named_with_the_args_there_are(tiny_checkpoint, no_weights):
    with pytest.raises(ModelArgError) as error:
        Qwen2_5_VL_VAR_Chat(pretrained=str(tiny_checkpoint), rh0=0.3)
    message = str(error.value)
    assert message.startswith(
        "qwen2_5_vl_var: invalid model_args: unknown arg(s) ['rh0']: qwen2_5_vl_var takes"
    )
    assert "'rho'" in message and "lmms-eval's qwen2_5_vl args" in message and "'max_pixels'" in message


@pytest.mark.parametrize("model_type", FAMILIES)
def test_a_checkpoint_of_another_family_fails_from_its_config(model_type, tiny_checkpoints, no_weights):
    """For every family's model, sink dims given: the config alone refuses another family's checkpoint."""
    spec = backbone_for_model_type(model_type).lmms_eval
    following = FAMILIES[FAMILIES.index(model_type) + 1 :] + FAMILIES
    other = next(family for family in following if backbone_for_model_type(family).lmms_eval is not spec)
    served = " or ".join(f"{b.model_type!r} ({b.family})" for b in BACKBONES if b.lmms_eval is spec)
    checkpoint = tiny_checkpoints(other)
    with pytest.raises(ModelArgError) as error:
        get_model(spec.model_id)(pretrained=str(checkpoint), sink_dims="17;93", device="cpu")
    served = " or ".join(f"{b.model_type!r} ({b.family})" for b in BACKBONES if b.lmms_eval is spec)
    assert str(error.value) == (
        f"{spec.model_id}: invalid model_args: pretrained={checkpoint} is a {other!r} checkpoint, not "
        f"{served}; run it with --model {backbone_for_model_type(other).lmms_eval.model_id}"
    )
    if spec.model_id == "llava_hf_var":  # one model, the three families upstream's llava_hf loads
        assert (
            served
            == "'llava' (LLaVA-1.5) or 'llava_next' (LLaVA-NeXT) or 'llava_onevision' (LLaVA-OneVision)"
        )


def test_a_missing_checkpoint_is_named_as_such(tmp_path, no_weights):
    with pytest.raises(ModelArgError) as error:
        Qwen2_5_VL_VAR_Chat(pretrained="/nonexistent/checkpoint", sink_dims="17;93")
    assert str(error.value).startswith(
        "qwen2_5_vl_var: invalid model_args: pretrained=/nonexistent/checkpoint: no such folder (give a "
        "checkpoint folder or a Hub model id such as"
    )
    with pytest.raises(
        ModelArgError, match=r"pretrained=.*: a folder without a config.json, not a checkpoint"
    ):
        Qwen2_5_VL_VAR_Chat(pretrained=str(tmp_path), sink_dims="17;93")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            {"diagnostics_path": "{file}/diagnostics.jsonl"},
            "diagnostics_path {file}/diagnostics.jsonl cannot be created: {file} is a file, not a folder",
        ),
        ({"diagnostics_path": "{tmp}"}, None),  # a folder: its file goes in it (checked, no error)
        (
            {"attention_maps": 1, "attention_maps_path": "{file}"},
            "attention_maps_path {file} is a file; give a folder",
        ),
        (
            {"min_pixels": 5000, "max_pixels": 4000},
            "min_pixels must be at most max_pixels, got min_pixels=5000 > max_pixels=4000",
        ),
        ({"max_pixels": 0}, "max_pixels must be a positive number of pixels, got 0"),
        ({"device": "cuda:x"}, "device 'cuda:x' is not a device; give cpu, cuda or cuda:N"),
    ],
)
def test_bad_paths_and_upstream_args_fail_before_loading(
    tiny_checkpoint, tmp_path, a_file, no_weights, args, message
):
    args = {
        name: value.format(file=a_file, tmp=tmp_path) if isinstance(value, str) else value
        for name, value in args.items()
    }
    # Good args get as far as loading the weights, which `no_weights` refuses.
    expected = ModelArgError if message else AssertionError
    with pytest.raises(expected) as error:
        Qwen2_5_VL_VAR_Chat(pretrained=str(tiny_checkpoint), sink_dims="17;93", tau=TINY_TAU, **args)
    if message:
        assert str(error.value) == f"qwen2_5_vl_var: invalid model_args: {message.format(file=a_file)}"
    else:
        assert str(error.value) == "weights were loaded before the bad input was reported"


def test_a_cache_folder_that_is_a_file_fails_sink_dims_auto_before_loading(
    tiny_checkpoint, a_file, monkeypatch, no_weights
):
    monkeypatch.setenv("LMMS_VAR_CACHE_DIR", str(a_file))
    with pytest.raises(ModelArgError) as error:
        Qwen2_5_VL_VAR_Chat(pretrained=str(tiny_checkpoint), sink_dims="auto")
    assert str(error.value) == (
        "qwen2_5_vl_var: invalid model_args: sink_dims=auto: the sink-dims cache folder (from $LMMS_VAR_CACHE_DIR) "
        f"{a_file} is a file; give a folder"
    )


def test_cuda_without_a_gpu_is_named(tiny_checkpoint, monkeypatch, no_weights):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelArgError) as error:
        Qwen2_5_VL_VAR_Chat(pretrained=str(tiny_checkpoint), sink_dims="17;93", device="cuda")
    assert str(error.value) == (
        "qwen2_5_vl_var: invalid model_args: device 'cuda': this machine has no CUDA device; give cpu"
    )


def test_model_args_as_lmms_eval_hands_them_over(tiny_checkpoint, no_weights):
    """`--model_args` go through our `create_from_arg_string`: each mistake named in one line."""
    build = Qwen2_5_VL_VAR_Chat.create_from_arg_string
    common = f"pretrained={tiny_checkpoint},tau={TINY_TAU:g},device=cpu"
    for arg_string, options, message in [
        (
            f"{common},sink_dims=17,93",
            LMMS_EVAL_OPTIONS,
            "'93' is not an arg=value pair; separate sink dims "
            "with ';': sink_dims=17;93; commas separate model args (k=v,k=v)",
        ),
        (f"{common},p=0.5,p=0.6", LMMS_EVAL_OPTIONS, "p is given twice (p=0.5 and p=0.6)"),
        (
            f"{common},batch_size=2",
            {**LMMS_EVAL_OPTIONS, "batch_size": "4"},
            "batch_size=2 in --model_args and lmms-eval's --batch_size 4 differ; give one of them",
        ),
        (
            common,
            {**LMMS_EVAL_OPTIONS, "device": "cuda:0"},
            "device=cpu in --model_args and lmms-eval's --device cuda:0 differ; give one of them",
        ),
    ]:
        with pytest.raises(ModelArgError) as error:
            build(arg_string, options)
        assert str(error.value) == f"qwen2_5_vl_var: invalid model_args: {message}"


@pytest.mark.parametrize(
    ("in_model_args", "lmms_eval_flag", "used"), [(2, 1, 2), (None, "2", 2), (2, "2", 2)]
)
def test_batch_size_in_model_args_or_as_lmms_evals_flag(tiny_checkpoint, in_model_args, lmms_eval_flag, used):
    """The README's `batch_size=2` in --model_args works beside lmms-eval's own --batch_size (default 1)."""
    arg_string = f"pretrained={tiny_checkpoint},sink_dims=17;93,tau={TINY_TAU:g},device=cpu"
    if in_model_args is not None:
        arg_string += f",batch_size={in_model_args}"
    lm = Qwen2_5_VL_VAR_Chat.create_from_arg_string(
        arg_string, {**LMMS_EVAL_OPTIONS, "batch_size": lmms_eval_flag}
    )
    assert lm.batch_size_per_gpu == used


def test_llava_takes_one_prompt_at_a_time(no_weights, tiny_checkpoint):
    with pytest.raises(
        ModelArgError, match=r"llava_hf_var: invalid model_args: batch_size must be at most 1"
    ):
        get_model("llava_hf_var")(pretrained=str(tiny_checkpoint), batch_size=2)


def test_a_generation_error_fails_the_run_where_upstream_answers_empty(tiny_checkpoints, monkeypatch):
    """lmms-eval's llava_hf logs a failed `generate` and answers "": ours lets the error through."""
    backbone = backbone_for_model_type("llava")  # the upstream that swallows them

    def broken(*args, **kwargs):
        raise RuntimeError("generation broke")

    common = model_args(backbone, pretrained=str(tiny_checkpoints("llava")))
    upstream = get_model(backbone.lmms_eval.upstream_id)(device="cpu", device_map="cpu", **common)
    ours = var_class(backbone, "chat")(sink_dims="17;93", tau=TINY_TAU, device="cpu", **common)
    monkeypatch.setattr(backbone.loader_class(), "generate", broken)
    assert generate(upstream, "chat", [])[0] == [""] * len(DOCS)
    with pytest.raises(RuntimeError, match="generation broke"):
        generate(ours, "chat", [])


# Gemma 3's upstream takes pixel bounds too, but its processor ignores them: nothing to refuse there.
@pytest.mark.parametrize(
    "model_type",
    [f for f in FAMILIES if backbone_for_model_type(f).lmms_eval.check_upstream_args is qwen_pixel_bounds],
)
def test_min_pixels_above_max_pixels_is_refused_for_every_family_with_pixel_bounds(
    model_type, tiny_checkpoints, no_weights
):
    spec = backbone_for_model_type(model_type).lmms_eval
    with pytest.raises(ModelArgError) as error:
        get_model(spec.model_id)(
            pretrained=str(tiny_checkpoints(model_type)), sink_dims="17;93", min_pixels=6000, max_pixels=5000
        )
    assert str(error.value) == (
        f"{spec.model_id}: invalid model_args: min_pixels must be at most max_pixels, got "
        "min_pixels=6000 > max_pixels=5000"
    )


def test_sink_dims_that_never_fire_are_warned_about_once(tiny_checkpoint, log_lines):
    """Two batches and a second call: one warning, after the first batch, saying what to try."""
    lm = Qwen2_5_VL_VAR_Chat(
        pretrained=str(tiny_checkpoint), sink_dims="3;4", tau=TINY_TAU, batch_size=2, device="cpu", **PIXELS
    )
    lm.task_dict = {TASK: {SPLIT: DOCS}}
    lm.generate_until(requests("chat"))
    lm.generate_until(requests("chat"))
    warnings = [line for line in log_lines if "found no visual sink" in line]
    assert len(warnings) == 1
    assert warnings[0].startswith(
        "qwen2_5_vl_var: VAR found no visual sink in any layer of the first batch "
        f"(sink_dims=[3, 4], tau={TINY_TAU:g}; 2 prompt(s), "
    )
    for hint in (
        "VAR changes nothing",
        "lower tau",
        "sink_dims=auto",
        "lmms-var find-sink-dims",
        "validate-sink-dims",
    ):
        assert hint in warnings[0]


@pytest.mark.parametrize("model_type", FAMILIES)
def test_every_boolean_model_arg_takes_only_true_or_false(model_type, tiny_checkpoints, no_weights):
    """Ours and upstream's (an upstream one defaulting to None included: `enable_thinking`, which
    upstream takes as true for any string, so `maybe` emptied every answer)."""
    model_class = get_model(backbone_for_model_type(model_type).lmms_eval.model_id)
    flags = _upstream_flags(model_class)
    thinking = model_type in ("qwen3_vl", "qwen3_vl_moe", "qwen3_5")
    assert "use_cache" in flags and ("enable_thinking" in flags) == thinking
    common = {"pretrained": str(tiny_checkpoints(model_type)), "sink_dims": "17;93", "device": "cpu"}
    for name in ("var", "except_last_layer", "diagnostics", *flags):
        with pytest.raises(ModelArgError) as error:
            model_class(**common, **{name: "maybe"})
        assert str(error.value).endswith(f"invalid model_args: {name} must be true or false, got 'maybe'")
    # The spellings the README lists get as far as loading the weights, which `no_weights` refuses.
    with pytest.raises(AssertionError, match="weights were loaded"):
        model_class(**common, **dict.fromkeys(flags, "no"))


def test_sink_dims_beyond_the_hidden_size_fail_from_the_checkpoint_config(tiny_checkpoint, no_weights):
    with pytest.raises(ModelArgError) as error:
        Qwen2_5_VL_VAR_Chat(pretrained=str(tiny_checkpoint), sink_dims="17;99999")
    assert str(error.value) == (
        f"qwen2_5_vl_var: invalid model_args: sink_dims [99999] (from model args) are beyond the hidden size "
        f"128 of {tiny_checkpoint} (its config.json): sink dims must be hidden-state channels in [0, 128)"
    )


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
@pytest.mark.parametrize(
    "args",
    [
        {"diagnostics_path": "/proc/nonexistent/x.jsonl"},
        {"attention_maps": 1, "attention_maps_path": "/proc/nonexistent/maps"},
    ],
)
def test_output_args_are_probed_by_creating_them_before_loading(tiny_checkpoint, no_weights, args):
    """Root passes every permission check, /proc included: only creating the path tells."""
    name = next(name for name in args if name.endswith("_path"))
    with pytest.raises(ModelArgError) as error:
        Qwen2_5_VL_VAR_Chat(pretrained=str(tiny_checkpoint), sink_dims="17;93", **args)
    assert str(error.value).startswith(f"qwen2_5_vl_var: invalid model_args: {name} {args[name]} cannot be")


@pytest.mark.parametrize("flag", ["--use_cache", "-c"])
def test_lmms_evals_response_cache_is_warned_about_once(
    tiny_checkpoint, tmp_path, monkeypatch, log_lines, flag
):
    """lmms-eval answers from its cache before the model is asked, keyed without the images."""
    cache = tmp_path / f"cache{flag}"
    monkeypatch.setattr(sys, "argv", ["lmms-eval", "--model", "qwen2_5_vl_var", flag, str(cache)])
    monkeypatch.setattr(QWEN2_5_VL.loader_class(), "from_pretrained", _stop_loading)
    for _ in range(2):
        with pytest.raises(_LoadingStopped):
            Qwen2_5_VL_VAR_Chat(pretrained=str(tiny_checkpoint), sink_dims="17;93")
    warnings = [line for line in log_lines if "--use_cache" in line]
    assert len(warnings) == 1
    assert f"lmms-eval's --use_cache {cache} answers requests before this model sees them" in warnings[0]
    assert "leave out the images" in warnings[0]


class _LoadingStopped(Exception):
    pass


def _stop_loading(*_args, **_kwargs):
    raise _LoadingStopped


def test_a_diagnostics_summary_without_samples_points_at_no_file(tmp_path):
    """A call whose requests were all answered otherwise writes no record: the log must not send the
    reader to a file that was never written."""
    assert (
        summarise([], tmp_path / "diagnostics.jsonl")
        == "VAR diagnostics: no samples generated, no records written"
    )


def test_qwen3_5_names_the_layers_var_acts_on(tiny_checkpoints, log_lines, tmp_path):
    """Layer 3 of the tiny Qwen3.5 is linear attention: with the last layer in, VAR acts on layer 2 only
    and its log line says so; the diagnostics name that layer alone."""
    backbone = backbone_for_model_type("qwen3_5")
    args = model_args(backbone, pretrained=str(tiny_checkpoints("qwen3_5")), device="cpu")
    var = {"sink_dims": "17;93", "tau": TINY_TAU, "except_last_layer": False, "diagnostics": True}
    lm = var_class(backbone, "chat")(**var, diagnostics_path=str(tmp_path / "d.jsonl"), **args)
    assert lm.intervention_handle.active_layers == {2}
    assert any(
        "(layers 2..3; of those only [2], the others being linear attention)" in line for line in log_lines
    )
    generate(lm, "chat", [])
    records = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert len(records) == len(DOCS) and all(record["layers"] == [2] for record in records)
