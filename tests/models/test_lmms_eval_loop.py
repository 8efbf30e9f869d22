"""`watching_batches`: the one wrapper of `model.generate`, telling every watcher about each batch."""

import pytest

from lmms_var.models.lmms_eval_loop import Watcher, watching_batches
from tests.models.instances import SPLIT, TASK


class Model:
    def generate(self, **inputs):
        if inputs.get("fail"):
            raise RuntimeError("generation broke")
        return len(inputs["rows"])


class Loop:
    """Upstream's loop: reads each batch's docs from `task_dict`, then generates; like lmms-eval's
    llava_hf, it answers "" when `generate` raises."""

    def __init__(self) -> None:
        self.task_dict = {TASK: {SPLIT: ["doc0", "doc1", "doc2"]}}
        self.model = Model()

    def generate_until(self, batches: list[list[int]], fail: bool = False) -> list:
        answers = []
        for batch in batches:
            rows = [self.task_dict[TASK][SPLIT][doc_id] for doc_id in batch]
            try:
                answers.append(self.model.generate(rows=rows, fail=fail))
            except Exception:
                answers.append("")
        return answers


class Recorder(Watcher):
    def __init__(self, name: str, calls: list) -> None:
        self.name, self.calls = name, calls

    def after_batch(self, docs: list[dict], inputs: dict) -> None:
        self.calls.append((self.name, [doc["doc_id"] for doc in docs], inputs["rows"]))

    def after_call(self) -> None:
        self.calls.append((self.name, "call done"))


def test_watchers_hear_each_batch_in_order_then_the_end_of_the_call():
    lm, calls = Loop(), []
    watchers = [Recorder("first", calls), Recorder("second", calls)]
    with watching_batches(lm, watchers):
        assert lm.generate_until([[2, 0], [1]]) == [2, 1]
    assert calls == [
        ("first", [2, 0], ["doc2", "doc0"]),
        ("second", [2, 0], ["doc2", "doc0"]),
        ("first", [1], ["doc1"]),
        ("second", [1], ["doc1"]),
        ("first", "call done"),
        ("second", "call done"),
    ]
    assert "generate" not in vars(lm.model) and isinstance(lm.task_dict, dict)  # nothing left behind
    assert Watcher.needs(watchers[0], None) is None  # the protocol's default: no request needs generating


def test_a_generation_error_fails_the_call_past_a_loop_that_answers_empty():
    lm, calls = Loop(), []
    with (
        pytest.raises(RuntimeError, match="generation broke"),
        watching_batches(lm, [Recorder("only", calls)]),
    ):
        lm.generate_until([[0]], fail=True)
    assert calls == []  # no batch, and no end of a call that failed
    assert "generate" not in vars(lm.model) and isinstance(lm.task_dict, dict)
