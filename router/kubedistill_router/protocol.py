"""The KServe v1 protocol for classification: request validation and response shapes.

    POST /v1/models/{name}:predict   {"instances": ["text", ...]}
      → {"predictions": [{"label": ..., "confidence": ..., "served_by": "student" | "teacher"}, ...]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from kubedistill_router.errors import BadRequest, PayloadTooLarge

MAX_BODY_BYTES = web.AppKey("max_body_bytes", int)
# Who served a request (student, teacher, mixed), for the request metrics; typed keys where aiohttp has them.
SERVED_BY: Any = web.RequestKey("served_by", str) if hasattr(web, "RequestKey") else "served_by"


@dataclass(frozen=True)
class Prediction:
    label: str
    confidence: float | None  # the configured confidence signal of the model that answered
    served_by: str  # "student" | "teacher"
    degraded: bool = False  # the teacher should have answered but could not

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"label": self.label, "confidence": self.confidence, "served_by": self.served_by}
        if self.degraded:
            body["degraded"] = True
        return body


def json_body(value: Any, status: int = 200) -> web.Response:
    """A JSON response serialised by orjson (several times faster than the json module)."""
    return web.Response(body=orjson.dumps(value), status=status, content_type="application/json", charset="utf-8")


async def read_body(request: web.Request) -> bytes:
    """The body, refused before it is read when it is over the limit."""
    limit = request.app[MAX_BODY_BYTES]
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body of {request.content_length} bytes is over the limit of {limit} bytes")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"request body is over the limit of {limit} bytes") from None


def parse_json(body: bytes) -> Any:
    """The body's JSON value: orjson on the hot path; the standard library names the problem when it fails,
    and accepts what it accepts (NaN, integers over 64 bits), so orjson changes speed, not behaviour."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("request body is not UTF-8 text") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise BadRequest(f"request body is not valid JSON: {error.msg} at line {error.lineno} "
                         f"column {error.colno}") from None


def parse_instances(payload: Any, max_instances: int) -> list[str]:
    """`{"instances": [str, ...]}` → the texts, or a 400 that names what is wrong."""
    if not isinstance(payload, dict):
        raise BadRequest(f'request body must be a JSON object {{"instances": [...]}}, got {_kind(payload)}')
    if "instances" not in payload:
        raise BadRequest('missing field "instances": send {"instances": ["text", ...]}')
    instances = payload["instances"]
    if not isinstance(instances, list):
        raise BadRequest(f'"instances" must be a list of strings, got {_kind(instances)}')
    if not instances:
        raise BadRequest('"instances" is empty: send at least one text')
    if len(instances) > max_instances:
        raise BadRequest(f'"instances" has {len(instances)} items, more than the limit of {max_instances}: '
                         "split the request")
    for index, item in enumerate(instances):
        if not isinstance(item, str):
            raise BadRequest(f'"instances"[{index}] must be a string, got {_kind(item)}')
        if not item.strip():
            raise BadRequest(f'"instances"[{index}] is empty: each instance needs some text')
        if not item.isascii():
            check_unicode(item, f'"instances"[{index}]')
    return instances


def check_unicode(text: str, name: str) -> None:
    """Refuse text no tokenizer can take: JSON lets a string hold a lone surrogate (the escape \\ud800),
    which is no character and cannot be encoded as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise BadRequest(f"{name} is not valid Unicode text: it holds a lone surrogate "
                         f"(\\u{ord(text[error.start]):04x} at character {error.start}); send UTF-8 text") from None


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
