"""lmms-eval's Qwen2.5-VL with VAR attached: same prompting, batching and decoding, portable loading.

Prompting, batching and decoding are inherited from lmms-eval's own `Qwen2_5_VL` classes (simple and
chat). Only `__init__` is re-implemented, because upstream's hard-codes what VAR runs must vary:
`cuda` devices in multi-process runs, bfloat16, an assert that those runs are MULTI_GPU/FSDP (so no
multi-process CPU), `assert kwargs == {}` and an `attn_implementation` whitelist. `generate_until`
only adds the journal, diagnostics and attention maps around upstream's.
"""

from contextlib import ExitStack

import torch
from accelerate import Accelerator, DistributedType
from lmms_eval.api.model import lmms
from lmms_eval.models.chat.qwen2_5_vl import Qwen2_5_VL as Qwen2_5_VLChat
from lmms_eval.models.simple.qwen2_5_vl import Qwen2_5_VL as Qwen2_5_VLSimple
from lmms_eval.utils import get_datetime_str
from loguru import logger as eval_logger
from transformers import AutoConfig, AutoProcessor, AutoTokenizer, Qwen2_5_VLForConditionalGeneration

from lmms_var.models.args import (
    AUTO,
    ModelArgError,
    VAROptions,
    parse_dtype,
    parse_journal,
    parse_positive_int,
    parse_var_options,
)
from lmms_var.models.attention_maps import parse_attention_maps
from lmms_var.models.diagnostics import DiagnosticsRecorder, resolve_diagnostics_path
from lmms_var.models.journal import Journal, journal_settings, resolve_journal_dir
from lmms_var.patch import VARHandle, enable_var
from lmms_var.patch.attention import BASE_IMPLEMENTATIONS
from lmms_var.sink_dims.known import lookup_known


class _VARQwen2_5_VL:
    """The shared part of the simple and chat classes; put first in their bases so it wins."""

    def __init__(
        self,
        pretrained: str = "Qwen/Qwen2.5-VL-3B-Instruct",
        device: str | None = None,
        device_map: str | None = None,
        dtype: str | None = None,
        batch_size: int | str = 1,
        use_cache: bool = True,
        attn_implementation: str = "sdpa",
        min_pixels: int = 256 * 28 * 28,
        max_pixels: int = 1605632,
        max_num_frames: int = 32,
        fps: float | None = None,
        system_prompt: str | None = "You are a helpful assistant.",
        interleave_visuals: bool = False,
        reasoning_prompt: str | None = None,
        max_length: int = 2048,
        var: bool | str = True,
        sink_dims: int | str | None = None,
        tau: float = 20.0,
        rho: float = 0.5,
        summ: float = 0.2,
        p: float = 0.6,
        except_last_layer: bool | str = True,
        diagnostics: bool | str = False,
        diagnostics_path: str | None = None,
        attention_maps: int | str = 0,
        attention_maps_path: str | None = None,
        journal: str | bool = AUTO,
    ) -> None:
        model_args = {name: value for name, value in locals().items() if name != "self"}  # for the journal
        lmms.__init__(self)
        options = parse_var_options(
            var=var,
            sink_dims=sink_dims,
            tau=tau,
            rho=rho,
            summ=summ,
            p=p,
            except_last_layer=except_last_layer,
            diagnostics=diagnostics,
            diagnostics_path=diagnostics_path,
        )
        if options.enabled and attn_implementation not in BASE_IMPLEMENTATIONS:
            raise ModelArgError(
                f"attn_implementation must be one of {list(BASE_IMPLEMENTATIONS)} with VAR on, "
                f"got {attn_implementation!r}"
            )
        run_id = get_datetime_str()
        maps = parse_attention_maps(
            attention_maps, attention_maps_path, var=options.enabled, pretrained=pretrained, run_id=run_id
        )
        self.batch_size_per_gpu = parse_positive_int("batch_size", batch_size)
        journal_dir = resolve_journal_dir(parse_journal(journal), pretrained)
        self.accelerator = Accelerator()
        self._device, self.device_map = _placement(self.accelerator, device, device_map)
        # Resolve known dims from the config alone, so an unknown model fails before loading weights.
        model_config = AutoConfig.from_pretrained(pretrained)
        known = _known_sink_dims(options, pretrained, model_config)

        self._model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            pretrained,
            dtype=parse_dtype(dtype, self._device.type),
            device_map=self.device_map,
            attn_implementation=attn_implementation,
        ).eval()
        # The attributes upstream's generate_until reads, set as upstream sets them.
        self.max_pixels = max_pixels
        self.min_pixels = min_pixels
        self.max_num_frames = max_num_frames
        self.fps = fps
        self.reasoning_prompt = reasoning_prompt.replace("\\n", "\n") if reasoning_prompt else None
        self.processor = AutoProcessor.from_pretrained(
            pretrained, max_pixels=max_pixels, min_pixels=min_pixels
        )
        self._tokenizer = AutoTokenizer.from_pretrained(pretrained)
        self.system_prompt = system_prompt
        self.interleave_visuals = interleave_visuals
        self._config = self._model.config
        self._max_length = max_length
        self.use_cache = use_cache

        self.var_handle = self._attach_var(options, known)
        self._diagnostics = None
        if self.var_handle is not None and options.diagnostics:
            path = resolve_diagnostics_path(options.diagnostics_path, pretrained, run_id)
            self._diagnostics = DiagnosticsRecorder(self.var_handle, path)
        self._attention_maps = maps.recorder(self.var_handle, self.processor)
        self._journal = None
        if journal_dir is not None:
            var_config = None if self.var_handle is None else self.var_handle.config
            settings = journal_settings(
                model_args, model=self._model, var_config=var_config, model_class=type(self).__name__
            )
            self._journal = Journal(journal_dir, settings, rank=self.accelerator.process_index)
        self._distribute()

    def _attach_var(self, options: VAROptions, known: tuple[tuple[int, ...], str] | None) -> VARHandle | None:
        if not options.enabled:
            self._log("VAR off (var=false): plain Qwen2.5-VL")
            return None
        if known is None:  # sink_dims=auto
            from lmms_var.sink_dims.auto import auto_sink_dims

            dims, source = auto_sink_dims(self._model, self.processor, tau=options.tau)
            known = tuple(dims), f"sink_dims=auto ({source})"
        dims, source = known
        config = options.config(dims)
        handle = enable_var(self._model, config, diagnostics=options.diagnostics)
        layers = config.active_layers(len(self._model.model.language_model.layers))
        self._log(
            f"VAR on: sink_dims={list(dims)} from {source}; tau={config.tau} rho={config.rho} "
            f"summ={config.summ} p={config.p} except_last_layer={config.except_last_layer} "
            f"(layers {layers.start}..{layers.stop - 1}); diagnostics {'on' if options.diagnostics else 'off'}"
        )
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
            eval_logger.info(f"qwen2_5_vl_var: {message}")

    def generate_until(self, requests):
        """Answers from the journal (if on), the other requests computed by `_generate_until`."""
        if self._journal is None:
            return self._generate_until(requests)
        return self._journal.generate_until(self, requests, self._generate_until)

    def _generate_until(self, requests):
        """Upstream's generation; diagnostics (one record per sample, flushed after the call) and
        attention maps watch its batches. Diagnostics first: they read VAR's state before maps rerun."""
        with ExitStack() as watchers:
            for recorder in (self._diagnostics, self._attention_maps):
                if recorder is not None:
                    watchers.enter_context(recorder.recording(self))
            results = super().generate_until(requests)
        if self._diagnostics is not None:
            self._diagnostics.flush(self.accelerator)
        return results


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
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device_map == "auto" and device.type != "cuda":
        raise ModelArgError(f"device_map=auto needs CUDA GPUs, got device={device}")
    return device, device_map or str(device)


def _known_sink_dims(
    options: VAROptions, pretrained: str, model_config
) -> tuple[tuple[int, ...], str] | None:
    """(dims, where they came from) unless VAR is off or they are to be measured (`sink_dims=auto`)."""
    if not options.enabled or options.sink_dims == AUTO:
        return None
    if options.sink_dims is not None:
        return options.sink_dims, "model args"
    entry = lookup_known(pretrained, model_config)
    if entry is None:
        text_config = getattr(model_config, "text_config", None) or model_config
        raise ModelArgError(
            f"no published sink_dims for {pretrained!r} (model_type={model_config.model_type}, "
            f"hidden_size={text_config.hidden_size}, num_hidden_layers={text_config.num_hidden_layers}) "
            "in configs/sink_dims.yaml. VAR needs the backbone's sink dimensions: pass them as "
            "sink_dims=458;2570 (';'-separated hidden channels) in --model_args, measure them with "
            f"sink_dims=auto, or find them once with `lmms-var find-sink-dims --model {pretrained} --output "
            "dims.json`; var=false runs without VAR"
        )
    return entry.sink_dims, f"configs/sink_dims.yaml ({entry.name}, published in {entry.source})"


class Qwen2_5_VL_VAR(_VARQwen2_5_VL, Qwen2_5_VLSimple):
    """`qwen2_5_vl_var` for simple (doc_to_visual/doc_to_text) tasks, as `--force_simple` selects."""


class Qwen2_5_VL_VAR_Chat(_VARQwen2_5_VL, Qwen2_5_VLChat):
    """`qwen2_5_vl_var` for chat (doc_to_messages) tasks: lmms-eval's default for this model."""
