"""The same exactness checks on a CUDA device, in float32 and bfloat16 (skipped without a GPU)."""

import copy

import pytest
import torch

from lmms_var import enable_var
from tests.patch.eager_reference import eager_var
from tests.patch.test_enable_var import CONFIG, logits, valid_logits

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize(
    ("dtype", "atol", "compile"),
    [(torch.float32, 1e-4, False), (torch.bfloat16, 5e-2, False), (torch.float32, 1e-4, True)],
)
def test_fused_equals_reference_on_cuda(tiny_model, padded_batch, dtype, atol, compile):
    model = copy.deepcopy(tiny_model[0]).to("cuda", dtype)
    inputs = {k: (v.to(dtype) if v.is_floating_point() else v).to("cuda") for k, v in padded_batch.items()}
    base = logits(model, inputs)
    with eager_var(model, CONFIG, inputs["input_ids"], inputs["attention_mask"]):
        reference = logits(model, inputs).float()
    with enable_var(model, CONFIG, diagnostics=True, compile=compile) as handle:
        patched = logits(model, inputs).float()
        assert all(sample["redistributed_rows"] > 0 for sample in handle.diagnostics())
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 4
    assert (patched - base.float()).abs().max() > 0
    for a, b in zip(valid_logits(inputs, patched), valid_logits(inputs, reference), strict=True):
        torch.testing.assert_close(a, b, atol=atol, rtol=0)
