"""Training checkpoints in the job's output: a folder per checkpoint with the loop's whole state
(`state.pt`: model, optimizer, schedule, step, history), its step (`step.json`) and, in the final one,
the student's weights (`model/`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STATE_FILE = "state.pt"
STEP_FILE = "step.json"
MODEL_DIR = "model"


def save_checkpoint(folder: Path, state: dict[str, Any], model: Any | None = None) -> None:
    import torch

    torch.save(state, folder / STATE_FILE)
    (folder / STEP_FILE).write_text(json.dumps({"step": state["step"]}))
    if model is not None:
        model.save_pretrained(folder / MODEL_DIR, safe_serialization=True)


def checkpoint_step(folder: Path) -> int:
    return int(json.loads((folder / STEP_FILE).read_text())["step"])


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint with the highest step under `root` (a rerun resumes from it)."""
    best: tuple[int, Path] | None = None
    for marker in root.rglob(STEP_FILE) if root.exists() else []:
        try:
            step = checkpoint_step(marker.parent)
        except (ValueError, KeyError):
            continue
        if (marker.parent / STATE_FILE).is_file() and (best is None or step > best[0]):
            best = (step, marker.parent)
    return best[1] if best else None
