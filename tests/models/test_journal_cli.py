"""Resuming through the real `lmms-eval` CLI: a run killed mid-way, then the same command again."""

import os
import re
from pathlib import Path

import pytest

from tests.conftest import TINY_SPEC
from tests.models.conftest import TINY_VAR_ARGS, Run

pytestmark = pytest.mark.slow

KILL_SWITCH = Path(__file__).resolve().parent / "kill_switch"
COUNT_LINE = re.compile(r"(\d+) of (\d+) requests answered from the journal")


@pytest.fixture(scope="module")
def command(answering_checkpoints) -> tuple[str, ...]:
    checkpoint = answering_checkpoints(TINY_SPEC.model_type)
    return ("--model", "qwen2_5_vl_var", "--model_args", f"pretrained={checkpoint},{TINY_VAR_ARGS}")


def answered(run: Run) -> tuple[int, int]:
    """(answered from the journal, requests), summed over the processes' count lines."""
    counts = [tuple(map(int, found)) for found in COUNT_LINE.findall(run.log)]
    assert counts, run.log[-3000:]
    return sum(n for n, _ in counts), sum(m for _, m in counts)


def metrics(run: Run) -> dict:
    results = run.results()
    assert results is not None, run.log[-3000:]
    return results["results"]


def test_a_killed_run_resumes_with_other_process_counts(lmms_eval_run, command, monkeypatch):
    """Killed after one batch, then resumed on two processes: the results of an uninterrupted run."""
    uninterrupted = lmms_eval_run("uninterrupted", *command)
    assert answered(uninterrupted) == (0, 4)
    assert (uninterrupted.model_dir() / "journal").is_dir()
    assert len(set(uninterrupted.predictions().values())) > 1  # docs differ, so a mix-up would show

    with monkeypatch.context() as patch:
        patch.setenv(
            "PYTHONPATH", os.pathsep.join(filter(None, [str(KILL_SWITCH), os.environ.get("PYTHONPATH")]))
        )
        patch.setenv("JOURNAL_TEST_KILL_AFTER_BATCHES", "1")
        killed = lmms_eval_run("killed", *command)
    assert killed.results() is None, killed.log[-3000:]
    (journal_file,) = killed.output.rglob("journal/*-rank0.jsonl")
    assert len(journal_file.read_text().splitlines()) == 1

    resumed = lmms_eval_run("resumed", *command, processes=2, output=killed.output)
    assert answered(resumed) == (1, 4)
    assert "(rank 1 of 2)" in resumed.log
    assert metrics(resumed) == metrics(uninterrupted)
    assert resumed.predictions() == uninterrupted.predictions()
    assert sorted(path.name.split("-")[1] for path in journal_file.parent.glob("*.jsonl")) == [
        "rank0.jsonl",
        "rank1.jsonl",
    ]


def with_journal(command: tuple[str, ...], folder: Path, extra: str = "") -> tuple[str, ...]:
    """`command` keeping its journal in `folder`, so runs into separate outputs (whose samples files
    tell their predictions apart) share it; `extra` model args added."""
    *head, model_args = command
    return (*head, f"{model_args},journal={folder}{extra}")


def test_sampled_runs_with_another_seed_are_not_answered_from_the_journal(lmms_eval_run, command, tmp_path):
    """`--seed 2` after `--seed 1` with the same journal: seed 2 samples its own answers."""
    sampling = ["--gen_kwargs", "max_new_tokens=4,do_sample=True,temperature=5.0"]
    sampled = with_journal(command, tmp_path)
    first = lmms_eval_run("seed1", *sampled, *sampling, "--seed", "1")
    assert answered(first) == (0, 4) and "sampled requests are generated every run" in first.log
    second = lmms_eval_run("seed2", *sampled, *sampling, "--seed", "2")
    assert answered(second) == (0, 4)
    assert metrics(second) is not None
    assert second.predictions() != first.predictions()
    assert not list(tmp_path.glob("*.jsonl")) or not any(
        path.read_text() for path in tmp_path.glob("*.jsonl")
    )


def test_figures_and_diagnostics_asked_of_a_finished_command_cover_every_doc(
    lmms_eval_run, command, tmp_path
):
    """Nothing is left to generate, yet `attention_maps=1,diagnostics=true` draws and records as a fresh run."""
    finished = lmms_eval_run("finished", *with_journal(command, tmp_path))
    assert answered(finished) == (0, 4)
    again = lmms_eval_run("again", *with_journal(command, tmp_path, ",attention_maps=1,diagnostics=true"))
    assert answered(again) == (0, 4)
    assert "4 it holds generated again for diagnostics" in again.log
    assert again.predictions() == finished.predictions()
    figures = sorted(path.name for path in again.output.rglob("*_attention_maps/*.png"))
    assert figures == [
        "spatial_blink_multi_view_reasoning_doc0.png",
        "spatial_blink_spatial_relation_doc0.png",
    ]
    records = again.diagnostics()
    assert sorted((record["task"], record["doc_id"]) for record in records) == sorted(finished.predictions())
