"""Keeping credentials out of what the project writes: logs, Events, status, reports and error messages.

The project never formats a key itself; the danger is text that comes back from outside (a teacher endpoint or
a proxy that echoes the request's `Authorization` header in its error body) and goes on into a message. Every
such text passes through `redact` with the keys in use before it is kept.
"""

from __future__ import annotations

MASK = "[redacted]"
# Shorter values are not masked: a one- or two-character "key" would mask ordinary text everywhere.
MIN_SECRET_LENGTH = 4


def redact(text: str, *secrets: str | None) -> str:
    """`text` with every occurrence of each secret (and of its bearer form) replaced by `[redacted]`."""
    for secret in sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
