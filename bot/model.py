"""The domain model: what Vigil knows about a forum event, whatever forum sent it.

Every source (Discourse, the generic JSON schema) is parsed at the edge into these
frozen dataclasses; the core trusts them. They round-trip through plain JSON so the
inbox can store them (``to_dict`` / ``event_from_dict``).

Personal data (IP addresses, emails) is deliberately absent from the Event: parsers
hand it over separately (:class:`PersonalData`) to the restricted table or drop it,
so nothing downstream can leak it into a chat room or a log line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class EventKind(StrEnum):
    """What happened on the forum, in Vigil's own words."""

    POST_CREATED = "post_created"
    POST_EDITED = "post_edited"
    IMAGE_UPLOADED = "image_uploaded"
    REPORT_CREATED = "report_created"
    REPORT_UPDATED = "report_updated"
    USER_CREATED = "user_created"


class ReportKind(StrEnum):
    """What a report (a Discourse reviewable, a generic report) is about."""

    FLAGGED_POST = "flagged_post"
    QUEUED_POST = "queued_post"  # a post held for approval, not yet visible
    USER = "user"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class MediaRef:
    """An image a post references.

    ``url`` is as the forum wrote it (absolute or site-relative); ``sha1`` is known
    before any download when the forum names uploads by content (Discourse does).
    """

    url: str | None = None
    sha1: str | None = None
    filename: str | None = None


@dataclass(frozen=True, slots=True)
class Author:
    """A forum account, as much of it as the event told us."""

    id: str
    username: str
    created_at: datetime | None = None
    trust_level: int | None = None
    post_count: int | None = None
    is_staff: bool = False


@dataclass(frozen=True, slots=True)
class Post:
    """A post (or a post held for approval) on the forum."""

    id: str
    author: Author
    topic_id: str | None = None
    category_id: str | None = None
    post_number: int | None = None
    url: str | None = None
    topic_title: str | None = None
    text: str = ""
    media: tuple[MediaRef, ...] = ()
    created_at: datetime | None = None
    hidden: bool = False
    held: bool = False  # held for approval: not visible to members yet


@dataclass(frozen=True, slots=True)
class Report:
    """A member's report or a post queued for review (Discourse: a reviewable)."""

    id: str
    kind: ReportKind
    status: str = "pending"
    score: float | None = None
    version: int | None = None  # Discourse needs it to act on the reviewable
    actions: tuple[str, ...] = ()  # actions the forum offers on it, e.g. "agree_and_hide"
    reason: str | None = None
    reporter: str | None = None  # username of the member who reported, if known
    target_post_id: str | None = None
    target_user_id: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """One forum event, normalised. ``source`` is the configured source's name."""

    source: str
    delivery_id: str
    kind: EventKind
    occurred_at: datetime | None = None
    post: Post | None = None
    report: Report | None = None
    user: Author | None = None
    forum_event: str = ""  # the forum's own event name, for the record
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; datetimes become ISO 8601 strings."""
        return _jsonable(self)

    @property
    def author(self) -> Author | None:
        """The account the event is about: the post's author, else the user."""
        if self.post is not None:
            return self.post.author
        return self.user


def _jsonable(value: Any) -> Any:
    # A direct walk: dataclasses.asdict deep-copies every value, and this runs once
    # per webhook on the ingest path, where it was the costliest step.
    if value is None or isinstance(value, str | int | float | bool):
        return value
    fields = getattr(type(value), "__dataclass_fields__", None)
    if fields is not None:
        return {name: _jsonable(getattr(value, name)) for name in fields}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _author(d: dict[str, Any] | None) -> Author | None:
    if d is None:
        return None
    return Author(**{**d, "created_at": _dt(d.get("created_at"))})


def _post(d: dict[str, Any] | None) -> Post | None:
    if d is None:
        return None
    return Post(
        **{
            **d,
            "author": _author(d["author"]),
            "media": tuple(MediaRef(**m) for m in d.get("media", ())),
            "created_at": _dt(d.get("created_at")),
        }
    )


def _report(d: dict[str, Any] | None) -> Report | None:
    if d is None:
        return None
    return Report(**{**d, "kind": ReportKind(d["kind"]), "actions": tuple(d.get("actions", ()))})


def event_from_dict(d: dict[str, Any]) -> Event:
    """Rebuild an :class:`Event` from :meth:`Event.to_dict` output."""
    return Event(
        source=d["source"],
        delivery_id=d["delivery_id"],
        kind=EventKind(d["kind"]),
        occurred_at=_dt(d.get("occurred_at")),
        post=_post(d.get("post")),
        report=_report(d.get("report")),
        user=_author(d.get("user")),
        forum_event=d.get("forum_event", ""),
        extra=dict(d.get("extra") or {}),
    )


class Severity(StrEnum):
    """How urgent an alert is; each one outranks the ones before it."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """Order of urgency, low = 0."""
        return list(Severity).index(self)


@dataclass(frozen=True, slots=True)
class Match:
    """An image of an event found on a hash list.

    ``distance`` is 0 for exact kinds; ``tier`` says whether Vigil may act on it by
    itself ("confident") or only show it to a person ("review").
    """

    list: str
    kind: str
    distance: int
    category: str | None = None
    severity: Severity = Severity.HIGH
    media_index: int = 0
    tier: str = "confident"
    ref: str | None = None


class PayloadError(ValueError):
    """A webhook body that is well-formed JSON but not the shape we accept.

    The message says what was wrong and where (a JSON path), never the body itself.
    """


class UnknownEvent(PayloadError):
    """The delivery names an event type this source does not define."""


@dataclass(frozen=True, slots=True)
class PersonalData:
    """IP addresses and emails of one forum account, as one delivery carried them.

    Restricted: it travels beside the :class:`Event`, never inside it, and goes only
    to the restricted table (``bot.personal_data``), or nowhere.
    """

    user_id: str
    username: str = ""
    ips: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Parsed:
    """What a source's parser made of one delivery.

    ``event`` is None for deliveries that are valid but need no processing
    (a Discourse ``ping``, or an event type Vigil does not act on): the sender
    gets its 200 and nothing is stored. ``personal``: what the delivery carried
    of the account's IP addresses and emails (restricted, see :class:`PersonalData`).
    """

    delivery_id: str
    event: Event | None
    note: str = ""
    personal: PersonalData | None = None
