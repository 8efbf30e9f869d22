"""`lmms-var show`: attention maps on the image, before an intervention and after, for one prompt.

Runs the prompt (images first, then the question, in the model's own chat template) once without the
intervention (`--method`: VAR by default, or ScalingVis, AdaptVis, PAI) and once with it, and writes one
figure (`--output`, a PNG) and the numbers behind it (same name, `.json`). Every input is checked before
the model's weights are loaded.
"""

import argparse
import dataclasses
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
from lmms_var.config import METHOD_CONFIGS, ConfigError, VARConfig
from lmms_var.model_args import MODEL_ARGS, model_arg

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from lmms_var.backbones import Backbone

HEAD_CHOICES = ("selected", "all")
ROW_CHOICES = ("last", "answer", "all")
DEFAULT_OUTPUT = Path("attention.png")
# VAR's hyper-parameters as options, their help and defaults the model args' (`lmms_var.model_args`).
VAR_OPTIONS = {name: model_arg(name) for name in ("tau", "p", "rho", "summ")}


def _method_options() -> dict[str, tuple[str, ...]]:
    """The other methods' settings as options: each config's fields, with the methods that take them."""
    options: dict[str, tuple[str, ...]] = {}
    for method, config_type in METHOD_CONFIGS.items():
        if config_type is not VARConfig:
            for field in dataclasses.fields(config_type):
                options[field.name] = (*options.get(field.name, ()), method)
    return options


METHOD_OPTIONS = _method_options()
# Their help where the table of model args has no row of that method and name (its rows' help wins).
OWN_HELP = {
    ("scalingvis", "alpha"): "factor on the last prompt row's scores on visual keys",
    ("pai", "alpha"): "amplification of the last row's scores on visual keys (s + alpha * |s|)",
    ("adaptvis", "alpha_low"): "alpha where the plain model's first-token confidence is below --threshold",
    ("adaptvis", "alpha_high"): "alpha where it is not",
    ("adaptvis", "threshold"): "the confidence that chooses between --alpha-low and --alpha-high",
    ("pai", "start_layer"): "the first decoder layer amplified",
    ("pai", "end_layer"): "the decoder layer after the last one amplified",
    ("pai", "gamma"): "the logit refine's strength (1: off); the maps draw attention, which it leaves alone",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "show",
        help="draw attention maps on the image before and after VAR (or ScalingVis, AdaptVis, PAI)",
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
        "--method",
        choices=tuple(METHOD_CONFIGS),
        default=model_arg("method").default,
        help=f"the intervention drawn (default {model_arg('method').default})",
    )
    parser.add_argument(
        "--heads",
        choices=HEAD_CHOICES,
        default="selected",
        help="heads the method changed (default; VAR: those it selected) or all",
    )
    parser.add_argument(
        "--rows",
        choices=ROW_CHOICES,
        default="last",
        help="query rows: the last prompt token (default), the plain model's answer (VAR), or every row "
        "the method may change",
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
        "--sink-dims",
        type=int,
        nargs="+",
        action=_Given,
        help="VAR: sink dimensions (default: published for the model)",
    )
    for name, row in VAR_OPTIONS.items():
        parser.add_argument(
            f"--{name}",
            type=float,
            action=_Given,
            default=row.default,
            help=f"{row.help} (default {row.default:g})",
        )
    for name, methods in METHOD_OPTIONS.items():
        parser.add_argument(
            f"--{_flag(name)}",
            dest=name,
            type=_number,
            action=_Given,
            help=_method_option_help(name, methods),
        )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    parser.add_argument(
        "--dtype", choices=DTYPES, default="auto", help="weights dtype (default: checkpoint's)"
    )
    parser.set_defaults(run=run, given=())


class _Given(argparse.Action):
    """Stores the value and notes the option as given: an option of another method than `--method`'s
    is an error, which a default cannot tell."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        namespace.given = (*namespace.given, self.dest)


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _number(text: str) -> int | float:
    """An integer where the text is one (layer indices), else a float; the method's config checks it."""
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None


def _method_option_help(name: str, methods: tuple[str, ...]) -> str:
    """Per method that takes the option: the table of model args' help for its row where there is one
    (`OWN_HELP` where not), and its default (the config's)."""
    parts = []
    for method in methods:
        row = next((row for row in MODEL_ARGS if row.name == name and row.method == method), None)
        default = next(f.default for f in dataclasses.fields(METHOD_CONFIGS[method]) if f.name == name)
        if default is dataclasses.MISSING:
            default_text = "required"
        else:
            default_text = f"default {'through the last layer' if default is None else default}"
        parts.append(f"{method}: {OWN_HELP[method, name] if row is None else row.help} ({default_text})")
    return "; ".join(parts)


def run(args: argparse.Namespace) -> int:
    from lmms_var.attention_maps import MapSettings, figure_for_prompt, model_note
    from lmms_var.sink_dims.calibration import CalibrationPrompt, encode_prompt

    backbone, model_config = _checked_model(args)
    images = tuple(_read_image(path, backbone) for path in args.image)
    output = _writable_png(args.output)
    config = _method_config(args, model_config)
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
        sinks = (
            f"; on its visual sinks ({len(panel_map.sinks)} tokens) {panel_map.sink_mass(before):.3f} -> "
            f"{panel_map.sink_mass(after):.3f}"
            if maps.finds_sinks
            else ""
        )
        print(
            f"{panel.label()} ({panel.size[0]}x{panel.size[1]} px): attention on it "
            f"{panel_map.image_mass(before):.3f} -> {panel_map.image_mass(after):.3f}{sinks}"
        )
    if maps.chosen:
        print(f"{maps.method} chose " + " ".join(f"{name}={value:g}" for name, value in maps.chosen.items()))
    print(
        f"{maps.method} {maps.verb} {maps.total_selected_pairs} (head, row) pairs in layers {list(maps.layers)}; "
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


def _method_config(args: argparse.Namespace, model_config: "PretrainedConfig") -> object:
    """The config of `--method` from its options, checked against the model's config (layers, sink
    dims) and the other options (`--layers`, `--rows`) before loading; an option of another method is
    an error naming it."""
    from lmms_var.attention_maps.capture import attention_layers_among, check_rows
    from lmms_var.backbones.base import attention_layer_indices

    method = args.method
    for name in dict.fromkeys(args.given):
        owners = ("var",) if name in VAR_OPTIONS or name == "sink_dims" else METHOD_OPTIONS[name]
        if method not in owners:
            taken_by = " and ".join(f"--method {owner}" for owner in owners)
            raise ValueError(f"--{_flag(name)} is an option of {taken_by}, not of --method {method}")
    text_config = model_config.get_text_config()
    try:
        attention_layers_among(
            args.layers, text_config.num_hidden_layers, attention_layer_indices(text_config)
        )
    except ValueError as error:
        raise ValueError(f"--{error}") from None
    if method == "var":
        config = _var_config(args, model_config)
    else:
        config = _other_config(args, METHOD_CONFIGS[method], text_config.num_hidden_layers)
    try:
        check_rows(args.rows, config)
    except ValueError as error:
        raise ValueError(f"--{error}") from None
    return config


def _other_config(args: argparse.Namespace, config_type: type, num_layers: int) -> object:
    """ScalingVis's, AdaptVis's or PAI's config from the options given (its defaults for the others);
    its own checks' messages name the options (`PAIConfig.end_layer` -> `--end-layer`)."""
    fields = dataclasses.fields(config_type)
    missing = [f.name for f in fields if f.default is dataclasses.MISSING and getattr(args, f.name) is None]
    if missing:
        options = " ".join(f"--{_flag(name)}" for name in missing)
        raise ValueError(f"{options}: --method {args.method} needs it (see lmms-var show --help)")
    given = {f.name: getattr(args, f.name) for f in fields if getattr(args, f.name) is not None}
    try:
        config = config_type(**given)
        config.active_layers(num_layers)  # PAI's layer range against the model's
    except ConfigError as error:  # the config's fields are the options' names
        raise ValueError(f"--{_flag(error.field)} {error.problem}") from None
    return config


def _var_config(args: argparse.Namespace, model_config: "PretrainedConfig") -> VARConfig:
    """VAR's settings, checked against the model's config (sink dims) before loading."""
    from lmms_var.sink_dims.known import lookup_known

    text_config = model_config.get_text_config()
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
    except ConfigError as error:  # the config's fields are the options' names
        raise ValueError(f"--{_flag(error.field)} {error.problem}") from None
