"""Confidence signals of a classifier's probabilities: one definition for the router and the evaluation.

Each maps a batch of class distributions, shape (batch, classes), to a confidence in [0, 1], higher
meaning surer. The router escalates an item when its confidence is *below* the threshold, and the
evaluation's routing frontier sweeps that same threshold, so the two always agree.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

Signal = Literal["max-probability", "margin", "entropy"]
SIGNALS: tuple[Signal, ...] = ("max-probability", "margin", "entropy")


def softmax(logits: npt.ArrayLike, axis: int = -1) -> npt.NDArray[np.float64]:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def confidence(probs: npt.ArrayLike, signal: Signal) -> npt.NDArray[np.float64]:
    """Confidence per row: the top probability, the gap between the top two, or 1 − normalised entropy."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"expected probabilities of shape (batch, classes >= 2), got {p.shape}")
    if signal == "max-probability":
        return p.max(axis=1)
    if signal == "margin":
        top2 = np.sort(p, axis=1)[:, -2:]
        return top2[:, 1] - top2[:, 0]
    if signal == "entropy":
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
        return np.clip(1.0 - h / np.log(p.shape[1]), 0.0, 1.0)
    raise ValueError(f"unknown confidence signal {signal!r}; expected one of {', '.join(SIGNALS)}")


def escalate(probs: npt.ArrayLike, signal: Signal, threshold: float) -> npt.NDArray[np.bool_]:
    """Which rows go to the teacher: confidence strictly below the threshold."""
    return confidence(probs, signal) < threshold
