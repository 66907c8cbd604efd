"""Keeping credentials out of what the project writes: logs, Events, status, reports and error messages.

The project never formats a key itself; the danger is text that comes back from outside (a teacher endpoint or
a proxy that echoes the request's `Authorization` header in its error body) and goes on into a message. Every
such text passes through `redact` with the keys in use before it is kept. Captured traffic (the router's
`capture`) passes through `redact_patterns`, the user's regular expressions, before it is written.
"""

from __future__ import annotations

import re

MASK = "[redacted]"
# Shorter values are not masked: a one- or two-character "key" would mask ordinary text everywhere.
MIN_SECRET_LENGTH = 4


def redact(text: str, *secrets: str | None) -> str:
    """`text` with every occurrence of each secret (and of its bearer form) replaced by `[redacted]`."""
    for secret in sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def compile_patterns(patterns: list[str], field: str) -> list[re.Pattern[str]]:
    """Regular expressions for `redact_patterns`; a pattern that does not compile raises ValueError naming
    `field`, its position and Python's reason (the spec is refused before anything runs)."""
    compiled = []
    for i, pattern in enumerate(patterns):
        try:
            compiled.append(re.compile(pattern))
        except re.error as error:
            raise ValueError(f"{field}[{i}]: {pattern!r} is not a valid regular expression ({error}); "
                             "fix or remove it") from None
    return compiled


def redact_patterns(text: str, patterns: list[re.Pattern[str]]) -> str:
    """`text` with every match of each pattern replaced by `[redacted]`, in order."""
    for pattern in patterns:
        text = pattern.sub(MASK, text)
    return text
