"""End to end through the real `lmms-eval` CLI: our models on the tiny checkpoints, spatial tasks.

Three lmms-eval launches in all: one process for Qwen2.5-VL from the command line; one process that
runs every other evaluation from a `--config` list (batching, var=false against lmms-eval's own
model for every family, sink dims that never fire, bad args); and two CPU processes (torchrun) for
every family at once.
"""

import json
import shutil
from pathlib import Path

import pytest

from lmms_var.backbones import backbone_for_model_type
from tests.conftest import TINY_SPEC, TINY_TAU
from tests.models.conftest import (
    ON_CPU,
    OTHER_FAMILIES,
    SMALL_IMAGES,
    TINY_SINKS,
    TINY_VAR_ARGS,
    Run,
    family_args,
    join_args,
)
from tests.models.test_attention_maps import assert_attention_maps

pytestmark = pytest.mark.slow

EXPECTED_DOCS = {
    (task, doc_id)
    for task in ("spatial_blink_spatial_relation", "spatial_blink_multi_view_reasoning")
    for doc_id in (0, 1)
}


def model_args(checkpoint: Path, extra: str = TINY_VAR_ARGS) -> str:
    return join_args(f"pretrained={checkpoint}", extra)


def var_on(family: str, checkpoint: Path, name: str, extra: str = "") -> dict:
    """A --config entry: the family's VAR model on, diagnostics in the run's own folder."""
    backbone = backbone_for_model_type(family)
    return {
        "name": name,
        "model": backbone.lmms_eval.model_id,
        # Relative paths resolve in the launch folder, which holds every run's output folder.
        "model_args": model_args(
            checkpoint,
            join_args(TINY_SINKS, family_args(backbone), ON_CPU, f"diagnostics_path={name}", extra),
        ),
    }


def parity_runs(family: str, checkpoint: Path) -> list[dict]:
    """VAR on, var=false, and lmms-eval's own model with the same dtype on the CPU."""
    backbone = backbone_for_model_type(family)
    spec = backbone.lmms_eval
    same_dtype = "dtype=bfloat16" if spec.cuda_dtype == "bfloat16" else ""
    return [
        var_on(family, checkpoint, f"{family}_var", f"attention_maps=1,attention_maps_path={family}_maps"),
        {
            "name": f"{family}_off",
            "model": spec.model_id,
            "model_args": model_args(
                checkpoint, join_args("var=false", same_dtype, family_args(backbone), ON_CPU)
            ),
        },
        {
            "name": f"{family}_upstream",
            "model": spec.upstream_id,
            "model_args": model_args(
                checkpoint, join_args("device=cpu,device_map=cpu", family_args(backbone))
            ),
        },
    ]


@pytest.fixture(scope="module")
def qwen_checkpoint(answering_checkpoints) -> Path:
    """The tiny Qwen2.5-VL checkpoint of every Qwen2.5-VL run here: its answers differ between docs, so
    comparisons of predictions would see docs mixed up."""
    return answering_checkpoints(TINY_SPEC.model_type)


def distinct_answers(run: Run) -> int:
    return len({str(prediction) for prediction in run.predictions().values()})


def distinct_diagnostics(run: Run) -> int:
    """How many different diagnostics records the run's docs got, doc ids left out."""
    ids = ("task", "split", "doc_id")
    return len(
        {json.dumps({k: v for k, v in r.items() if k not in ids}, sort_keys=True) for r in run.diagnostics()}
    )


@pytest.fixture(scope="module")
def single(lmms_eval_run, qwen_checkpoint) -> Run:
    """One CPU process, batch size 1, VAR on with diagnostics written next to lmms-eval's outputs."""
    return lmms_eval_run(
        "single",
        "--model",
        "qwen2_5_vl_var",
        "--model_args",
        model_args(qwen_checkpoint, TINY_VAR_ARGS + ",diagnostics=true"),
    )


@pytest.fixture(scope="module")
def config_runs(lmms_eval_run, qwen_checkpoint, answering_checkpoints, tmp_path_factory) -> Path:
    """One lmms-eval process, every run from a --config list; returns the folder holding their outputs."""
    batched_folder = tmp_path_factory.mktemp("batched")
    diagnostics, maps = batched_folder / "batched.jsonl", batched_folder / "maps"
    same_dtype = f"var=false,dtype=bfloat16,{SMALL_IMAGES},{ON_CPU}"
    runs = lmms_eval_run(
        "config",
        configs=[
            {
                "name": "batched",
                "model": "qwen2_5_vl_var",
                # In --model_args, as the README documents (lmms-eval also passes its --batch_size 1).
                "model_args": model_args(
                    qwen_checkpoint,
                    f"{TINY_VAR_ARGS},batch_size=2,diagnostics_path={diagnostics},"
                    f"attention_maps=1,attention_maps_path={maps}",
                ),
            },
            {
                "name": "var_off",
                "model": "qwen2_5_vl_var",
                "model_args": model_args(qwen_checkpoint, same_dtype),
            },
            {
                "name": "upstream",
                "model": "qwen2_5_vl",
                "model_args": model_args(qwen_checkpoint, f"device=cpu,device_map=cpu,{SMALL_IMAGES}"),
            },
            *(run for family in OTHER_FAMILIES for run in parity_runs(family, answering_checkpoints(family))),
            {
                "name": "bad_p",
                "model": "qwen2_5_vl_var",
                "model_args": model_args(qwen_checkpoint, "sink_dims=17,p=2"),
            },
            {
                "name": "bad_dims",
                "model": "qwen2_5_vl_var",
                "model_args": model_args(qwen_checkpoint, "sink_dims=abc"),
            },
            {"name": "unknown", "model": "qwen2_5_vl_var", "model_args": model_args(qwen_checkpoint, "")},
            {
                "name": "comma_dims",
                "model": "qwen2_5_vl_var",
                "model_args": model_args(qwen_checkpoint, f"sink_dims=17,93,{SMALL_IMAGES},{ON_CPU}"),
            },
            {
                "name": "no_sinks",  # channels nothing is planted in: VAR runs but finds no sink
                "model": "qwen2_5_vl_var",
                "model_args": model_args(
                    qwen_checkpoint, f"sink_dims=3;4,tau={TINY_TAU:g},{SMALL_IMAGES},{ON_CPU}"
                ),
            },
        ],
    )
    (runs.output.parent / "batched_diagnostics.jsonl").write_text(diagnostics.read_text())
    shutil.copytree(maps, runs.output.parent / "batched_maps")
    (runs.output.parent / "lmms_eval.log").write_text(runs.log)
    return runs.output.parent


def config_run(folder: Path, name: str) -> Run:
    return Run(folder / name, (folder / "lmms_eval.log").read_text())


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


def test_batches_parity_and_bad_args_in_one_lmms_eval_process(single, config_runs):
    """Batch size 2 (in --model_args) with VAR (and attention maps of each task's first doc);
    var=false against lmms-eval's own qwen2_5_vl; sink dims that never fire; runs that must fail."""
    batched, var_off, upstream = (
        config_run(config_runs, name) for name in ("batched", "var_off", "upstream")
    )
    log = batched.log
    for run in (batched, var_off, upstream):
        assert run.results() is not None, log[-3000:]
        assert set(run.predictions()) == EXPECTED_DOCS
    # Batching changes neither which doc a record belongs to nor the sinks found in it.
    by_doc = {(r["task"], r["doc_id"]): r for r in single.diagnostics()}
    batched_records = [
        json.loads(line) for line in (config_runs / "batched_diagnostics.jsonl").read_text().splitlines()
    ]
    assert {(r["task"], r["doc_id"]) for r in batched_records} == EXPECTED_DOCS
    for record in batched_records:
        reference = by_doc[record["task"], record["doc_id"]]
        assert (record["visual_tokens"], record["visual_sinks"], record["text_sinks"]) == (
            reference["visual_tokens"],
            reference["visual_sinks"],
            reference["text_sinks"],
        )
    # The first doc of each task got its figure, cut out of its padded batch; diagnostics were unaffected.
    assert_attention_maps(
        config_runs / "batched_maps", {(r["task"], r["doc_id"]): r for r in batched_records}, doc_ids=(0,)
    )
    assert var_off.predictions() == upstream.predictions()
    assert distinct_answers(upstream) > 1  # docs mixed up would not match
    assert "qwen2_5_vl_var: VAR off (var=false)" in log
    # A VAR run whose dims never fire still scores, with one loud warning.
    assert config_run(config_runs, "no_sinks").results() is not None
    no_sink = (
        "qwen2_5_vl_var: VAR found no visual sink in any layer of the first batch (sink_dims=[3, 4], tau=5"
    )
    assert log.count(no_sink) == 1
    # Failing runs write no results, and the log carries the message itself, not only a traceback.
    for name in ("bad_p", "bad_dims", "unknown", "comma_dims"):
        assert config_run(config_runs, name).results() is None
    assert "Error during evaluation: qwen2_5_vl_var: invalid model_args: p must be in [0, 1], got 2" in log
    assert "invalid model_args: sink_dims must be non-negative integers separated by ';'" in log
    assert "invalid model_args: no published sink_dims for" in log and "sink_dims=auto" in log
    assert (
        "qwen2_5_vl_var: invalid model_args: '93' is not an arg=value pair; separate sink dims with ';': "
        "sink_dims=17;93" in log
    )


@pytest.mark.parametrize("family", OTHER_FAMILIES)
def test_every_family_runs_with_var_and_matches_upstream_without(config_runs, family):
    """VAR on writes results, redistributes attention and draws each task's first doc; var=false gives
    lmms-eval's own predictions."""
    spec = backbone_for_model_type(family).lmms_eval
    on, off, upstream = (config_run(config_runs, f"{family}_{kind}") for kind in ("var", "off", "upstream"))
    for run in (on, off, upstream):
        assert run.results() is not None, on.log[-3000:]
        assert set(run.predictions()) == EXPECTED_DOCS
    assert f"{spec.model_id}: VAR on: sink_dims=[17, 93] from model args" in on.log
    diagnostics = on.diagnostics()
    assert {(r["task"], r["doc_id"]) for r in diagnostics} == EXPECTED_DOCS
    assert any(r["visual_sinks"][0] > 0 and r["redistributed_rows"] > 0 for r in diagnostics)
    assert_attention_maps(
        config_runs / f"{family}_maps", {(r["task"], r["doc_id"]): r for r in diagnostics}, doc_ids=(0,)
    )
    assert off.predictions() == upstream.predictions()
    # The letter-answering checkpoints answer per image: the comparison is not between empty answers.
    assert distinct_answers(upstream) > 1


def test_two_cpu_processes_match_one(
    single, config_runs, lmms_eval_run, qwen_checkpoint, answering_checkpoints
):
    """torchrun with ACCELERATE_USE_CPU (gloo), every family in turn: the per-doc predictions and
    diagnostics of one process."""
    double = lmms_eval_run(
        "double",
        configs=[
            var_on("qwen2_5_vl", qwen_checkpoint, "qwen2_5_vl_var"),
            *(var_on(family, answering_checkpoints(family), f"{family}_var") for family in OTHER_FAMILIES),
        ],
        processes=2,
    )
    assert "Using 2 processes (DistributedType.MULTI_CPU)" in double.log
    expected = {
        "qwen2_5_vl": single,
        **{family: config_run(config_runs, f"{family}_var") for family in OTHER_FAMILIES},
    }
    for family, one_process in expected.items():
        two_processes = Run(double.output.parent / f"{family}_var", double.log)
        assert two_processes.results() is not None, double.log[-3000:]
        assert two_processes.predictions() == one_process.predictions()
        # Counts exactly; the mass moved to float32 rounding (Qwen3-VL-MoE's differs in its last bit).
        assert [approx_mass(r) for r in two_processes.diagnostics()] == [
            approx_mass(r) for r in one_process.diagnostics()
        ]
        # Docs mixed up between the processes would not match: their answers or their diagnostics
        # differ (the tiny LLaVA-NeXT gives every doc the same letter with VAR on).
        assert distinct_answers(one_process) > 1 or distinct_diagnostics(one_process) > 1


def approx_mass(record: dict) -> dict:
    return {**record, "moved_mass": pytest.approx(record["moved_mass"], rel=1e-6)}
