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


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_dims_beyond_the_hidden_size_fail_before_loading(tiny_checkpoint, tmp_path, capsys):
    output = tmp_path / "validation.json"
    err = _error(
        capsys,
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
    assert "lmms-var validate-sink-dims: error: --dims [500] are beyond the model's hidden size 128" in err
    assert not output.exists()


@pytest.mark.parametrize("kind", ["missing", "empty folder", "other model type"])
def test_a_path_that_is_not_a_qwen_model_is_named(tmp_path, capsys, kind):
    path = tmp_path / "model"
    if kind != "missing":
        path.mkdir()
    if kind == "other model type":
        (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    err = _error(capsys, ["find-sink-dims", "--model", str(path), "--output", str(tmp_path / "o.json")])
    assert f"lmms-var find-sink-dims: error: --model {path}: " in err
    expected = (
        "VAR supports model types qwen2_5_vl (Qwen2.5-VL)" if kind == "other model type" else "not a model"
    )
    assert expected in err


def test_layers_outside_the_model_are_rejected(tiny_checkpoint, tmp_path, capsys):
    argv = [
        "find-sink-dims",
        "--model",
        str(tiny_checkpoint),
        "--layers",
        "9",
        "--output",
        str(tmp_path / "o"),
    ]
    assert "--layers must be decoder layers in [0, 4)" in _error(capsys, argv)


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
