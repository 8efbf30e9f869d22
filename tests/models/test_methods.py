"""`method=` on the VAR models: ScalingVis, AdaptVis and PAI as model args, checked before any weights
load, attached with one log line, their diagnostics naming the method, and the journal keyed by it.

On the tiny Qwen2.5-VL (4 decoder layers); the lmms-eval CLI runs of every method and backbone are in
`test_lmms_eval_cli.py`.
"""

import json

import pytest
from transformers import Qwen2_5_VLForConditionalGeneration

from lmms_var.models.args import ModelArgError
from lmms_var.models.classes import Qwen2_5_VL_VAR_Chat
from lmms_var.models.sink_check import FirstBatchSinkCheck
from tests.conftest import TINY_SPEC
from tests.models import test_var_model as model_tests
from tests.models.instances import SPLIT, TASK

# Each method's args as the issue spells them, and the line its model logs once attached.
METHODS = {
    "scalingvis": (
        {"alpha": 1.5},
        "ScalingVis on: alpha=1.5 (layers 0..3); diagnostics on",
    ),
    "adaptvis": (
        {"alpha_low": 0.5, "alpha_high": 1.5, "threshold": 0.4},
        "AdaptVis on: alpha_low=0.5 alpha_high=1.5 threshold=0.4 (layers 0..3); diagnostics on",
    ),
    "pai": (
        {"alpha": 0.2, "gamma": 1.1},
        "PAI on: alpha=0.2 start_layer=2 end_layer=None gamma=1.1 (layers 2..3); diagnostics on",
    ),
}
NAMES = {"scalingvis": "ScalingVis", "adaptvis": "AdaptVis", "pai": "PAI"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            {"method": "scalingvis"},
            "method=scalingvis: alpha is required: give alpha=N, e.g. one of the authors' grid 0.5, 0.8, 1.2, "
            "1.5, 2.0",
        ),
        (
            {"method": "scalingvis", "alpha": 1.5, "sink_dims": "17;93"},
            "sink_dims belongs to method=var, not ",
        ),
        ({"method": "adaptvis", "tau": 5}, "tau belongs to method=var, not method=adaptvis"),
        ({"alpha": 1.5}, "alpha belongs to method=scalingvis or method=pai, not method=var"),
        ({"method": "adaptvis", "threshold": 2}, "method=adaptvis: threshold must be in [0, 1], got 2.0"),
        (
            {"method": "pai", "start_layer": 3, "end_layer": 2},
            "method=pai: end_layer must be above start_layer (3), got 2",
        ),
        (
            {"method": "pai", "end_layer": 40},
            "method=pai: end_layer must be at most the model's 4 layers, got 40 (num_hidden_layers of {ckpt} "
            "in its config.json)",
        ),
        (
            {"method": "pai", "start_layer": 4},
            "method=pai: start_layer must be below the model's 4 layers, got 4 (num_hidden_layers of {ckpt} "
            "in its config.json)",
        ),
    ],
)
def test_bad_method_args_fail_in_one_line_before_loading(tiny_checkpoint, no_weights, args, message):
    with pytest.raises(ModelArgError) as error:
        Qwen2_5_VL_VAR_Chat(pretrained=str(tiny_checkpoint), device="cpu", **args)
    assert "\n" not in str(error.value)
    assert str(error.value).startswith(
        "qwen2_5_vl_var: invalid model_args: " + message.format(ckpt=tiny_checkpoint)
    )


@pytest.mark.parametrize(
    "args",
    [
        {"method": "pai", "end_layer": 4, "start_layer": 0},  # the last layer included: in range
        {"method": "scalingvis", "var": False},  # the plain model needs no alpha
        *({"method": method, **args} for method, (args, _) in METHODS.items()),
    ],
)
def test_good_method_args_get_as_far_as_loading(tiny_checkpoint, no_weights, args):
    with pytest.raises(AssertionError, match="weights were loaded"):
        Qwen2_5_VL_VAR_Chat(pretrained=str(tiny_checkpoint), device="cpu", **args)


def common_args(checkpoint, **args) -> dict:
    return dict(pretrained=str(checkpoint), batch_size=2, device="cpu", **model_tests.PIXELS, **args)


def answers(lm) -> list[str]:
    lm.task_dict = {TASK: {SPLIT: model_tests.DOCS}}
    return [getattr(out, "text", out) for out in lm.generate_until(model_tests.requests("chat"))]


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_attaches_logs_once_and_records_what_it_did(
    method, answering_checkpoints, tmp_path, log_lines
):
    """The method's handle on the model (PAI's with the processor's tokenizer for its refine), its
    line in the log, no VAR sink check, and one diagnostics record per doc naming the method."""
    args, line = METHODS[method]
    checkpoint = answering_checkpoints(TINY_SPEC.model_type)
    diagnostics = tmp_path / "d.jsonl"
    lm = Qwen2_5_VL_VAR_Chat(
        **common_args(checkpoint, method=method, journal="off", diagnostics_path=str(diagnostics)), **args
    )
    handle = lm.intervention_handle
    assert handle.intervention.name == NAMES[method]
    assert handle.tokenizer is lm.processor.tokenizer
    assert f"qwen2_5_vl_var: {line}" in log_lines
    assert not any(isinstance(watcher, FirstBatchSinkCheck) for watcher in lm._watchers)
    assert len(answers(lm)) == len(model_tests.DOCS)
    records = [json.loads(text) for text in diagnostics.read_text().splitlines()]
    assert [record["doc_id"] for record in records] == list(range(len(model_tests.DOCS)))
    assert all(record["method"] == method and record["visual_tokens"] > 0 for record in records)
    assert all("visual_sinks" not in record for record in records)  # VAR's alone
    assert any(record["redistributed_rows"] > 0 and record["moved_mass"] > 0 for record in records)
    assert any(text.startswith(f"{NAMES[method]} diagnostics: 4 samples; ") for text in log_lines)


def test_var_false_is_the_plain_model_whatever_the_method(answering_checkpoints, log_lines):
    checkpoint = answering_checkpoints(TINY_SPEC.model_type)
    lm = Qwen2_5_VL_VAR_Chat(**common_args(checkpoint, method="pai", var=False, journal="off"))
    assert lm.intervention_handle is None
    assert "qwen2_5_vl_var: PAI off (var=false): plain Qwen2.5-VL" in log_lines


def test_a_journal_of_var_answers_never_answers_another_method(
    answering_checkpoints, tmp_path, monkeypatch, log_lines
):
    """The journal's key holds the method and its config: a ScalingVis run into a VAR run's journal
    generates every doc, and a second ScalingVis run is answered from what the first kept."""
    checkpoint = answering_checkpoints(TINY_SPEC.model_type)
    common = common_args(checkpoint, journal=str(tmp_path / "journal"))
    answers(Qwen2_5_VL_VAR_Chat(**common, sink_dims="17;93"))
    count = len(model_tests.DOCS)
    assert f"0 of {count} requests answered from the journal" in log_lines

    generated = []
    original = Qwen2_5_VLForConditionalGeneration.generate

    def counting(self, *args, **kwargs):
        generated.append(kwargs["input_ids"].shape[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Qwen2_5_VLForConditionalGeneration, "generate", counting)
    first = answers(Qwen2_5_VL_VAR_Chat(**common, method="scalingvis", alpha=1.5))
    assert (
        sum(generated) == count and log_lines.count(f"0 of {count} requests answered from the journal") == 2
    )
    generated.clear()
    assert answers(Qwen2_5_VL_VAR_Chat(**common, method="scalingvis", alpha=1.5)) == first
    assert generated == [] and f"{count} of {count} requests answered from the journal" in log_lines
