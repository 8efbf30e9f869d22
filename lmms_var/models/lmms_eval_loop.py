"""Plumbing of lmms-eval's loop: its command line, the docs each batch reads, and watchers of the batches.

lmms-eval does not pass `--output_path` or `--use_cache` to models, so they are read from the command
line. Its `generate_until` batches requests itself and only hands `model.generate` tensors, so the
(task, split, doc_id) of each batch row is learnt by watching which docs the upstream loop reads from
`task_dict` (it reads each doc of a batch exactly once, in batch order, just before generating).
`watching_batches` wraps `model.generate` (the one place that does) and tells every `Watcher` about
each batch.
"""

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from lmms_eval.api.instance import Instance
from lmms_eval.utils import sanitize_model_name


def _lmms_eval_option(flags: tuple[str, ...], argv: list[str] | None) -> str | None:
    """The value of one of lmms-eval's options, which it does not pass to models, read from the command line."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument(*flags, dest="value", default=None)
    known, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return known.value


def output_path_from_argv(argv: list[str] | None = None) -> str | None:
    """lmms-eval's `--output_path`."""
    return _lmms_eval_option(("--output_path",), argv)


def lmms_eval_cache_from_argv(argv: list[str] | None = None) -> str | None:
    """lmms-eval's `--use_cache PATH` (`-c PATH`), its response cache."""
    return _lmms_eval_option(("--use_cache", "-c"), argv)


def run_output_folder(pretrained: str, argv: list[str] | None = None) -> Path | None:
    """Where lmms-eval writes this model's results (`<output_path>/<model>`), or None without `--output_path`."""
    output_path = output_path_from_argv(argv)
    if output_path is None:
        return None
    return Path(output_path) / sanitize_model_name(pretrained)


DocKey = tuple[str, str, int]  # (task, split, doc_id), as upstream reads a doc from `task_dict`
DOC_FIELDS = ("task", "split", "doc_id")


def doc_key(task: object, split: object, doc_id: object) -> DocKey:
    return str(task), str(split), int(doc_id)


class RecordedDocs:
    """`task_dict` as upstream reads it, `[task][split][doc_id]`, telling `on_read` about each doc read.

    Reads go through the wrapped object's own `__getitem__`, so an enclosing recorder hears them too.
    """

    def __init__(self, inner, on_read: Callable[[DocKey], None], path: tuple = ()) -> None:
        self._inner, self._on_read, self._path = inner, on_read, path

    def __getitem__(self, key):
        value = self._inner[key]
        if len(self._path) < 2:  # a task or a split: keep recording below it
            return RecordedDocs(value, self._on_read, (*self._path, key))
        self._on_read(doc_key(*self._path, key))
        return value

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def __iter__(self):
        return iter(self._inner)

    def __len__(self) -> int:
        return len(self._inner)

    def __contains__(self, key) -> bool:
        return key in self._inner


class Watcher(Protocol):
    """Watches upstream's `generate_until` batch by batch (the sink check, diagnostics, attention maps).

    Subclasses override what they use; the defaults do nothing.
    """

    def needs(self, request: Instance) -> str | None:
        """Why `request` must be generated although the journal holds its answer (the journal keeps
        answers only), or None."""
        return None

    def after_batch(self, docs: list[dict], inputs: dict) -> None:
        """After each `model.generate(**inputs)`: the batch rows' docs as `{"task", "split", "doc_id"}`."""

    def after_call(self) -> None:
        """After `generate_until` returned."""


class _GenerationFailed(BaseException):
    """Carries a generation error past upstream loops that catch `Exception` and answer "" instead
    (lmms-eval's llava_hf): a run whose model cannot generate must fail, not score empty answers."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


@contextmanager
def watching_batches(lm, watchers: Sequence[Watcher]) -> Iterator[None]:
    """Within: `lm.model.generate` fails the call on any error (even where upstream would answer ""),
    and after each batch it generated, each watcher's `after_batch` runs, in order; `after_call` after
    a call that returned. Those reading VAR's state come first, before attention maps rerun the model."""
    seen: list[DocKey] = []
    task_dict, model = lm.task_dict, lm.model
    generate = model.generate
    own_generate = vars(model).get("generate")  # an intervention's (PAI's refine), kept under ours

    def generate_and_watch(*args, **kwargs):
        try:
            output = generate(*args, **kwargs)
        except Exception as error:
            raise _GenerationFailed(error) from error
        docs = [dict(zip(DOC_FIELDS, doc, strict=True)) for doc in seen]
        seen.clear()
        for watcher in watchers:
            watcher.after_batch(docs, kwargs)
        return output

    lm.task_dict = RecordedDocs(task_dict, seen.append)
    model.generate = generate_and_watch
    try:
        yield
    except _GenerationFailed as failure:
        raise failure.error from None
    finally:
        lm.task_dict = task_dict
        if own_generate is None:
            del model.generate
        else:
            model.generate = own_generate
    for watcher in watchers:
        watcher.after_call()
