"""A small reader for TOML tables that collects every problem instead of stopping.

An admin who runs ``vigil check`` wants all mistakes at once, each naming the file,
the key path and what was expected. :class:`Table` hands out typed values, records a
:class:`Problem` for each wrong one (returning a default so parsing can go on), and
at :meth:`Table.finish` reports every key nobody asked for as unknown, with a
"did you mean" hint for typos.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

_MISSING: Any = object()

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a configuration file."""

    file: str
    key: str
    message: str
    warning: bool = False

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}" if self.key else self.file
        kind = "warning" if self.warning else "error"
        return f"{where}: {kind}: {self.message}"


@dataclass
class Problems:
    """The problems found so far, in the order found."""

    items: list[Problem] = field(default_factory=list)

    def add(self, file: str, key: str, message: str, *, warning: bool = False) -> None:
        """Record a problem (an error unless ``warning``)."""
        self.items.append(Problem(file, key, message, warning))

    @property
    def errors(self) -> list[Problem]:
        """The problems that make the configuration unusable."""
        return [p for p in self.items if not p.warning]

    @property
    def warnings(self) -> list[Problem]:
        """Problems worth saying that do not stop Vigil."""
        return [p for p in self.items if p.warning]


def _type_name(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def parse_duration(value: Any) -> float | None:
    """Seconds from ``"90s"``, ``"15m"``, ``"2h"``, ``"7d"`` or a bare number of seconds."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if value >= 0 else None
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    return None


class Table:
    """A view of one TOML table at ``path`` inside ``file``."""

    def __init__(self, data: dict[str, Any], file: str, path: str, problems: Problems) -> None:
        self.data = data
        self.file = file
        self.path = path
        self.problems = problems
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        """The full dotted key path of ``name`` in this table."""
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, message: str) -> None:
        """Record an error at key ``name`` of this table."""
        self.problems.add(self.file, self.key(name), message)

    def warn(self, name: str, message: str) -> None:
        """Record a warning at key ``name`` of this table."""
        self.problems.add(self.file, self.key(name), message, warning=True)

    def has(self, name: str) -> bool:
        """Whether the key is present (and mark it as known)."""
        self._seen.add(name)
        return name in self.data

    def _get(self, name: str, default: Any, expected: str) -> Any:
        self._seen.add(name)
        if name not in self.data:
            if default is _MISSING:
                self.error(name, f"missing; expected {expected}")
            return _MISSING
        return self.data[name]

    def value(
        self,
        name: str,
        kind: type | tuple[type, ...],
        expected: str,
        default: Any = _MISSING,
        check: Callable[[Any], str | None] | None = None,
    ) -> Any:
        """A value of ``kind``; on a problem, record it and return ``default`` (or None)."""
        raw = self._get(name, default, expected)
        if raw is _MISSING:
            return None if default is _MISSING else default
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # TOML booleans are ints in Python; never accept one where a number is meant.
        if not isinstance(raw, kinds) or (isinstance(raw, bool) and bool not in kinds):
            self.error(name, f"expected {expected}, got {_type_name(raw)}")
            return None if default is _MISSING else default
        if check is not None:
            message = check(raw)
            if message:
                self.error(name, f"{message}; expected {expected}")
                return None if default is _MISSING else default
        return raw

    def str(self, name: str, default: Any = _MISSING, expected: str = "a string") -> Any:
        """A non-empty string."""
        return self.value(
            name, str, expected, default, lambda v: None if v.strip() else "empty string"
        )

    def choice(self, name: str, choices: Iterable[str], default: Any = _MISSING) -> Any:
        """One string out of ``choices``."""
        options = list(choices)
        expected = "one of " + ", ".join(repr(c) for c in options)
        return self.value(
            name,
            str,
            expected,
            default,
            lambda v: None if v in options else f"{v!r} is not allowed" + _hint(v, options),
        )

    def int(
        self, name: str, default: Any = _MISSING, lo: int | None = None, hi: int | None = None
    ) -> Any:
        """An integer within [lo, hi]."""
        expected = "an integer" + _range_text(lo, hi)
        return self.value(name, int, expected, default, lambda v: _range_problem(v, lo, hi))

    def number(
        self, name: str, default: Any = _MISSING, lo: float | None = None, hi: float | None = None
    ) -> Any:
        """An integer or float within [lo, hi], as float."""
        expected = "a number" + _range_text(lo, hi)
        raw = self.value(name, (int, float), expected, default, lambda v: _range_problem(v, lo, hi))
        return float(raw) if raw is not None else None

    def bool(self, name: str, default: Any = _MISSING) -> Any:
        """A boolean."""
        return self.value(name, bool, "true or false", default)

    def duration(self, name: str, default: Any = _MISSING) -> Any:
        """A duration such as ``"90s"``, ``"15m"``, ``"2h"``, ``"7d"``, in seconds."""
        expected = 'a duration such as "90s", "15m", "2h" or "7d"'
        raw = self._get(name, default, expected)
        if raw is _MISSING:
            return None if default is _MISSING else parse_duration(default)
        seconds = parse_duration(raw)
        if seconds is None:
            self.error(name, f"expected {expected}, got {raw!r}")
            return None if default is _MISSING else parse_duration(default)
        return seconds

    def str_list(
        self, name: str, default: Any = _MISSING, choices: Iterable[str] | None = None
    ) -> Any:
        """An array of strings (each one of ``choices`` when given)."""
        options = list(choices) if choices is not None else None
        allowed = ", ".join(repr(c) for c in options) if options is not None else ""
        expected = "an array of strings" + (f" from {allowed}" if allowed else "")
        raw = self.value(name, list, expected, default)
        if raw is None or raw is default:
            return raw
        out: list[str] = []
        for i, item in enumerate(raw):
            if not isinstance(item, str):
                self.error(f"{name}[{i}]", f"expected a string, got {_type_name(item)}")
            elif options is not None and item not in options:
                self.error(
                    f"{name}[{i}]", f"{item!r} is not one of {allowed}" + _hint(item, options)
                )
            else:
                out.append(item)
        return tuple(out)

    def table(self, name: str, required: bool = False) -> Table | None:
        """A sub-table, or None when absent (an error when ``required``)."""
        raw = self._get(name, _MISSING if required else None, "a table")
        if raw is _MISSING or raw is None:
            return None
        if not isinstance(raw, dict):
            self.error(name, f"expected a table, got {_type_name(raw)}")
            return None
        return Table(raw, self.file, self.key(name), self.problems)

    def tables(self, name: str) -> list[Table]:
        """An array of tables (``[[name]]``); empty when absent."""
        raw = self._get(name, [], "an array of tables")
        if raw is _MISSING:
            return []
        if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
            self.error(name, f"expected an array of tables ([[{name}]]), got {_type_name(raw)}")
            return []
        return [
            Table(t, self.file, f"{self.key(name)}[{i}]", self.problems) for i, t in enumerate(raw)
        ]

    def finish(self) -> None:
        """Report every key that nobody read as unknown."""
        known = sorted(self._seen)
        for name in self.data:
            if name not in self._seen:
                self.error(name, "unknown key" + _hint(name, known))


def _hint(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _range_text(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f" from {lo} to {hi}"
    if lo is not None:
        return f" of at least {lo}"
    if hi is not None:
        return f" of at most {hi}"
    return ""


def _range_problem(v: float, lo: float | None, hi: float | None) -> str | None:
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        return f"{v} is out of range"
    return None
