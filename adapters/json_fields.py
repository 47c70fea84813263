"""Typed readers for fields of a decoded webhook JSON document.

Every reader takes the object, the key and the JSON path of the object, and raises
:class:`bot.model.PayloadError` naming the full path and the expected type, never
quoting the value (it may be personal data). Shared by the Discourse and the
generic parsers so both speak the same error language.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bot.model import PayloadError

ID_LIMIT = 2**63  # ids must fit a signed 64-bit integer (SQLite, Discourse bigint)
MAX_ID_CHARS = 128
MAX_NAME = 256  # usernames, slugs, statuses, action ids
MAX_TITLE = 1_024
MAX_URL = 4_096
MAX_TEXT = 1_000_000  # the ingest body limit (1 MiB by default) bounds it anyway
MAX_LIST = 1_000

_MISSING = object()


def type_name(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def join(path: str, key: str | int) -> str:
    """``post`` + ``user_id`` -> ``post.user_id``; ``media`` + 2 -> ``media[2]``."""
    if key == "":
        return path
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def obj(value: Any, path: str) -> dict[str, Any]:
    """``value`` if it is a JSON object, else a PayloadError at ``path``."""
    if not isinstance(value, dict):
        raise PayloadError(f"{path or 'body'}: expected an object, got {type_name(value)}")
    return value


def req_obj(d: dict[str, Any], key: str, path: str) -> dict[str, Any]:
    """A required nested object."""
    value = d.get(key, _MISSING)
    if value is _MISSING or value is None:
        raise PayloadError(f"{join(path, key)}: required object is missing")
    return obj(value, join(path, key))


def opt_obj(d: dict[str, Any], key: str, path: str) -> dict[str, Any] | None:
    """An optional nested object (absent or null gives None)."""
    value = d.get(key)
    return None if value is None else obj(value, join(path, key))


def opt_list(d: dict[str, Any], key: str, path: str, max_items: int = MAX_LIST) -> list[Any]:
    """An optional array (absent or null gives an empty list)."""
    value = d.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise PayloadError(f"{join(path, key)}: expected an array, got {type_name(value)}")
    if len(value) > max_items:
        raise PayloadError(f"{join(path, key)}: more than {max_items} items")
    return value


def id_value(value: Any, where: str, *, negative: bool = False) -> str:
    """An id: an integer in range or a short non-empty string, returned as str.

    ``negative`` admits ids below zero: Discourse's own accounts (system, discobot)
    have negative user ids.
    """
    return _id(value, where, "", negative, False)


def _id(value: Any, path: str, key: str, negative: bool, strict_int: bool) -> str:
    # The path is joined only on error: this runs a dozen times per delivery.
    if type(value) is int:
        if (-ID_LIMIT if negative else 0) <= value < ID_LIMIT:
            return str(value)
        raise PayloadError(f"{join(path, key)}: id out of range (must fit in 64 bits)")
    if isinstance(value, str) and not strict_int:
        if not value or len(value) > MAX_ID_CHARS or not value.isprintable():
            raise PayloadError(
                f"{join(path, key)}: expected an id of 1 to {MAX_ID_CHARS} printable characters"
            )
        return value
    raise PayloadError(f"{join(path, key)}: expected an integer id, got {type_name(value)}")


def int_id(value: Any, where: str, *, negative: bool = False) -> str:
    """An id that must be a JSON integer (Discourse's ids always are)."""
    return _id(value, where, "", negative, True)


def req_id(
    d: dict[str, Any], key: str, path: str, *, strict_int: bool = False, negative: bool = False
) -> str:
    """A required id field."""
    value = d.get(key)
    if value is None:
        raise PayloadError(f"{join(path, key)}: required id is missing")
    return _id(value, path, key, negative, strict_int)


def opt_id(
    d: dict[str, Any], key: str, path: str, *, strict_int: bool = False, negative: bool = False
) -> str | None:
    """An optional id field (absent or null gives None)."""
    value = d.get(key)
    if value is None:
        return None
    return _id(value, path, key, negative, strict_int)


def opt_str(d: dict[str, Any], key: str, path: str, max_len: int = MAX_NAME) -> str | None:
    """An optional string of at most ``max_len`` characters."""
    value = d.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise PayloadError(f"{join(path, key)}: expected a string, got {type_name(value)}")
    if len(value) > max_len:
        raise PayloadError(f"{join(path, key)}: longer than {max_len} characters")
    return value


def req_str(d: dict[str, Any], key: str, path: str, max_len: int = MAX_NAME) -> str:
    """A required string."""
    value = opt_str(d, key, path, max_len)
    if value is None:
        raise PayloadError(f"{join(path, key)}: required string is missing")
    return value


def opt_int(d: dict[str, Any], key: str, path: str, low: int = 0, high: int = 2**31) -> int | None:
    """An optional integer within [low, high)."""
    value = d.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(f"{join(path, key)}: expected an integer, got {type_name(value)}")
    if not low <= value < high:
        raise PayloadError(f"{join(path, key)}: integer out of range [{low}, {high})")
    return value


def opt_float(d: dict[str, Any], key: str, path: str) -> float | None:
    """An optional finite number."""
    value = d.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PayloadError(f"{join(path, key)}: expected a number, got {type_name(value)}")
    number = float(value)
    if number != number or number in (float("inf"), float("-inf")):
        raise PayloadError(f"{join(path, key)}: expected a finite number")
    return number


def opt_bool(d: dict[str, Any], key: str, path: str, default: bool = False) -> bool:
    """An optional boolean (absent or null gives ``default``)."""
    value = d.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise PayloadError(f"{join(path, key)}: expected true or false, got {type_name(value)}")
    return value


def opt_dt(d: dict[str, Any], key: str, path: str) -> datetime | None:
    """An optional ISO 8601 time with a time zone ("2026-01-03T04:17:24.614Z")."""
    value = d.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 64:
        got = type_name(value) if not isinstance(value, str) else "a longer string"
        raise PayloadError(f"{join(path, key)}: expected an ISO 8601 time string, got {got}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise PayloadError(f"{join(path, key)}: not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        raise PayloadError(
            f"{join(path, key)}: ISO 8601 time without a time zone (add Z or +00:00)"
        )
    return parsed
