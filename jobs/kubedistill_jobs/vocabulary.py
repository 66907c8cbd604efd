"""Vocabulary trimming: a student keeps only the teacher's tokens its corpus uses.

A small student derived from a large-vocabulary teacher spends most of its parameters on the embedding (SmolLM2:
49,152 × 576 of 134M); the tokens one task's text uses are a few thousand of them. Trimming keeps those rows and
the byte-level BPE merges that build them ("Load What You Need", Abdaoui et al., 2020; Ushio et al., 2023), so:

- the trimmed tokenizer splits every text of the corpus exactly as the teacher's does, token for token (a merge
  is kept when its two inputs and its output are kept, and the kept set is closed under the merges that build
  it), so the teacher's token ids map one to one onto the student's;
- any other text still tokenizes (every single-byte token stays), into smaller pieces;
- the teacher's probabilities on dropped tokens are the "rest" of its top-k (`losses`' remaining mass, for a
  forward KL at temperature 1; other losses renormalise over the kept candidates).

The map between the two vocabularies is never stored: `vocabulary_map` rebuilds it from the two tokenizers'
token strings, wherever the two models meet.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

# The tokenizer.json model type this trimming understands; another is refused.
BPE = "BPE"


class VocabularyError(ValueError):
    """A tokenizer that cannot be trimmed (not byte-level BPE)."""


def model_type(tokenizer: Any) -> str | None:
    """The tokenizer.json model type of a transformers fast tokenizer (BPE, WordPiece, Unigram, ...); None for a
    slow one. Trimming needs BPE."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return json.loads(backend.to_str()).get("model", {}).get("type") if backend is not None else None


def _merge_pair(merge: Any) -> tuple[str, str]:
    a, b = merge if isinstance(merge, list) else merge.split(" ", 1)
    return a, b


def trim_tokenizer_json(tokenizer_json: str, used_ids: Iterable[int]) -> tuple[str, np.ndarray]:
    """The tokenizer.json of a vocabulary trimmed to `used_ids` (teacher ids), and `kept (V',)` int64: the
    teacher id of each student id, in increasing order (student id i is teacher id kept[i]).

    Kept besides `used_ids`: every added (special) token, every single-character token (byte-level BPE's
    alphabet, so that any text still tokenizes) and every token a kept token's merges are built from. Raises
    VocabularyError for a tokenizer that is not BPE, or an id outside its vocabulary."""
    doc = json.loads(tokenizer_json)
    model = doc.get("model", {})
    if model.get("type") != BPE or not isinstance(model.get("vocab"), dict):
        raise VocabularyError(f"vocabulary trimming needs a BPE tokenizer, this one is {model.get('type')!r}")
    vocab: dict[str, int] = model["vocab"]
    by_id = {i: t for t, i in vocab.items()}
    # Added tokens may sit inside the BPE vocabulary (SmolLM2) or after it (Llama 3, Qwen): all are kept.
    added_ids = {int(a["id"]) for a in doc.get("added_tokens", [])}
    inserted = _remap_processor(doc.get("post_processor"), None)  # the ids a post-processor inserts stay too
    keep = {t for t in vocab if len(t) == 1} | {by_id[i] for i in added_ids | inserted if i in by_id}
    for i in used_ids:
        token = by_id.get(int(i))
        if token is None:
            if int(i) in added_ids:
                continue
            raise VocabularyError(f"token id {int(i)} is not in the tokenizer's vocabulary of {len(vocab)}")
        keep.add(token)
    merges = [_merge_pair(m) for m in model.get("merges", [])]
    changed = True
    while changed:  # close the kept set under the merges that build its tokens (a token may have several)
        changed = False
        for a, b in merges:
            if a + b in keep and (a not in keep or b not in keep):
                keep.update((a, b))
                changed = True
    # New ids follow the old order, added tokens outside the vocabulary included (they stay after it).
    kept = np.array(sorted({vocab[t] for t in keep} | added_ids | inserted), dtype=np.int64)
    new_id = {int(old): new for new, old in enumerate(kept)}
    model["vocab"] = {by_id[int(old)]: new for new, old in enumerate(kept) if int(old) in by_id}
    model["merges"] = [[a, b] for a, b in merges if a in keep and b in keep and a + b in keep]
    for token in doc.get("added_tokens", []):
        token["id"] = new_id[int(token["id"])]
    _remap_processor(doc.get("post_processor"), new_id)
    return json.dumps(doc, ensure_ascii=False), kept


def _remap_processor(processor: Any, new_id: dict[int, int] | None) -> set[int]:
    """The special-token ids a post-processor inserts (TemplateProcessing's `special_tokens`, Roberta/Bert
    processing's `cls` and `sep` as [token, id], each processor of a Sequence); with `new_id`, rewritten in place
    to the new ids. Returns the old ids."""
    found: set[int] = set()
    if not isinstance(processor, dict):
        return found
    for special in (processor.get("special_tokens") or {}).values():
        found.update(int(i) for i in special.get("ids", []))
        if new_id is not None:
            special["ids"] = [new_id[int(i)] for i in special.get("ids", [])]
    for key in ("cls", "sep"):
        if isinstance(processor.get(key), list) and len(processor[key]) == 2:
            found.add(int(processor[key][1]))
            if new_id is not None:
                processor[key][1] = new_id[int(processor[key][1])]
    for inner in processor.get("processors") or []:
        found |= _remap_processor(inner, new_id)
    return found


def trimmed_tokenizer(teacher_tokenizer: Any, used_ids: Iterable[int]) -> tuple[Any, np.ndarray]:
    """The teacher's tokenizer (a transformers fast tokenizer) trimmed to `used_ids`, as a tokenizer of its own
    (special tokens, chat template and settings kept), and `kept` as trim_tokenizer_json returns it."""
    import tempfile

    from transformers import AutoTokenizer

    trimmed, kept = trim_tokenizer_json(teacher_tokenizer.backend_tokenizer.to_str(), used_ids)
    new_ids = {a["content"]: a["id"] for a in json.loads(trimmed).get("added_tokens", [])}
    with tempfile.TemporaryDirectory(prefix="trimmed-tokenizer-") as folder:
        teacher_tokenizer.save_pretrained(folder)
        root = Path(folder)
        (root / "tokenizer.json").write_text(trimmed)
        config_file = root / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        if isinstance(config.get("added_tokens_decoder"), dict):  # keyed by id: the ids moved
            config["added_tokens_decoder"] = {str(new_ids[v["content"]]): v
                                              for v in config["added_tokens_decoder"].values()
                                              if v.get("content") in new_ids}
            config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False))
        tokenizer = AutoTokenizer.from_pretrained(folder)
    if len(tokenizer) != len(kept):
        raise VocabularyError(f"the trimmed tokenizer holds {len(tokenizer)} tokens, {len(kept)} were kept")
    return tokenizer, kept


def vocabulary_map(student_tokenizer: Any, teacher_tokenizer: Any) -> np.ndarray | None:
    """`(V_teacher,)` int64: each teacher token id's student id, -1 where the student lacks the token; None when
    the two vocabularies are the same (ids included). Raises VocabularyError when the student has a token the
    teacher does not (not a trimmed vocabulary)."""
    student, teacher = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if student == teacher:
        return None
    missing = [t for t in student if t not in teacher]
    if missing:
        raise VocabularyError(f"the student's vocabulary is not a subset of the teacher's ({len(missing)} tokens "
                              f"are not the teacher's, e.g. {missing[:3]})")
    out = np.full(max(teacher.values()) + 1, -1, dtype=np.int64)
    for token, student_id in student.items():
        out[teacher[token]] = student_id
    return out


def to_student_ids(teacher_ids: np.ndarray, vocab_map: np.ndarray) -> np.ndarray:
    """Teacher token ids (any shape) as the student's ids; -1 where the student lacks the token."""
    return vocab_map[np.asarray(teacher_ids, dtype=np.int64)]


def trim_embeddings(model: Any, kept: np.ndarray) -> Any:
    """`model` (a transformers causal LM) with only the embedding rows `kept` (teacher ids, in student-id order):
    the input embedding, and the output one when it is not tied to it; `config.vocab_size` follows. In place;
    returns the model."""
    import torch

    index = torch.as_tensor(np.asarray(kept, dtype=np.int64))
    tied = model.get_output_embeddings() is not None and \
        model.get_output_embeddings().weight is model.get_input_embeddings().weight
    old_in = model.get_input_embeddings()
    new_in = torch.nn.Embedding(len(index), old_in.embedding_dim, padding_idx=None,
                                dtype=old_in.weight.dtype, device=old_in.weight.device)
    with torch.no_grad():
        new_in.weight.copy_(old_in.weight[index.to(old_in.weight.device)])
    model.set_input_embeddings(new_in)
    head = model.get_output_embeddings()
    if head is not None:
        if tied:
            head.weight = new_in.weight
        else:
            new_head = torch.nn.Linear(head.in_features, len(index), bias=head.bias is not None,
                                       dtype=head.weight.dtype, device=head.weight.device)
            with torch.no_grad():
                new_head.weight.copy_(head.weight[index.to(head.weight.device)])
                if head.bias is not None:
                    new_head.bias.copy_(head.bias[index.to(head.weight.device)])
            model.set_output_embeddings(new_head)
    model.config.vocab_size = len(index)
    new_id = {int(old): new for new, old in enumerate(np.asarray(kept))}
    for config in (model.config, getattr(model, "generation_config", None)):
        for key in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
            if config is not None and getattr(config, key, None) is not None:
                setattr(config, key, _remapped(getattr(config, key), new_id))
    return model


def _remapped(value: int | list[int], new_id: dict[int, int]) -> int | list[int] | None:
    """A config's special-token id (or list of them) in the new ids; a dropped one is left out (None)."""
    if isinstance(value, list):
        ids = [new_id[int(v)] for v in value if int(v) in new_id]
        return ids or None
    return new_id.get(int(value))


# A dropped candidate's log-probability: the value padding slots of fewer than k candidates already carry.
DROPPED_LOGPROB = -1e4


def map_topk(values: np.ndarray, indices: np.ndarray, vocab_map: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                                    np.ndarray]:
    """The teacher's top-k `(…, k)` in the student's ids: a candidate the student lacks gets DROPPED_LOGPROB and
    the id of one of its position's kept candidates (repeated ids count once in the loss's remaining-mass bucket,
    where the dropped probability now belongs). Returns (values, indices, dropped `(…, k)` bool); a position
    whose candidates are all dropped is left to the caller (its indices are 0)."""
    mapped = vocab_map[np.asarray(indices, dtype=np.int64)]
    dropped = mapped < 0
    first_kept = np.where(dropped, np.iinfo(np.int64).max, mapped).min(-1, keepdims=True)
    filler = np.where(first_kept == np.iinfo(np.int64).max, 0, first_kept)
    out_values = np.where(dropped, np.asarray(DROPPED_LOGPROB, dtype=values.dtype), values).astype(values.dtype)
    out_indices = np.where(dropped, filler, mapped).astype(np.asarray(indices).dtype)
    return out_values, out_indices, dropped
