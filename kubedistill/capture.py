"""Captured traffic: what the router records (`router.capture`) and a job reads back (`dataset.capture`).

    <capture uri>/
      capture-<UTC time>-<writer>-<n>.jsonl    one CaptureRecord per line; <writer> is the router's host
                                               name, so replicas sharing a volume never write the same file

A file is appended to until it is rotated, so its last line may be cut short by a crash or a full disk:
readers skip lines that do not parse and say how many. Texts and answers are redacted before they are
written (`router.capture.redact`); a reader never sees the original.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

CAPTURE_PREFIX = "capture-"
CAPTURE_SUFFIX = ".jsonl"
CaptureKind = Literal["escalated", "shadow-disagreement"]


class CapturedAnswer(BaseModel):
    """One model's answer: a label (classification) or a text (generation), and its confidence."""

    model_config = ConfigDict(extra="forbid")

    label: str | None = None
    text: str | None = None
    confidence: float | None = Field(default=None, description="The router's confidence signal, 0-1.")


class CaptureRecord(BaseModel):
    """One captured request."""

    model_config = ConfigDict(extra="forbid")

    v: Literal[1] = 1
    time: float = Field(description="When it was answered, seconds since the epoch (UTC).")
    kind: CaptureKind
    task: Literal["sequence-classification", "causal-lm"]
    model: str = Field(description="The served model's name.")
    model_version: str = Field(description="Version of the student that answered (serving.json).")
    text: str | None = Field(default=None, description="Classification: the instance; completions: the prompt.")
    messages: list[dict[str, Any]] | None = Field(default=None, description="Chat completions: the messages.")
    student: CapturedAnswer = Field(description="What the served student answered.")
    teacher: CapturedAnswer = Field(description="What the teacher answered: the training target.")

    def to_line(self) -> str:
        return json.dumps(self.model_dump(mode="json", exclude_none=True), ensure_ascii=False) + "\n"


def capture_file_name(started: float, writer: str, index: int) -> str:
    """A new file's name: sorting names sorts files by when they were started."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    return f"{CAPTURE_PREFIX}{stamp}-{writer}-{index:06d}{CAPTURE_SUFFIX}"


def is_capture_file(name: str) -> bool:
    return name.startswith(CAPTURE_PREFIX) and name.endswith(CAPTURE_SUFFIX)


@dataclass(frozen=True)
class CaptureRead:
    records: list[CaptureRecord]
    files: int
    skipped: int  # lines that did not parse (a file cut short) or are not records


def parse_capture_lines(lines: Iterable[str]) -> tuple[list[CaptureRecord], int]:
    records, skipped = [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            records.append(CaptureRecord.model_validate_json(line))
        except ValidationError:
            skipped += 1
    return records, skipped


def read_capture_folder(folder: Path) -> CaptureRead:
    """Every record in the capture files of a local folder, oldest file first."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_capture_file(p.name))
    records: list[CaptureRecord] = []
    skipped = 0
    for path in files:
        found, bad = parse_capture_lines(path.read_text(encoding="utf-8", errors="replace").splitlines())
        records += found
        skipped += bad
    return CaptureRead(records=records, files=len(files), skipped=skipped)
