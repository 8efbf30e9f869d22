"""`method=` through the real `lmms-eval` CLI: each method on the tiny Qwen2.5-VL, one method on each other
main backbone, and PAI (its refine's second stream included) in two CPU processes against one.

Two lmms-eval launches: one process running every evaluation from a `--config` list, and two CPU
processes (torchrun) for PAI. lmms-eval exits 0 when a run fails: the results files are checked.
"""

from pathlib import Path

import pytest

from lmms_var.backbones import backbone_for_model_type
from tests.conftest import TINY_SPEC
from tests.models.conftest import ON_CPU, Run, family_args, join_args
from tests.models.test_lmms_eval_cli import EXPECTED_DOCS, config_run, distinct_answers

pytestmark = pytest.mark.slow

# Each method as the issue spells it, and the name it logs and records under.
METHOD_ARGS = {
    "scalingvis": "method=scalingvis,alpha=1.5",
    "adaptvis": "method=adaptvis,alpha_low=0.5,alpha_high=1.5,threshold=0.4",
    "pai": "method=pai,alpha=0.2,gamma=1.1",
}
NAMES = {"scalingvis": "ScalingVis", "adaptvis": "AdaptVis", "pai": "PAI"}
# One method on each other main backbone (every method runs on every backbone in tests/patch).
OTHER_BACKBONES = {"qwen2_vl": "pai", "qwen3_vl": "adaptvis", "llava": "scalingvis"}


def method_run(family: str, checkpoint: Path, name: str, args: str) -> dict:
    """A --config entry: the family's model with `args`, diagnostics in the run's own folder."""
    backbone = backbone_for_model_type(family)
    return {
        "name": name,
        "model": backbone.lmms_eval.model_id,
        # Relative paths resolve in the launch folder, which holds every run's output folder.
        "model_args": join_args(
            f"pretrained={checkpoint}", args, family_args(backbone), ON_CPU, f"diagnostics_path={name}"
        ),
    }


@pytest.fixture(scope="module")
def method_runs(lmms_eval_run, answering_checkpoints) -> Path:
    """One lmms-eval process: each method on Qwen2.5-VL, ScalingVis with alpha=1 and the plain model
    beside them, one method on each other main backbone; returns the folder holding their outputs."""
    qwen = answering_checkpoints(TINY_SPEC.model_type)
    runs = lmms_eval_run(
        "methods",
        configs=[
            *(
                method_run(
                    "qwen2_5_vl", qwen, method, f"{args},attention_maps=1,attention_maps_path={method}_maps"
                )
                for method, args in METHOD_ARGS.items()
            ),
            method_run("qwen2_5_vl", qwen, "identity", "method=scalingvis,alpha=1"),
            method_run("qwen2_5_vl", qwen, "plain", "var=false"),  # diagnostics: none with var=false
            *(
                method_run(family, answering_checkpoints(family), family, METHOD_ARGS[method])
                for family, method in OTHER_BACKBONES.items()
            ),
        ],
    )
    (runs.output.parent / "lmms_eval.log").write_text(runs.log)
    return runs.output.parent


def check_run(run: Run, model_id: str, method: str) -> None:
    """Results for every doc, the method's log line, and its diagnostics naming it, one record per doc."""
    assert run.results() is not None, run.log[-3000:]
    assert set(run.predictions()) == EXPECTED_DOCS
    assert f"{model_id}: {NAMES[method]} on: " in run.log
    records = run.diagnostics()
    assert {(r["task"], r["doc_id"]) for r in records} == EXPECTED_DOCS
    assert all(r["method"] == method for r in records)
    assert any(r["redistributed_rows"] > 0 and r["moved_mass"] > 0 for r in records)


@pytest.mark.parametrize("method", list(METHOD_ARGS))
def test_each_method_writes_results_on_qwen2_5_vl(method_runs, method):
    check_run(config_run(method_runs, method), "qwen2_5_vl_var", method)
    # attention_maps=1: a figure of doc 0 of each task, before and after the method
    assert sorted(path.name for path in (method_runs / f"{method}_maps").glob("*.png")) == sorted(
        f"{task}_doc0.png" for task in {task for task, _ in EXPECTED_DOCS}
    )


def test_scalingvis_with_alpha_1_answers_as_the_plain_model(method_runs):
    identity, plain = (config_run(method_runs, name) for name in ("identity", "plain"))
    assert identity.results() is not None and plain.results() is not None, plain.log[-3000:]
    assert identity.predictions() == plain.predictions()
    assert distinct_answers(plain) > 1  # docs mixed up would not match


@pytest.mark.parametrize("family", list(OTHER_BACKBONES))
def test_a_method_runs_on_each_main_backbone(method_runs, family):
    model_id = backbone_for_model_type(family).lmms_eval.model_id
    check_run(config_run(method_runs, family), model_id, OTHER_BACKBONES[family])


def test_two_cpu_processes_match_one_for_pai(method_runs, lmms_eval_run, answering_checkpoints):
    """torchrun with ACCELERATE_USE_CPU (gloo): PAI's per-doc answers and diagnostics are one process's."""
    qwen = answering_checkpoints(TINY_SPEC.model_type)
    double = lmms_eval_run(
        "methods_double", configs=[method_run("qwen2_5_vl", qwen, "pai", METHOD_ARGS["pai"])], processes=2
    )
    assert "Using 2 processes (DistributedType.MULTI_CPU)" in double.log
    two_processes = Run(double.output.parent / "pai", double.log)
    one_process = config_run(method_runs, "pai")
    check_run(two_processes, "qwen2_5_vl_var", "pai")
    assert two_processes.predictions() == one_process.predictions()
    assert distinct_answers(one_process) > 1
    counts = [(r["task"], r["doc_id"], r["redistributed_rows"]) for r in two_processes.diagnostics()]
    assert counts == [(r["task"], r["doc_id"], r["redistributed_rows"]) for r in one_process.diagnostics()]
