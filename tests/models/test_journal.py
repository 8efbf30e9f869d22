"""The journal on its own: keys, files, torn lines, several ranks, and batches matched to their requests.

`FakeModel` has the shape of lmms-eval's `generate_until` loops (sort, batch, read each doc from
`task_dict`, decode, `cache_hook.add_partial` per answer) without a network; the last test drives the
real model classes on a tiny checkpoint. `test_journal_cli.py` interrupts real lmms-eval runs.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import CacheHook
from transformers import Qwen2_5_VLForConditionalGeneration

import lmms_var
from lmms_var.models import journal as journal_module
from lmms_var.models.args import AUTO, ModelArgError, parse_journal
from lmms_var.models.journal import (
    Journal,
    UnfingerprintableInput,
    content_fingerprint,
    journal_settings,
    resolve_journal_dir,
    source_fingerprint,
)
from lmms_var.testing.images import random_image
from tests.conftest import TINY_SPEC, TINY_TAU
from tests.models import test_var_model as model_tests
from tests.models.instances import SPLIT, TASK, make_requests

SETTINGS = {"model_args": {"pretrained": "tiny", "p": 0.6}}
GEN_KWARGS = {"max_new_tokens": 4, "until": ["\n\n"]}


def make_docs(count: int = 5) -> list[dict]:
    return [
        {"question": f"Where is shape {i}? (A) left (B) right", "image": random_image(i)}
        for i in range(count)
    ]


def answer_of(doc: dict) -> str:
    """What the fake model answers: depends on the question and on the image's pixels."""
    return f"{doc['question'][:14]}|{sum(doc['image'].tobytes()[:64]) % 997}"


class FakeModel:
    """Upstream's loop: sort (here by descending doc id), batches, doc reads, one add_partial per answer."""

    def __init__(self, docs: list[dict], batch_size: int = 2, reads_per_doc: int = 1) -> None:
        self.task_dict = {TASK: {SPLIT: docs}}
        self.cache_hook = CacheHook(None)
        self.rank, self.world_size = 0, 1
        self.batch_size, self.reads_per_doc = batch_size, reads_per_doc
        self.fail_at_batch: int | None = None
        self.report = lambda answer: answer  # what add_partial is told
        self.computed: list[int] = []  # doc ids generated, in order

    def generate_until(self, requests: list[Instance]) -> list[str]:
        order = sorted(range(len(requests)), key=lambda i: -requests[i].args[3])
        results: list = [None] * len(requests)
        for number, start in enumerate(range(0, len(order), self.batch_size)):
            batch = order[start : start + self.batch_size]
            docs = [
                self.task_dict[TASK][SPLIT][requests[i].args[3]]
                for i in batch
                for _ in range(self.reads_per_doc)
            ]
            if number == self.fail_at_batch:
                raise RuntimeError("CUDA out of memory")
            for i, doc in zip(batch, docs[:: self.reads_per_doc], strict=True):
                results[i] = answer_of(doc)
                self.computed.append(requests[i].args[3])
                partial = self.report(results[i])
                self.cache_hook.add_partial("generate_until", (requests[i].args[0], GEN_KWARGS), partial)
        return results


def run(journal: Journal, model: FakeModel, requests: list[Instance]) -> list[str]:
    return journal.generate_until(model, requests, model.generate_until)


def entries(folder: Path) -> list[dict]:
    return [
        json.loads(line) for path in sorted(folder.glob("*.jsonl")) for line in path.read_text().splitlines()
    ]


def test_an_interrupted_call_resumes_with_the_same_results(tmp_path, log_lines):
    docs = make_docs()
    expected = [answer_of(doc) for doc in docs]
    model = FakeModel(docs)
    model.fail_at_batch = 2  # batches of doc ids (4, 3), (2, 1) finish; (0) dies
    with pytest.raises(RuntimeError, match="out of memory"):
        run(Journal(tmp_path, SETTINGS, rank=0), model, make_requests(docs, GEN_KWARGS))
    assert sorted(entry["doc_id"] for entry in entries(tmp_path)) == [1, 2, 3, 4]
    # Each journaled answer is its own doc's, although the batches ran in another order.
    assert all(entry["response"] == expected[entry["doc_id"]] for entry in entries(tmp_path))

    resumed = FakeModel(docs)
    assert run(Journal(tmp_path, SETTINGS, rank=0), resumed, make_requests(docs, GEN_KWARGS)) == expected
    assert resumed.computed == [0]
    assert "4 of 5 requests answered from the journal" in log_lines
    again = FakeModel(docs)
    assert run(Journal(tmp_path, SETTINGS, rank=0), again, make_requests(docs, GEN_KWARGS)) == expected
    assert again.computed == [] and "5 of 5 requests answered from the journal" in log_lines


def test_a_changed_image_prompt_kwarg_or_setting_is_a_miss(tmp_path):
    docs = make_docs(3)
    run(Journal(tmp_path, SETTINGS, rank=0), FakeModel(docs), make_requests(docs, GEN_KWARGS))

    edited = [dict(doc) for doc in docs]
    edited[0]["image"] = docs[0]["image"].copy()
    edited[0]["image"].putpixel((5, 5), (1, 2, 3))  # one pixel
    edited[1]["question"] = docs[1]["question"] + " "
    model = FakeModel(edited)
    results = run(Journal(tmp_path, SETTINGS, rank=0), model, make_requests(edited, GEN_KWARGS))
    assert sorted(model.computed) == [0, 1]
    assert results == [answer_of(doc) for doc in edited]

    for settings, gen_kwargs in (
        ({"model_args": {"pretrained": "tiny", "p": 0.8}}, GEN_KWARGS),
        (SETTINGS, {**GEN_KWARGS, "max_new_tokens": 5}),
    ):
        model = FakeModel(docs)
        run(Journal(tmp_path, settings, rank=0), model, make_requests(docs, gen_kwargs))
        assert sorted(model.computed) == [0, 1, 2]


def test_rank_files_are_all_read_whatever_the_new_process_count(tmp_path, log_lines):
    docs = make_docs(4)
    requests = make_requests(docs, GEN_KWARGS)
    for rank in (0, 1):  # two processes, each with every other doc (as lmms-eval shards)
        model = FakeModel(docs)
        model.rank, model.world_size = rank, 2
        run(Journal(tmp_path, SETTINGS, rank=rank), model, requests[rank::2])
    assert sorted(path.name.split("-")[1] for path in tmp_path.glob("*.jsonl")) == [
        "rank0.jsonl",
        "rank1.jsonl",
    ]
    assert "0 of 2 requests answered from the journal (rank 1 of 2)" in log_lines

    model = FakeModel(docs)
    assert run(Journal(tmp_path, SETTINGS, rank=0), model, requests) == [answer_of(doc) for doc in docs]
    assert model.computed == [] and "4 of 4 requests answered from the journal" in log_lines


def test_a_torn_last_line_is_ignored_and_the_next_append_starts_a_new_line(tmp_path, log_lines):
    docs = make_docs(3)
    run(Journal(tmp_path, SETTINGS, rank=0), FakeModel(docs), make_requests(docs[:2], GEN_KWARGS))
    (path,) = tmp_path.glob("*.jsonl")
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + lines[1][:25])  # killed while writing the second answer
    kept = json.loads(lines[0])["doc_id"]

    model = FakeModel(docs)
    assert run(Journal(tmp_path, SETTINGS, rank=0), model, make_requests(docs, GEN_KWARGS)) == [
        answer_of(d) for d in docs
    ]
    assert sorted(model.computed) == sorted({0, 1, 2} - {kept})
    assert any(f"ignored 1 unreadable line(s) in {path}" in line for line in log_lines)
    model = FakeModel(docs)
    run(Journal(tmp_path, SETTINGS, rank=0), model, make_requests(docs, GEN_KWARGS))
    assert model.computed == []


def test_batches_that_cannot_be_matched_are_journaled_when_the_call_returns(tmp_path, log_lines):
    docs = make_docs(3)
    model = FakeModel(docs, reads_per_doc=2)  # reads every doc twice: reads and answers disagree
    assert run(Journal(tmp_path, SETTINGS, rank=0), model, make_requests(docs, GEN_KWARGS)) == [
        answer_of(d) for d in docs
    ]
    assert any("cannot match FakeModel's batches" in line for line in log_lines)
    assert {entry["doc_id"]: entry["response"] for entry in entries(tmp_path)} == {
        i: answer_of(doc) for i, doc in enumerate(docs)
    }


def test_entries_of_other_settings_never_answer_even_when_copied_into_this_settings_file(tmp_path):
    docs = make_docs(2)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = Journal(tmp_path / "a", SETTINGS, rank=0)
    run(first, FakeModel(docs), make_requests(docs, GEN_KWARGS))
    other_settings = {"model_args": {"pretrained": "tiny", "p": 0.8}}
    first.path.rename(Journal(tmp_path / "b", other_settings, rank=0).path)
    model = FakeModel(docs)
    run(Journal(tmp_path / "b", other_settings, rank=0), model, make_requests(docs, GEN_KWARGS))
    assert sorted(model.computed) == [0, 1]


def test_the_returned_answer_wins_over_a_different_reported_one(tmp_path, log_lines):
    docs = make_docs(2)
    model = FakeModel(docs)
    model.report = lambda answer: answer.upper()
    run(Journal(tmp_path, SETTINGS, rank=0), model, make_requests(docs, GEN_KWARGS))
    assert any("answered a request differently than its batch reported" in line for line in log_lines)
    resumed = FakeModel(docs)
    assert run(Journal(tmp_path, SETTINGS, rank=0), resumed, make_requests(docs, GEN_KWARGS)) == [
        answer_of(d) for d in docs
    ]
    assert resumed.computed == []


def test_repeated_requests_get_one_entry_each(tmp_path):
    docs = make_docs(2)
    requests = make_requests(docs, GEN_KWARGS)
    repeated = [requests[0], requests[0], requests[1]]  # lmms-eval's `repeats`
    run(Journal(tmp_path, SETTINGS, rank=0), FakeModel(docs), repeated)
    keys = [entry["key"] for entry in entries(tmp_path)]
    assert len(set(keys)) == 3 and sum(key.endswith(":1") for key in keys) == 1
    model = FakeModel(docs)
    run(Journal(tmp_path, SETTINGS, rank=0), model, repeated)
    assert model.computed == []


@pytest.mark.parametrize(
    "sampling",
    [{"temperature": 5.0, "do_sample": True}, {"temperature": 0.7}, {"do_sample": True}],
    ids=["temperature-and-do_sample", "temperature", "do_sample"],
)
@pytest.mark.parametrize("kind", ["chat", "simple"])
def test_sampled_requests_are_generated_every_run_and_never_journaled(tmp_path, log_lines, sampling, kind):
    """A sample depends on --seed and on the draws before it: journaled, seed 2 would repeat seed 1."""
    docs = make_docs(3)
    sampled = make_requests(docs[:2], {**GEN_KWARGS, **sampling}, kind)
    greedy = make_requests(docs, {**GEN_KWARGS, "temperature": 0}, kind)[2:]
    run(Journal(tmp_path, SETTINGS, rank=0), FakeModel(docs), sampled + greedy)
    assert [entry["doc_id"] for entry in entries(tmp_path)] == [2]
    warnings = [line for line in log_lines if "sampled requests are generated every run" in line]
    assert len(warnings) == 1 and f"requests of {TASK} sample (" in warnings[0]
    model = FakeModel(docs)
    run(Journal(tmp_path, SETTINGS, rank=0), model, sampled + greedy)
    assert sorted(model.computed) == [0, 1] and "1 of 3 requests answered from the journal" in log_lines


def test_the_settings_hold_a_fingerprint_of_lmms_var_sources_that_a_code_change_moves(
    tmp_path, tiny_model, monkeypatch
):
    """Every editable install is version 0.1.0: a fixed bug must not keep the answers computed before."""
    installed = Path(lmms_var.__file__).parent
    settings = journal_settings({"p": 0.6}, model=tiny_model[0], config=None, model_class="M")
    assert settings["sources"] == source_fingerprint(installed)
    edited = shutil.copytree(installed, tmp_path / "lmms_var", ignore=shutil.ignore_patterns("__pycache__"))
    assert source_fingerprint(edited) == settings["sources"]  # the same code, elsewhere
    fixed = edited / "core" / "redistribution.py"
    fixed.write_text(fixed.read_text() + "\n# a fix\n")
    source_fingerprint.cache_clear()  # a new process
    monkeypatch.setattr(journal_module, "_SOURCES", edited)
    after_fix = journal_settings({"p": 0.6}, model=tiny_model[0], config=None, model_class="M")
    assert after_fix["sources"] != settings["sources"]
    assert {name for name in settings if settings[name] != after_fix[name]} == {"sources"}

    docs = make_docs(2)
    (tmp_path / "j").mkdir()
    run(Journal(tmp_path / "j", settings, rank=0), FakeModel(docs), make_requests(docs, GEN_KWARGS))
    model = FakeModel(docs)
    run(Journal(tmp_path / "j", after_fix, rank=0), model, make_requests(docs, GEN_KWARGS))
    assert sorted(model.computed) == [0, 1]


def test_held_answers_are_generated_again_where_asked_and_not_journaled_twice(tmp_path, log_lines):
    docs = make_docs(4)
    run(Journal(tmp_path, SETTINGS, rank=0), FakeModel(docs), make_requests(docs, GEN_KWARGS))
    model = FakeModel(docs)
    figures = lambda request: "attention_maps" if request.args[3] < 2 else None  # noqa: E731
    results = Journal(tmp_path, SETTINGS, rank=0).generate_until(
        model, make_requests(docs, GEN_KWARGS), model.generate_until, figures
    )
    assert results == [answer_of(doc) for doc in docs] and sorted(model.computed) == [0, 1]
    assert "2 of 4 requests answered from the journal; 2 it holds generated again for attention_maps" in (
        log_lines
    )
    assert len(entries(tmp_path)) == 4


def test_a_journal_file_that_cannot_be_used_is_named_with_the_ways_around_it(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    path = tmp_path / Journal(tmp_path / "elsewhere", SETTINGS, rank=0).path.name
    path.mkdir()  # as unusable as a file this user may not write, for root too
    with pytest.raises(ModelArgError) as error:
        Journal(tmp_path, SETTINGS, rank=0)
    assert str(error.value) == (
        f"invalid model_args: the journal file {path} cannot be used (Is a directory); give journal=off, "
        "or journal=FOLDER for another folder"
    )


def test_content_fingerprint_hashes_media_and_refuses_what_it_cannot_read(tmp_path):
    image = random_image(0)
    assert content_fingerprint([image]) == content_fingerprint([image.copy()])
    assert content_fingerprint(image) != content_fingerprint(image.convert("L").convert("RGB"))
    assert content_fingerprint(np.zeros(3)) != content_fingerprint(np.zeros(3, dtype=np.float32))
    assert content_fingerprint(torch.ones(2, dtype=torch.bfloat16)) != content_fingerprint(torch.ones(2))
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"frames")
    before = content_fingerprint({"type": "video", "url": str(video)})
    video.write_bytes(b"other frames")
    assert content_fingerprint({"type": "video", "url": str(video)}) != before
    assert content_fingerprint("plain text, not a file") == "plain text, not a file"
    with pytest.raises(UnfingerprintableInput, match="remote URL"):
        content_fingerprint({"url": "https://example.com/cat.png"})
    with pytest.raises(UnfingerprintableInput, match="object"):
        content_fingerprint(object())


def test_unfingerprintable_requests_are_computed_and_never_journaled(tmp_path, log_lines):
    docs = make_docs(2)
    requests = make_requests(docs, GEN_KWARGS)
    # An object in the generation kwargs that has no content to hash: that request is always computed.
    requests[1].arguments = (*requests[1].args[:2], {**GEN_KWARGS, "stop": object()}, *requests[1].args[3:])
    run(Journal(tmp_path, SETTINGS, rank=0), FakeModel(docs), requests)
    assert [entry["doc_id"] for entry in entries(tmp_path)] == [0]
    assert any("whose content cannot be hashed" in line for line in log_lines)
    model = FakeModel(docs)
    run(Journal(tmp_path, SETTINGS, rank=0), model, requests)
    assert model.computed == [1]


def test_journal_folder_follows_the_output_path_and_bad_folders_are_named(tmp_path):
    argv = ["--model", "qwen2_5_vl_var", "--output_path", str(tmp_path / "out")]
    assert resolve_journal_dir(AUTO, "/ckpt/tiny", argv) == tmp_path / "out" / "ckpt__tiny" / "journal"
    assert resolve_journal_dir(AUTO, "/ckpt/tiny", ["--model", "x"]) is None
    assert resolve_journal_dir(None, "/ckpt/tiny", argv) is None
    assert resolve_journal_dir(str(tmp_path / "j"), "/ckpt/tiny", []) == tmp_path / "j"
    (tmp_path / "file").write_text("")
    with pytest.raises(ModelArgError, match="journal must be a folder"):
        resolve_journal_dir(str(tmp_path / "file"), "/ckpt/tiny", [])
    with pytest.raises(ModelArgError, match=r"journal folder .* cannot be created"):
        resolve_journal_dir(str(tmp_path / "file" / "below"), "/ckpt/tiny", [])


@pytest.mark.parametrize(
    ("value", "parsed"),
    [("auto", AUTO), ("AUTO", AUTO), ("off", None), (False, None), (0, None), ("runs/j", "runs/j")],
)
def test_parse_journal(value, parsed):
    assert parse_journal(value) == parsed


@pytest.mark.parametrize("value", [True, "yes", ""])
def test_parse_journal_rejects_what_is_neither_on_off_nor_a_path(value):
    with pytest.raises(ModelArgError, match="journal must be auto, off or a folder path"):
        parse_journal(value)


def texts(results: list) -> list[str]:
    return [getattr(result, "text", result) for result in results]


@pytest.mark.parametrize("kind", ["chat", "simple"])
def test_the_model_journals_its_batches_and_a_new_instance_answers_from_them(
    answering_checkpoints, tmp_path, kind, monkeypatch, log_lines
):
    """Batches of two in upstream's own order, diagnostics on; then a new model generates nothing."""
    folder = tmp_path / "journal"
    checkpoint = answering_checkpoints(TINY_SPEC.model_type)
    common = dict(pretrained=str(checkpoint), sink_dims="17;93", tau=TINY_TAU, batch_size=2)
    common |= dict(journal=str(folder), **model_tests.PIXELS)
    first = model_tests.CLASSES[kind](diagnostics_path=str(tmp_path / "diagnostics.jsonl"), **common)
    first.task_dict = {TASK: {SPLIT: model_tests.DOCS}}
    expected = texts(first.generate_until(model_tests.requests(kind)))
    assert len(set(expected)) > 1  # docs differ, so a mix-up would show
    assert {entry["doc_id"]: entry["response"] for entry in entries(folder)} == dict(enumerate(expected))
    diagnostics = (tmp_path / "diagnostics.jsonl").read_text().splitlines()
    assert [json.loads(line)["doc_id"] for line in diagnostics] == list(range(len(model_tests.DOCS)))

    def refuse(*args, **kwargs):
        raise AssertionError("generated although the journal holds every answer")

    monkeypatch.setattr(Qwen2_5_VLForConditionalGeneration, "generate", refuse)
    second = model_tests.CLASSES[kind](**common)  # diagnostics off: a logging-only arg
    second.task_dict = first.task_dict
    assert texts(second.generate_until(model_tests.requests(kind))) == expected
    assert "4 of 4 requests answered from the journal" in log_lines

    other = model_tests.CLASSES[kind](**common | {"p": 0.5})
    other.task_dict = first.task_dict
    with pytest.raises(AssertionError, match="generated although"):
        other.generate_until(model_tests.requests(kind))
    assert "0 of 4 requests answered from the journal" in log_lines


def test_an_unusable_journal_folder_fails_before_the_weights_load(tiny_checkpoint, tmp_path, no_weights):
    (tmp_path / "file").write_text("")
    with pytest.raises(ModelArgError, match="qwen2_5_vl_var: invalid model_args: journal must be a folder"):
        model_tests.CLASSES["chat"](
            pretrained=str(tiny_checkpoint), sink_dims="17;93", journal=str(tmp_path / "file")
        )


def test_figures_and_diagnostics_asked_on_a_resumed_run_cover_the_docs_it_holds(
    answering_checkpoints, tmp_path, log_lines
):
    """The journal keeps answers only: a doc whose figure or diagnostics are asked is generated again."""
    checkpoint = answering_checkpoints(TINY_SPEC.model_type)
    common = dict(pretrained=str(checkpoint), sink_dims="17;93", tau=TINY_TAU, batch_size=2, device="cpu")
    common |= dict(journal=str(tmp_path / "journal"), **model_tests.PIXELS)
    task_dict = {TASK: {SPLIT: model_tests.DOCS}}
    count = len(model_tests.DOCS)

    def answers(**args) -> list[str]:
        lm = model_tests.CLASSES["chat"](**common, **args)
        lm.task_dict = task_dict
        return texts(lm.generate_until(model_tests.requests("chat")))

    expected = answers()
    maps = tmp_path / "maps"
    assert answers(attention_maps=2, attention_maps_path=str(maps)) == expected
    assert (
        f"{count - 2} of {count} requests answered from the journal; 2 it holds generated again for "
        "attention_maps" in log_lines
    )
    assert sorted(path.name for path in maps.glob("*.png")) == [f"{TASK}_doc0.png", f"{TASK}_doc1.png"]

    diagnostics = tmp_path / "diagnostics.jsonl"
    assert answers(diagnostics_path=str(diagnostics)) == expected
    assert (
        f"0 of {count} requests answered from the journal; {count} it holds generated again for "
        "diagnostics" in log_lines
    )
    records = [json.loads(line) for line in diagnostics.read_text().splitlines()]
    assert [record["doc_id"] for record in records] == list(range(count))
    assert len(entries(tmp_path / "journal")) == count  # generated again, not journaled again
