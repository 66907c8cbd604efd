"""The names of the confidence signals, without numpy: the API models and the artifact layout (which the operator
imports) need the names only; kubedistill.confidence computes them."""

from __future__ import annotations

from typing import Literal

Signal = Literal["max-probability", "margin", "entropy", "token-quantile", "min-token-probability", "mean-logprob"]
SIGNALS: tuple[Signal, ...] = ("max-probability", "margin", "entropy")
# Signals of a generated answer, from the log-probabilities of its own tokens (causal LM).
GENERATION_SIGNALS: tuple[Signal, ...] = ("token-quantile", "min-token-probability", "mean-logprob")
TOKEN_QUANTILE = 0.1  # the low quantile of token probabilities that "token-quantile" takes
