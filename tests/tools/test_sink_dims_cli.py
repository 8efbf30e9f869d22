"""`lmms-var find-sink-dims` and `validate-sink-dims` through the real command parser, on a saved checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmms_var.tools.cli import main
from tests.conftest import TINY_TAU

TAU = str(TINY_TAU)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "llava"])  # loaded through the backbone
def test_find_writes_the_planted_dims_and_prints_a_table(model_type, tiny_checkpoints, tmp_path, capsys):
    checkpoint = tiny_checkpoints(model_type)
    output = tmp_path / "out" / "dims.json"
    args = ["--model", str(checkpoint), "--tau", TAU, "--num-samples", "4", "--output", str(output)]
    assert main(["find-sink-dims", *args]) == 0
    report = json.loads(output.read_text())
    assert report["model"] == str(checkpoint)
    assert report["sink_dims"] == [17, 93]
    assert report["evidence"]["num_prompts"] == 4 and report["evidence"]["prompts"] == "builtin"
    assert set(report["evidence"]["dims"]) == {"17", "93"}
    out = capsys.readouterr().out
    assert f"sink dims of {checkpoint}: [17, 93]" in out and f"wrote {output}" in out


def test_find_on_a_spatial_root(tiny_checkpoint, spatial_root, tmp_path):
    output = tmp_path / "dims.json"
    args = ["--model", str(tiny_checkpoint), "--tau", TAU, "--data", str(spatial_root), "--num-samples", "3"]
    assert main(["find-sink-dims", *args, "--layers", "2", "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    assert report["sink_dims"] == [17, 93]
    assert report["evidence"]["prompts"] == f"data:{spatial_root}"
    assert report["evidence"]["layers"] == [2]


@pytest.mark.parametrize(("dims", "good"), [(["17", "93"], True), (["5", "77"], False)])
def test_validate_reports_precision_and_recall(tiny_checkpoint, tmp_path, capsys, dims, good):
    output = tmp_path / "validation.json"
    args = ["--model", str(tiny_checkpoint), "--tau", TAU, "--num-samples", "4", "--output", str(output)]
    assert main(["validate-sink-dims", *args, "--dims", *dims]) == 0
    report = json.loads(output.read_text())
    assert report["sink_dims"] == [int(d) for d in dims]
    assert set(report["per_layer"]) == {"2", "3"}
    if good:
        assert report["precision"] >= 0.9 and report["recall"] >= 0.9
    else:
        assert report["precision"] is None and report["recall"] == 0.0
    assert "recall" in capsys.readouterr().out


def test_dims_beyond_the_hidden_size_fail_before_loading(tiny_checkpoint, tmp_path, cli_error):
    output = tmp_path / "validation.json"
    err = cli_error(
        [
            "validate-sink-dims",
            "--model",
            str(tiny_checkpoint),
            "--dims",
            "17",
            "500",
            "--output",
            str(output),
        ],
    )
    assert "lmms-var validate-sink-dims: error: dims [500] are beyond the model's hidden size 128" in err
    assert not output.exists()


@pytest.mark.parametrize("kind", ["missing", "empty folder", "other model type"])
def test_a_path_that_is_not_a_qwen_model_is_named(tmp_path, cli_error, kind):
    path = tmp_path / "model"
    if kind != "missing":
        path.mkdir()
    if kind == "other model type":
        (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    err = cli_error(["find-sink-dims", "--model", str(path), "--output", str(tmp_path / "o.json")])
    assert f"lmms-var find-sink-dims: error: --model {path}: " in err
    expected = {
        "missing": "no such folder",
        "empty folder": "a folder without a config.json, not a checkpoint",
        "other model type": "VAR supports model types qwen2_5_vl (Qwen2.5-VL)",
    }
    assert expected[kind] in err


def test_layers_outside_the_model_are_rejected(tiny_checkpoint, tmp_path, cli_error):
    argv = [
        "find-sink-dims",
        "--model",
        str(tiny_checkpoint),
        "--layers",
        "9",
        "--output",
        str(tmp_path / "o"),
    ]
    assert "error: layers must be decoder layers in [0, 4)" in cli_error(argv)


@pytest.mark.parametrize(
    ("command", "extra", "message"),
    [
        ("find-sink-dims", ["--output", "{folder}"], "--output {folder} is a folder; give a file path"),
        (
            "validate-sink-dims",
            ["--output", "{file}/check.json"],
            "--output {file}/check.json cannot be created: {file} is a file, not a folder",
        ),
        ("find-sink-dims", ["--num-samples", "0"], "num_samples must be a positive integer, got 0"),
        ("find-sink-dims", ["--tau", "inf"], "tau must be a finite number > 0, got inf"),
        ("find-sink-dims", ["--min-consistency", "0"], "min_consistency must be in (0, 1], got 0.0"),
        ("find-sink-dims", ["--data", "{folder}"], "spatial root {folder}: no spatial_reasoning/blink/"),
        (
            "validate-sink-dims",
            ["--attention-factor", "-1"],
            "attention_factor must be a finite multiple > 0",
        ),
        ("validate-sink-dims", ["--min-distance", "-5"], "min_distance must be an integer >= 0"),
        ("validate-sink-dims", ["--layers", "7"], "layers must be decoder layers in [0, 4), got [7]"),
        (
            "find-sink-dims",
            ["--device", "cuda"],
            "--device 'cuda': this machine has no CUDA device; give cpu",
        ),
        ("find-sink-dims", ["--device", "gpu0"], "--device 'gpu0' is not a device; give cpu, cuda or cuda:N"),
    ],
)
def test_bad_inputs_fail_before_loading_or_measuring(
    command, extra, message, tiny_checkpoint, tmp_path, cli_error, monkeypatch, no_weights
):
    """Nothing is measured (and lost) before an output that cannot be written or a bad setting is named."""
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    dims = ["--dims", "17", "93"] if command == "validate-sink-dims" else []
    argv = [command, "--model", str(tiny_checkpoint), *dims, "--output", str(tmp_path / "out.json")]
    argv += [arg.format(folder=tmp_path, file=blocker) for arg in extra]
    err = cli_error(argv)
    assert f"lmms-var {command}: error: {message.format(folder=tmp_path, file=blocker)}" in err


def test_console_script_shows_progress(tiny_checkpoint, tmp_path):
    command = Path(sys.executable).with_name("lmms-var")
    output = tmp_path / "dims.json"
    args = [
        "--model",
        tiny_checkpoint,
        "--tau",
        TAU,
        "--num-samples",
        "2",
        "--device",
        "cpu",
        "--output",
        output,
    ]
    run = subprocess.run(
        [command, "find-sink-dims", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "find-sink-dims: 100%" in run.stderr and "2/2" in run.stderr
    assert json.loads(output.read_text())["sink_dims"] == [17, 93]
