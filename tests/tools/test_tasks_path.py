"""The task YAMLs' one copy (top-level `tasks/`), `lmms-var tasks-path`, and both ways of running them:
`--include_path tasks` from a checkout, and `--include_path "$(lmms-var tasks-path)"` from a wheel."""

import configparser
import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from setuptools import find_packages

from lmms_var.tasks import ENV_DATA_ROOT, TASKS_PATH
from lmms_var.testing.spatial_data import write_spatial_root
from lmms_var.tools.cli import main
from tests.conftest import REPOSITORY

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def test_tasks_path_prints_the_checkouts_tasks_folder(capsys):
    assert main(["tasks-path"]) == 0
    printed = Path(capsys.readouterr().out.strip())
    assert printed == TASKS_PATH == REPOSITORY / "tasks"
    assert (printed / "spatial" / "spatial_blink.yaml").is_file()


def test_each_task_yaml_is_tracked_once():
    """One copy of the YAMLs, under tasks/ (setup.cfg maps them into the wheel): none in the package."""
    if not (REPOSITORY / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPOSITORY, capture_output=True, text=True, check=True
    ).stdout.split()
    yamls = [
        Path(path)
        for path in tracked
        if path.endswith("yaml") and Path(path).name.startswith(("spatial_", "_spatial_"))
    ]
    assert {path.parts[0] for path in yamls} == {"tasks"}
    assert sorted(path.name for path in yamls) == sorted(
        path.name for path in (TASKS_PATH / "spatial").iterdir() if path.name.endswith("yaml")
    )


def test_setup_cfg_lists_every_package():
    """setup.cfg lists its packages (one of them mapped from tasks/), so a new package must be added there."""
    setup = configparser.ConfigParser()
    setup.read(REPOSITORY / "setup.cfg")
    listed = set(setup["options"]["packages"].split())
    found = set(find_packages(str(REPOSITORY), include=["lmms_var*"]))
    assert found <= listed, f"add {sorted(found - listed)} to setup.cfg's packages"
    assert listed - found == {"lmms_var.task_yamls", "lmms_var.task_yamls.spatial"}


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def _run_spatial_task(lmms_eval: list[str], include_path: str, cwd: Path, env: dict[str, str]) -> dict:
    """lmms-eval's dummy model on one spatial task, one doc, from `cwd`; its results JSON (written under
    the test's folder, next to `HF_HOME`, whatever `cwd` is)."""
    output = Path(env["HF_HOME"]).parent / "out"
    command = [*lmms_eval, "--model", "dummy", "--tasks", "spatial_blink_counting"]
    command += ["--include_path", include_path, "--output_path", str(output), "--limit", "1"]
    _run(command, cwd, env)
    [results_file] = output.rglob("*_results.json")
    results = json.loads(results_file.read_text())
    assert results["n-samples"]["spatial_blink_counting"]["effective"] == 1
    return results


def _placeholder(results: dict) -> str:
    """The data file the task loaded: it says which copy of the YAMLs lmms-eval read."""
    return results["configs"]["spatial_blink_counting"]["dataset_kwargs"]["data_files"]["val"]


def _environment(tmp_path: Path) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("LMMS_VAR_")}
    environment.pop("PYTHONPATH", None)
    data = write_spatial_root(tmp_path / "data", blink_subtasks=("Counting",), docs_per_subtask=2)
    return environment | OFFLINE | {"HF_HOME": str(tmp_path / "hf"), ENV_DATA_ROOT: str(data)}


@pytest.mark.slow
def test_spatial_tasks_run_from_a_checkout_with_include_path_tasks(tmp_path):
    """The README's route in a checkout: from the repository root, `--include_path tasks`."""
    environment = _environment(tmp_path) | {"PYTHONPATH": str(REPOSITORY)}
    results = _run_spatial_task([sys.executable, "-m", "lmms_eval"], "tasks", REPOSITORY, environment)
    assert REPOSITORY / _placeholder(results) == REPOSITORY / "tasks" / "spatial" / "_placeholder.jsonl"


@pytest.mark.slow
def test_spatial_tasks_run_from_a_wheel_installed_in_a_fresh_venv(tmp_path, built_wheel):
    """Build the wheel from the packaging sources alone, install it (no dependencies) into a fresh venv
    whose other packages come from this environment through a .pth file, and run lmms-eval from
    another folder with the one documented step: --include_path "$(lmms-var tasks-path)". lmms_var and
    the tasks must come from the wheel, not from the checkout."""
    venv, elsewhere = tmp_path / "venv", tmp_path / "elsewhere"
    environment = _environment(tmp_path)
    pip = ["-m", "pip", "-q"]
    wheel = built_wheel
    shipped = zipfile.ZipFile(wheel).namelist()
    yamls = [name for name in shipped if name.endswith(".yaml") and "spatial" in name]
    assert sorted(Path(name).name for name in yamls) == sorted(
        path.name for path in (TASKS_PATH / "spatial").glob("*.yaml")
    )
    assert all(name.startswith("lmms_var/task_yamls/spatial/") for name in yamls)

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            tmp_path,
            environment,
        ).strip()
    )
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([str(python), *pip, "install", "--no-deps", str(wheel)], tmp_path, environment)

    elsewhere.mkdir()
    where = _run([str(python), "-c", "import lmms_var; print(lmms_var.__file__)"], elsewhere, environment)
    assert Path(where.strip()) == site / "lmms_var" / "__init__.py"
    tasks_path = _run([str(venv / "bin" / "lmms-var"), "tasks-path"], elsewhere, environment).strip()
    assert tasks_path == str(site / "lmms_var" / "task_yamls")
    results = _run_spatial_task([str(python), "-m", "lmms_eval"], tasks_path, elsewhere, environment)
    assert _placeholder(results) == str(site / "lmms_var" / "task_yamls" / "spatial" / "_placeholder.jsonl")
