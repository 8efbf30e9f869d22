"""`lmms-var tasks-path`, and the spatial tasks run from an installed wheel, without a checkout."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmms_var.tasks import ENV_DATA_ROOT, TASKS_PATH
from lmms_var.testing.spatial_data import write_spatial_root
from lmms_var.tools.cli import main

REPOSITORY = Path(__file__).resolve().parents[2]


def test_tasks_path_prints_the_folder_of_the_task_yamls(capsys):
    assert main(["tasks-path"]) == 0
    printed = Path(capsys.readouterr().out.strip())
    assert printed == TASKS_PATH
    assert (printed / "spatial" / "spatial_blink.yaml").is_file()


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
def test_spatial_tasks_run_from_an_installed_wheel(tmp_path):
    """Build the wheel, install it alone into a folder (its dependencies are this environment's), and
    run lmms-eval from outside the checkout with the one documented step: --include_path "$(lmms-var
    tasks-path)". The tasks must come from the installed folder, not from the checkout."""
    wheels, installed, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    environment = {key: value for key, value in os.environ.items() if not key.startswith("LMMS_VAR_")}
    pip = [sys.executable, "-m", "pip", "-q"]
    _run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(REPOSITORY)],
        tmp_path,
        environment,
    )
    [wheel] = wheels.glob("lmms_var-*.whl")
    _run([*pip, "install", "--no-deps", "--target", str(installed), str(wheel)], tmp_path, environment)

    environment |= {
        "PYTHONPATH": str(installed),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        ENV_DATA_ROOT: str(
            write_spatial_root(tmp_path / "data", blink_subtasks=("Counting",), docs_per_subtask=2)
        ),
    }
    tasks_path = _run(
        [sys.executable, "-m", "lmms_var.tools.cli", "tasks-path"], elsewhere, environment
    ).strip()
    assert tasks_path == str(installed / "lmms_var" / "tasks")
    command = [sys.executable, "-m", "lmms_eval", "--model", "dummy", "--tasks", "spatial_blink_counting"]
    command += ["--include_path", tasks_path, "--output_path", "out", "--limit", "1"]
    _run(command, elsewhere, environment)
    [results_file] = (elsewhere / "out").rglob("*_results.json")
    results = json.loads(results_file.read_text())
    placeholder = results["configs"]["spatial_blink_counting"]["dataset_kwargs"]["data_files"]["val"]
    assert placeholder == str(installed / "lmms_var" / "tasks" / "spatial" / "_placeholder.jsonl")
    assert results["n-samples"]["spatial_blink_counting"]["effective"] == 1
