"""Published sink dimensions, looked up in `configs/sink_dims.yaml` by checkpoint name or config.

The YAML is the single place the values and their source live. It sits at the repository root in a
checkout (editable install) and under `<prefix>/share/lmms-var/configs/` when installed from a
wheel (`[options.data_files]` in setup.cfg), so both locations are searched.
"""

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

YAML_NAME = "sink_dims.yaml"
_INSTALLED_DIR = Path("share") / "lmms-var" / "configs"


@dataclass(frozen=True)
class KnownSinkDims:
    """One published entry: the checkpoint it was measured on, its dims, where they come from."""

    name: str
    sink_dims: tuple[int, ...]
    source: str
    config: dict

    def matches_name(self, pretrained: str) -> bool:
        """Hub ids and local folders match by their last path component, case-insensitive."""
        return _basename(pretrained) == _basename(self.name)

    def matches_config(self, model_config) -> bool:
        if model_config is None:
            return False
        text_config = getattr(model_config, "text_config", None) or model_config
        for key, expected in self.config.items():
            owner = model_config if key == "model_type" else text_config
            if getattr(owner, key, None) != expected:
                return False
        return True


def _basename(name: str) -> str:
    return Path(str(name).rstrip("/\\")).name.lower()


def yaml_candidates() -> list[Path]:
    """Where `sink_dims.yaml` may be: the checkout's `configs/`, then each enclosing install prefix."""
    here = Path(__file__).resolve()
    checkout = here.parents[2] / "configs" / YAML_NAME
    return [checkout, *(parent / _INSTALLED_DIR / YAML_NAME for parent in here.parents)]


def find_yaml() -> Path:
    for candidate in yaml_candidates():
        if candidate.is_file():
            return candidate
    tried = "\n  ".join(str(path) for path in yaml_candidates()[:4])
    raise FileNotFoundError(
        f"configs/{YAML_NAME} not found; the lmms-var install is incomplete. Tried:\n  {tried}"
    )


@cache
def load_known(path: Path | None = None) -> tuple[KnownSinkDims, ...]:
    """Parse the YAML (default: `find_yaml()`), checking each entry so a typo fails loudly."""
    path = path or find_yaml()
    data = yaml.safe_load(path.read_text()) or {}
    entries = []
    for index, entry in enumerate(data.get("models", [])):
        try:
            dims = tuple(entry["sink_dims"])
            if not dims or not all(isinstance(d, int) and d >= 0 for d in dims):
                raise ValueError(f"sink_dims must be non-negative integers, got {dims!r}")
            entries.append(
                KnownSinkDims(
                    name=str(entry["name"]),
                    sink_dims=dims,
                    source=str(entry["source"]),
                    config=dict(entry.get("config") or {}),
                )
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path}: models[{index}] is malformed: {error!r}") from error
    return tuple(entries)


def lookup_known(pretrained: str, model_config=None) -> KnownSinkDims | None:
    """The entry for a checkpoint: by name first, then by config (local copies, fine-tunes)."""
    known = load_known()
    by_name = next((entry for entry in known if entry.matches_name(pretrained)), None)
    return by_name or next((entry for entry in known if entry.matches_config(model_config)), None)


def known_sink_dims(pretrained: str, model_config) -> tuple[int, ...] | None:
    """Published sink dims of `pretrained` (Hub id or path) with config `model_config`, or None."""
    entry = lookup_known(pretrained, model_config)
    return entry.sink_dims if entry else None
