"""Fixtures for the spatial tasks: a Hub-BLINK export root, and a runner for the real lmms-eval CLI."""

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from lmms_var.tasks import ENV_DATA_ROOT, TASKS_PATH
from lmms_var.testing.spatial_data import write_hub_blink_root

TASKS_DIR = TASKS_PATH

LmmsEvalRunner = Callable[..., tuple[dict | None, str]]


@pytest.fixture(scope="session")
def hub_root(tmp_path_factory) -> Path:
    """A local export of the Hub's BLINK holding the five spatial sub-tasks, three docs each."""
    return write_hub_blink_root(tmp_path_factory.mktemp("hub_root"))


@pytest.fixture
def lmms_eval_cli(tmp_path: Path) -> LmmsEvalRunner:
    """`run(data_root, tasks, *cli_args, env={})` runs `python -m lmms_eval` on the tasks under `tasks/`
    offline and returns (results JSON or None, the full log). lmms-eval exits 0 even when evaluation
    fails, so tests judge a run by its results JSON."""

    def run(data_root: Path | None, tasks: str, *args: str, env: dict[str, str] | None = None):
        output = tmp_path / "lmms_eval_output"
        environment = {key: value for key, value in os.environ.items() if not key.startswith("LMMS_VAR_")}
        environment |= {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
        if data_root is not None:
            environment[ENV_DATA_ROOT] = str(data_root)
        environment |= env or {}
        command = [sys.executable, "-m", "lmms_eval", "--tasks", tasks, "--include_path", str(TASKS_DIR)]
        command += ["--output_path", str(output), "--log_samples", *args]
        done = subprocess.run(
            command, env=environment, capture_output=True, text=True, timeout=600, cwd=tmp_path
        )
        results = sorted(output.rglob("*_results.json"))
        return (json.loads(results[-1].read_text()) if results else None), done.stdout + done.stderr

    return run
