"""A prompt without its images: what PAI's text-only stream reads (INTERVENTIONS_SPEC.md section 2).

Each image's (and video's) whole placeholder span goes: its run of placeholder tokens and the family's
delimiters around it (`Backbone.visual_delimiters`); the text before and after stays, token for token.
Text a processor writes around a span is text here and stays: Gemma 3's blank lines around each
image, Qwen3-VL's `<t seconds>` before each video frame group, InternVL's `FrameN: ` labels (in id
space it cannot be told from the prompt's own text, and tokenisers merge it with its neighbours).

Like the rest of this layer it imports torch only when called (see `base.py`'s docstring).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from lmms_var.backbones.base import Backbone

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class PlaceholderTokens:
    """The ids that make up a model's visual placeholder spans, and the id that pads a batch."""

    visual: tuple[int, ...]  # placeholders of images (and videos)
    delimiters: tuple[int, int] | None  # (opening, closing) token of each run, where the family has them
    pad: int

    @classmethod
    def of(cls, backbone: Backbone, config, tokenizer) -> PlaceholderTokens:
        """A model's, from its (top-level) config and its tokenizer (which knows the delimiters and the pad)."""
        if tokenizer.pad_token_id is None:
            raise ValueError(
                f"tokenizer: the {backbone.family} tokenizer has no pad token to pad a batch with"
            )
        delimiters = None
        if backbone.visual_delimiters is not None:
            opening, closing = (_token_id(tokenizer, token, backbone) for token in backbone.visual_delimiters)
            delimiters = (opening, closing)
        return cls(backbone.visual_token_ids(config), delimiters, tokenizer.pad_token_id)


def _token_id(tokenizer, token: str, backbone: Backbone) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or tokenizer.convert_ids_to_tokens(token_id) != token:
        raise ValueError(
            f"tokenizer: the {backbone.family} tokenizer has no {token} token (an image delimiter)"
        )
    return token_id


def text_only_inputs(
    tokens: PlaceholderTokens, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of the same prompts with every visual placeholder span removed,
    left-padded again with `tokens.pad` (a prompt without visuals comes back as it was, re-padded).

    `input_ids` and `attention_mask` are `[batch, tokens]`, padded on either side; only tokens the mask
    shows are kept. A delimiter goes only where it touches a run of placeholders.
    """
    import torch  # see the module docstring

    visual = torch.isin(input_ids, torch.tensor(tokens.visual, device=input_ids.device))
    drop = visual.clone()
    if tokens.delimiters is not None:
        opening, closing = tokens.delimiters
        drop[:, :-1] |= (input_ids[:, :-1] == opening) & visual[:, 1:]
        drop[:, 1:] |= (input_ids[:, 1:] == closing) & visual[:, :-1]
    keep = attention_mask.bool() & ~drop
    lengths = keep.sum(dim=1)
    width = int(lengths.max()) if len(lengths) else 0
    out_ids = input_ids.new_full((input_ids.shape[0], width), tokens.pad)
    out_mask = attention_mask.new_zeros((input_ids.shape[0], width))
    for row, length in enumerate(lengths.tolist()):
        out_ids[row, width - length :] = input_ids[row, keep[row]]
        out_mask[row, width - length :] = 1
    return out_ids, out_mask
