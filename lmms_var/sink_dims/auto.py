"""`sink_dims=auto`: measure a model's sink dimensions once, then reuse the answer from a cache.

The finder runs on the built-in calibration prompts (no dataset needed). Its result is cached as JSON
under `$LMMS_VAR_CACHE_DIR`, else `$XDG_CACHE_HOME/lmms-var`, else `~/.cache/lmms-var`, in
`sink_dims/<key>.json`. The key hashes what determines the answer: the model config (without
run-time fields such as the path or dtype it was loaded with), a cheap fingerprint of the weights (a
strided sample of a few parameters, not all of them), `tau` and the finder version. A file lock lets
several processes of one evaluation share a single measurement.
"""

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from filelock import FileLock

from lmms_var.backbones import backbone_for
from lmms_var.checks import check_output_folder
from lmms_var.config import DEFAULT_TAU, VARConfig
from lmms_var.sink_dims.finder import find_sink_dims, model_name

logger = logging.getLogger(__name__)

CACHE_ENV = "LMMS_VAR_CACHE_DIR"
# Bump when the finder or its calibration prompts change, so old answers are not reused.
FINDER_VERSION = 1
# Config fields that describe how a model was loaded or run, not what it is.
_RUNTIME_CONFIG_KEYS = frozenset(
    {"_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype"}
    | {"output_attentions", "output_hidden_states", "return_dict", "use_cache"}
)
_FINGERPRINT_PARAMETERS = 8
_FINGERPRINT_VALUES = 1024


def cache_dir() -> Path:
    """Where lmms-var caches measurements: `$LMMS_VAR_CACHE_DIR`, else the user cache directory."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lmms-var"


def checked_cache_dir() -> Path:
    """`cache_dir()`, or a `ValueError` naming the variable it came from when it is not a folder this
    user can write in (checked before a model is loaded, not after it was measured)."""
    source = next((f"${name}" for name in (CACHE_ENV, "XDG_CACHE_HOME") if os.environ.get(name)), "~/.cache")
    return check_output_folder(cache_dir(), f"the sink-dims cache folder (from {source})")


def _stable_config(value):
    if isinstance(value, dict):
        return {k: _stable_config(v) for k, v in value.items() if k not in _RUNTIME_CONFIG_KEYS}
    return value


@torch.no_grad()
def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of a strided sample of a few evenly spaced parameters, rounded to bfloat16.

    Rounding makes the same checkpoint loaded in float32 or bfloat16 share one entry; parameters that
    are not materialised (offloaded to the `meta` device) are skipped.
    """
    parameters = [(n, p) for n, p in model.named_parameters() if p.device.type != "meta"]
    step = max(1, len(parameters) // _FINGERPRINT_PARAMETERS)
    digest = hashlib.sha256()
    for name, parameter in parameters[::step][:_FINGERPRINT_PARAMETERS]:
        flat = parameter.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // _FINGERPRINT_VALUES)][:_FINGERPRINT_VALUES]
        digest.update(name.encode())
        digest.update(sample.to(torch.bfloat16).float().cpu().numpy().tobytes())
    return digest.hexdigest()


def cache_key(model: torch.nn.Module, tau: float) -> str:
    """The cache key of a model's measurement at `tau` (see the module docstring)."""
    identity = {
        "config": _stable_config(model.config.to_dict()),
        "weights": weights_fingerprint(model),
        "tau": float(tau),
        "finder_version": FINDER_VERSION,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:32]


def auto_sink_dims(model: torch.nn.Module, processor, *, tau: float) -> tuple[tuple[int, ...], str]:
    """The model's sink dims and where they came from: `"cache:<path>"` or `"measured"`.

    Measures with the finder on the built-in calibration prompts on a cache miss and stores the result.
    """
    path = checked_cache_dir() / "sink_dims" / f"{cache_key(model, tau)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    hidden_size = backbone_for(model).text_config(model).hidden_size
    with FileLock(f"{path}.lock"):
        cached = _read_cached(path, hidden_size)
        if cached is not None:
            dims, source = cached, f"cache:{path}"
        else:
            logger.info("measuring sink dims of %s at tau=%g (no cached result)", model_name(model), tau)
            result = find_sink_dims(model, processor, tau=tau)
            temporary = path.with_suffix(".tmp")
            temporary.write_text(json.dumps(result.to_json(), indent=2))
            temporary.replace(path)
            dims, source = result.sink_dims, "measured"
    logger.info("sink dims of %s: %s (%s)", model_name(model), list(dims), source)
    return dims, source


def _read_cached(path: Path, hidden_size: int) -> tuple[int, ...] | None:
    """The dims stored at `path`, or None when there is none, it is unreadable or names channels the
    model does not have (an edited or foreign file): then it is re-measured, and the file replaced."""
    if not path.is_file():
        return None
    try:
        dims = tuple(json.loads(path.read_text())["sink_dims"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("ignoring unreadable sink-dims cache %s (%s); measuring again", path, error)
        return None
    if not dims or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        logger.warning("ignoring sink-dims cache %s: no valid dims in it; measuring again", path)
        return None
    bad = [d for d in dims if not 0 <= d < hidden_size]
    if bad:
        logger.warning(
            "ignoring sink-dims cache %s: dims %s are beyond the model's hidden size %d; measuring again",
            path,
            bad,
            hidden_size,
        )
        return None
    return dims


def config_from_model(model: torch.nn.Module, processor, *, tau: float = DEFAULT_TAU, **kwargs) -> VARConfig:
    """A `VARConfig` with the model's measured sink dims (`sink_dims=auto`): cached after the first call.

    `model` and `processor` are a supported model (`lmms_var.backbones`) and its processor; `kwargs`
    are the config's other fields.
    """
    sink_dims, _source = auto_sink_dims(model, processor, tau=tau)
    return VARConfig(sink_dims=sink_dims, tau=tau, **kwargs)
