"""`lmms-var show` on every family's tiny checkpoint: a PNG and its JSON, and clear messages for bad inputs."""

import argparse
import json

import numpy as np
import pytest
from PIL import Image
from transformers import PaliGemmaConfig, Qwen2Config

from lmms_var.attention_maps import MapSettings
from lmms_var.attention_maps.figure import RANDOM_MODEL_NOTE
from lmms_var.backbones import backbone_for_model_type
from lmms_var.model_args import ModelArg, parse_float
from lmms_var.testing.images import picture_in_mode, random_image
from lmms_var.tools import show
from lmms_var.tools.cli import build_parser, main
from tests.conftest import FAMILIES, TINY_SPEC, TINY_TAU

TINY_ARGS = ["--sink-dims", *map(str, TINY_SPEC.sink_dims), "--tau", str(TINY_TAU)]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("show_images")
    paths = [folder / "wide.png", folder / "tall.jpg"]
    random_image(1, size=(200, 120)).save(paths[0])
    random_image(2, size=(90, 160)).save(paths[1])
    return paths


def show_args(checkpoint, images, output, *extra: str, var_args: list[str] = TINY_ARGS) -> list[str]:
    image_args = [arg for path in images for arg in ("--image", str(path))]
    question = ["--question", "Which is on the left?"]
    return [
        "show",
        "--model",
        str(checkpoint),
        *image_args,
        *question,
        "--output",
        str(output),
        *var_args,
        *extra,
    ]


@pytest.mark.parametrize("model_type", FAMILIES)
def test_show_writes_a_png_and_its_json(tiny_checkpoints, model_type, images, tmp_path, capsys):
    output = tmp_path / "maps" / "attention.png"
    assert main(show_args(tiny_checkpoints(model_type), images, output, "--rows", "all")) == 0
    with Image.open(output) as figure:
        assert figure.format == "PNG" and figure.width > 500
    data = json.loads(output.with_suffix(".json").read_text())
    assert data["layers"] == [2] and data["row_rule"] == "all" and data["note"] == RANDOM_MODEL_NOTE
    assert data["method"] == "VAR" and data["chosen"] == {}
    assert data["config"]["sink_dims"] == list(TINY_SPEC.sink_dims) and data["config"]["tau"] == TINY_TAU
    # Two images; one panel each, or one per part (InternVL: its tiles, placed as cut, and its thumbnail).
    first_parts = {entry["index"]: entry for entry in reversed(data["images"])}
    assert sorted(first_parts) == [0, 1]
    for entry in data["images"]:
        rows, cols = entry["grid"]
        width, height = entry["size"]
        assert (
            width % cols == 0
            and height % rows == 0
            and entry["tokens"][1] - entry["tokens"][0] == rows * cols + entry["undrawn_tokens"]
        )
        assert len(entry["before"]) == len(entry["after"]) == rows and len(entry["before"][0]) == cols
        assert set(entry["image_mass"]) == set(entry["sink_mass"]) == {"before", "after"}
    # The wide image is wide and the tall one tall as the model saw them (or square: a centre crop).
    (wide_width, wide_height), (tall_width, tall_height) = (first_parts[index]["size"] for index in (0, 1))
    assert wide_width >= wide_height and tall_width <= tall_height
    out = capsys.readouterr().out
    assert "image 1" in out and f"wrote {output} and {output.with_suffix('.json')}" in out


def test_bad_inputs_are_reported_before_loading_weights(
    tiny_checkpoint, images, tmp_path, cli_error, no_weights
):
    output = tmp_path / "attention.png"
    missing = tmp_path / "missing.png"
    assert f"--image {missing}: no such file" in cli_error(show_args(tiny_checkpoint, [missing], output))
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    assert f"--image {broken}: not an image Pillow can read" in cli_error(
        show_args(tiny_checkpoint, [broken], output)
    )
    assert "--layers must be decoder layers in [0, 4), got [1, 7]" in cli_error(
        show_args(tiny_checkpoint, images, output, "--layers", "1", "7")
    )
    sliver = tmp_path / "sliver.png"
    random_image(3, size=(10000, 20)).save(sliver)
    assert (
        f"--image {sliver}: the Qwen2.5-VL image processor refuses its size 10000x20 (absolute aspect ratio"
        in cli_error(show_args(tiny_checkpoint, [images[0], sliver], output))
    )
    text_only = tmp_path / "text_only"
    Qwen2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=2).save_pretrained(text_only)
    assert f"--model {text_only}: a 'qwen2' model takes no images" in cli_error(
        show_args(text_only, images, output)
    )
    other_family = tmp_path / "other_family"
    PaliGemmaConfig().save_pretrained(other_family)
    assert f"--model {other_family}: VAR supports model types qwen2_5_vl" in cli_error(
        show_args(other_family, images, output, var_args=[])  # not "no published sink dims"
    )
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert (
        f"--output's JSON {blocker / 'attention.json'} cannot be created: {blocker} is a file"
        in cli_error(show_args(tiny_checkpoint, images, blocker / "attention.png"))
    )
    folder = tmp_path / "figures"
    (folder / "attention.png").mkdir(parents=True)
    assert f"--output {folder / 'attention.png'} is a folder; give a file path" in cli_error(
        show_args(tiny_checkpoint, images, folder / "attention.png")
    )
    assert "--output" in cli_error(show_args(tiny_checkpoint, images, tmp_path / "attention.jpg"))
    assert "--p must be in [0, 1], got 2.0" in cli_error(
        show_args(tiny_checkpoint, images, output, "--p", "2")
    )
    assert "--sink-dims: no published sink dims for" in cli_error(
        show_args(tiny_checkpoint, images, output, var_args=[])
    )
    assert "--sink-dims [500]: beyond the model's hidden size 128" in cli_error(
        show_args(tiny_checkpoint, images, output, var_args=["--sink-dims", "500"])
    )
    assert not output.exists()


def test_a_device_this_machine_lacks_is_named_before_loading(
    tiny_checkpoint, images, tmp_path, cli_error, monkeypatch, no_weights
):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    args = show_args(tiny_checkpoint, images, tmp_path / "a.png", "--device", "cuda")
    assert "lmms-var show: error: --device 'cuda': this machine has no CUDA device; give cpu" in cli_error(
        args
    )


def test_show_is_registered_with_the_issues_options(capsys):
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    options = {o for a in action.choices["show"]._actions for o in a.option_strings}
    assert {
        "--model",
        "--image",
        "--question",
        "--layers",
        "--heads",
        "--rows",
        "--output",
        "--sink-dims",
        "--tau",
        "--p",
        "--rho",
        "--summ",
        "--method",
        "--alpha",
        "--alpha-low",
        "--alpha-high",
        "--threshold",
        "--gamma",
        "--start-layer",
        "--end-layer",
        "--device",
        "--dtype",
    } <= options
    # --heads and --rows offer exactly the rules the library takes, and nothing else parses.
    choices = {a.dest: a.choices for a in action.choices["show"]._actions if a.dest in ("heads", "rows")}
    assert choices == {"heads": ("selected", "all"), "rows": ("last", "answer", "all")}
    for heads in choices["heads"]:
        for rows in choices["rows"]:
            MapSettings(heads=heads, rows=rows)
    required = ["show", "--model", "m", "--image", "i.png", "--question", "q"]
    assert parser.parse_args([*required, "--rows", "answer"]).rows == "answer"
    with pytest.raises(SystemExit):
        parser.parse_args([*required, "--rows", "first"])
    assert "--rows: invalid choice: 'first'" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["I;16", "RGBA", "RGB"])
def test_an_image_reaches_the_model_as_a_viewer_shows_it(tmp_path, mode):
    """16-bit and transparent files as the spatial tasks show them, not as `convert("RGB")` leaves them."""
    stored, shown = picture_in_mode(mode) if mode != "RGB" else (random_image(4), random_image(4))
    path = tmp_path / "picture.png"
    stored.save(path)
    read = show._read_image(path, backbone_for_model_type(TINY_SPEC.model_type))
    assert read.mode == "RGB"
    assert np.array_equal(np.asarray(read), np.asarray(shown))


def test_an_image_size_is_refused_only_by_a_model_whose_processor_refuses_it(tmp_path):
    """The spatial tasks' size check, asked of the model's own family: LLaVA's processor crops any size."""
    sliver = tmp_path / "sliver.png"
    random_image(3, size=(10000, 20)).save(sliver)
    assert show._read_image(sliver, backbone_for_model_type("llava")).size == (10000, 20)
    with pytest.raises(ValueError, match=rf"--image {sliver}: the Qwen2-VL image processor refuses its size"):
        show._read_image(sliver, backbone_for_model_type("qwen2_vl"))


def test_a_linear_attention_layer_is_refused_before_loading(
    tiny_checkpoints, images, tmp_path, cli_error, no_weights
):
    """Qwen3.5's layer 1 (of the tiny checkpoint) is linear attention: no attention map there."""
    args = show_args(tiny_checkpoints("qwen3_5"), images, tmp_path / "a.png", "--layers", "1", "2")
    assert (
        "--layers [1] are linear-attention layers, which have no attention map; choose among [2]"
        in cli_error(args)
    )


# Each method with its args as options (no VAR option: they belong to --method var).
METHOD_ARGS = {
    "scalingvis": ["--method", "scalingvis", "--alpha", "1.8"],
    "adaptvis": ["--method", "adaptvis", "--alpha-low", "0.5", "--alpha-high", "1.8", "--threshold", "0"],
    "pai": ["--method", "pai", "--alpha", "0.5", "--start-layer", "1", "--gamma", "1.1"],
}


@pytest.mark.parametrize("method", METHOD_ARGS)
def test_show_draws_each_method(tiny_checkpoint, images, method, tmp_path, capsys):
    output = tmp_path / f"{method}.png"
    assert main(show_args(tiny_checkpoint, images, output, var_args=METHOD_ARGS[method])) == 0
    with Image.open(output) as figure:
        assert figure.format == "PNG" and figure.width > 500
    data = json.loads(output.with_suffix(".json").read_text())
    name = {"scalingvis": "ScalingVis", "adaptvis": "AdaptVis", "pai": "PAI"}[method]
    assert data["method"] == name and data["layers"] == [2] and data["head_rule"] == "selected"
    assert all(entry["sinks"] == [] for entry in data["images"])
    assert any(entry["before"] != entry["after"] for entry in data["images"])
    out = capsys.readouterr().out
    assert f"{name} changed " in out and "visual sinks" not in out
    if method == "adaptvis":  # threshold 0: never unsure, so alpha_high
        assert data["chosen"] == {"alpha": 1.8} and "AdaptVis chose alpha=1.8" in out
    if method == "pai":
        assert data["config"] == {"alpha": 0.5, "start_layer": 1, "end_layer": None, "gamma": 1.1}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "scalingvis"], "--alpha: --method scalingvis needs it"),
        (["--method", "scalingvis", "--alpha", "0"], "--alpha must be a finite number > 0, got 0"),
        (
            ["--method", "scalingvis", "--alpha", "2", "--p", "0.5"],
            "--p is an option of --method var, not of --method scalingvis",
        ),
        (
            ["--method", "scalingvis", "--alpha", "2", "--sink-dims", "17"],
            "--sink-dims is an option of --method var, not of",
        ),
        ([*TINY_ARGS, "--gamma", "1.2"], "--gamma is an option of --method pai, not of --method var"),
        (
            ["--method", "pai", "--alpha-low", "0.5"],
            "--alpha-low is an option of --method adaptvis, not of --method pai",
        ),
        (
            ["--method", "adaptvis", "--alpha", "2"],
            "--alpha is an option of --method scalingvis and --method pai, not of --method adaptvis",
        ),
        (["--method", "adaptvis", "--threshold", "2"], "--threshold must be in [0, 1], got 2"),
        (["--method", "pai", "--end-layer", "9"], "--end-layer must be at most the model's 4 layers, got 9"),
        (
            ["--method", "pai", "--start-layer", "1.5"],
            "--start-layer must be a layer index (an integer >= 0), got 1.5",
        ),
        (
            ["--method", "pai", "--start-layer", "3", "--end-layer", "2"],
            "--end-layer must be above start_layer (3), got 2",
        ),
        (
            ["--method", "pai", "--rows", "answer"],
            "--rows 'answer' is for VAR; PAI changes the last row of a forward only",
        ),
    ],
)
def test_bad_method_args_are_named_before_loading_weights(
    tiny_checkpoint, images, tmp_path, cli_error, no_weights, args, message
):
    assert message in cli_error(show_args(tiny_checkpoint, images, tmp_path / "a.png", var_args=args))


def test_method_options_take_their_help_from_the_model_args_table(monkeypatch):
    """Per method taking the option: its row's help where the table has one, the config's default."""
    row = ModelArg("gamma", 1.1, parse_float, "refine strength, as the table says", method="pai")
    monkeypatch.setattr(show, "MODEL_ARGS", (*(r for r in show.MODEL_ARGS if r.name != "gamma"), row))
    parser = argparse.ArgumentParser()
    show.register(parser.add_subparsers())
    actions = {
        action.dest: action for action in parser._subparsers._group_actions[0].choices["show"]._actions
    }
    assert actions["gamma"].help == "pai: refine strength, as the table says (default 1.1)"
    assert actions["alpha"].help.startswith("scalingvis: ") and "(required); pai: " in actions["alpha"].help
    assert actions["end_layer"].help.endswith("(default through the last layer)")
    assert all(actions[name].default is None for name in show.METHOD_OPTIONS)
