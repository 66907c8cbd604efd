"""The journal of a long map over rows (kubedistill_jobs.batch_journal): a teacher's answers for sequence-level KD
are kept batch by batch, and a rerun after an interruption answers only the rows left. Against the project's
OpenAI-compatible test server (a tiny real Llama) through real Ray Data."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from kubedistill_jobs import endpoint_teacher as et
from kubedistill_jobs.batch_journal import BatchJournal, fingerprint

from .test_chat_teacher import Server

TEXTS = [f"the {thing} was {how}" for thing in ("day", "food", "film", "trip") for how in ("good", "bad", "fine")]


class Interrupted(Exception):
    """Stands for Ctrl-C or a lost pod, raised once a batch has been journaled."""


def _answer(url: str, tokenizer, journal, progress=None) -> dict[str, np.ndarray]:
    config = et.EndpointConfig(url=url, model="tiny", top_k=3, max_new_tokens=4)
    return et.run_endpoint(config, tokenizer, TEXTS, 24, progress=progress, actors=1, concurrency=1, batch_size=3,
                           journal=journal)


def test_an_interrupted_map_resumes_without_asking_the_teacher_again(ray_local, tiny_models, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    journal = tmp_path / "answers_journal"
    server = Server(tiny_models["llama"])
    try:
        def interrupt(done: int, total: int) -> None:
            if 0 < done < total:
                raise Interrupted

        with pytest.raises(Interrupted):
            _answer(server.url, tokenizer, journal, interrupt)
        kept = BatchJournal(journal, "").folder.glob("batch-*.npz")
        answered_before = {TEXTS[int(i)] for path in kept for i in np.load(path, allow_pickle=True)["idx"]}
        assert 0 < len(answered_before) < len(TEXTS)
        resumed = _answer(server.url, tokenizer, journal)
        counts = server.stats()["answered"]
        for text in TEXTS:
            sent = counts[hashlib.sha256(text.encode()).hexdigest()]
            if text in answered_before:
                assert sent == 1, f"{text!r} was answered before the interruption and sent again"
            else:
                assert 1 <= sent <= 2  # at most once in flight when interrupted, once after
        fresh = _answer(server.url, tokenizer, None)  # the same map, never interrupted
    finally:
        server.stop()
    assert list(resumed["text"]) == list(fresh["text"]) and list(resumed["prompt"]) == TEXTS
    assert [TEXTS[i] for i in np.flatnonzero(resumed["journaled"])] == sorted(answered_before, key=TEXTS.index)
    assert "journaled" not in fresh
    for key in ("input_ids", "attention_mask", "topk_indices", "generated"):
        assert (resumed[key] == fresh[key]).all(), key
    assert np.allclose(resumed["topk_values"].astype(np.float32), fresh["topk_values"].astype(np.float32), atol=1e-3)


def test_a_journal_is_used_only_by_the_same_map(tmp_path):
    rows = {"text": ["a", "b"]}
    key = fingerprint("settings", rows)
    assert key != fingerprint("other settings", rows) and key != fingerprint("settings", {"text": ["a", "c"]})
    batch = {"idx": np.asarray([1]), "text": np.asarray(["b answered"], dtype=object),
             "topk_values": np.ones((1, 4, 2), dtype=np.float16)}
    journal = BatchJournal(tmp_path / "journal", key)
    assert journal.load() == []
    journal.add(batch)
    (journal.folder / ".batch-cut-short.npz").write_bytes(b"PK\x03")  # a write interrupted before its rename
    [loaded] = BatchJournal(tmp_path / "journal", key).load()
    assert loaded.keys() == batch.keys() and loaded["text"].tolist() == ["b answered"]
    assert (loaded["topk_values"] == batch["topk_values"]).all() and loaded["topk_values"].dtype == np.float16
    assert BatchJournal(tmp_path / "journal", fingerprint("other settings", rows)).load() == []  # cleared
    assert BatchJournal(tmp_path / "journal", key).load() == []
