"""Confidence signals of a classifier's probabilities: one definition for the router and the evaluation.

Each maps a batch of class distributions, shape (batch, classes), to a confidence in [0, 1], higher
meaning surer. The router escalates an item when its confidence is *below* the threshold, and the
evaluation's routing frontier sweeps that same threshold, so the two always agree.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from kubedistill.signals import GENERATION_SIGNALS, SIGNALS, TOKEN_QUANTILE, Signal

__all__ = ["GENERATION_SIGNALS", "SIGNALS", "TOKEN_QUANTILE", "Signal", "answer_confidence", "confidence", "escalate",
           "softmax"]


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
        top2 = np.partition(p, -2, axis=1)[:, -2:]  # the two largest, the larger last (no sort of a vocabulary)
        return top2[:, 1] - top2[:, 0]
    if signal == "entropy":
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
        return np.clip(1.0 - h / np.log(p.shape[1]), 0.0, 1.0)
    raise ValueError(f"unknown confidence signal {signal!r}; expected one of {', '.join(SIGNALS)}")


def escalate(probs: npt.ArrayLike, signal: Signal, threshold: float) -> npt.NDArray[np.bool_]:
    """Which rows go to the teacher: confidence strictly below the threshold."""
    return confidence(probs, signal) < threshold


def answer_confidence(logprobs: npt.ArrayLike, signal: Signal, quantile: float = TOKEN_QUANTILE) -> float:
    """Confidence in [0, 1] of one generated answer from its tokens' log-probabilities (natural log, shape (T,)).

    `token-quantile`: the `quantile` (default 0.1) of the token probabilities, not length-biased;
    `min-token-probability`: the least probable token; `mean-logprob`: exp(mean log-probability), the
    geometric mean probability (length-biased: one bad token weighs less in a long answer). An empty
    answer has confidence 1 (nothing to doubt). Raises ValueError for another signal.
    """
    lp = np.asarray(logprobs, dtype=np.float64).reshape(-1)
    if signal not in GENERATION_SIGNALS:
        raise ValueError(f"confidence signal {signal!r} is not one for generated answers; expected one of "
                         f"{', '.join(GENERATION_SIGNALS)}")
    if lp.size == 0:
        return 1.0
    if signal == "token-quantile":
        # "lower": an actual token's probability, so that the threshold compares with a real value.
        return float(np.quantile(np.exp(lp), quantile, method="lower"))
    if signal == "min-token-probability":
        return float(np.exp(lp.min()))
    return float(np.exp(lp.mean()))
