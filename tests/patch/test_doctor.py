"""`lmms-var doctor` on a machine without a GPU: the CPU parts, the kernels compiled for A100 and
H100, and a verdict that says what it could not check. (Its device check runs in
tests/patch/test_row_kernels.py, where the kernels run under Triton's interpreter.)"""

import json
import subprocess
import sys

import pytest
import torch

from lmms_var.patch import doctor

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks what a machine without a GPU reports"
)


def test_without_a_gpu_the_doctor_says_what_it_could_not_check():
    report = doctor.diagnose(compile_kernels=False)
    statuses = {finding.check: finding.status for finding in report.findings}
    assert report.device == "no GPU (CPU only)"
    assert torch.__version__.startswith(report.versions["torch"]) and report.versions["triton"] is not None
    assert statuses["kernels agree with the PyTorch path"] == doctor.NOT_CHECKED
    assert statuses["cost on a random 3B-shaped model (gpu-3b, gpu-long-text)"] == doctor.NOT_CHECKED
    # The CPU's own SDPA (flash for CPU) returns the log-sum-exp bit-identically.
    shortcut = [finding for finding in report.findings if finding.check.startswith("log-sum-exp shortcut")]
    assert len(shortcut) == 2 and all("bit-identical: VAR reads" in finding.detail for finding in shortcut)
    verdict = report.verdict()
    assert verdict.startswith("READY as far as checked; 2 check(s) need a GPU")
    assert "kernels agree with the PyTorch path" in verdict


@pytest.mark.slow
def test_doctor_command_compiles_the_kernels_for_a100_and_h100(tmp_path):
    """The whole command, as a user without a GPU runs it (compiling 16 variants for two GPUs)."""
    output = tmp_path / "doctor.json"
    command = [sys.executable, "-m", "lmms_var.tools.cli", "doctor", "--output", str(output)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(output.read_text())
    compiled = [finding for finding in report["findings"] if finding["check"].startswith("compiles for")]
    assert len(compiled) == 2 * 16 and all(finding["status"] == "ok" for finding in compiled)
    assert {finding["check"].split(":")[0] for finding in compiled} == {
        "compiles for A100",
        "compiles for H100",
    }
    assert result.stdout.strip().splitlines()[-1] == report["verdict"]
    assert report["verdict"].startswith("READY as far as checked")
