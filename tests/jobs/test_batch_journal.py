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


def test_a_row_whose_outputs_were_cut_between_batches_is_mapped_again(tmp_path, monkeypatch):
    """n answers per prompt can arrive in two batches (Ray Data splits a large block); a run stopped between them
    maps that prompt again, whole. Progress counts outputs from what the journal holds. A journal file cut short
    by a lost node is mapped again too, never a reason to fail."""
    from kubedistill_jobs import teacher_outputs
    from kubedistill_jobs.batch_journal import complete_rows

    def answers(idx: list[int]) -> dict[str, np.ndarray]:
        return {"idx": np.asarray(idx), "text": np.asarray([f"answer to {i}" for i in idx], dtype=object)}

    kept = complete_rows([answers([0, 0, 1]), answers([3])], per_row=2)
    assert [list(b["idx"]) for b in kept] == [[0, 0]]

    rows = {"text": ["p0", "p1", "p2", "p3"]}
    journal = BatchJournal(tmp_path / "journal", fingerprint("n=2", rows))
    journal.load()
    journal.add(answers([0, 0, 1]))  # prompt 1's second answer never arrived
    (journal.folder / "batch-cut-short.npz").write_bytes(b"PK\x03\x04 cut")  # renamed, then the node was lost
    asked: list[list[int]] = []

    def mapped(predictor, kwargs, items, batch_size, actors, resources):
        asked.append([item["idx"] for item in items])
        yield answers([i for item in items for i in (item["idx"], item["idx"])])

    monkeypatch.setattr(teacher_outputs, "_mapped", mapped)
    seen: list[tuple[int, int]] = []
    out = teacher_outputs.map_rows(object, {}, rows, batch_size=8, actors=1, resources={},
                                   progress=lambda done, total: seen.append((done, total)), journal=journal,
                                   per_row=2)
    assert asked == [[1, 2, 3]] and seen == [(2, 8), (8, 8)]
    assert list(out["text"]) == [f"answer to {i}" for i in (0, 0, 1, 1, 2, 2, 3, 3)]
    assert list(out["journaled"]) == [True, True] + [False] * 6
    assert not (journal.folder / "batch-cut-short.npz").exists()
    # the cut prompt's lone answer left the journal when it was mapped again: a later rerun finds each prompt whole
    again = BatchJournal(tmp_path / "journal", fingerprint("n=2", rows)).load(per_row=2)
    assert sorted(int(i) for b in again for i in b["idx"]) == [0, 0, 1, 1, 2, 2, 3, 3]
