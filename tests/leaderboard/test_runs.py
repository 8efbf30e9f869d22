"""Reading lmms-eval output folders into runs."""

import json
import re

import pytest

from lmms_var.leaderboard import load_run, model_args_as_text
from tests.leaderboard.results_files import doc_samples, write_run


def test_model_args_as_string_and_as_dict_read_the_same():
    text = model_args_as_text("pretrained=/ckpt/Qwen2.5-VL-7B,var=false,p=0.6,sink_dims=458;2570")
    as_dict = model_args_as_text(
        {"pretrained": "/ckpt/Qwen2.5-VL-7B", "var": False, "p": 0.6, "sink_dims": "458;2570"}
    )
    assert (
        text
        == as_dict
        == {"pretrained": "/ckpt/Qwen2.5-VL-7B", "var": "false", "p": "0.6", "sink_dims": "458;2570"}
    )
    assert model_args_as_text(None) == model_args_as_text("") == {}


def test_run_reads_metrics_without_stderr_groups_primary_and_samples(tmp_path):
    write_run(
        tmp_path / "run",
        "qwen2_5_vl_var",
        "pretrained=x,var=true,p=0.4",
        {"task_a": {"exact_match": 0.5, "f1": 0.7}, "task_b": {"acc": 0.25}, "grp": {"acc": 0.4}},
        groups=("grp",),
        samples={"task_a": doc_samples("exact_match", [1, 0])},
    )
    run = load_run(tmp_path / "run")
    assert (run.model, run.model_args) == ("qwen2_5_vl_var", {"pretrained": "x", "var": "true", "p": "0.4"})
    assert list(run.tasks) == ["task_a", "task_b", "grp"]
    assert run.tasks["task_a"].metrics == {"exact_match": 0.5, "f1": 0.7}
    assert run.tasks["task_a"].primary == "exact_match"
    assert run.tasks["task_a"].samples == tmp_path / "run" / "20250101_120000_samples_task_a.jsonl"
    assert run.tasks["task_b"].samples is None
    assert [run.tasks[name].is_group for name in run.tasks] == [False, False, True]


def test_primary_metric_follows_metric_list_not_result_order(tmp_path):
    results_file = write_run(tmp_path, "m", "", {"task": {"f1": 0.7, "exact_match": 0.5}})
    data = json.loads(results_file.read_text())
    data["configs"]["task"]["metric_list"] = [{"metric": "exact_match"}, {"metric": "f1"}]
    results_file.write_text(json.dumps(data))
    assert load_run(tmp_path).tasks["task"].primary == "exact_match"


def test_results_files_of_one_run_merge_and_the_newest_wins(tmp_path):
    # lmms-eval nests results under a model-name folder; the reader searches the whole RUN_DIR.
    write_run(
        tmp_path / "org__model",
        "m",
        "a=1",
        {"t1": {"acc": 0.1}, "t2": {"acc": 0.2}},
        date_id="20250101_000000",
    )
    write_run(tmp_path / "org__model", "m", "a=1", {"t2": {"acc": 0.9}}, date_id="20250102_000000")
    run = load_run(tmp_path)
    assert {name: result.metrics["acc"] for name, result in run.tasks.items()} == {"t1": 0.1, "t2": 0.9}
    # A results file may be given directly, too.
    assert list(load_run(next(tmp_path.rglob("20250101_000000_results.json"))).tasks) == ["t1", "t2"]


def test_folder_with_runs_of_different_model_args_is_refused(tmp_path):
    write_run(tmp_path, "m", "p=0.4", {"t": {"acc": 0.1}}, date_id="20250101_000000")
    write_run(tmp_path, "m", "p=0.6", {"t": {"acc": 0.2}}, date_id="20250102_000000")
    with pytest.raises(ValueError, match=r"mixes runs .* own --output_path"):
        load_run(tmp_path)


def test_bad_run_dirs_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"RUN_DIR .*missing does not exist"):
        load_run(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"no lmms-eval results file \(\*_results.json\)"):
        load_run(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.txt: expected an lmms-eval output folder"):
        load_run(tmp_path / "notes.txt")
    (tmp_path / "x_results.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"x_results\.json: not valid JSON"):
        load_run(tmp_path)
    (tmp_path / "x_results.json").write_text('{"scores": {}}')
    with pytest.raises(ValueError, match=r"x_results\.json: not an lmms-eval results file"):
        load_run(tmp_path)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"results": ["t", 0.5]}, "'results' should map task names to objects, got ['t', 0.5]"),
        ({"results": {"t": 0.5}}, "'results' should map task names to objects, but its 't' is 0.5"),
        (
            {"results": {"first": {"acc,none": 1.0}, "a_long_task_name" * 4: 0.5}},
            f"'results' should map task names to objects, but its {'a_long_task_name' * 4!r} is 0.5",
        ),
        ({"configs": []}, "'configs' should map task names to objects, got []"),
        ({"n-samples": {"t": 3}}, "'n-samples' should map task names to objects, but its 't' is 3"),
        ({"group_subtasks": {"g": "t"}}, "'group_subtasks' should map group names to lists of tasks"),
        ({"config": "qwen"}, "'config' is 'qwen'"),
    ],
)
def test_a_results_file_of_the_wrong_shape_is_named(tmp_path, change, expected):
    results_file = write_run(tmp_path, "m", "", {"t": {"acc": 0.5}})
    results_file.write_text(json.dumps(json.loads(results_file.read_text()) | change))
    with pytest.raises(
        ValueError, match=re.escape(f"{results_file}: not an lmms-eval results file: {expected}")
    ):
        load_run(tmp_path)


def test_doc_counts_and_group_tasks_are_read(tmp_path):
    write_run(
        tmp_path,
        "m",
        "",
        {"a": {"acc": 0.5}, "b": {"acc": 0.5}, "g": {"acc": 0.5}},
        groups=("g",),
        n_samples={"a": 4, "b": 2},
    )
    run = load_run(tmp_path)
    assert (run.tasks["a"].docs, run.tasks["b"].docs, run.tasks["g"].docs) == (4, 2, None)
    assert run.tasks["g"].subtasks == ("a", "b")
