"""The finished batches of a long map over rows, kept on disk as they finish, so that a rerun after an interruption
maps only the rows still missing: a teacher's answers cost minutes of generation, or an API's tokens.

One folder per map: `journal.json` (what the map is: a fingerprint of its settings and rows) and one
`batch-*.npz` per finished batch (its output arrays, with the rows' `idx`). A journal of another map (other
settings, other rows) is cleared, never mixed in.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

META = "journal.json"


def fingerprint(settings: str, rows: Mapping[str, Sequence[Any]]) -> str:
    """sha256 of the map's settings (a stable text: a dataclass's repr) and every row's values, column by column."""
    digest = hashlib.sha256(settings.encode())
    for key in sorted(rows):
        digest.update(f"\0{key}\0{len(rows[key])}".encode())
        for value in rows[key]:
            digest.update(b"\0" + str(value).encode())
    return digest.hexdigest()


class BatchJournal:
    """The batches of one map (`key`, from `fingerprint`) finished so far, in `folder`."""

    def __init__(self, folder: Path, key: str) -> None:
        self.folder, self.key = folder, key

    def load(self, per_row: int = 1) -> list[dict[str, np.ndarray]]:
        """The finished batches of this map; none (and the folder cleared) when it holds another map's. A row with
        fewer than its `per_row` outputs (split across batches, the run stopped between them) is left out, and
        out of the folder too, so that mapping it again leaves it with exactly `per_row`."""
        meta = self.folder / META
        try:
            same = json.loads(meta.read_text()).get("key") == self.key
        except (OSError, ValueError):
            same = False
        if not same:
            self.clear()
            self.folder.mkdir(parents=True, exist_ok=True)
            meta.write_text(json.dumps({"key": self.key}))
            return []
        batches = []
        for path in sorted(self.folder.glob("batch-*.npz")):
            try:
                with np.load(path, allow_pickle=True) as stored:  # object columns (texts): our own files
                    batches.append({name: stored[name] for name in stored.files})
            except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # cut short by a lost node: map it again
                path.unlink(missing_ok=True)
        kept = complete_rows(batches, per_row)
        if sum(len(b["idx"]) for b in kept) < sum(len(b["idx"]) for b in batches):
            for path in self.folder.glob("batch-*.npz"):
                path.unlink()
            for batch in kept:
                self.add(batch)
        return kept

    def add(self, batch: Mapping[str, np.ndarray]) -> None:
        """Keep one finished batch (written whole and synced, then renamed: an interrupted write leaves no
        batch)."""
        name = f"batch-{uuid.uuid4().hex}"
        partial = self.folder / f".{name}.npz"
        with partial.open("wb") as out:
            np.savez(out, **batch)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, self.folder / f"{name}.npz")

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def complete_rows(batches: list[dict[str, np.ndarray]], per_row: int) -> list[dict[str, np.ndarray]]:
    """The journaled batches without the outputs of an input row that has fewer than `per_row` of them (its
    outputs were split across batches and the run stopped between them)."""
    counts: dict[int, int] = {}
    for batch in batches:
        for i in batch["idx"]:
            counts[int(i)] = counts.get(int(i), 0) + 1
    complete = {i for i, count in counts.items() if count == per_row}
    kept = []
    for batch in batches:
        whole = np.isin(batch["idx"], list(complete))
        if whole.any():
            kept.append({name: values[whole] for name, values in batch.items()})
    return kept
