"""`lmms-var show`: attention maps on the image, before VAR and after, for one prompt.

Runs the prompt (images first, then the question, in the model's own chat template) once without VAR
and once with it, and writes one figure (`--output`, a PNG) and the numbers behind it (same name,
`.json`). Every input is checked before the model's weights are loaded.
"""

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from lmms_var.backbones import (
    DTYPES,
    UnsupportedModelError,
    backbone_for_config,
    checkpoint_config,
    load_checkpoint,
)
from lmms_var.checks import check_output_file, device_or_default
from lmms_var.config import VARConfig
from lmms_var.model_args import model_arg

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from lmms_var.backbones import Backbone

HEAD_CHOICES = ("selected", "all")
ROW_CHOICES = ("last", "answer", "all")
DEFAULT_OUTPUT = Path("attention.png")
# VAR's hyper-parameters as options, their help and defaults the model args' (`lmms_var.model_args`).
VAR_OPTIONS = {name: model_arg(name) for name in ("tau", "p", "rho", "summ")}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "show",
        help="draw attention maps on the image before and after VAR",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="checkpoint folder or Hub id")
    parser.add_argument(
        "--image", type=Path, action="append", required=True, help="an image file (repeat for several)"
    )
    parser.add_argument("--question", required=True, help="the text after the images")
    parser.add_argument("--layers", type=int, nargs="+", help="decoder layers (default: the middle third)")
    parser.add_argument(
        "--heads", choices=HEAD_CHOICES, default="selected", help="heads VAR selected (default) or all"
    )
    parser.add_argument(
        "--rows",
        choices=ROW_CHOICES,
        default="last",
        help="query rows: the last prompt token (default), the plain model's answer, or every row VAR may change",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=_positive_int,
        default=32,
        help="longest answer for --rows answer (default 32)",
    )
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help=f"PNG to write (default {DEFAULT_OUTPUT})"
    )
    parser.add_argument(
        "--sink-dims", type=int, nargs="+", help="sink dimensions (default: published for the model)"
    )
    for name, row in VAR_OPTIONS.items():
        parser.add_argument(
            f"--{name}", type=float, default=row.default, help=f"{row.help} (default {row.default:g})"
        )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    parser.add_argument(
        "--dtype", choices=DTYPES, default="auto", help="weights dtype (default: checkpoint's)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from lmms_var.attention_maps import MapSettings, figure_for_prompt, model_note
    from lmms_var.sink_dims.calibration import CalibrationPrompt, encode_prompt

    backbone, model_config = _checked_model(args)
    images = tuple(_read_image(path, backbone) for path in args.image)
    output = _writable_png(args.output)
    config = _var_config(args, model_config)
    settings = MapSettings(
        layers=args.layers, heads=args.heads, rows=args.rows, max_new_tokens=args.max_new_tokens
    )
    device = device_or_default(args.device, "--device")
    model, processor = load_checkpoint(args.model, backbone, device=device, dtype=args.dtype)
    maps = figure_for_prompt(
        model,
        processor,
        encode_prompt(processor, CalibrationPrompt(images, args.question)),
        config,
        output,
        question=args.question,
        model_name=args.model,
        settings=settings,
        note=model_note(args.model),
    )
    for panel_map in maps.panels:
        panel, before, after = panel_map.panel, panel_map.before, panel_map.after
        print(
            f"{panel.label()} ({panel.size[0]}x{panel.size[1]} px): attention on it "
            f"{panel_map.image_mass(before):.3f} -> {panel_map.image_mass(after):.3f}; on its visual sinks "
            f"({len(panel_map.sinks)} tokens) {panel_map.sink_mass(before):.3f} -> {panel_map.sink_mass(after):.3f}"
        )
    print(
        f"VAR redistributed {maps.total_selected_pairs} (head, row) pairs in layers {list(maps.layers)}; "
        f"heads averaged: {list(maps.heads)} ({maps.head_rule})"
    )
    print(f"wrote {output} and {output.with_suffix('.json')}")
    return 0


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def _read_image(path: Path, backbone: "Backbone"):
    """The image as RGB, as a viewer shows it (`tasks.images.to_rgb`), or a ValueError naming `--image`
    and the file (before any weights are loaded): unreadable, or a size the model's processor refuses
    (the spatial tasks' check, asked of this model's family)."""
    from PIL import Image, UnidentifiedImageError

    from lmms_var.tasks.images import to_rgb
    from lmms_var.tasks.processor_limits import processor_refusal

    if not path.is_file():
        raise ValueError(f"--image {path}: no such file")
    try:
        image = Image.open(path)
        refusal = processor_refusal(*image.size, backbones=[backbone])  # from the header, before decoding
        if refusal is None:
            image.load()  # reads the pixels and closes the file (`to_rgb` may return this very image)
            image = to_rgb(image)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ValueError(f"--image {path}: not an image Pillow can read ({error})") from None
    if refusal is not None:
        raise ValueError(f"--image {path}: {refusal}")
    return image


def _writable_png(path: Path) -> Path:
    """`--output` and the JSON beside it, checked before the weights load."""
    if path.suffix.lower() != ".png":
        raise ValueError(f"--output {path}: must end in .png")
    check_output_file(path.with_suffix(".json"), "--output's JSON")
    return check_output_file(path, "--output")


def _checked_model(args: argparse.Namespace) -> tuple["Backbone", "PretrainedConfig"]:
    """The model's backbone and config, read before loading: a vision-language family VAR supports."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    model_config = checkpoint_config(args.model, "--model ")
    if model_config.model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise ValueError(
            f"--model {args.model}: a {model_config.model_type!r} model takes no images; "
            "show needs a vision-language model VAR supports"
        )
    try:
        return backbone_for_config(model_config), model_config
    except UnsupportedModelError as error:  # a vision-language family VAR has no backbone for
        raise ValueError(f"--model {args.model}: {error}") from None


def _var_config(args: argparse.Namespace, model_config: "PretrainedConfig") -> VARConfig:
    """VAR's settings, checked against the model's config (layers, sink dims) before loading."""
    from lmms_var.attention_maps.capture import attention_layers_among
    from lmms_var.backbones.base import attention_layer_indices
    from lmms_var.sink_dims.known import lookup_known

    text_config = model_config.get_text_config()
    try:
        attention_layers_among(
            args.layers, text_config.num_hidden_layers, attention_layer_indices(text_config)
        )
    except ValueError as error:
        raise ValueError(f"--{error}") from None
    dims = args.sink_dims
    if dims is None:
        known = lookup_known(args.model, model_config)
        if known is None:
            raise ValueError(
                f"--sink-dims: no published sink dims for {args.model}; pass them (e.g. --sink-dims 458 2570) or "
                f"find them with `lmms-var find-sink-dims --model {args.model} --output dims.json`"
            )
        dims = known.sink_dims
    bad = [dim for dim in dims if not 0 <= dim < text_config.hidden_size]
    if bad:
        raise ValueError(f"--sink-dims {bad}: beyond the model's hidden size {text_config.hidden_size}")
    try:
        return VARConfig(sink_dims=tuple(dims), tau=args.tau, p=args.p, rho=args.rho, summ=args.summ)
    except ValueError as error:  # "VARConfig.p must be in [0, 1]" -> "--p must be in [0, 1]"
        raise ValueError(str(error).replace("VARConfig.", "--").replace("sink_dims", "sink-dims")) from None
