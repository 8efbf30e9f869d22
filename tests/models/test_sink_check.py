"""The first-batch sink check on a real VAR attachment: a batch without images is not judged."""

import copy

import torch

from lmms_var import VARConfig, enable_var
from lmms_var.models.sink_check import FirstBatchSinkCheck
from tests.conftest import TINY_TAU
from tests.patch.conftest import prompt_inputs


def warnings(log_lines: list[str]) -> list[str]:
    return [line for line in log_lines if "found no visual sink" in line]


def test_the_first_prefill_with_images_is_the_one_checked(tiny_model, log_lines):
    model, processor = copy.deepcopy(tiny_model[0]), tiny_model[1]
    text_only = prompt_inputs(processor, [(0, "How are you?")])
    with_images = prompt_inputs(processor, [(1, "Is it red?"), (2, "Which is closer?")])
    with enable_var(model, VARConfig([3, 4], tau=TINY_TAU)) as handle, torch.no_grad():
        check = FirstBatchSinkCheck(handle, "qwen2_5_vl_var", "ckpt")
        model(**text_only)
        check.check_last_prefill()
        assert check.pending and not warnings(log_lines)
        model(**with_images)
        check.check_last_prefill()
        model(**with_images)
        check.check_last_prefill()
    assert not check.pending
    [warning] = warnings(log_lines)
    assert "(sink_dims=[3, 4], tau=5; 2 prompt(s), " in warning and "--model ckpt" in warning


def test_no_warning_when_a_visual_sink_is_found(tiny_model, log_lines):
    model, processor = copy.deepcopy(tiny_model[0]), tiny_model[1]
    with enable_var(model, VARConfig((17, 93), tau=TINY_TAU)) as handle, torch.no_grad():
        check = FirstBatchSinkCheck(handle, "qwen2_5_vl_var", "ckpt")
        model(**prompt_inputs(processor, [(1, "Is it red?")]))
        check.check_last_prefill()
    assert not check.pending and not warnings(log_lines)
