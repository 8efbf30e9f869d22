"""`configs/sink_dims.yaml` lookup: by checkpoint name or config, from a checkout or an installed wheel."""

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from lmms_var.backbones import backbone_for_model_type
from lmms_var.sink_dims.known import find_yaml, known_sink_dims, load_known

REPO = Path(__file__).resolve().parents[2]
LOT = "aimagelab/LoT src/retrieval_module/retrieval.py"
VAR_CODE = "MICV-yonsei/VisAttnSink src/logic/constants.py"
PUBLISHED = {
    "Qwen/Qwen2.5-VL-3B-Instruct": ((318, 1874, 1819), LOT),
    "Qwen/Qwen2.5-VL-7B-Instruct": ((458, 2570), LOT),
    "Qwen/Qwen2.5-VL-32B-Instruct": ((4675, 3094), LOT),
    "Qwen/Qwen2-VL-7B-Instruct": ((458, 2570), "the VAR paper's appendix"),
    "llava-hf/llava-1.5-7b-hf": ((2533, 1415), VAR_CODE),
    "llava-hf/llava-1.5-13b-hf": ((2100, 4743), VAR_CODE),
}


def qwen_config(hidden_size: int, num_hidden_layers: int, model_type: str = "qwen2_5_vl", **text):
    """The shape of a transformers 5 multimodal config: architecture fields live in `text_config`."""
    text = SimpleNamespace(hidden_size=hidden_size, num_hidden_layers=num_hidden_layers, **text)
    return SimpleNamespace(model_type=model_type, text_config=text)


def test_yaml_holds_the_published_values_with_their_source():
    assert find_yaml() == REPO / "configs" / "sink_dims.yaml"
    entries = {entry.name: entry for entry in load_known()}
    assert set(entries) == set(PUBLISHED)
    for name, (dims, source) in PUBLISHED.items():
        assert entries[name].sink_dims == dims and source in entries[name].source
        backbone_for_model_type(entries[name].config["model_type"])  # a supported family


@pytest.mark.parametrize(
    "pretrained", ["Qwen/Qwen2.5-VL-7B-Instruct", "/models/qwen2.5-vl-7b-instruct/", "Qwen2.5-VL-7B-Instruct"]
)
def test_lookup_by_name(pretrained):
    assert known_sink_dims(pretrained, None) == (458, 2570)


def test_lookup_by_config_finds_renamed_copies():
    assert known_sink_dims("/ckpt/my-finetune", qwen_config(2048, 36)) == (318, 1874, 1819)
    assert known_sink_dims("/ckpt/snapshots/abc123", qwen_config(5120, 64)) == (4675, 3094)
    assert known_sink_dims("/ckpt/qwen2", qwen_config(3584, 28, model_type="qwen2_vl")) == (458, 2570)
    llava_13b = qwen_config(5120, 40, model_type="llava", intermediate_size=13824)
    assert known_sink_dims("/ckpt/llava-finetune", llava_13b) == (2100, 4743)


def test_unknown_models_have_no_dims():
    assert known_sink_dims("Qwen/Qwen2.5-VL-72B-Instruct", qwen_config(8192, 80)) is None
    assert known_sink_dims("/ckpt/other", qwen_config(8192, 80, model_type="qwen2_vl")) is None
    # A LLaVA on Mistral-7B is as wide and deep as LLaVA-1.5-7B, but its MLP is not Llama-2's.
    mistral = qwen_config(4096, 32, model_type="llava", intermediate_size=14336)
    assert known_sink_dims("/ckpt/bakllava", mistral) is None
    assert known_sink_dims("/ckpt/tiny", None) is None


def test_malformed_yaml_names_the_entry(tmp_path):
    bad = tmp_path / "sink_dims.yaml"
    bad.write_text("models:\n  - name: x\n    sink_dims: [1, -2]\n    source: s\n")
    with pytest.raises(ValueError, match=r"models\[0\] is malformed.*non-negative"):
        load_known(bad)


@pytest.mark.slow
def test_found_from_an_installed_wheel(tmp_path, built_wheel):
    """Install the wheel (built from a copy of the sources) under a prefix, look dims up from there."""
    pip = [sys.executable, "-m", "pip", "-q"]
    wheel = built_wheel
    prefix = tmp_path / "prefix"
    # --ignore-installed: without it pip would first uninstall the venv's own (editable) lmms-var.
    subprocess.run(
        [*pip, "install", "--no-deps", "--ignore-installed", "--prefix", prefix, wheel], check=True
    )
    site = next(prefix.glob("lib/python*/site-packages"))
    # -S skips the venv's site-packages and so the editable install; PyYAML is appended after ours.
    script = (
        f"import sys; sys.path.insert(0, {str(site)!r}); sys.path.append({str(Path(yaml.__file__).parents[1])!r}); "
        "import lmms_var.sink_dims.known as k; print(k.__file__); print(k.find_yaml()); "
        "print(k.known_sink_dims('Qwen/Qwen2.5-VL-7B-Instruct', None))"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", script], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    module, yaml_path, dims = out.stdout.splitlines()
    assert module.startswith(str(site))
    assert Path(yaml_path) == prefix / "share" / "lmms-var" / "configs" / "sink_dims.yaml"
    assert dims == "(458, 2570)"
