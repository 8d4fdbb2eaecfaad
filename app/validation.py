"""The input contract, enforced once: every door (HTTP schemas, MemoryService) calls these.

Each check raises ``ValidationError`` naming the field, so bad input is a 4xx that loses
nothing, never a driver error: Postgres text cannot hold NUL, UTF-8 cannot encode a lone
surrogate, bigint stops at 2^63 - 1, jsonb refuses NaN, and deep JSON exhausts recursion.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from app.domain import MAX_PAGE
from app.errors import ValidationError

MAX_USER_ID = 128
MAX_BIGINT = 2**63 - 1
# C0 and C1 controls, DEL, and the separators an entity key or a log line relies on.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# A user id as the OpenAPI document states it (ECMA-262, no look-around): printable, and not
# only white space.
_PRINTABLE = r"[^\x00-\x1f\x7f-\x9f\u2028\u2029]"
_VISIBLE = r"[^\s\x00-\x1f\x7f-\x9f\u2028\u2029]"
USER_ID_PATTERN = f"^{_PRINTABLE}*{_VISIBLE}{_PRINTABLE}*$"


@dataclass(frozen=True)
class MetadataLimits:
    """Bounds of a metadata object (and of a metadata filter)."""

    max_bytes: int = 16 * 1024  # serialized as compact JSON, UTF-8
    max_depth: int = 16  # the object itself is depth 1
    max_keys: int = 256  # keys at every level together


def check_text(value: object, field: str, *, max_chars: int | None = None,
               allow_blank: bool = False) -> str:
    """A string Postgres and UTF-8 can hold: no NUL, no lone surrogate, within ``max_chars``."""
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be a string", field)
    if not allow_blank and not value.strip():
        raise ValidationError(f"{field} must not be empty or whitespace", field)
    if max_chars is not None and len(value) > max_chars:
        raise ValidationError(f"{field} is longer than {max_chars} characters", field)
    if "\x00" in value:
        raise ValidationError(f"{field} must not contain NUL characters", field)
    if _SURROGATE.search(value):
        raise ValidationError(f"{field} must be valid Unicode (a lone surrogate was sent)",
                              field)
    return value


def check_user_id(value: object, field: str = "user_id") -> str:
    """1 to 128 printable characters, not only white space, no control characters."""
    user_id = check_text(value, field, max_chars=MAX_USER_ID)
    if _CONTROL.search(user_id):
        raise ValidationError(f"{field} must not contain control characters", field)
    return user_id


def check_int64(value: object, field: str, *, minimum: int = 1) -> int:
    """An integer Postgres' bigint can hold, at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{field} must be an integer", field)
    if not minimum <= value <= MAX_BIGINT:
        raise ValidationError(f"{field} must be from {minimum} to {MAX_BIGINT}", field)
    return value


def check_limit(value: object, field: str = "limit", maximum: int = MAX_PAGE) -> int:
    """A page size or result count: an integer from 1 to ``maximum``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise ValidationError(f"{field} must be from 1 to {maximum}", field)
    return value


def check_metadata(value: object, limits: MetadataLimits, field: str = "metadata"
                   ) -> dict[str, Any]:
    """A JSON object within ``limits`` whose every key and string Postgres can store."""
    if not isinstance(value, dict):
        raise ValidationError(f"{field} must be a JSON object", field)
    keys = _walk(value, field, limits, depth=1, keys=0)
    if keys > limits.max_keys:
        raise ValidationError(f"{field} has more than {limits.max_keys} keys", field)
    size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":"),
                          allow_nan=False).encode("utf-8", "surrogatepass"))
    if size > limits.max_bytes:
        raise ValidationError(f"{field} is larger than {limits.max_bytes} bytes as JSON", field)
    return value


def _walk(value: object, field: str, limits: MetadataLimits, depth: int, keys: int) -> int:
    """Check one level (without recursing past the depth limit); the keys counted so far."""
    if isinstance(value, dict | list) and depth > limits.max_depth:
        raise ValidationError(f"{field} is nested deeper than {limits.max_depth} levels", field)
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValidationError(f"{field}: keys must be strings", field)
            _inner_text(key, field, "a key")
            keys += 1
            if keys > limits.max_keys:
                raise ValidationError(f"{field} has more than {limits.max_keys} keys", field)
            keys = _walk(item, field, limits, depth + 1, keys)
    elif isinstance(value, list):
        for item in value:
            keys = _walk(item, field, limits, depth + 1, keys)
    elif isinstance(value, str):
        _inner_text(value, field, "a value")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValidationError(f"{field}: numbers must be finite (no NaN or Infinity)", field)
    elif not (value is None or isinstance(value, bool | int | float)):
        raise ValidationError(f"{field} must hold only JSON values", field)
    return keys


def json_depth_exceeds(raw: str, max_depth: int) -> bool:
    """Whether JSON text nests arrays/objects deeper than ``max_depth`` (without parsing it)."""
    if raw.count("{") + raw.count("[") <= max_depth:  # cannot nest deeper: the common case
        return False
    depth = 0
    in_string = escaped = False
    for ch in raw:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > max_depth:
                return True
        elif ch in "]}":
            depth -= 1
    return False


UNREADABLE_DEPTH = 64


def safe_json_loads(raw: str | bytes) -> Any:
    """How the database connector reads jsonb: a row nested too deep for the Python parser
    (written around the API) reads as a marker object instead of failing every later read."""
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    if json_depth_exceeds(text, UNREADABLE_DEPTH):
        return {"_unreadable": f"stored JSON is nested deeper than {UNREADABLE_DEPTH} levels"}
    return json.loads(text)


def _inner_text(value: str, field: str, what: str) -> None:
    """A key or string inside a JSON field: the error names the field itself."""
    try:
        check_text(value, "text", allow_blank=True)
    except ValidationError as exc:
        raise ValidationError(f"{field}: {what} {str(exc).removeprefix('text ')}", field) \
            from None


def parse_json_object(raw: str, limits: MetadataLimits, field: str) -> dict[str, Any]:
    """A JSON object given as text (a query parameter), parsed without unbounded recursion."""
    check_text(raw, field, max_chars=limits.max_bytes)
    if json_depth_exceeds(raw, limits.max_depth):
        raise ValidationError(f"{field} is nested deeper than {limits.max_depth} levels", field)
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise ValidationError(f"{field} must be a JSON object", field) from None
    return check_metadata(value, limits, field)
