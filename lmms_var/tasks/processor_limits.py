"""Whether the supported models' image processors take an image of a given size: the one place that asks.

Some processors refuse some sizes (Qwen-VL's `smart_resize`: an aspect ratio over 200, for one) by
raising in the middle of generation, after hours of work. Each backbone says how its own processor
refuses a size (`Backbone.image_size_refusal`, which calls the processor's own function, not a copy
of its rules), so the check follows transformers when they change. The data does not say which model
will read it, so a record is bad when any supported family's processor refuses it.
"""

from collections.abc import Callable, Sequence

from lmms_var.backbones import BACKBONES, Backbone


def _families_by_check(backbones: Sequence[Backbone]) -> dict[Callable[[int, int], str | None], list[str]]:
    """Each image processor's check once, with the families that share it (Qwen2-VL's serves three)."""
    families_by_check: dict[Callable[[int, int], str | None], list[str]] = {}
    for backbone in backbones:
        if backbone.image_size_refusal is not None:
            families_by_check.setdefault(backbone.image_size_refusal, []).append(backbone.family)
    return families_by_check


def processor_refusal(width: int, height: int, backbones: Sequence[Backbone] | None = None) -> str | None:
    """Which image processors would refuse a `width` x `height` image and why, or None if all take it.

    `backbones`: the families asked; None, every supported one (data does not say which model will
    read it; `lmms-var show` knows and asks its model's alone)."""
    families_by_reason: dict[str, list[str]] = {}
    for refusal, families in _families_by_check(BACKBONES if backbones is None else backbones).items():
        reason = refusal(width, height)
        if reason is not None:
            families_by_reason.setdefault(reason, []).extend(families)
    if not families_by_reason:
        return None
    return "; ".join(
        f"the {', '.join(families)} image processor{'s refuse' if len(families) > 1 else ' refuses'} "
        f"its size {width}x{height} ({reason})"
        for reason, families in families_by_reason.items()
    )
