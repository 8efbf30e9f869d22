"""Shared fixtures: tiny checkpoints with planted sinks and synthetic spatial data, built once per session.

`FAMILIES` is the test matrix: one tiny checkpoint per supported backbone (`lmms_var.backbones`);
tests that take `family_model` or `family_checkpoint` run once per entry.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from loguru import logger

from lmms_var.backbones import BACKBONES
from lmms_var.testing import TINY_TAU, TinySpec, build_tiny_model, save_tiny_checkpoint
from lmms_var.testing.spatial_data import write_spatial_root
from lmms_var.testing.tiny_families import TINY_FAMILIES

__all__ = ["FAMILIES", "TINY_SPEC", "TINY_TAU"]
REPOSITORY = Path(__file__).resolve().parents[1]
# What a wheel is built from (an sdist holds the same): nothing else of the checkout may be needed.
PACKAGING_SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "lmms_var", "tasks", "configs")
TINY_SPEC = TinySpec()
FAMILIES = (
    "qwen2_5_vl",
    "qwen2_vl",
    "qwen3_vl",
    "llava",
    "internvl",
    "llava_next",
    "llava_onevision",
    "qwen3_vl_moe",
    "gemma3",
    "qwen3_5",
)


@pytest.fixture
def log_lines() -> list[str]:
    """Messages loguru (lmms-eval's logger, and ours in lmms-eval runs) logs during the test, INFO and up."""
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(message.record["message"]), level="INFO")
    yield lines
    logger.remove(sink)


@pytest.fixture
def no_weights(monkeypatch):
    """Loading weights fails the test: every bad input must be reported before (minutes for a 72B model)."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("weights were loaded before the bad input was reported")

    for backbone in BACKBONES:
        monkeypatch.setattr(backbone.loader_class(), "from_pretrained", refuse)


@pytest.fixture
def a_file(tmp_path) -> Path:
    """A file where a folder is expected (tests may run as root, for whom every path is writable)."""
    path = tmp_path / "a_file"
    path.write_text("")
    return path


@pytest.fixture(scope="session")
def tiny_model():
    """(model, processor) in float32, planted sinks in TINY_SPEC.sink_dims. Do not mutate."""
    return build_tiny_model(TINY_SPEC)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A saved tiny Qwen2.5-VL checkpoint folder (model + processor + tokenizer)."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny_qwen2_5_vl"), TINY_SPEC)


@pytest.fixture(scope="session")
def tiny_models(tiny_model):
    """`get(model_type)` -> (model, processor) of that family's tiny checkpoint, built once. Do not mutate."""
    built = {TINY_SPEC.model_type: tiny_model}

    def get(model_type: str):
        if model_type not in built:
            built[model_type] = build_tiny_model(TinySpec(model_type=model_type))
        return built[model_type]

    return get


@pytest.fixture(scope="session", params=FAMILIES)
def family(request) -> str:
    """Each model type of the test matrix in turn."""
    return request.param


@pytest.fixture(scope="session")
def family_model(family, tiny_models):
    """(model, processor) of each family's tiny checkpoint, planted in TINY_SPEC.sink_dims. Do not mutate."""
    return tiny_models(family)


@pytest.fixture(scope="session")
def tiny_checkpoints(tiny_checkpoint, tmp_path_factory):
    """`get(model_type)` -> that family's saved tiny checkpoint folder, saved once.

    Tests that parametrise a model type themselves use this, not `family_checkpoint`: a test's own
    parametrisation of `family` would mix with the fixture's parameters in pytest's cache.
    """
    saved = {TINY_SPEC.model_type: tiny_checkpoint}

    def get(model_type: str) -> Path:
        if model_type not in saved:
            folder = tmp_path_factory.mktemp(TINY_FAMILIES[model_type].folder_name)
            saved[model_type] = save_tiny_checkpoint(folder, TinySpec(model_type=model_type))
        return saved[model_type]

    return get


@pytest.fixture(scope="session")
def family_checkpoint(family, tiny_checkpoints) -> Path:
    """Each family's tiny checkpoint, saved with `save_pretrained`."""
    return tiny_checkpoints(family)


@pytest.fixture(scope="session")
def spatial_root(tmp_path_factory) -> Path:
    """A synthetic spatial-reasoning data root (BLINK spatial sub-tasks and SAT-2)."""
    return write_spatial_root(tmp_path_factory.mktemp("spatial_root"))


def modules_after(statement: str) -> set[str]:
    """Top-level packages and `lmms_var` modules loaded by `statement` in a fresh interpreter."""
    script = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(loaded.stdout.split())


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory) -> Path:
    """The lmms-var wheel, built once from a copy of the packaging sources alone (no dependencies)."""
    root = tmp_path_factory.mktemp("wheel")
    source, wheels = root / "source", root / "wheels"
    source.mkdir()
    for name in PACKAGING_SOURCES:
        if (REPOSITORY / name).is_dir():
            shutil.copytree(REPOSITORY / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPOSITORY / name, source / name)
    pip_wheel = [sys.executable, "-m", "pip", "-q", "wheel", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip_wheel, "-w", str(wheels), str(source)], check=True, capture_output=True)
    [wheel] = wheels.glob("lmms_var-*.whl")
    return wheel
