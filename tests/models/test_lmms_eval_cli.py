"""End to end through the real `lmms-eval` CLI: the plugin model on the tiny checkpoint, spatial tasks."""

import json
from pathlib import Path

import pytest

from tests.models.conftest import TINY_VAR_ARGS, Run
from tests.models.test_attention_maps import assert_attention_maps

pytestmark = pytest.mark.slow

EXPECTED_DOCS = {
    (task, doc_id)
    for task in ("spatial_blink_spatial_relation", "spatial_blink_multi_view_reasoning")
    for doc_id in (0, 1)
}


def model_args(checkpoint: Path, extra: str = TINY_VAR_ARGS) -> str:
    return f"pretrained={checkpoint},{extra}" if extra else f"pretrained={checkpoint}"


@pytest.fixture(scope="module")
def single(lmms_eval_run, tiny_checkpoint) -> Run:
    """One CPU process, batch size 1, VAR on with diagnostics written next to lmms-eval's outputs."""
    return lmms_eval_run(
        "single",
        "--model",
        "qwen2_5_vl_var",
        "--model_args",
        model_args(tiny_checkpoint, TINY_VAR_ARGS + ",diagnostics=true"),
    )


def test_single_process_with_diagnostics_next_to_the_outputs(single):
    results = single.results()
    assert results is not None, single.log[-3000:]
    assert {task for task, _ in EXPECTED_DOCS} <= set(results["results"])
    assert set(single.predictions()) == EXPECTED_DOCS
    diagnostics = single.diagnostics()
    assert {(r["task"], r["doc_id"]) for r in diagnostics} == EXPECTED_DOCS
    assert sorted(single.output.rglob("*var_diagnostics.jsonl"))[0].parent == single.model_dir()
    assert all(r["visual_tokens"] > 0 and r["text_sinks"] == [3] for r in diagnostics)
    assert any(r["redistributed_rows"] > 0 and r["moved_mass"] > 0 for r in diagnostics)
    assert "qwen2_5_vl_var: VAR on: sink_dims=[17, 93] from model args" in single.log
    assert "VAR diagnostics: 4 samples" in single.log


def test_two_cpu_processes_match_one(single, lmms_eval_run, tiny_checkpoint):
    """torchrun with ACCELERATE_USE_CPU (gloo): same per-doc predictions and diagnostics as one process."""
    double = lmms_eval_run(
        "double",
        "--model",
        "qwen2_5_vl_var",
        "--model_args",
        model_args(tiny_checkpoint, TINY_VAR_ARGS + ",diagnostics=true"),
        processes=2,
    )
    assert double.results() is not None, double.log[-3000:]
    assert "Using 2 processes (DistributedType.MULTI_CPU)" in double.log
    assert double.predictions() == single.predictions()
    assert double.diagnostics() == single.diagnostics()


def test_batches_parity_and_bad_args_in_one_lmms_eval_process(
    single, lmms_eval_run, tiny_checkpoint, tmp_path
):
    """Batch size 2 with VAR (and attention maps of each task's first doc); var=false against lmms-eval's
    own qwen2_5_vl; three runs that must fail."""
    diagnostics, maps = tmp_path / "batched.jsonl", tmp_path / "maps"
    same_dtype = "var=false,dtype=bfloat16,min_pixels=3136,max_pixels=12544"
    runs = lmms_eval_run(
        "config",
        configs=[
            {
                "name": "batched",
                "model": "qwen2_5_vl_var",
                "batch_size": 2,
                "model_args": model_args(
                    tiny_checkpoint,
                    f"{TINY_VAR_ARGS},diagnostics_path={diagnostics},attention_maps=1,attention_maps_path={maps}",
                ),
            },
            {
                "name": "var_off",
                "model": "qwen2_5_vl_var",
                "model_args": model_args(tiny_checkpoint, same_dtype),
            },
            {
                "name": "upstream",
                "model": "qwen2_5_vl",
                "model_args": model_args(
                    tiny_checkpoint, "device=cpu,device_map=cpu,min_pixels=3136,max_pixels=12544"
                ),
            },
            {
                "name": "bad_p",
                "model": "qwen2_5_vl_var",
                "model_args": model_args(tiny_checkpoint, "sink_dims=17,p=2"),
            },
            {
                "name": "bad_dims",
                "model": "qwen2_5_vl_var",
                "model_args": model_args(tiny_checkpoint, "sink_dims=abc"),
            },
            {"name": "unknown", "model": "qwen2_5_vl_var", "model_args": model_args(tiny_checkpoint, "")},
        ],
    )
    folder = runs.output.parent
    batched, var_off, upstream = (Run(folder / name, runs.log) for name in ("batched", "var_off", "upstream"))
    for run in (batched, var_off, upstream):
        assert run.results() is not None, runs.log[-3000:]
        assert set(run.predictions()) == EXPECTED_DOCS
    # Batching changes neither which doc a record belongs to nor the sinks found in it.
    by_doc = {(r["task"], r["doc_id"]): r for r in single.diagnostics()}
    batched_records = [json.loads(line) for line in diagnostics.read_text().splitlines()]
    assert {(r["task"], r["doc_id"]) for r in batched_records} == EXPECTED_DOCS
    for record in batched_records:
        reference = by_doc[record["task"], record["doc_id"]]
        assert (record["visual_tokens"], record["visual_sinks"], record["text_sinks"]) == (
            reference["visual_tokens"],
            reference["visual_sinks"],
            reference["text_sinks"],
        )
    # The first doc of each task got its figure, cut out of its padded batch; diagnostics were unaffected.
    assert_attention_maps(maps, {(r["task"], r["doc_id"]): r for r in batched_records}, doc_ids=(0,))
    assert var_off.predictions() == upstream.predictions()
    assert "qwen2_5_vl_var: VAR off (var=false)" in runs.log
    # Failing runs write no results, and the log carries the message itself, not only a traceback.
    for name in ("bad_p", "bad_dims", "unknown"):
        assert Run(folder / name, "").results() is None
    assert (
        "Error during evaluation: qwen2_5_vl_var: invalid model_args: p must be in [0, 1], got 2" in runs.log
    )
    assert "invalid model_args: sink_dims must be non-negative integers separated by ';'" in runs.log
    assert "invalid model_args: no published sink_dims for" in runs.log and "sink_dims=auto" in runs.log
