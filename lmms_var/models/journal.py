"""The journal: each answer kept as soon as its batch is decoded, so a stopped run resumes where it was.

lmms-eval's `--use_cache` stores answers only when `generate_until` returns, and its key leaves out
the images. The journal appends every answer to `<folder>/<settings>-rank<r>.jsonl` (one file per
process, one write and an fsync per batch) under a key made of all that decides it: the model's
settings (`journal_settings`: the model args that change outputs, the checkpoint, the resolved VAR
config, dtype, library versions and the SHA-256 of lmms-var's own sources, since every editable
install is version 0.1.0), and the request's inputs (prompt, generation kwargs, every image, array
or media file by the SHA-256 of its bytes). A rerun answers the requests whose key it finds and
sends only the others to upstream's `generate_until`.

Only deterministic requests are journaled, by lmms-eval's own rule (`is_deterministic`: no
temperature > 0, no `do_sample`, one sequence): a sampled answer depends on `--seed` and on every
draw made before it in the run, so a resumed run could not give the uninterrupted run's samples
whatever the key held. Sampled requests are generated every run.

Upstream's loop hands each batch's answers to `cache_hook.add_partial` right after decoding, without
saying which request they answer; it reads the batch's docs from `task_dict`, in batch order, just
before generating. So a batch's answers are matched one to one with the docs read since the previous
batch; a batch whose counts disagree is not streamed, and its answers are journaled when the call
returns, from upstream's own results.
"""

import dataclasses
import functools
import hashlib
import json
import os
import re
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from lmms_eval.api.instance import Instance, unwrap_generation_output
from lmms_eval.caching.response_cache import extract_gen_kwargs, is_deterministic
from loguru import logger as eval_logger
from PIL import Image

from lmms_var.checks import probe_output_folder
from lmms_var.model_args import AUTO, NOT_OUTPUT_ARGS, ModelArgError
from lmms_var.models.lmms_eval_loop import DocKey, RecordedDocs, doc_key, run_output_folder

JOURNAL_FOLDER = "journal"
# Bump when what a key covers changes, so that no older journal is read with another meaning.
FORMAT_VERSION = 3  # 3: the intervention's config under "intervention", named by its class
_VERSIONED_PACKAGES = ("lmms-var", "lmms-eval", "transformers", "torch")
_SOURCES = Path(__file__).resolve().parents[1]  # the installed lmms_var package
_AVOID = "give journal=off, or journal=FOLDER for another folder"
# The generation kwargs that make a request sampled, named in the warning that it is not journaled.
SAMPLING_KWARGS = ("temperature", "do_sample", "n", "best_of", "num_return_sequences")
_REMOTE_URL = re.compile(r"https?://\S+")
_LONGEST_PATH = 4096


class UnfingerprintableInput(TypeError):
    """A request input whose content cannot be hashed here (a remote URL, an unknown object)."""


def resolve_journal_dir(journal: str | None, pretrained: str, argv: list[str] | None = None) -> Path | None:
    """The folder for `journal` (as `parse_journal` returns it), created now so a bad one fails early.

    A path is used as given; `auto` is lmms-eval's output folder for the model,
    `<output_path>/<model>/journal`, or None (no journal) when the command line has no `--output_path`.
    """
    if journal is None:
        return None
    if journal == AUTO:
        folder = run_output_folder(pretrained, argv)
        if folder is None:
            return None
        directory = folder / JOURNAL_FOLDER
    else:
        directory = Path(journal).expanduser()
    if directory.exists() and not directory.is_dir():
        raise ModelArgError(
            f"journal must be a folder (it holds one file per process), got the file {directory}"
        )
    try:
        return probe_output_folder(directory, "journal folder")
    except ValueError as error:
        raise ModelArgError(f"{error}; {_AVOID}") from None


def journal_settings(
    model_args: Mapping[str, object],
    *,
    model: torch.nn.Module,
    config: object | None,
    model_class: str,
) -> dict:
    """What decides a model's answers besides the request itself; journals are kept per settings.

    `model_args` are left out where the table of model args says they cannot change an answer
    (`NOT_OUTPUT_ARGS`: placement and logging)."""
    return {
        "format": FORMAT_VERSION,
        "model_class": model_class,
        "model_args": {name: value for name, value in model_args.items() if name not in NOT_OUTPUT_ARGS},
        "checkpoint": _checkpoint_identity(model),
        "dtype": str(model.dtype),
        # The attached intervention's config (`VARConfig`, `PAIConfig`, ...; None: the plain model).
        "intervention": None if config is None else {type(config).__name__: dataclasses.asdict(config)},
        "versions": {package: version(package) for package in _VERSIONED_PACKAGES},
        "sources": source_fingerprint(_SOURCES),
    }


@functools.cache
def source_fingerprint(package: Path) -> str:
    """SHA-256 of every `.py` file under `package` (names and bytes), read once per process: the code
    that computes answers, which a fix changes although the version stays 0.1.0."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _checkpoint_identity(model: torch.nn.Module) -> dict:
    """The weights' name and what changes with them: the Hub commit, or a local folder's file sizes and times."""
    folder = Path(model.name_or_path)
    files = []
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.is_file():
                status = path.stat()
                files.append([path.name, status.st_size, status.st_mtime_ns])
    return {
        "name_or_path": model.name_or_path,
        "commit": getattr(model.config, "_commit_hash", None),
        "files": files,
    }


def content_fingerprint(value: object) -> object:
    """A JSON-able stand-in for a request input: text and numbers as they are; images, arrays, bytes and
    files that a string names by the SHA-256 of their content, so an edited image changes the key."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str):
        if _REMOTE_URL.fullmatch(value):
            raise UnfingerprintableInput(f"a remote URL ({value[:100]})")
        return {"file": value, "sha256": _file_sha256(Path(value))} if _names_a_file(value) else value
    if isinstance(value, Path):
        return {"file": str(value), "sha256": _file_sha256(value)} if value.is_file() else str(value)
    if isinstance(value, bytes | bytearray):
        return {"bytes": hashlib.sha256(value).hexdigest()}
    if isinstance(value, Image.Image):
        return {"image": _sha256(value.mode, value.size, value.getpalette(), value.tobytes())}
    if isinstance(value, np.ndarray) and not value.dtype.hasobject:
        array = np.ascontiguousarray(value)
        return {"array": _sha256(str(array.dtype), array.shape, array.tobytes())}
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        raw = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
        return {"tensor": _sha256(str(tensor.dtype), tuple(tensor.shape), raw)}
    if isinstance(value, Mapping):
        return {str(key): content_fingerprint(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [content_fingerprint(item) for item in value]
    if hasattr(value, "model_dump"):  # lmms-eval's pydantic chat messages
        return content_fingerprint(value.model_dump())
    raise UnfingerprintableInput(f"a {type(value).__name__}")


def _sha256(*parts: object) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else repr(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def _sha256_json(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _names_a_file(text: str) -> bool:
    return len(text) < _LONGEST_PATH and "\n" not in text and os.path.isfile(text)


def _file_sha256(path: Path) -> str:
    status = path.stat()
    return _hash_file(str(path.resolve()), status.st_size, status.st_mtime_ns)


@functools.cache
def _hash_file(path: str, size: int, mtime_ns: int) -> str:
    """Cached by size and time, so a video shared by many requests is read once per process."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


class Journal:
    """The answers of earlier runs with the same settings, and this process's file to add to them.

    `directory` exists (`resolve_journal_dir` makes it); `rank` is this process's index in the run.
    """

    def __init__(self, directory: Path, settings: Mapping[str, object], rank: int) -> None:
        self.fingerprint = _sha256_json(settings)
        prefix = self.fingerprint[:16]
        self.path = directory / f"{prefix}-rank{rank}.jsonl"
        pattern = f"{prefix}-rank*.jsonl"
        paths = sorted(directory.glob(pattern))
        self._answers, unreadable = _journal_file_access(_read_answers, paths)
        self._warned: set[str] = set()
        # Opened for appending now, so a file this process cannot write stops the run before generating.
        _journal_file_access(_end_with_newline, [self.path])
        if rank != 0:
            return
        settings_path = directory / f"{prefix}.json"
        if not settings_path.exists():  # for people: what the files' keys cover
            _write_atomically(settings_path, json.dumps(settings, indent=2, sort_keys=True, default=str))
        eval_logger.info(
            f"journal: {directory / pattern} holds {len(self._answers)} answers from earlier runs with "
            f"these settings ({settings_path.name})"
        )
        for path, count in unreadable.items():
            eval_logger.warning(
                f"journal: ignored {count} unreadable line(s) in {path} (a write cut short by a kill)"
            )

    def generate_until(
        self,
        lm,
        requests: Sequence[Instance],
        generate: Callable[[list[Instance]], list],
        generated_for: Callable[[Instance], str | None] = lambda _request: None,
    ) -> list:
        """Answers from the journal; `generate` for the others, each journaled as soon as its batch is decoded.

        `generated_for(request)` names what needs a request generated even when the journal holds its
        answer (the diagnostics or figure of its doc, which the journal does not keep), or None.
        Results come back in the order of `requests`, as lmms-eval expects.
        """
        keys = self._keys(lm.task_dict, requests)
        results: list = [None if key is None else self._answers.get(key) for key in keys]
        again: Counter[str] = Counter()
        for index, result in enumerate(results):
            reason = None if result is None else generated_for(requests[index])
            if reason is not None:
                again[reason] += 1
                results[index] = None
        missing = [index for index, result in enumerate(results) if result is None]
        ranks = f" (rank {lm.rank} of {lm.world_size})" if lm.world_size > 1 else ""
        also = "".join(
            f"; {count} it holds generated again for {reason}" for reason, count in sorted(again.items())
        )
        eval_logger.info(
            f"{len(requests) - len(missing)} of {len(requests)} requests answered from the journal{also}{ranks}"
        )
        follower = _BatchFollower(self, [(requests[index], keys[index]) for index in missing])
        with _following(lm, follower):
            computed = generate([requests[index] for index in missing])
        unstreamed = []
        for position, (index, result) in enumerate(zip(missing, computed, strict=True)):
            results[index] = result
            text, _ = unwrap_generation_output(result)
            streamed = follower.streamed.get(position)
            if keys[index] is not None and isinstance(text, str) and streamed != text:
                if streamed is not None:
                    self._warn_once(
                        "mismatch",
                        f"journal: {type(lm).__name__} answered a request differently "
                        "than its batch reported; the journal keeps the returned answer",
                    )
                unstreamed.append((requests[index], keys[index], text))
        if follower.lost:
            self._warn_once(
                "lost",
                f"journal: cannot match {type(lm).__name__}'s batches to its requests; "
                "their answers were journaled only when generate_until returned",
            )
        self.append(unstreamed)
        return results

    def append(self, entries: Sequence[tuple[Instance, str, str]]) -> None:
        """(request, key, answer) triples, in one write and an fsync: a kill mid-write tears only the last line.

        An answer the journal already holds (generated again for its diagnostics or figure) is not repeated.
        """
        entries = [(request, key, text) for request, key, text in entries if self._answers.get(key) != text]
        if not entries:
            return
        lines = []
        for request, key, text in entries:
            task, _, doc_id = _request_doc(request)
            entry = {"key": key, "task": task, "doc_id": doc_id, "response": text}
            lines.append(json.dumps(entry, ensure_ascii=False) + "\n")
        data = "".join(lines).encode()
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = 0
            while written < len(data):
                written += os.write(descriptor, data[written:])
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        self._answers.update((key, text) for _, key, text in entries)

    def _keys(self, task_dict, requests: Sequence[Instance]) -> list[str | None]:
        """Each request's key: its inputs' hash, numbered among equal requests (repeats, duplicate docs)."""
        seen: Counter[str] = Counter()
        keys: list[str | None] = []
        for request in requests:
            content = self._content_hash(task_dict, request) if self._deterministic(request) else None
            if content is None:
                keys.append(None)
                continue
            keys.append(f"{content}:{seen[content]}")
            seen[content] += 1
        return keys

    def _deterministic(self, request: Instance) -> bool:
        """lmms-eval's rule for its own cache; a sampled request is generated every run."""
        gen_kwargs = extract_gen_kwargs(request)
        if is_deterministic(request.request_type, gen_kwargs):
            return True
        sampling = {name: gen_kwargs[name] for name in SAMPLING_KWARGS if name in gen_kwargs}
        self._warn_once(
            "sampled",
            f"journal: requests of {request.task_name} sample ({sampling}); sampled requests are generated "
            "every run and never journaled, since a sample depends on --seed and on every draw before it",
        )
        return False

    def _content_hash(self, task_dict, request: Instance) -> str | None:
        """Hash of the settings and every input but the doc's address; doc-reading functions are applied."""
        *inputs, doc_id, task, split = request.args
        doc = task_dict[task][split][doc_id]
        try:
            content = [content_fingerprint(value(doc) if callable(value) else value) for value in inputs]
        except UnfingerprintableInput as error:
            self._warn_once(
                "unfingerprintable",
                f"journal: a request of {task} holds {error}, whose content cannot be hashed; "
                "such requests are always computed, never journaled",
            )
            return None
        return _sha256_json([self.fingerprint, content])

    def _warn_once(self, topic: str, message: str) -> None:
        if topic not in self._warned:
            self._warned.add(topic)
            eval_logger.warning(message)


def _request_doc(request: Instance) -> DocKey:
    """The doc a request reads: lmms-eval's generation requests end with (doc_id, task, split)."""
    doc_id, task, split = request.args[-3:]
    return doc_key(task, split, doc_id)


class _BatchFollower:
    """Pairs upstream's answers with the docs it read for the batch, and journals each batch as it ends."""

    def __init__(self, journal: Journal, missing: Sequence[tuple[Instance, str | None]]) -> None:
        self._journal = journal
        self._missing = missing
        self._pending: dict[DocKey, deque[int]] = defaultdict(deque)
        for position, (request, _) in enumerate(missing):
            self._pending[_request_doc(request)].append(position)
        self._reads: list[DocKey] = []
        self._answers: list[object] = []
        self.streamed: dict[int, str] = {}  # position in `missing` -> the answer journaled for it
        self.lost = False  # a batch could not be matched: stop streaming for this call

    def doc_read(self, doc: DocKey) -> None:
        if self._answers:  # a read after answers starts the next batch
            self.end_batch()
        self._reads.append(doc)

    def answered(self, answers: list) -> None:
        self._answers.extend(answers)

    def end_batch(self) -> None:
        reads, answers = self._reads, self._answers
        self._reads, self._answers = [], []
        if self.lost or not answers:
            return
        positions = [self._pending[doc].popleft() if self._pending[doc] else None for doc in reads]
        if len(positions) != len(answers) or None in positions:
            self.lost = True
            return
        entries = []
        for position, answer in zip(positions, answers, strict=True):
            request, key = self._missing[position]
            if key is not None and isinstance(answer, str):
                self.streamed[position] = answer
                entries.append((request, key, answer))
        self._journal.append(entries)


class _AnswerHook:
    """Stands in for `lm.cache_hook`: passes every partial on, and hands `generate_until` answers over."""

    def __init__(self, inner, on_answers: Callable[[list], None]) -> None:
        self._inner, self._on_answers = inner, on_answers

    def add_partial(self, attr: str, request, result) -> None:
        self._inner.add_partial(attr, request, result)
        if attr == "generate_until":
            # One answer per call, or one list per batch (some upstream models).
            self._on_answers(result if isinstance(result, list) else [result])


@contextmanager
def _following(lm, follower: _BatchFollower) -> Iterator[None]:
    """Within: `lm` reports its doc reads and answers to `follower`; the batch it last finished is journaled."""
    task_dict, cache_hook = lm.task_dict, lm.cache_hook
    lm.task_dict = RecordedDocs(task_dict, follower.doc_read)
    lm.cache_hook = _AnswerHook(cache_hook, follower.answered)
    try:
        yield
    finally:
        lm.task_dict, lm.cache_hook = task_dict, cache_hook
        follower.end_batch()


def _read_answers(paths: Sequence[Path]) -> tuple[dict[str, str], dict[Path, int]]:
    """key -> answer from journal files (a later line wins), and how many unreadable lines each file had."""
    answers: dict[str, str] = {}
    unreadable: dict[Path, int] = {}
    for path in paths:
        with path.open("rb") as file:
            for line in file:
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:  # a line torn by a kill (UnicodeDecodeError is a ValueError too)
                    entry = None
                if (
                    isinstance(entry, dict)
                    and isinstance(entry.get("key"), str)
                    and isinstance(entry.get("response"), str)
                ):
                    answers[entry["key"]] = entry["response"]
                else:
                    unreadable[path] = unreadable.get(path, 0) + 1
    return answers, unreadable


def _journal_file_access(action: Callable[[Sequence[Path]], object], paths: Sequence[Path]):
    """`action(paths)`, an `OSError` of it a `ModelArgError` saying the file is the journal's and how to avoid it."""
    try:
        return action(paths)
    except OSError as error:
        where = error.filename or ", ".join(map(str, paths))
        raise ModelArgError(
            f"the journal file {where} cannot be used ({error.strerror or error}); {_AVOID}"
        ) from None


def _end_with_newline(paths: Sequence[Path]) -> None:
    """Create each file, or close a line torn by a kill so the next append starts a line of its own."""
    for path in paths:
        with path.open("ab+") as file:
            if file.tell() == 0:
                continue
            file.seek(-1, os.SEEK_END)
            if file.read(1) != b"\n":
                file.write(b"\n")


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    temporary.replace(path)
