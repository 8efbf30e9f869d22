"""lmms-eval's own models with VAR attached: same prompting, batching and decoding, portable loading.

`VARModel` is the part every registered model shares; `lmms_var.models.classes` puts it first in the
bases of each backbone's upstream class (simple and chat), so prompting, batching and decoding are
upstream's. Only `__init__` is re-implemented, because upstream's hard-codes what VAR runs must vary:
`cuda` devices in multi-process runs, dtypes, an assert that those runs are MULTI_GPU/FSDP (so no
multi-process CPU), `assert kwargs == {}` and an `attn_implementation` whitelist. The backbone says
what upstream's `__init__` sets (`LmmsEvalModel`), so `var=false` reproduces upstream's predictions.
`__init__` takes three steps: parse the model args (the table in `lmms_var.model_args` and upstream's;
no I/O), load (outputs and the checkpoint's config checked first, then the weights), attach (the
intervention `method=` chooses, VAR by default; the watchers of upstream's loop, the journal).
`generate_until` adds the journal, diagnostics and attention maps around upstream's and lets
generation errors through where upstream would answer "" instead.
"""

import functools
import inspect
import re
import typing
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from accelerate import Accelerator, DistributedType
from lmms_eval.api.model import lmms
from lmms_eval.utils import get_datetime_str
from loguru import logger as eval_logger

from lmms_var.backbones import (
    Backbone,
    LmmsEvalModel,
    UnsupportedModelError,
    backbone_for_config,
    checkpoint_config,
)
from lmms_var.checks import check_device, probe_output_file, probe_output_folder
from lmms_var.model_args import (
    AUTO,
    MODEL_ARGS,
    ModelArgError,
    ModelSettings,
    find_model_arg,
    parse_bool,
    parse_settings,
)
from lmms_var.models.args import (
    InterventionOptions,
    merge_lmms_eval_options,
    model_arg_checks,
    parse_dtype,
    parse_model_args,
)
from lmms_var.models.attention_maps import AttentionMapOptions, parse_attention_maps
from lmms_var.models.diagnostics import DiagnosticsRecorder, resolve_diagnostics_path
from lmms_var.models.journal import Journal, journal_settings, resolve_journal_dir
from lmms_var.models.lmms_eval_loop import Watcher, lmms_eval_cache_from_argv, watching_batches
from lmms_var.models.sink_check import FirstBatchSinkCheck
from lmms_var.patch import InterventionHandle, enable_intervention
from lmms_var.patch.attention import BASE_IMPLEMENTATIONS
from lmms_var.sink_dims.auto import auto_sink_dims, checked_cache_dir
from lmms_var.sink_dims.known import lookup_known


class VARModel:
    """The shared part of every VAR model class. The class built for an lmms-eval model sets
    `lmms_eval` and the `backbones` it serves (llava_hf loads three families); `backbone`, the
    checkpoint's, is set when its config is read."""

    lmms_eval: ClassVar[LmmsEvalModel]
    backbones: ClassVar[tuple[Backbone, ...]]
    backbone: Backbone

    def __init__(self, **model_args: object) -> None:
        """`model_args` as lmms-eval passes them (keywords, values half-parsed): the rows of
        `lmms_var.model_args.MODEL_ARGS` and upstream's args. Parsed first, without I/O; then the
        outputs and the checkpoint's config are checked and the weights loaded; then the intervention,
        the watchers and the journal are attached."""
        lmms.__init__(self)
        with _errors_naming(self.lmms_eval.model_id):
            settings = self._parse_settings(model_args)
            loaded = self._load(settings)
            self._attach(settings, loaded)

    @classmethod
    def _parse_settings(cls, model_args: Mapping[str, object]) -> "_Settings":
        """Every model arg checked, before any file is touched; upstream's `__init__` checks, in its order."""
        spec = cls.lmms_eval
        upstream_given = {name: value for name, value in model_args.items() if find_model_arg(name) is None}
        unknown = sorted(set(upstream_given) - set(spec.upstream_args))
        if unknown:
            raise ModelArgError(
                f"unknown arg(s) {unknown}: {spec.model_id} takes {sorted(VAR_MODEL_ARGS)} and "
                f"lmms-eval's {spec.upstream_id} args {sorted(spec.upstream_args)}"
            )
        with model_arg_checks():
            upstream = spec.upstream_arguments(upstream_given)
        upstream |= {
            name: parse_bool(name, upstream[name])
            for name in _upstream_flags(cls)
            if upstream[name] is not None
        }
        ours = parse_settings(
            {name: value for name, value in model_args.items() if name not in upstream_given}
        )
        options = InterventionOptions.from_settings(ours)
        attn_implementation = ours["attn_implementation"]
        flash = spec.flash_attention_flag
        if flash and upstream[flash]:
            attn_implementation = "flash_attention_2"
        if options.enabled and attn_implementation not in BASE_IMPLEMENTATIONS:
            raise ModelArgError(
                f"attn_implementation must be one of {list(BASE_IMPLEMENTATIONS)} with {options.name} on, "
                f"got {attn_implementation!r}"
            )
        pretrained = ours["pretrained"] or spec.default_pretrained
        run_id = get_datetime_str()
        maps = parse_attention_maps(
            ours["attention_maps"],
            ours["attention_maps_path"],
            var=options.enabled,
            method=options.method,
            pretrained=pretrained,
            run_id=run_id,
        )
        batch_size = ours["batch_size"]
        if spec.max_batch_size is not None and batch_size > spec.max_batch_size:
            raise ModelArgError(
                f"batch_size must be at most {spec.max_batch_size}: lmms-eval's {spec.upstream_id} "
                f"generates {spec.max_batch_size} prompt(s) at a time, got {batch_size}"
            )
        return _Settings(
            model_args=ours,
            upstream=upstream,
            upstream_given=upstream_given,
            pretrained=pretrained,
            attn_implementation=attn_implementation,
            intervention=options,
            maps=maps,
            run_id=run_id,
        )

    def _load(self, settings: "_Settings") -> "_Loaded":
        """Outputs made writable and the checkpoint's config read, so that a bad one fails before the
        weights load; then the weights, and upstream's attributes set as upstream sets them."""
        spec, pretrained, options = self.lmms_eval, settings.pretrained, settings.intervention
        journal_dir = resolve_journal_dir(settings.model_args["journal"], pretrained)
        diagnostics_file = _diagnostics_file(options, pretrained, settings.run_id)
        with model_arg_checks():
            if settings.maps.folder is not None:
                probe_output_folder(settings.maps.folder, "attention_maps_path")
        if options.enabled and options.sink_dims == AUTO:
            try:
                checked_cache_dir()
            except ValueError as error:
                raise ModelArgError(f"sink_dims=auto: {error}") from None
        self.accelerator = Accelerator()
        if self.accelerator.is_main_process:
            _warn_about_lmms_eval_cache()
        self._device, self.device_map = _placement(
            self.accelerator, settings.model_args["device"], settings.model_args["device_map"]
        )
        self.batch_size_per_gpu = settings.model_args["batch_size"]
        hub_options = spec.hub_options(settings.upstream)
        with model_arg_checks():
            model_config = checkpoint_config(pretrained, "pretrained=", **hub_options)
        self.backbone = self._served_backbone(pretrained, model_config)
        options.check_layers(
            model_config.get_text_config().num_hidden_layers,
            f"num_hidden_layers of {pretrained} in its config.json",
        )
        known = _known_sink_dims(options, pretrained, model_config)
        load_dtype = parse_dtype(settings.model_args["dtype"], self._device.type, spec.cuda_dtype)
        self._model = (
            self.backbone.loader_class()
            .from_pretrained(
                pretrained,
                dtype=load_dtype,
                device_map=self.device_map,
                attn_implementation=settings.attn_implementation,
                **hub_options,
            )
            .eval()
        )
        # The attributes upstream's generate_until reads, set as upstream sets them.
        for name, value in spec.state(pretrained, settings.upstream).items():
            setattr(self, name, value)
        self._config = self._model.config
        return _Loaded(journal_dir=journal_dir, diagnostics_file=diagnostics_file, sink_dims=known)

    def _attach(self, settings: "_Settings", loaded: "_Loaded") -> None:
        """The intervention (unless var=false), the watchers of upstream's loop, the journal, data
        parallelism."""
        spec, options = self.lmms_eval, settings.intervention
        handle = self.intervention_handle = self._attach_intervention(options, loaded.sink_dims)
        # Those reading the intervention's state come first, before attention maps rerun the model.
        watchers: list[Watcher] = []
        if handle is not None and options.needs_sink_dims and self.accelerator.is_main_process:
            watchers.append(FirstBatchSinkCheck(handle, spec.model_id, settings.pretrained))
        if handle is not None and options.diagnostics:
            watchers.append(
                DiagnosticsRecorder(handle, options.method, loaded.diagnostics_file, self.accelerator)
            )
        maps = settings.maps.recorder(handle, getattr(self, spec.processor_attribute))
        if maps is not None:
            watchers.append(maps)
        self._watchers = tuple(watchers)
        self._journal = None
        if loaded.journal_dir is not None:
            journal_args = {**settings.model_args.values, **settings.upstream_given}
            key = journal_settings(
                journal_args,
                model=self._model,
                config=None if handle is None else handle.config,
                model_class=type(self).__name__,
            )
            self._journal = Journal(loaded.journal_dir, key, rank=self.accelerator.process_index)
        self._distribute()

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict[str, Any] | None = None):
        """How lmms-eval builds the model from `--model_args` and its own options (`--batch_size`,
        `--device`, ...): as upstream's, but a piece that is not `k=v` (`sink_dims=17,93`) fails naming
        it, and `batch_size=N` in `--model_args` works (lmms-eval passes its own `--batch_size` too)."""
        with _errors_naming(cls.lmms_eval.model_id):
            args = merge_lmms_eval_options(parse_model_args(arg_string), additional_config or {})
        return cls(**args)

    def _served_backbone(self, pretrained: str, model_config) -> Backbone:
        """The backbone of the checkpoint's config, if this model serves it; else an error naming
        the model that does."""
        for backbone in self.backbones:
            if getattr(model_config, "model_type", None) == backbone.model_type:
                return backbone
        try:
            hint = f"run it with --model {backbone_for_config(model_config).lmms_eval.model_id}"
        except UnsupportedModelError as error:
            hint = str(error)
        served = " or ".join(f"{backbone.model_type!r} ({backbone.family})" for backbone in self.backbones)
        raise ModelArgError(
            f"pretrained={pretrained} is a {model_config.model_type!r} checkpoint, not {served}; {hint}"
        )

    def _attach_intervention(
        self, options: InterventionOptions, known: tuple[tuple[int, ...], str] | None
    ) -> InterventionHandle | None:
        """The chosen method on the model, and one log line saying what it does where."""
        if not options.enabled:
            self._log(f"{options.name} off (var=false): plain {self.backbone.family}")
            return None
        processor = getattr(self, self.lmms_eval.processor_attribute)
        if options.needs_sink_dims:
            if known is None:  # sink_dims=auto
                dims, source = auto_sink_dims(self._model, processor, tau=options.args["tau"])
                known = tuple(dims), f"sink_dims=auto ({source})"
            dims, source = known
            config = options.config(dims)
        else:
            config = options.config()
        handle = enable_intervention(
            self._model, config, diagnostics=options.diagnostics, tokenizer=processor.tokenizer
        )
        layers = config.active_layers(len(self.backbone.decoder_layers(self._model)))
        span = f"layers {layers.start}..{layers.stop - 1}"
        acting = sorted(handle.active_layers)
        if len(acting) < len(layers):
            span += f"; of those only {acting}, the others being linear attention"
        if options.needs_sink_dims:
            what = (
                f"sink_dims={list(dims)} from {source}; tau={config.tau} rho={config.rho} "
                f"summ={config.summ} p={config.p} except_last_layer={config.except_last_layer}"
            )
        else:
            what = " ".join(f"{name}={value}" for name, value in options.args.items())
        self._log(f"{options.name} on: {what} ({span}); diagnostics {'on' if options.diagnostics else 'off'}")
        return handle

    def _distribute(self) -> None:
        """Data parallelism as upstream, but for any distributed type (gloo CPU runs included)."""
        accelerator = self.accelerator
        if accelerator.num_processes == 1:
            self._rank, self._world_size = 0, 1
            return
        if accelerator.distributed_type == DistributedType.FSDP:
            self._model = accelerator.prepare(self._model)
        else:
            self._model = accelerator.prepare_model(self._model, evaluation_mode=True)
        self._log(
            f"Using {accelerator.num_processes} processes ({accelerator.distributed_type}) with data parallelism"
        )
        self._rank = accelerator.process_index
        self._world_size = accelerator.num_processes

    def _log(self, message: str) -> None:
        if self.accelerator.is_main_process:
            eval_logger.info(f"{self.lmms_eval.model_id}: {message}")

    def generate_until(self, requests):
        """Answers from the journal (if on), the other requests computed by `_generate_until`; a
        generation error fails the call even where upstream would answer "" instead."""
        if self._journal is None:
            return self._generate_until(requests)
        return self._journal.generate_until(self, requests, self._generate_until, self._generated_for)

    def _generated_for(self, request) -> str | None:
        """What needs `request` generated although the journal holds its answer (the journal keeps
        answers only): diagnostics want every doc, attention maps the docs they draw."""
        return next(filter(None, (watcher.needs(request) for watcher in self._watchers)), None)

    def _generate_until(self, requests):
        """Upstream's generation, its batches watched (sink check, diagnostics, attention maps)."""
        with watching_batches(self, self._watchers):
            return super().generate_until(requests)


@dataclass(frozen=True)
class _Settings:
    """The model args, parsed and checked (no I/O): `model_args` the table's, `upstream` upstream's
    as its `__init__` takes them, `upstream_given` as given (for the journal's key)."""

    model_args: ModelSettings
    upstream: Mapping[str, object]
    upstream_given: Mapping[str, object]
    pretrained: str
    attn_implementation: str
    intervention: InterventionOptions
    maps: AttentionMapOptions
    run_id: str


@dataclass(frozen=True)
class _Loaded:
    """What loading found out: the run's checked output places and the sink dims (None: measure them)."""

    journal_dir: Path | None
    diagnostics_file: Path | None
    sink_dims: tuple[tuple[int, ...], str] | None


@contextmanager
def _errors_naming(model_id: str) -> Iterator[None]:
    """Model-arg errors raised within start with the model being configured: `<model>: invalid ...`."""
    try:
        yield
    except ModelArgError as error:
        raise error.for_model(model_id) from None


def _placement(
    accelerator: Accelerator, device: str | None, device_map: str | None
) -> tuple[torch.device, str]:
    """(device for inputs, device_map for loading). Upstream moves inputs to `cuda` when device_map is auto."""
    if accelerator.num_processes > 1:
        if device_map == "auto":
            raise ModelArgError(
                "device_map=auto spreads one model over the GPUs of a single process; it cannot be combined "
                f"with {accelerator.num_processes} processes (drop it for data parallelism)"
            )
        return accelerator.device, str(accelerator.device)
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        with model_arg_checks():
            device = check_device(device, "device")
    if device_map == "auto" and device.type != "cuda":
        raise ModelArgError(f"device_map=auto needs CUDA GPUs, got device={device}")
    return device, device_map or str(device)


def _diagnostics_file(options: InterventionOptions, pretrained: str, run_id: str) -> Path | None:
    """Where diagnostics go (None: only the log's summary), checked to be writable before loading."""
    if not options.enabled or not options.diagnostics:
        return None
    path = resolve_diagnostics_path(options.diagnostics_path, pretrained, run_id)
    if path is not None:
        what = "diagnostics_path" if options.diagnostics_path else "diagnostics file (next to --output_path)"
        with model_arg_checks():
            probe_output_file(path, what)
    return path


def _upstream_flags(model_class: type) -> tuple[str, ...]:
    """Upstream's true/false args: a bool default, or `bool` in the annotation of upstream's `__init__`
    (`enable_thinking: Optional[bool] = None`), which otherwise takes any string as true."""
    upstream = model_class.__mro__[model_class.__mro__.index(VARModel) + 1]
    parameters = inspect.signature(upstream.__init__).parameters
    flags = []
    for name, default in model_class.lmms_eval.upstream_args.items():
        annotation = parameters[name].annotation if name in parameters else None
        if (
            isinstance(default, bool)
            or annotation is bool
            or bool in typing.get_args(annotation)
            or (isinstance(annotation, str) and re.search(r"\bbool\b", annotation))
        ):
            flags.append(name)
    return tuple(flags)


def _warn_about_lmms_eval_cache() -> None:
    """lmms-eval's `--use_cache` answers before the model is asked, keyed without the images."""
    cache = lmms_eval_cache_from_argv()
    if cache is not None:
        _warn_once(
            f"lmms-eval's --use_cache {cache} answers requests before this model sees them, under keys "
            "that leave out the images: after an image changes it serves the old answer. The journal "
            "(journal=auto) keys every image's pixels and resumes runs on its own; drop --use_cache, or "
            "delete its cache after changing images"
        )


@functools.cache
def _warn_once(message: str) -> None:
    eval_logger.warning(message)


def _known_sink_dims(
    options: InterventionOptions, pretrained: str, model_config
) -> tuple[tuple[int, ...], str] | None:
    """(dims, where they came from) unless VAR is off, not the method, or its dims are to be measured
    (`sink_dims=auto`)."""
    if not options.enabled or not options.needs_sink_dims or options.sink_dims == AUTO:
        return None
    if options.sink_dims is not None:
        return _in_range(options.sink_dims, "model args", pretrained, model_config)
    entry = lookup_known(pretrained, model_config)
    if entry is None:
        text_config = model_config.get_text_config()
        raise ModelArgError(
            f"no published sink_dims for {pretrained!r} (model_type={model_config.model_type}, "
            f"hidden_size={text_config.hidden_size}, num_hidden_layers={text_config.num_hidden_layers}) "
            "in configs/sink_dims.yaml. VAR needs the backbone's sink dimensions: pass them as "
            "sink_dims=458;2570 (';'-separated hidden channels) in --model_args, measure them with "
            f"sink_dims=auto, or find them once with `lmms-var find-sink-dims --model {pretrained} --output "
            "dims.json`; var=false runs without VAR"
        )
    source = f"configs/sink_dims.yaml ({entry.name}, published in {entry.source})"
    return _in_range(entry.sink_dims, source, pretrained, model_config)


def _in_range(
    dims: tuple[int, ...], source: str, pretrained: str, model_config
) -> tuple[tuple[int, ...], str]:
    """(dims, source) when every dim is a channel of the checkpoint's hidden states, read from its config
    (as `validate-sink-dims` does), so a wrong dim fails before the weights load."""
    hidden_size = model_config.get_text_config().hidden_size
    bad = [dim for dim in dims if dim >= hidden_size]
    if bad:
        raise ModelArgError(
            f"sink_dims {bad} (from {source}) are beyond the hidden size {hidden_size} of {pretrained} "
            f"(its config.json): sink dims must be hidden-state channels in [0, {hidden_size})"
        )
    return dims, source


# VARModel's own model args (every other one is upstream's), for the message naming an unknown one.
VAR_MODEL_ARGS = tuple(dict.fromkeys(row.name for row in MODEL_ARGS))
