"""The data stage: read the dataset a job names, check it against the task, split it by seed.

Sources (`dataset.uri`): a jsonl / json / csv / parquet / txt file, a folder of such files, a folder of
`<label>/*.txt` (one document per file, the folder name is the label), a folder of chat YAML files
(`conversations: [[prompt, reply, ...], ...]`, as chatterbot-corpus ships them), a table whose text column
holds a list of messages per row (`[{"role", "content"}, ...]`, see chats.py), `pkg://`, `pvc://`,
`s3://` (fsspec) and `hf://<dataset id>` where the cluster reaches the hub.

Text documents (`.txt`, one per file) have the columns `text` (the whole document), `title` (its first line)
and `body` (the rest), so that a headline and its article can be a prompt and its reference answer.

The split is written as `data/train.jsonl` and `data/eval.jsonl`, one `{"text": str, "label": int}` per
line (`label` indexes `task.labels`; absent for unlabelled data and causal-lm), with `"reference": str`
where dataset.referenceField gives one (causal-lm). A conversation's `text` is
rendered (the chat template of the tokenizer the data is tokenised with) and its `messages` are kept, so that
a teacher can answer it afresh.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubedistill.api.distillationjob import DatasetSpec, DistillationJobSpec
from kubedistill.errors import InputError
from kubedistill.uris import field_errors, local_path, parse_uri
from kubedistill_jobs.chats import ChatRenderer, messages_of, plain_chat, prompt_messages

TABLE_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
CHAT_SUFFIXES = (".yml", ".yaml")


class DataError(InputError):
    """A dataset that cannot be used; the message names the field and the fix."""


@dataclass(frozen=True)
class Split:
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    duplicates: int = 0  # rows dropped because an earlier row had the same text
    dropped: dict[str, int] = field(default_factory=dict)  # rows dropped before the split, by reason
    unlabelled: int = 0  # labelled data: rows kept without a gold label (soft targets only)
    capture_eval: list[dict[str, Any]] = field(default_factory=list)  # dataset.capture: held-out captured rows
    capture: dict[str, Any] | None = None  # dataset.capture: what was read and mixed in


@dataclass(frozen=True)
class Rows:
    """The rows a dataset yields as {"text", "label"?}, and what was dropped on the way, by reason."""

    rows: list[dict[str, Any]]
    read: int  # rows in the source
    dropped: dict[str, int] = field(default_factory=dict)
    unlabelled: int = 0


def _chat_rows(files: Iterable[Path], render: ChatRenderer) -> list[dict[str, Any]]:
    import yaml

    rows = []
    for path in files:
        document = yaml.safe_load(path.read_text(encoding="utf-8", errors="replace")) or {}
        for conversation in document.get("conversations") or []:
            turns = [str(t) for t in (conversation if isinstance(conversation, list) else [conversation])]
            messages = messages_of(turns)
            if messages:
                rows.append({"text": render(messages), "messages": messages})
    return rows


def document_row(text: str) -> dict[str, Any]:
    """A text document's columns: `text`, `title` (its first non-blank line) and `body` (what follows)."""
    title, _, body = text.strip().partition("\n")
    return {"text": text, "title": title.strip(), "body": body.strip()}


def _label_folder_rows(root: Path) -> list[dict[str, Any]]:
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(folder.glob("*.txt")):
            rows.append({**document_row(file.read_text(encoding="utf-8", errors="replace")), "label": folder.name})
    return rows


def _load_table(files: list[str], fmt: str, storage_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    import datasets

    datasets.disable_progress_bars()
    kwargs: dict[str, Any] = {"data_files": files, "split": "train"}
    if storage_options:
        kwargs["storage_options"] = storage_options
    if fmt == "text":
        kwargs["sample_by"] = "line"
    try:
        return _named_rows(datasets.load_dataset(fmt, **kwargs))
    except (ValueError, TypeError, OSError, datasets.exceptions.DatasetGenerationError) as error:
        # mixed types in a column, a broken line: the reader's own words, under the field to fix
        raise DataError(f"dataset.uri: cannot read {', '.join(files)} as {fmt}: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    cause = error.__cause__ or error
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]


def _named_rows(table: Any) -> list[dict[str, Any]]:
    """A datasets table as rows; a ClassLabel column (hub datasets, their parquet files) as its class
    names, so labels are matched by name like any other format's."""
    import datasets

    rows = list(table)
    for name, feature in (getattr(table, "features", None) or {}).items():
        if isinstance(feature, datasets.ClassLabel):
            for row in rows:  # -1 is the hub's "no label"
                value = row.get(name)
                row[name] = feature.int2str(value) if isinstance(value, int) and value >= 0 else None
    return rows


def _folder_rows(root: Path, render: ChatRenderer) -> list[dict[str, Any]]:
    subfolders = [p for p in root.iterdir() if p.is_dir()]
    if subfolders and any(any(p.glob("*.txt")) for p in subfolders):
        return _label_folder_rows(root)
    chats = sorted(p for p in root.rglob("*") if p.suffix in CHAT_SUFFIXES)
    if chats:
        return _chat_rows(chats, render)
    for suffix, fmt in TABLE_FORMATS.items():
        files = sorted(str(p) for p in root.rglob(f"*{suffix}"))
        if files:
            if fmt == "text":  # a folder of plain documents: one example per file
                return [document_row(Path(f).read_text(encoding="utf-8", errors="replace")) for f in files]
            return _load_table(files, fmt)
    raise DataError(
        f"dataset.uri: {root} holds no data: expected <label>/*.txt folders, chat YAML, or "
        f"{', '.join(TABLE_FORMATS)} files"
    )


def read_rows(uri: str, render: ChatRenderer = plain_chat) -> list[dict[str, Any]]:
    """Every row of the dataset at `uri`, as dicts (columns as the source names them)."""
    with field_errors("dataset.uri", DataError):
        parsed = parse_uri(uri)
    if parsed.scheme == "hf":
        import datasets

        datasets.disable_progress_bars()
        try:
            return _named_rows(datasets.load_dataset(parsed.location, split="train"))
        except Exception as error:
            raise DataError(f"dataset.uri: cannot load hub dataset {parsed.location!r}: {error}") from None
    if parsed.scheme == "s3":
        suffix = Path(parsed.location).suffix
        if suffix not in TABLE_FORMATS:
            raise DataError(f"dataset.uri: {uri}: s3 data must be one of {', '.join(TABLE_FORMATS)} files")
        return _load_table([uri], TABLE_FORMATS[suffix], storage_options={})
    with field_errors("dataset.uri", DataError):
        path = local_path(uri)
    if not path.exists():
        raise DataError(f"dataset.uri: {uri}: no such file or folder ({path})")
    if path.is_dir():
        return _folder_rows(path, render)
    if path.suffix in CHAT_SUFFIXES:
        return _chat_rows([path], render)
    if path.suffix not in TABLE_FORMATS:
        raise DataError(f"dataset.uri: {path.name}: unknown format; use {', '.join(TABLE_FORMATS)} or a folder")
    return _load_table([str(path)], TABLE_FORMATS[path.suffix])


def normalise_rows(rows: list[dict[str, Any]], dataset: DatasetSpec, labels: list[str] | None) -> list[dict]:
    """Rows as {"text", "label"?}: checks the text and label fields and maps labels to indices of task.labels."""
    return check_rows(rows, dataset, labels).rows


# Why a row is dropped (the data stage reports each count, and refuses above dataset.maxDroppedFraction).
NO_TEXT = "no text"
NOT_TEXT = "text is not a string"
NOT_UNICODE = "text is not valid Unicode (a lone surrogate)"
NOT_CHAT = "text is a list but not a conversation (a list of {role, content} messages or of strings)"
NO_USER_TURN = "conversation has no user turn to answer"


def row_text(value: Any) -> tuple[str | None, str | None]:
    """(the text, None), or (None, why the row is dropped). Numbers are text (a CSV column of digits);
    a lone surrogate (the JSON escape \\ud800) is refused: no tokenizer or UTF-8 file can hold it."""
    if value is None or (isinstance(value, float) and value != value):  # null, or a CSV's empty cell (NaN)
        return None, NO_TEXT
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None, NOT_TEXT
    text = str(value)
    if not text.strip():
        return None, NO_TEXT
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None, NOT_UNICODE
    return text, None


def label_name(value: Any) -> str | None:
    """A label value as the class name it spells, whatever the file format read it as: the CSV cell 5 is
    "5", 5.0 (an integer column with empty cells) is "5", true is "true"; None for what spells no name."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, float | str):
        return str(value)
    return None


def label_index(value: Any, labels: list[str], encoding: str) -> int | None:
    """The index in `labels` of one label value, or None when it is not one of them.
    `name` (default): matched by the name it spells (case-sensitive; surrounding spaces ignored).
    `index`: a 0-based integer index, as a number or as digits."""
    if encoding == "index":
        name = label_name(value) if not isinstance(value, bool) else None
        if name is None or not name.strip().isdigit():
            return None
        index = int(name)
        return index if index < len(labels) else None
    name = label_name(value)
    if name is None:
        return None
    if name in labels:
        return labels.index(name)
    stripped = name.strip()
    return labels.index(stripped) if stripped in labels else None


def chat_text(value: Any, render: ChatRenderer) -> tuple[str | None, list[dict[str, str]] | None, str | None]:
    """A text column's list value as (rendered text, messages, None), or (None, None, why the row is dropped)."""
    messages = messages_of(value)
    if messages is None:
        return None, None, NOT_CHAT
    if not prompt_messages(messages):
        return None, None, NO_USER_TURN
    return render(messages), messages, None


def check_rows(rows: list[dict[str, Any]], dataset: DatasetSpec, labels: list[str] | None,
               render: ChatRenderer = plain_chat) -> Rows:
    """Rows as {"text", "label"?, "messages"?}, with what was dropped and why. For a causal LM (`labels` None)
    a text column holding a list of messages is a conversation: rendered by `render`, its messages kept.
    Raises DataError for a text or label column that no row has, and for label values that are not classes
    of task.labels."""
    if not rows:
        raise DataError(f"dataset.uri: {dataset.uri} has no rows")
    columns = set().union(*(row.keys() for row in rows if isinstance(row, dict)))
    listed = ", ".join(sorted(map(str, columns))) or "none"
    text_field = dataset.text_field
    if text_field not in columns:
        raise DataError(f"dataset.textField: column {text_field!r} not in the data (columns: {listed})")
    label_field = dataset.label_field if labels is not None else None
    if label_field is not None and label_field not in columns:
        default = " (the default)" if label_field == "label" else ""
        raise DataError(
            f"dataset.labelField: column {label_field!r}{default} not in the data (columns: {listed}); set "
            "labelField to the column that holds the labels, or labelField: null for unlabelled data"
        )
    reference_field = dataset.reference_field
    if reference_field is not None and reference_field not in columns:
        raise DataError(f"dataset.referenceField: column {reference_field!r} not in the data (columns: {listed})")
    index = list(labels or [])
    unknown: dict[str, Any] = {}
    dropped: Counter[str] = Counter()
    elsewhere: Counter[str] = Counter()  # where the text of rows with none is (another key, e.g. `Text`)
    out, unlabelled = [], 0
    for row in rows:
        raw = row.get(text_field) if isinstance(row, dict) else None
        messages = row.get("messages") if isinstance(row, dict) and text_field == "text" else None
        if isinstance(raw, list) and labels is None:  # a causal LM's conversation
            text, messages, why = chat_text(raw, render)
        else:
            text, why = row_text(raw) if isinstance(row, dict) else (None, NOT_TEXT)
        if text is None:
            dropped[why or NO_TEXT] += 1
            if why == NO_TEXT and isinstance(row, dict):
                elsewhere.update(str(k) for k, v in row.items()
                                 if k not in (text_field, label_field) and isinstance(v, str) and v.strip())
            continue
        item: dict[str, Any] = {"text": text}
        if reference_field is not None and (reference := row_text(row.get(reference_field))[0]) is not None:
            item["reference"] = reference
        if isinstance(messages, list):
            item["messages"] = messages
        value = row.get(label_field) if label_field is not None else None
        if label_field is not None and (value is None or (isinstance(value, float) and value != value)):
            unlabelled += 1  # null, or a CSV's empty cell (NaN): a row without a gold label
        elif label_field is not None:
            position = label_index(value, index, dataset.label_encoding)
            if position is None:
                unknown.setdefault(repr(value), value)
                continue
            item["label"] = position
        out.append(item)
    if unknown:
        raise DataError(_unknown_labels(unknown, index, dataset.label_encoding))
    if not out:
        raise DataError(f"dataset.textField: no row of {dataset.uri} has text in {text_field!r}"
                        + _hint(elsewhere))
    reasons = dict(dropped)
    if NO_TEXT in reasons and elsewhere:
        reasons[f"{NO_TEXT} in {text_field!r}{_hint(elsewhere)}"] = reasons.pop(NO_TEXT)
    return Rows(rows=out, read=len(rows), dropped=reasons, unlabelled=unlabelled)


def _hint(elsewhere: Counter[str]) -> str:
    if not elsewhere:
        return ""
    return f" (those rows have text under {', '.join(repr(k) for k, _ in elsewhere.most_common(3))})"


def _unknown_labels(unknown: dict[str, Any], labels: list[str], encoding: str) -> str:
    shown = ", ".join(sorted(unknown)[:10])
    if encoding == "index":
        return (f"dataset.labelField: label values that are not indices 0..{len(labels) - 1} of task.labels: "
                f"{shown} (dataset.labelEncoding: index); use labelEncoding: name for class names")
    hint = ""
    values = list(unknown.values())
    if all(label_index(v, labels, "index") is not None for v in values):
        hint = "; if these are indices into task.labels, set dataset.labelEncoding: index"
    return (f"dataset.labelField: labels in the data that are not in task.labels: {shown} "
            f"(task.labels: {', '.join(labels)}){hint}")


def check_dropped(found: Rows, dataset: DatasetSpec) -> None:
    """Refuse a dataset that lost more than dataset.maxDroppedFraction of its rows (silently smaller data
    trains a different model than the one asked for)."""
    total = sum(found.dropped.values())
    if found.read and total / found.read > dataset.max_dropped_fraction:
        reasons = "; ".join(f"{count} {why}" for why, count in sorted(found.dropped.items(), key=lambda x: -x[1]))
        raise DataError(
            f"dataset.maxDroppedFraction: {total} of {found.read} rows ({total / found.read:.1%}) were dropped, "
            f"more than {dataset.max_dropped_fraction:g}: {reasons}; fix those rows (or dataset.textField), or "
            "raise maxDroppedFraction"
        )


def deduplicate(rows: list[dict]) -> list[dict]:
    """The first row of each text: a text in both splits would be scored on what was trained on."""
    seen: set[str] = set()
    unique = []
    for row in rows:
        if row["text"] not in seen:
            seen.add(row["text"])
            unique.append(row)
    return unique


def split_rows(rows: list[dict], dataset: DatasetSpec, seed: int) -> Split:
    """Drop repeated texts, shuffle by seed, keep at most dataset.maxSamples, hold out dataset.evalFraction."""
    unique = deduplicate(rows)
    duplicates = len(rows) - len(unique)
    rows = unique
    random.Random(seed).shuffle(rows)
    if dataset.max_samples is not None:
        rows = rows[: dataset.max_samples]
    n_eval = round(len(rows) * dataset.eval_fraction)
    split = Split(train=rows[n_eval:], eval=rows[:n_eval], duplicates=duplicates)
    if not split.eval:
        raise DataError(
            f"dataset.evalFraction: {dataset.eval_fraction} of {len(rows)} rows"
            f"{f' ({duplicates} repeated texts dropped)' if duplicates else ''} leaves the eval split empty; "
            "raise evalFraction or add data"
        )
    if not split.train:
        raise DataError(f"dataset.evalFraction: {dataset.eval_fraction} of {len(rows)} rows leaves no training rows")
    return split


def load_split(spec: DistillationJobSpec, render: ChatRenderer = plain_chat) -> Split:
    """The job's data, checked and split (raises DataError naming the field)."""
    labels = spec.task.labels if spec.task.type == "sequence-classification" else None
    found = check_rows(read_rows(spec.dataset.uri, render), spec.dataset, labels, render)
    check_dropped(found, spec.dataset)
    split = split_rows(found.rows, spec.dataset, spec.training.seed)
    split = Split(train=split.train, eval=split.eval, duplicates=split.duplicates, dropped=found.dropped,
                  unlabelled=found.unlabelled)
    if spec.dataset.capture is not None:
        split = with_capture(split, spec, render)
    if spec.training.batch_size > len(split.train):
        raise DataError(
            f"training.batchSize: {spec.training.batch_size} is larger than the training split "
            f"({len(split.train)} rows); lower batchSize or add data"
        )
    return split


def with_capture(split: Split, spec: DistillationJobSpec, render: ChatRenderer) -> Split:
    """The split with captured traffic mixed into its training rows by dataset.capture.ratio, and the held-out
    captured rows beside it. No text is both trained on and scored: captured texts in the eval split are not
    trained on, original training rows whose text is held out from the capture are removed."""
    from kubedistill_jobs import captured

    capture = spec.dataset.capture
    assert capture is not None
    records, files, skipped = captured.read_records(capture)
    found = captured.captured_rows(spec, records, render)
    held_out = {r["text"] for r in found.eval}
    scored = {r["text"] for r in split.eval} | held_out
    usable = [r for r in found.train if r["text"] not in scored]
    original = [r for r in split.train if r["text"] not in held_out]
    if capture.ratio > 0 and not usable:
        raise DataError(f"dataset.capture.uri: all {len(found.train)} captured training rows are also in the eval "
                        "split; capture other traffic, or set dataset.capture.ratio: 0 to compare only")
    train, used = captured.mix(original, usable, capture.ratio, spec.training.seed)
    stats = {"uri": capture.uri, "files": files, "records": found.read, "unreadable_lines": skipped,
             "dropped": found.dropped, "train_distinct": len(usable), "train_rows": used,
             "share": round(used / len(train), 4) if train else 0.0, "eval": len(found.eval),
             "in_eval_split": len(found.train) - len(usable), "original_removed": len(split.train) - len(original)}
    return Split(train=train, eval=split.eval, duplicates=split.duplicates, dropped=split.dropped,
                 unlabelled=split.unlabelled, capture_eval=found.eval, capture=stats)


def count_truncated(tokenizer: Any, texts: list[str], max_length: int, batch: int = 1024) -> int:
    """How many texts have more tokens than max_length (special tokens included): those are cut to it."""
    count = 0
    for start in range(0, len(texts), batch):
        encoded = tokenizer(texts[start:start + batch], truncation=False, verbose=False)["input_ids"]
        count += sum(len(ids) > max_length for ids in encoded)
    return count


def write_jsonl(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
