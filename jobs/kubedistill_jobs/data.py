"""The data stage: read the dataset a job names, check it against the task, split it by seed.

Sources (`dataset.uri`): a jsonl / json / csv / parquet / txt file, a folder of such files, a folder of
`<label>/*.txt` (one document per file, the folder name is the label), a folder of chat YAML files
(`conversations: [[prompt, reply, ...], ...]`, as chatterbot-corpus ships them), `pkg://`, `pvc://`,
`s3://` (fsspec) and `hf://<dataset id>` where the cluster reaches the hub.

The split is written as `data/train.jsonl` and `data/eval.jsonl`, one `{"text": str, "label": int}` per
line (`label` indexes `task.labels`; absent for unlabelled data and causal-lm).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubedistill.api.distillationjob import DatasetSpec, DistillationJobSpec
from kubedistill.errors import InputError
from kubedistill.uris import UriError, local_path, parse_uri

TABLE_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
CHAT_SUFFIXES = (".yml", ".yaml")
# Renders one conversation (alternating user/assistant turns) as training text, e.g. a chat template.
ChatRenderer = Callable[[list[str]], str]


class DataError(InputError):
    """A dataset that cannot be used; the message names the field and the fix."""


@dataclass(frozen=True)
class Split:
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    duplicates: int = 0  # rows dropped because an earlier row had the same text


def plain_chat(turns: list[str]) -> str:
    """A conversation as text when the teacher's tokenizer has no chat template."""
    roles = ("User", "Assistant")
    return "\n".join(f"{roles[i % 2]}: {turn}" for i, turn in enumerate(turns))


def _chat_rows(files: Iterable[Path], render: ChatRenderer) -> list[dict[str, Any]]:
    import yaml

    rows = []
    for path in files:
        document = yaml.safe_load(path.read_text(encoding="utf-8", errors="replace")) or {}
        for conversation in document.get("conversations") or []:
            turns = [str(t).strip() for t in (conversation if isinstance(conversation, list) else [conversation])]
            turns = [t for t in turns if t]
            if turns:
                rows.append({"text": render(turns)})
    return rows


def _label_folder_rows(root: Path) -> list[dict[str, Any]]:
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(folder.glob("*.txt")):
            rows.append({"text": file.read_text(encoding="utf-8", errors="replace"), "label": folder.name})
    return rows


def _load_table(files: list[str], fmt: str, storage_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    import datasets

    datasets.disable_progress_bars()
    kwargs: dict[str, Any] = {"data_files": files, "split": "train"}
    if storage_options:
        kwargs["storage_options"] = storage_options
    if fmt == "text":
        kwargs["sample_by"] = "line"
    return list(datasets.load_dataset(fmt, **kwargs))


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
                return [{"text": Path(f).read_text(encoding="utf-8", errors="replace")} for f in files]
            return _load_table(files, fmt)
    raise DataError(
        f"dataset.uri: {root} holds no data: expected <label>/*.txt folders, chat YAML, or "
        f"{', '.join(TABLE_FORMATS)} files"
    )


def read_rows(uri: str, render: ChatRenderer = plain_chat) -> list[dict[str, Any]]:
    """Every row of the dataset at `uri`, as dicts (columns as the source names them)."""
    try:
        parsed = parse_uri(uri)
    except UriError as error:
        raise DataError(f"dataset.uri: {error}") from None
    if parsed.scheme == "hf":
        import datasets

        datasets.disable_progress_bars()
        try:
            return list(datasets.load_dataset(parsed.location, split="train"))
        except Exception as error:
            raise DataError(f"dataset.uri: cannot load hub dataset {parsed.location!r}: {error}") from None
    if parsed.scheme == "s3":
        suffix = Path(parsed.location).suffix
        if suffix not in TABLE_FORMATS:
            raise DataError(f"dataset.uri: {uri}: s3 data must be one of {', '.join(TABLE_FORMATS)} files")
        return _load_table([uri], TABLE_FORMATS[suffix], storage_options={})
    try:
        path = local_path(uri)
    except UriError as error:
        raise DataError(f"dataset.uri: {error}") from None
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
    if not rows:
        raise DataError(f"dataset.uri: {dataset.uri} has no rows")
    columns = set(rows[0])
    text_field = dataset.text_field
    if text_field not in columns:
        raise DataError(
            f"dataset.textField: column {text_field!r} not in the data (columns: {', '.join(sorted(columns))})"
        )
    label_field = dataset.label_field if labels is not None else None
    if label_field is not None and label_field not in columns:
        if label_field == "label" and "label" not in columns:
            label_field = None  # the default field on unlabelled data: train on soft targets only
        else:
            raise DataError(
                f"dataset.labelField: column {label_field!r} not in the data (columns: {', '.join(sorted(columns))}); "
                "set labelField: null for unlabelled data"
            )
    index = {name: i for i, name in enumerate(labels or [])}
    unknown: set[str] = set()
    out = []
    for row in rows:
        text = row.get(text_field)
        if text is None or not str(text).strip():
            continue
        item: dict[str, Any] = {"text": str(text)}
        if label_field is not None and row.get(label_field) is not None:
            value = row[label_field]
            if isinstance(value, bool) or not isinstance(value, int | str):
                unknown.add(repr(value))
                continue
            if isinstance(value, int):
                if not 0 <= value < len(index):
                    unknown.add(str(value))
                    continue
                item["label"] = value
            elif value in index:
                item["label"] = index[value]
            elif value.strip().lstrip("-").isdigit() and 0 <= int(value) < len(index):
                item["label"] = int(value)
            else:
                unknown.add(value)
                continue
        out.append(item)
    if unknown:
        shown = ", ".join(sorted(unknown)[:10])
        raise DataError(
            f"dataset.labelField: labels in the data that are not in task.labels: {shown} "
            f"(task.labels: {', '.join(labels or [])})"
        )
    if not out:
        raise DataError(f"dataset.textField: every row of {dataset.uri} has an empty {text_field!r}")
    return out


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
    rows = normalise_rows(read_rows(spec.dataset.uri, render), spec.dataset, labels)
    split = split_rows(rows, spec.dataset, spec.training.seed)
    if spec.training.batch_size > len(split.train):
        raise DataError(
            f"training.batchSize: {spec.training.batch_size} is larger than the training split "
            f"({len(split.train)} rows); lower batchSize or add data"
        )
    return split


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
