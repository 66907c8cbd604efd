"""Causal-LM prompts and references: text documents' title and body, dataset.referenceField, and task.prompt
rendered with SmolLM2's chat template and cut to leave room for the answer."""

from __future__ import annotations

import pytest
from kubedistill_jobs import data, task_prompt

from kubedistill.api.distillationjob import DatasetSpec, TaskPrompt
from kubedistill.errors import InputError


def test_a_documents_first_line_is_its_title():
    row = data.document_row("Dollar slides ahead of New Year\n\nThe US dollar has hit a new low.\nMore below.\n")
    assert row["title"] == "Dollar slides ahead of New Year"
    assert row["body"] == "The US dollar has hit a new low.\nMore below."
    assert row["text"].startswith("Dollar slides")


def test_label_folders_of_documents_have_titles_and_bodies(tmp_path):
    (tmp_path / "business").mkdir()
    (tmp_path / "business" / "001.txt").write_text("Ad sales boost profit\n\nTime Warner's profits rose.\n")
    rows = data.read_rows(str(tmp_path))
    dataset = DatasetSpec(uri=str(tmp_path), text_field="body", reference_field="title", label_field=None)
    assert data.check_rows(rows, dataset, None).rows == [{"text": "Time Warner's profits rose.",
                                                          "reference": "Ad sales boost profit"}]


def test_a_missing_reference_column_is_refused_naming_the_field():
    dataset = DatasetSpec(uri="/d.jsonl", reference_field="headline", label_field=None)
    with pytest.raises(data.DataError, match=r"dataset\.referenceField: column 'headline' not in the data"):
        data.check_rows([{"text": "a body", "title": "a title"}], dataset, None)


@pytest.fixture(scope="module")
def smollm2():  # type: ignore[no-untyped-def]
    from kubedistill_router.local.triton import cache_root
    from transformers import AutoTokenizer

    from tests.router.generation_models import smollm2_tokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_tokenizer(cache_root() / "test-assets")))


def test_prompts_are_chat_turns_cut_to_leave_room_for_the_answer(smollm2):
    prompt = TaskPrompt(user="Write a short headline for this news article.\n\n{text}")
    long = " ".join(["The US dollar has hit a new record low against the euro."] * 20)
    texts, cut = task_prompt.render_all(smollm2, prompt, ["Short article.", long], budget=60)
    assert cut == 1
    assert texts[0] == task_prompt.render(smollm2, prompt, "Short article.")
    for text in texts:
        assert len(smollm2(text)["input_ids"]) <= 60
        assert text.endswith("<|im_start|>assistant\n") and "Write a short headline" in text
    assert "The US dollar has hit" in texts[1] and texts[1].count("record low") < 20
    with pytest.raises(InputError, match=r"task\.maxLength: the prompt template alone takes \d+ tokens"):
        task_prompt.render_all(smollm2, prompt, ["x"], budget=10)
