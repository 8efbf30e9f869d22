"""A text-only two-choice toy task for producing real lmms-eval outputs with its `dummy` model."""


def doc_to_visual(doc: dict) -> list:
    return []


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return doc["question"]


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """Two metrics per doc, so the leaderboard has a primary metric and another to pick with --metric."""
    prediction = results[0].strip()
    return {"accuracy": float(prediction == doc["answer"]), "says_a": float(prediction == "A")}
