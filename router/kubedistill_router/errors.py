"""Errors a request can end in, each with its HTTP status; the app turns them into JSON answers."""

from __future__ import annotations


class RouterError(Exception):
    status = 500
    headers: dict[str, str] = {}  # noqa: RUF012 - overridden per class, never mutated

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequest(RouterError):
    """The request itself is wrong: the message names the field and what is expected."""

    status = 400


class PayloadTooLarge(RouterError):
    status = 413


class NotFound(RouterError):
    status = 404


class TooManyRequests(RouterError):
    status = 429
    headers = {"Retry-After": "1"}  # noqa: RUF012


class Unavailable(RouterError):
    """Triton (the student) cannot answer: the pod is not ready to serve."""

    status = 503
    headers = {"Retry-After": "5"}  # noqa: RUF012


class UpstreamError(Exception):
    """A call to Triton or a teacher failed or timed out (`reason`: timeout | error)."""

    def __init__(self, message: str, reason: str = "error"):
        super().__init__(message)
        self.reason = reason
