"""`lmms-var find-sink-dims` and `lmms-var validate-sink-dims`: measure and check a model's sink dims.

Both load a checkpoint of a supported family (`lmms_var.backbones`; a local folder or a Hub id), run prompts through it (the built-in
calibration prompts, or BLINK records of a spatial root with `--data`), write a JSON report and print
a short table.
"""

import argparse
import json
from pathlib import Path

from lmms_var.backbones import (
    DTYPES,
    UnsupportedModelError,
    backbone_for_config,
    checkpoint_config,
    load_checkpoint,
)
from lmms_var.checks import check_output_file, device_or_default
from lmms_var.config import DEFAULT_TAU
from lmms_var.sink_dims.defaults import (
    DEFAULT_ATTENTION_FACTOR,
    DEFAULT_MIN_CONSISTENCY,
    DEFAULT_MIN_DISTANCE,
    DEFAULT_NUM_SAMPLES,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", required=True, help="checkpoint folder or Hub id")
        parser.add_argument("--data", type=Path, help="spatial root; default: built-in calibration prompts")
        parser.add_argument("--num-samples", type=int, default=DEFAULT_NUM_SAMPLES, help="prompts to run")
        parser.add_argument(
            "--layers", type=int, nargs="+", help="decoder layers to look at (default: 2..L-1)"
        )
        parser.add_argument("--tau", type=float, default=DEFAULT_TAU, help="RMS-normalised sink threshold")
        parser.add_argument(
            "--device", default=None, help="cpu, cuda, cuda:N or auto (default: cuda if available)"
        )
        parser.add_argument(
            "--dtype", choices=DTYPES, default="auto", help="weights dtype (default: checkpoint's)"
        )
        parser.add_argument("--output", type=Path, required=True, help="JSON file to write")

    find = subparsers.add_parser(
        "find-sink-dims",
        help="measure a model's sink dimensions",
        description="Rank hidden channels by how consistently a few tokens are massive in them (layers >= 2).",
    )
    common(find)
    find.add_argument(
        "--min-consistency",
        type=float,
        default=DEFAULT_MIN_CONSISTENCY,
        help="fraction of prompt-layer pairs a selected channel must fire in",
    )
    find.set_defaults(run=run_find)

    validate = subparsers.add_parser(
        "validate-sink-dims",
        help="check sink dimensions against the tokens that receive outsized attention",
        description="Precision and recall of the sinks DIMS detect against tokens with outsized attention.",
    )
    common(validate)
    validate.add_argument("--dims", type=int, nargs="+", required=True, help="sink dimensions to check")
    validate.add_argument(
        "--attention-factor",
        type=float,
        default=DEFAULT_ATTENTION_FACTOR,
        help="outsized = mean received attention above this multiple of the uniform share",
    )
    validate.add_argument(
        "--min-distance",
        type=int,
        default=DEFAULT_MIN_DISTANCE,
        help="ignore queries closer than this to the key (local attention)",
    )
    validate.set_defaults(run=run_validate)


def run_find(args: argparse.Namespace) -> int:
    from lmms_var.sink_dims.finder import check_finder_settings, find_sink_dims

    # Every input is checked before the weights load, and the output before prompts run.
    check_output_file(args.output, "--output")
    check_finder_settings(tau=args.tau, min_consistency=args.min_consistency)
    prompts, source = _prompts(args)
    model, processor = _load(args)
    result = find_sink_dims(
        model,
        processor,
        tau=args.tau,
        prompts=prompts,
        prompt_source=source,
        layers=args.layers,
        min_consistency=args.min_consistency,
        progress=True,
    )
    return _report(args, result)


def run_validate(args: argparse.Namespace) -> int:
    from lmms_var.sink_dims.validator import check_validation_settings, validate_sink_dims

    check_output_file(args.output, "--output")
    check_validation_settings(
        tau=args.tau, attention_factor=args.attention_factor, min_distance=args.min_distance
    )
    prompts, source = _prompts(args)
    model, processor = _load(args, args.dims)
    result = validate_sink_dims(
        model,
        processor,
        args.dims,
        tau=args.tau,
        prompts=prompts,
        prompt_source=source,
        layers=args.layers,
        attention_factor=args.attention_factor,
        min_distance=args.min_distance,
        progress=True,
    )
    return _report(args, result)


def _load(args: argparse.Namespace, dims: list[int] | None = None):
    """(model, processor) of `--model`; a path that is not a supported model, `dims` beyond its hidden
    size, `--layers` it lacks or a `--device` this machine lacks fail before any weights load."""
    from lmms_var.sink_dims.finder import measured_layers
    from lmms_var.sink_dims.validator import check_dims

    config = checkpoint_config(args.model, "--model ")
    try:
        backbone = backbone_for_config(config)
    except UnsupportedModelError as error:
        raise ValueError(f"--model {args.model}: {error}") from None
    text_config = config.get_text_config()
    if dims is not None:
        check_dims(dims, text_config.hidden_size)
    if args.layers is not None:
        measured_layers(args.layers, text_config.num_hidden_layers)
    device = device_or_default(args.device, "--device")
    return load_checkpoint(args.model, backbone, device=device, dtype=args.dtype)


def _prompts(args: argparse.Namespace):
    from lmms_var.sink_dims.calibration import builtin_prompts, data_prompts

    if args.data is None:
        return builtin_prompts(args.num_samples), "builtin"
    return data_prompts(args.data, args.num_samples), f"data:{args.data}"


def _report(args: argparse.Namespace, result) -> int:
    """Write the result's JSON (named by the model as the user gave it) and print its table."""
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({**result.to_json(), "model": args.model}, indent=2) + "\n")
    print(result.table())
    print(f"wrote {args.output}")
    return 0
