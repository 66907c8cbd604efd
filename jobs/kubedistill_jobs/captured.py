"""Captured traffic as training and comparison rows (`dataset.capture`).

The router's records (kubedistill.capture) become rows the data stage mixes into the split:
- sequence-classification: `{"text", "label"}` with the teacher's label from serving as the label (the
  hard-label term trains on it; the job's own teacher gives soft targets as for every row), and, for the
  held-out share, `served_label` (what the serving student answered) and `served_version`.
- causal-lm: `{"text"}`, the prompt (or the chat, rendered like the dataset's conversations) followed by
  the teacher's answer; the held-out share keeps `prompt`, `teacher_text` and `served_text`.

Captured texts that are also in the original eval split are left out of training (a text scored on what was
trained on), and original training rows whose text is in the held-out capture are removed.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from kubedistill.api.distillationjob import CaptureDataSpec, DistillationJobSpec
from kubedistill.capture import CaptureRecord, is_capture_file, parse_capture_lines, read_capture_folder
from kubedistill.errors import InputError
from kubedistill.uris import field_errors, local_path, parse_uri


class CaptureError(InputError):
    """Captured traffic that cannot be used; the message names the field and the fix."""


@dataclass(frozen=True)
class CapturedRows:
    train: list[dict[str, Any]]  # distinct captured training rows (before the ratio repeats them)
    eval: list[dict[str, Any]]  # held out for the comparison with the served student
    read: int  # records found
    dropped: dict[str, int] = field(default_factory=dict)  # records not used, by reason
    files: int = 0


def read_records(spec: CaptureDataSpec) -> tuple[list[CaptureRecord], int, int]:
    """(records, files, lines that did not parse) at `dataset.capture.uri`: a local folder or s3://."""
    if spec.uri is None:
        raise CaptureError("dataset.capture.studentDeploymentRef: the operator resolves it to the deployment's "
                           "spec.router.capture.uri in a cluster; locally, set dataset.capture.uri instead")
    with field_errors("dataset.capture.uri", CaptureError):
        scheme = parse_uri(spec.uri).scheme
    if scheme == "s3":
        import fsspec

        fs, root = fsspec.core.url_to_fs(spec.uri)
        names = sorted(p for p in fs.ls(root, detail=False) if is_capture_file(p.rsplit("/", 1)[-1]))
        records: list[CaptureRecord] = []
        skipped = 0
        for name in names:
            found, bad = parse_capture_lines(fs.cat(name).decode("utf-8", errors="replace").splitlines())
            records += found
            skipped += bad
        return records, len(names), skipped
    with field_errors("dataset.capture.uri", CaptureError):
        folder = local_path(spec.uri)
    if not folder.is_dir():
        raise CaptureError(f"dataset.capture.uri: {spec.uri}: no such folder ({folder}); point it at the folder "
                           "the router's capture.uri names")
    read = read_capture_folder(folder)
    return read.records, read.files, read.skipped


def captured_rows(spec: DistillationJobSpec, records: list[CaptureRecord], render: Any) -> CapturedRows:
    """The records as rows, deduplicated by text, split by training.seed into training and held-out rows."""
    capture = spec.dataset.capture
    assert capture is not None
    task = spec.task.type
    labels = spec.task.labels or []
    dropped: Counter[str] = Counter()
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for record in records:
        if record.task != task:
            dropped[f"a {record.task} record (the job is {task})"] += 1
            continue
        row = _classification_row(record, labels) if task == "sequence-classification" else \
            _generation_row(record, render)
        if row is None:
            dropped["teacher answer missing or not in task.labels"] += 1
            continue
        if row["text"] in seen:
            dropped["repeated text"] += 1
            continue
        seen.add(row["text"])
        rows.append(row)
    if not rows:
        reasons = "; ".join(f"{n} {why}" for why, n in dropped.items()) or "no records"
        raise CaptureError(f"dataset.capture.uri: {capture.uri} holds no usable captured rows ({reasons}); check "
                           "that the router's capture is on and that traffic was escalated")
    random.Random(spec.training.seed).shuffle(rows)
    n_eval = max(1, round(len(rows) * capture.eval_fraction))
    if n_eval >= len(rows) and capture.ratio > 0:
        raise CaptureError(f"dataset.capture.evalFraction: {capture.eval_fraction} of {len(rows)} captured rows "
                           "leaves none for training; capture more traffic or lower evalFraction")
    return CapturedRows(train=rows[n_eval:], eval=rows[:n_eval], read=len(records), dropped=dict(dropped))


def _classification_row(record: CaptureRecord, labels: list[str]) -> dict[str, Any] | None:
    label = record.teacher.label
    if record.text is None or label not in labels:
        return None
    served = record.student.label
    return {"text": record.text, "label": labels.index(label),
            "served_label": labels.index(served) if served in labels else None,
            "served_version": record.model_version}


def _generation_row(record: CaptureRecord, render: Any) -> dict[str, Any] | None:
    answer = record.teacher.text
    if not answer:
        return None
    if record.messages is not None:
        turns = [str(m.get("content", "")) for m in record.messages if m.get("role") != "system"]
        prompt = render(turns)
        text = render([*turns, answer])
    elif record.text is not None:
        prompt, text = record.text, record.text + answer
    else:
        return None
    return {"text": text, "prompt": prompt, "teacher_text": answer, "served_text": record.student.text or "",
            "served_version": record.model_version}


def mix(original: list[dict[str, Any]], captured: list[dict[str, Any]], ratio: float,
        seed: int) -> tuple[list[dict[str, Any]], int]:
    """Training rows in which `ratio` of the rows are captured ones; returns (rows, captured rows used).

    Every original row is kept; the captured rows are repeated (whole passes, then a seeded sample) or
    sampled down to round(ratio / (1 - ratio) × len(original)). Ratio 1 is the captured rows alone, once."""
    training = [{"text": r["text"], **({"label": r["label"]} if "label" in r else {})} for r in captured]
    if ratio <= 0 or not training:
        return list(original), 0
    if ratio >= 1:
        chosen = training
        original = []
    else:
        wanted = round(ratio / (1 - ratio) * len(original))
        rng = random.Random(seed)
        whole, rest = divmod(wanted, len(training))
        chosen = training * whole + rng.sample(training, rest)
    rows = list(original) + chosen
    random.Random(seed + 1).shuffle(rows)
    return rows, len(chosen)
