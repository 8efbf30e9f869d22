"""What lmms-eval hands a model: `generate_until` requests of a synthetic task, and its CLI's options."""

from lmms_eval.api.instance import Instance

TASK, SPLIT = "synthetic", "test"
# What lmms-eval's CLI passes every model besides --model_args when its options are left out.
LMMS_EVAL_OPTIONS = {"batch_size": 1, "max_batch_size": None, "device": None}


def doc_to_messages(doc: dict) -> list[dict]:
    """A chat task's one user turn: the doc's image, then its question."""
    return [
        {
            "role": "user",
            "content": [{"type": "image", "url": doc["image"]}, {"type": "text", "text": doc["question"]}],
        }
    ]


def make_requests(docs: list[dict], gen_kwargs: dict, kind: str = "chat") -> list[Instance]:
    """What lmms-eval builds for `docs` of a chat (doc_to_messages) or simple (doc_to_visual) task."""
    made = []
    for doc_id, doc in enumerate(docs):
        if kind == "chat":
            arguments = (doc["question"], doc_to_messages, dict(gen_kwargs), doc_id, TASK, SPLIT)
        else:
            arguments = (doc["question"], dict(gen_kwargs), lambda d: [d["image"]], doc_id, TASK, SPLIT)
        made.append(
            Instance(
                "generate_until", arguments, idx=0, metadata={"task": TASK, "doc_id": doc_id, "repeats": 1}
            )
        )
    return made
