"""Runs of the real `lmms-eval` CLI with our models on the tiny checkpoints and the spatial tasks."""

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from lmms_var.backbones import Backbone
from lmms_var.tasks import ENV_DATA_ROOT, TASKS_PATH
from lmms_var.testing import TinySpec, save_tiny_checkpoint
from lmms_var.testing.spatial_data import write_spatial_root
from lmms_var.testing.tiny_families import TINY_FAMILIES
from tests.conftest import FAMILIES, TINY_SPEC, TINY_TAU

TASKS_DIR = TASKS_PATH
TASKS = "spatial_blink_spatial_relation,spatial_blink_multi_view_reasoning"
# One- and two-image questions, two docs each; short answers keep the tiny model fast.
# Greedy: Qwen3.5's upstream samples at temperature 0.7 unless told otherwise.
COMMON_ARGS = [
    *("--tasks", TASKS, "--include_path", str(TASKS_DIR)),
    *("--gen_kwargs", "max_new_tokens=4,temperature=0"),
]
# The tiny checkpoints' planted sinks and their tau; small images; the CPU for our models, which
# default to CUDA where there is one (upstream's runs get device=cpu,device_map=cpu).
TINY_SINKS = f"sink_dims={';'.join(map(str, TINY_SPEC.sink_dims))},tau={TINY_TAU:g}"
SMALL_IMAGES = "min_pixels=3136,max_pixels=12544"
ON_CPU = "device=cpu"
TINY_VAR_ARGS = f"{TINY_SINKS},{SMALL_IMAGES},{ON_CPU}"
# The families beyond Qwen2.5-VL, whose CLI runs share the Qwen2.5-VL runs' lmms-eval processes.
OTHER_FAMILIES = tuple(family for family in FAMILIES if family != TINY_SPEC.model_type)


def thinks_by_default(backbone: Backbone) -> bool:
    """Whether upstream's model thinks unless told not to (Qwen3.5): it then keeps only what follows
    `</think>`, which the tiny checkpoints never write, so their tests turn thinking off."""
    return backbone.lmms_eval.upstream_args.get("enable_thinking") is True


def family_args(backbone: Backbone) -> str:
    """`SMALL_IMAGES` where the family's model takes pixel bounds (Qwen), and thinking off where
    upstream thinks by default."""
    pixels = SMALL_IMAGES if "min_pixels" in backbone.lmms_eval.upstream_args else ""
    return join_args(pixels, "enable_thinking=false" if thinks_by_default(backbone) else "")


def join_args(*parts: str) -> str:
    return ",".join(part for part in parts if part)


@pytest.fixture(scope="session")
def answering_checkpoints(tmp_path_factory):
    """`get(model_type)` -> that family's tiny checkpoint wired to answer with a letter that depends on
    the prompt and image, saved once: per-doc predictions differ between docs (a random head gives every
    prompt the same answer, often special tokens only), so parity checks can see docs mixed up."""
    saved: dict[str, Path] = {}

    def get(model_type: str) -> Path:
        if model_type not in saved:
            folder = tmp_path_factory.mktemp(f"answering_{TINY_FAMILIES[model_type].folder_name}")
            saved[model_type] = save_tiny_checkpoint(
                folder, TinySpec(model_type=model_type, answers_letters=True)
            )
        return saved[model_type]

    return get


@dataclass
class Run:
    """What one lmms-eval run left behind. lmms-eval exits 0 even when a run fails: judge by files."""

    output: Path
    log: str

    def results_file(self) -> Path | None:
        results = sorted(self.output.rglob("*_results.json"))
        return results[-1] if results else None

    def model_dir(self) -> Path | None:
        path = self.results_file()
        return path.parent if path else None

    def results(self) -> dict | None:
        path = self.results_file()
        return json.loads(path.read_text()) if path else None

    def predictions(self) -> dict[tuple[str, int], str]:
        """(task, doc_id) -> filtered prediction, from the `--log_samples` JSONL files."""
        found = {}
        for path in self.output.rglob("*_samples_*.jsonl"):
            task = path.stem.split("_samples_", 1)[1]
            for line in path.read_text().splitlines():
                sample = json.loads(line)
                found[task, sample["doc_id"]] = sample["filtered_resps"]
        return found

    def diagnostics(self) -> list[dict]:
        paths = sorted(self.output.rglob("*var_diagnostics.jsonl"))
        return [json.loads(line) for path in paths for line in path.read_text().splitlines()]


@pytest.fixture(scope="session")
def small_spatial_root(tmp_path_factory) -> Path:
    return write_spatial_root(
        tmp_path_factory.mktemp("small_spatial_root"),
        blink_subtasks=("Spatial_Relation", "Multi-view_Reasoning"),
        docs_per_subtask=2,
        sat2_docs=1,
    )


@pytest.fixture(scope="session")
def lmms_eval_run(tmp_path_factory, small_spatial_root):
    """`run(name, *cli_args, processes=1, configs=None, output=None)` -> Run, offline, each in its own folder.

    `processes=2` launches `torchrun` on CPU (gloo), as the README documents; `configs` runs several
    evaluations in one lmms-eval process from a `--config` YAML list (each entry sets its own
    `output_path` under the run's folder, named by its `name` key); `output` reuses a given
    `--output_path` (an earlier run's, to resume it) instead of a fresh one.
    """

    def run(
        name: str,
        *cli_args: str,
        processes: int = 1,
        configs: list[dict] | None = None,
        output: Path | None = None,
    ) -> Run:
        folder = tmp_path_factory.mktemp(name)
        output = output or folder / "output"
        env = {key: value for key, value in os.environ.items() if not key.startswith("LMMS_VAR_")}
        env |= {
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "HF_HOME": str(folder / "hf"),
            "LMMS_VAR_CACHE_DIR": str(folder / "cache"),
            ENV_DATA_ROOT: str(small_spatial_root),
        }
        if processes > 1:
            env |= {"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
            launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        else:
            launcher = []
        args = [*COMMON_ARGS, "--log_samples", *cli_args]
        if configs is not None:
            entries = [
                {key: value for key, value in entry.items() if key != "name"}
                | {"output_path": str(folder / entry["name"])}
                for entry in configs
            ]
            (folder / "config.yaml").write_text(yaml.safe_dump(entries))
            args += ["--config", str(folder / "config.yaml")]
        else:
            args += ["--output_path", str(output)]
        done = subprocess.run(
            [sys.executable, *launcher, "-m", "lmms_eval", *args],
            env=env,
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=600,
        )
        return Run(output, done.stdout + done.stderr)

    return run
