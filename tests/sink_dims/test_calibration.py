import json

import pytest

from lmms_var.sink_dims.calibration import builtin_prompts, data_prompts, encode_prompt


def test_builtin_prompts_are_deterministic_and_varied():
    first, again = builtin_prompts(4), builtin_prompts(4)
    assert [p.question for p in first] == [p.question for p in again]
    assert [list(img.getdata()) for p in first for img in p.images] == [
        list(img.getdata()) for p in again for img in p.images
    ]
    assert {len(p.images) for p in first} == {1, 2}
    assert len({p.question for p in first}) == 4


def test_encoded_prompt_uses_the_chat_template_with_one_placeholder_run_per_image(tiny_model):
    model, processor = tiny_model
    prompt = builtin_prompts(2)[1]  # two images
    inputs = encode_prompt(processor, prompt)
    text = processor.tokenizer.decode(inputs["input_ids"][0])
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
    assert text.count("<|vision_start|>") == len(prompt.images) == 2
    image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert image_tokens == int(inputs["image_grid_thw"].prod(dim=-1).sum()) // 4  # 2x2 merge


def test_data_prompts_read_blink_records_with_their_images(spatial_root):
    prompts = data_prompts(spatial_root, num_samples=5)
    records = [
        json.loads(line)
        for line in (spatial_root / "spatial_reasoning/blink/blink_validation.jsonl").read_text().splitlines()
    ][:5]
    assert len(prompts) == 5
    for prompt, record in zip(prompts, records, strict=True):
        n_images = sum(key == "image" or key.startswith("image_") for key in record)
        assert len(prompt.images) == n_images
        assert "<image>" not in prompt.question
        assert prompt.question == record["conversations"][0]["value"].replace("<image>", "").strip()


def test_data_prompts_name_the_missing_file(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"^spatial root .*: no spatial_reasoning/blink/blink_validation\.jsonl in it"
    ):
        data_prompts(tmp_path)


def test_data_prompts_name_a_missing_image_and_a_misspelt_sub_task(tmp_path):
    jsonl = tmp_path / "spatial_reasoning/blink/blink_validation.jsonl"
    jsonl.parent.mkdir(parents=True)
    question = {"from": "human", "value": "<image>Q?\n(A) left\n(B) right"}
    record = {"id": "x", "image": "nowhere.png", "conversations": [question, {"from": "gpt", "value": "(A)"}]}
    jsonl.write_text(json.dumps(record | {"sub_task": "Counting"}) + "\n")
    with pytest.raises(ValueError, match=r"blink_validation\.jsonl:1 \(record id 'x'\): image not found"):
        data_prompts(tmp_path)
    # Read as the BLINK tasks read it: a sub-task BLINK does not spell that way is a bad record.
    jsonl.write_text(json.dumps(record | {"sub_task": "counting"}) + "\n")
    with pytest.raises(ValueError, match=r"blink_validation\.jsonl:1 \(record id 'x'\): .*sub_task"):
        data_prompts(tmp_path)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_num_samples_must_be_positive(bad):
    with pytest.raises(ValueError, match=r"^num_samples must be a positive integer"):
        builtin_prompts(bad)
