"""`attention_maps=N` and `attention_maps_path=`: parsing, where figures go, and what a run leaves behind."""

import json
from pathlib import Path

import pytest

from lmms_var.models.args import ModelArgError
from lmms_var.models.attention_maps import figure_name, parse_attention_maps


def parse(attention_maps, path=None, *, var=True, method="var"):
    return parse_attention_maps(
        attention_maps, path, var=var, method=method, pretrained="org/My-Model", run_id="RUN"
    )


def test_off_by_default_attaches_nothing():
    options = parse(0)
    assert options.per_task == 0 and options.recorder(handle=None, processor=None) is None


@pytest.mark.parametrize("method", ["scalingvis", "adaptvis", "pai"])
def test_every_method_draws_maps_but_the_plain_model_none(method):
    """The figures draw what the method changes (its lmms-eval runs: tests/models/test_methods_cli.py);
    with var=false there is nothing to draw."""
    assert parse(1, "maps", method=method).per_task == 1
    with pytest.raises(ModelArgError) as error:
        parse(1, "maps", method=method, var=False)
    assert str(error.value) == (
        f"invalid model_args: attention_maps draws what method={method} changes; it needs var=true"
    )


def test_the_folder_is_next_to_lmms_evals_outputs_or_the_given_path(monkeypatch, tmp_path):
    monkeypatch.setattr("sys.argv", ["lmms-eval", "--output_path", str(tmp_path)])
    assert parse(2).folder == tmp_path / "org__My-Model" / "RUN_attention_maps"
    assert parse("3", str(tmp_path / "maps")).folder == tmp_path / "maps"


@pytest.mark.parametrize(
    ("value", "path", "var", "message"),
    [
        (-1, None, True, "attention_maps must be a positive integer"),
        ("many", None, True, "attention_maps must be a positive integer"),
        (0, "maps", True, "attention_maps_path is set but attention_maps=0"),
        (2, None, False, "it needs var=true"),
        (2, None, True, "attention_maps needs lmms-eval's --output_path or attention_maps_path="),
    ],
)
def test_bad_values_fail_before_loading(monkeypatch, value, path, var, message):
    monkeypatch.setattr("sys.argv", ["lmms-eval"])
    with pytest.raises(ModelArgError, match=message):
        parse(value, path, var=var)


def test_figures_are_named_by_task_and_doc():
    assert figure_name("spatial_blink_counting", 3) == "spatial_blink_counting_doc3.png"
    assert figure_name("a/b c", 0) == "a_b_c_doc0.png"


def assert_attention_maps(
    folder: Path, diagnostics: dict[tuple[str, int], dict], doc_ids: tuple[int, ...]
) -> None:
    """A figure and its JSON for each listed doc of each task (no other), consistent with VAR's diagnostics.

    Called by the lmms-eval CLI tests (`tests/models/test_lmms_eval_cli.py`), which run `attention_maps=1`.
    """
    tasks = {task for task, _ in diagnostics}
    expected = {
        f"{figure_name(task, doc_id)[:-4]}.{suffix}"
        for task in tasks
        for doc_id in doc_ids
        for suffix in ("png", "json")
    }
    assert {path.name for path in folder.iterdir()} == expected
    for task in tasks:
        for doc_id in doc_ids:
            data = json.loads((folder / figure_name(task, doc_id)).with_suffix(".json").read_text())
            assert (folder / data["figure"]).stat().st_size > 0 and f"({task} doc {doc_id})" in data[
                "question"
            ]
            tokens = sum(entry["tokens"][1] - entry["tokens"][0] for entry in data["images"])
            assert tokens == diagnostics[task, doc_id]["visual_tokens"] > 0
