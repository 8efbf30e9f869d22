import json
import logging

import pytest

from lmms_var import VARConfig, config_from_model
from lmms_var.sink_dims.auto import CACHE_ENV, auto_sink_dims, cache_dir, cache_key
from lmms_var.sink_dims.finder import find_sink_dims
from lmms_var.testing import build_tiny_model
from tests.conftest import TINY_SPEC, TINY_TAU


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_auto_equals_the_finder_and_hits_the_cache_the_second_time(planted, isolated_cache, monkeypatch):
    model, processor, dims = planted
    first_dims, first_source = auto_sink_dims(model, processor, tau=TINY_TAU)
    assert first_dims == find_sink_dims(model, processor, tau=TINY_TAU).sink_dims == tuple(sorted(dims))
    assert first_source == "measured"

    def no_measuring(*_args, **_kwargs):
        raise AssertionError("a cached model must not be measured again")

    monkeypatch.setattr("lmms_var.sink_dims.auto.find_sink_dims", no_measuring)
    second_dims, second_source = auto_sink_dims(model, processor, tau=TINY_TAU)
    assert second_dims == first_dims
    path = isolated_cache / "sink_dims" / f"{cache_key(model, TINY_TAU)}.json"
    assert second_source == f"cache:{path}"
    assert json.loads(path.read_text())["sink_dims"] == list(first_dims)


def test_each_model_and_tau_has_its_own_entry(tiny_model, other_tiny_model):
    keys = {cache_key(tiny_model[0], TINY_TAU), cache_key(other_tiny_model[0], TINY_TAU)}
    keys.add(cache_key(tiny_model[0], 4.0))
    assert len(keys) == 3


def test_the_key_ignores_how_the_model_was_loaded(tiny_model, tiny_checkpoint):
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = tiny_model[0]
    reloaded = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_checkpoint)
    assert reloaded.config._name_or_path != model.config._name_or_path
    assert cache_key(reloaded, TINY_TAU) == cache_key(model, TINY_TAU)
    assert cache_key(build_tiny_model(TINY_SPEC)[0], TINY_TAU) == cache_key(model, TINY_TAU)


@pytest.mark.parametrize(
    ("content", "warning"),
    [
        ("{not json", "ignoring unreadable sink-dims cache {path}"),
        # An edited (or copied) entry naming a channel the model lacks: never handed to VAR.
        (
            '{"sink_dims": [17, 99999]}',
            "ignoring sink-dims cache {path}: dims [99999] are beyond the model's "
            "hidden size 128; measuring again",
        ),
    ],
)
def test_a_corrupt_cache_entry_is_measured_again(tiny_model, isolated_cache, caplog, content, warning):
    model, processor = tiny_model
    path = isolated_cache / "sink_dims" / f"{cache_key(model, TINY_TAU)}.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with caplog.at_level(logging.WARNING, logger="lmms_var.sink_dims.auto"):
        assert auto_sink_dims(model, processor, tau=TINY_TAU) == ((17, 93), "measured")
    assert warning.format(path=path) in caplog.text
    assert json.loads(path.read_text())["sink_dims"] == [17, 93]


def test_config_from_model_uses_the_measured_dims_and_logs_their_source(tiny_model, caplog):
    with caplog.at_level(logging.INFO, logger="lmms_var.sink_dims.auto"):
        config = config_from_model(*tiny_model, tau=TINY_TAU, p=0.4)
        again = config_from_model(*tiny_model, tau=TINY_TAU, p=0.4)
    assert config == again == VARConfig(sink_dims=(17, 93), tau=TINY_TAU, p=0.4)
    assert "sink dims of Qwen2_5_VLForConditionalGeneration: [17, 93] (measured)" in caplog.text
    assert "[17, 93] (cache:" in caplog.text


def test_cache_dir_defaults_to_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "lmms-var"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "lmms-var"


@pytest.mark.parametrize("variable", [CACHE_ENV, "XDG_CACHE_HOME"])
def test_a_cache_folder_that_is_a_file_is_named_with_its_variable_before_measuring(
    tiny_model, monkeypatch, tmp_path, variable
):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv(variable, str(blocker))
    folder = blocker if variable == CACHE_ENV else blocker / "lmms-var"
    with pytest.raises(ValueError) as error:
        auto_sink_dims(*tiny_model, tau=TINY_TAU)
    assert str(error.value).startswith(f"the sink-dims cache folder (from ${variable}) {folder} ")
