"""Discourse webhook deliveries -> Vigil's domain model.

Discourse POSTs ``{"<type>": {...}}`` with the event named in ``X-Discourse-Event``
(``post_created``) and its family in ``X-Discourse-Event-Type`` (``post``). The ingest
server checks the signature and decodes the JSON; :class:`DiscourseParser` turns the
document into an :class:`~bot.model.Event`, keeping only what moderation needs:
profile details are dropped here, at the boundary; the account's email and IP
addresses leave only in :attr:`~bot.model.Parsed.personal`, for the restricted table.

Discourse has no upload event: images live in a post's ``raw``
(``upload://<base62 sha1>.<ext>``) and ``cooked`` HTML
(``/uploads/<site>/original/1X/<sha1>.<ext>``, ``data-base62-sha1``), so the SHA-1 of
every upload is known before anything is downloaded.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from adapters.json_fields import (
    MAX_NAME,
    MAX_TEXT,
    MAX_TITLE,
    MAX_URL,
    join,
    obj,
    opt_bool,
    opt_dt,
    opt_float,
    opt_id,
    opt_int,
    opt_list,
    opt_obj,
    opt_str,
    req_id,
    req_obj,
    req_str,
    type_name,
)
from bot.model import (
    Author,
    Event,
    EventKind,
    MediaRef,
    Parsed,
    PayloadError,
    Post,
    Report,
    ReportKind,
    UnknownEvent,
)
from bot.personal_data import personal_from

log = logging.getLogger(__name__)

__all__ = [
    "DiscourseParser",
    "decode_base62_sha1",
    "encode_base62_sha1",
    "extract_media",
]

# --- upload names ----------------------------------------------------------------

_B62_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_B62_VALUE = {c: i for i, c in enumerate(_B62_ALPHABET)}
_SHA1_LIMIT = 1 << 160


@functools.lru_cache(maxsize=4096)  # an attack repeats the same few images
def decode_base62_sha1(name: str) -> str:
    """The 40-hex SHA-1 behind a Discourse short upload name (``jJCW...Tjd.jpeg``).

    Accepts the bare name, with an extension, or with the ``upload://`` prefix.
    Raises ValueError for a name that is not base62 or does not fit in 160 bits.
    """
    stem = name.removeprefix("upload://").split(".", 1)[0]
    if not stem or len(stem) > 28:  # 62**28 > 2**160 > 62**27
        raise ValueError("not a base62 SHA-1 name")
    value = 0
    try:
        for char in stem:
            value = value * 62 + _B62_VALUE[char]
    except KeyError:
        raise ValueError("not a base62 SHA-1 name") from None
    if value >= _SHA1_LIMIT:
        raise ValueError("base62 name is larger than a SHA-1")
    return f"{value:040x}"


def encode_base62_sha1(sha1: str) -> str:
    """The Discourse short name of a 40-hex SHA-1 (inverse of :func:`decode_base62_sha1`)."""
    value = int(sha1, 16)
    if value == 0:
        return "0"
    digits = []
    while value:
        value, rest = divmod(value, 62)
        digits.append(_B62_ALPHABET[rest])
    return "".join(reversed(digits))


# --- media references --------------------------------------------------------------

# One pass over the text finds every place an image can hide; each branch is bounded
# so a hostile post cannot make the scan quadratic.
# Every branch starts with a literal character so the engine skips ahead quickly
# (3x faster than IGNORECASE); Discourse writes cooked HTML in lower case.
_MEDIA_RE = re.compile(
    r"upload://(?P<b62>[0-9A-Za-z]{1,28})(?:\.(?P<ext>[0-9A-Za-z]{1,16}))?"
    r"|<[iI][mM][gG]\b(?P<img>[^>]{0,4000})>"
    r"|href=\"(?P<href>[^\"<>\s]{1,4096})\""
    r"|!\[[^\]\n]{0,1024}\]\((?P<md>https?://[^)\s]{1,4096})"
)
_ATTR_RE = re.compile(r"([a-zA-Z][a-zA-Z0-9-]{0,40})\s*=\s*\"([^\"]{0,4096})\"")
# /uploads/default/original/1X/<sha1>.jpeg, .../optimized/2X/8/a/<sha1>_2_290x500.jpeg,
# /secure-uploads/original/1X/<sha1>.png, and CDN/S3 variants of the same tail.
_UPLOAD_PATH_RE = re.compile(
    r"/(?P<kind>original|optimized)/\d{1,3}X/(?:[0-9a-f]/){0,4}(?P<sha1>[0-9a-f]{40})"
    r"(?:_\d{1,3}_\d{1,5}x\d{1,5})?(?:\.(?P<ext>[0-9A-Za-z]{1,16}))?(?:$|[?#])"
)
# Images Discourse itself draws around posts (emoji, avatars, site icons) are no media.
_DECORATION_CLASSES = ("emoji", "avatar", "site-icon")
_DECORATION_PATHS = ("/images/emoji/", "/user_avatar/", "/letter_avatar", "/plugins/")

_RANK_ORIGINAL, _RANK_SHORT, _RANK_OPTIMIZED = 3, 2, 1


class _Collector:
    """Deduplicates media: uploads by SHA-1 (keeping the best URL), others by URL."""

    __slots__ = ("by_sha1", "external", "short_seen", "trusted_hosts")

    def __init__(self, trusted_hosts: frozenset[str]) -> None:
        self.by_sha1: dict[str, tuple[int, MediaRef]] = {}
        self.external: dict[str, MediaRef] = {}
        self.short_seen: set[str] = set()  # raw and cooked name each upload twice
        self.trusted_hosts = trusted_hosts

    def upload(self, sha1: str, url: str, rank: int) -> None:
        known = self.by_sha1.get(sha1)
        if known is None or rank > known[0]:
            self.by_sha1[sha1] = (rank, MediaRef(url=url, sha1=sha1, filename=_basename(url)))

    def short(self, b62: str, ext: str | None) -> None:
        if b62 in self.short_seen:
            return
        self.short_seen.add(b62)
        try:
            sha1 = decode_base62_sha1(b62)
        except ValueError:
            return
        name = f"{b62}.{ext}" if ext else b62
        # Discourse's own route for short names; it redirects to the stored file.
        self.upload(sha1, f"/uploads/short-url/{name}", _RANK_SHORT)

    def url(self, url: str) -> None:
        """An image URL: an upload when its path names one on this forum, else external."""
        if len(url) > MAX_URL or url.startswith(("data:", "upload://")):
            return
        match = _UPLOAD_PATH_RE.search(url)
        if match is not None and self._is_forum_url(url):
            rank = _RANK_ORIGINAL if match["kind"] == "original" else _RANK_OPTIMIZED
            self.upload(match["sha1"], url, rank)
            return
        if url.startswith("/") and not url.startswith("//"):
            if url.startswith(_DECORATION_PATHS):
                return
        elif not url.lower().startswith(("http://", "https://", "//")):
            return
        # An absolute URL's path proves nothing about its content: hash what it serves.
        self.external.setdefault(url, MediaRef(url=url, filename=_basename(url)))

    def _is_forum_url(self, url: str) -> bool:
        if url.startswith("/") and not url.startswith("//"):
            return True
        host = urlsplit(url).hostname
        return host is not None and host.lower() in self.trusted_hosts

    def refs(self) -> tuple[MediaRef, ...]:
        return tuple(ref for _, ref in self.by_sha1.values()) + tuple(self.external.values())


def _basename(url: str) -> str | None:
    tail = url.split("?", 1)[0].split("#", 1)[0].rsplit("/", 1)[-1]
    return tail[:MAX_NAME] or None


def _scan(text: str, out: _Collector) -> None:
    for m in _MEDIA_RE.finditer(text):
        if m["b62"] is not None:
            out.short(m["b62"], m["ext"])
        elif m["img"] is not None:
            attrs = {k.lower(): v for k, v in _ATTR_RE.findall(m["img"])}
            classes = attrs.get("class", "")
            if any(c in classes for c in _DECORATION_CLASSES):
                continue
            b62 = attrs.get("data-base62-sha1")
            if b62:
                out.short(b62, None)
            for key in ("src", "data-orig-src"):
                src = attrs.get(key)
                if src and src.startswith("upload://"):
                    name = src[len("upload://") :]
                    stem, _, ext = name.partition(".")
                    out.short(stem, ext or None)
                elif src:
                    out.url(src)
        elif m["href"] is not None:
            # Only links to stored uploads (lightbox originals, attachments) count.
            if _UPLOAD_PATH_RE.search(m["href"]) is not None:
                out.url(m["href"])
        elif m["md"] is not None:
            out.url(m["md"])


def extract_media(
    raw: str, cooked: str = "", trusted_hosts: Iterable[str] = ()
) -> tuple[MediaRef, ...]:
    """Every image a post references, uploads deduplicated by SHA-1.

    Upload URLs carry their SHA-1 only when site-relative or on a ``trusted_hosts``
    host (the forum's CDN): anyone can put a SHA-1-looking path on another server.
    """
    out = _Collector(frozenset(h.lower() for h in trusted_hosts))
    if raw:
        _scan(raw, out)
    if cooked:
        _scan(cooked, out)
    return out.refs()


# --- events ------------------------------------------------------------------------

_POST_EVENTS = {"post_created": EventKind.POST_CREATED, "post_edited": EventKind.POST_EDITED}
_REVIEWABLE_EVENTS = {
    "reviewable_created": EventKind.REPORT_CREATED,
    "reviewable_score_updated": EventKind.REPORT_UPDATED,
    "reviewable_transitioned_to": EventKind.REPORT_UPDATED,
    "reviewable_updated": EventKind.REPORT_UPDATED,
}
# Events Discourse defines that Vigil does not act on: acknowledged, not stored.
_IGNORED_EVENTS = frozenset(
    {
        "post_destroyed",
        "post_recovered",
        "post_liked",
        "user_updated",
        "user_destroyed",
        "user_approved",
        "user_logged_in",
        "user_logged_out",
        "user_confirmed_email",
        "user_promoted",
        "user_added_to_group",
        "user_removed_from_group",
        "user_suspended",
        "user_unsuspended",
        "user_silenced",
        "user_unsilenced",
        "accepted_solution",
        "unaccepted_solution",
        "assigned",
        "unassigned",
        "flag_created",
        "flag_agreed",
        "flag_disagreed",
        "flag_deferred",
        "queued_post_created",
        "approved_post",
        "rejected_post",
    }
)
_IGNORED_PREFIXES = (
    "topic_",
    "category_",
    "tag_",
    "group_",
    "user_badge_",
    "notification_",
    "solved_",
    "like_",
    "chat_",
    "voting_",
    "topic_voting_",
    "assign_",
    "calendar_",
)
_EVENT_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")

_REVIEWABLE_KINDS = {
    "ReviewableFlaggedPost": ReportKind.FLAGGED_POST,
    "ReviewableAkismetPost": ReportKind.FLAGGED_POST,
    "ReviewableAiPost": ReportKind.FLAGGED_POST,
    "ReviewableQueuedPost": ReportKind.QUEUED_POST,
    "ReviewableUser": ReportKind.USER,
    "ReviewableAkismetUser": ReportKind.USER,
}
_TOPIC_URL_RE = re.compile(r"/t/[^/?#]{1,256}/\d{1,19}/(?P<n>\d{1,9})")
_REVIEWABLE_STATUS = {0: "pending", 1: "approved", 2: "rejected", 3: "ignored", 4: "deleted"}


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        value = headers.get(name.lower())
    if value is None:  # a plain dict with another capitalisation
        lower = name.lower()
        for key, item in headers.items():
            if key.lower() == lower:
                return item
    return value


def _short_header(headers: Mapping[str, str], name: str, required: bool) -> str | None:
    value = _header(headers, name)
    if value is None:
        if required:
            raise PayloadError(f"header {name} is missing")
        return None
    value = value.strip()
    if not value or len(value) > 128 or not value.isprintable():
        raise PayloadError(f"header {name}: expected 1 to 128 printable characters")
    return value


class DiscourseParser:
    """Parses Discourse's own webhook format (see DESIGN §6).

    ``trusted_upload_hosts``: hosts (a CDN, an S3 bucket) whose upload URLs may be
    trusted to carry the SHA-1 in their path, besides site-relative ones.
    """

    signature_header = "X-Discourse-Event-Signature"
    delivery_header = "X-Discourse-Event-Id"

    def __init__(self, trusted_upload_hosts: Iterable[str] = ()) -> None:
        self._trusted = tuple(h.lower() for h in trusted_upload_hosts)

    def parse(self, source: str, headers: Mapping[str, str], document: Any) -> Parsed:
        """One delivery -> Parsed; raises PayloadError / UnknownEvent naming the place."""
        delivery_id = _short_header(headers, self.delivery_header, required=True)
        assert delivery_id is not None
        event = _short_header(headers, "X-Discourse-Event", required=True)
        assert event is not None
        event_type = _short_header(headers, "X-Discourse-Event-Type", required=False)
        if _EVENT_NAME_RE.fullmatch(event) is None:
            raise UnknownEvent("header X-Discourse-Event: not a Discourse event name")
        body = obj(document, "body")

        if event == "ping":
            return Parsed(delivery_id, None, "ping")
        if event in _POST_EVENTS:
            expected = "post"
        elif event == "user_created":
            expected = "user"
        elif event in _REVIEWABLE_EVENTS:
            expected = "reviewable"
        elif event in _IGNORED_EVENTS or event.startswith(_IGNORED_PREFIXES):
            if event_type is not None and event_type not in body:
                raise PayloadError(_key_mismatch(body, event_type))
            return Parsed(delivery_id, None, f"ignored: {event}")
        else:
            raise UnknownEvent(f"header X-Discourse-Event: unknown Discourse event {event!r}")

        if event_type is not None and event_type != expected:
            raise PayloadError(
                f"header X-Discourse-Event-Type: {event} events have type {expected!r}"
            )
        if expected not in body:
            raise PayloadError(_key_mismatch(body, expected))
        inner = req_obj(body, expected, "")

        if expected == "post":
            kind = _POST_EVENTS[event]
            post, extra = self._post(inner)
            stamp = "created_at" if kind is EventKind.POST_CREATED else "updated_at"
            occurred = opt_dt(inner, stamp, "post") or post.created_at
            result = Event(
                source=source,
                delivery_id=delivery_id,
                kind=kind,
                occurred_at=occurred,
                post=post,
                forum_event=event,
                extra=extra,
            )
        elif expected == "user":
            user = _user(inner, "user")
            result = Event(
                source=source,
                delivery_id=delivery_id,
                kind=EventKind.USER_CREATED,
                occurred_at=user.created_at,
                user=user,
                forum_event=event,
            )
            # The current email only (not secondary_emails): keep no more than needed.
            personal = personal_from(
                user.id,
                user.username,
                ips=(inner.get("ip_address"), inner.get("registration_ip_address")),
                emails=(inner.get("email"),),
            )
            return Parsed(delivery_id, result, personal=personal)
        else:
            result = self._reviewable(inner, source, delivery_id, event)
            report = result.report
            if result.user is not None and report is not None and report.kind is ReportKind.USER:
                payload = inner.get("payload")
                email = payload.get("email") if isinstance(payload, dict) else None
                personal = personal_from(result.user.id, result.user.username, emails=(email,))
                return Parsed(delivery_id, result, personal=personal)
        return Parsed(delivery_id, result)

    # --- posts ---------------------------------------------------------------------

    def _post(self, p: dict[str, Any]) -> tuple[Post, dict[str, Any]]:
        path = "post"
        post_id = req_id(p, "id", path, strict_int=True)
        topic_id = opt_id(p, "topic_id", path, strict_int=True)
        post_number = opt_int(p, "post_number", path, 0, 2**31)
        raw = opt_str(p, "raw", path, MAX_TEXT) or ""
        cooked = opt_str(p, "cooked", path, MAX_TEXT) or ""
        author = Author(
            id=req_id(p, "user_id", path, strict_int=True, negative=True),
            username=req_str(p, "username", path),
            trust_level=opt_int(p, "trust_level", path, 0, 5),
            is_staff=_is_staff(p, path),
        )
        post = Post(
            id=post_id,
            author=author,
            topic_id=topic_id,
            category_id=opt_id(p, "category_id", path, strict_int=True),
            post_number=post_number,
            url=_post_url(p, path, topic_id, post_number),
            topic_title=opt_str(p, "topic_title", path, MAX_TITLE),
            text=raw,
            media=extract_media(raw, cooked, self._trusted),
            created_at=opt_dt(p, "created_at", path),
            hidden=opt_bool(p, "hidden", path),
        )
        extra: dict[str, Any] = {}
        archetype = opt_str(p, "topic_archetype", path)
        if archetype and archetype != "regular":
            extra["archetype"] = archetype  # private messages are checked like posts
        reviewable_id = opt_id(p, "reviewable_id", path, strict_int=True)
        if reviewable_id is not None:
            extra["reviewable_id"] = reviewable_id
        post_type = opt_int(p, "post_type", path, 0, 256)
        if post_type not in (None, 1):
            extra["post_type"] = post_type  # 2 moderator action, 3 small action, 4 whisper
        if p.get("deleted_at") is not None:
            extra["deleted"] = True
        return post, extra

    # --- reviewables ---------------------------------------------------------------

    def _reviewable(self, r: dict[str, Any], source: str, delivery_id: str, event: str) -> Event:
        path = "reviewable"
        report_id = req_id(r, "id", path, strict_int=True)
        rtype = req_str(r, "type", path)
        kind = _REVIEWABLE_KINDS.get(rtype, ReportKind.OTHER)
        status = _status(r, path)
        target_type = opt_str(r, "target_type", path)
        target_id = opt_id(r, "target_id", path, strict_int=True)
        post_id = opt_id(r, "post_id", path, strict_int=True)
        if post_id is None and target_type == "Post":
            post_id = target_id
        author_id = opt_id(r, "target_created_by_id", path, strict_int=True, negative=True)
        creator_id = opt_id(r, "created_by_id", path, strict_int=True, negative=True)
        trust = opt_int(r, "target_created_by_trust_level", path, 0, 5)
        payload = opt_obj(r, "payload", path) or {}
        payload_path = join(path, "payload")

        if kind is ReportKind.QUEUED_POST and author_id is None:
            author_id = creator_id  # older Discourse: the poster created the reviewable
        target_user_id = author_id
        if target_type == "User":
            target_user_id = opt_id(r, "user_id", path, strict_int=True) or target_id

        report = Report(
            id=report_id,
            kind=kind,
            status=status,
            score=opt_float(r, "score", path),
            version=opt_int(r, "version", path, 0, 2**31),
            actions=_actions(r, path),
            target_post_id=post_id,
            target_user_id=target_user_id,
        )
        extra: dict[str, Any] = {"reviewable_type": rtype}
        if kind is not ReportKind.QUEUED_POST and creator_id is not None:
            extra["reporter_id"] = creator_id
        # One score per flag, and Discourse takes one flag per member and post: the
        # score ids count distinct reporters, where created_by only names the first.
        score_ids = [
            s for s in opt_list(r, "reviewable_score_ids", path) if isinstance(s, int | str)
        ]
        if score_ids and kind is ReportKind.FLAGGED_POST:
            extra["score_ids"] = [str(s) for s in score_ids]

        post: Post | None = None
        user: Author | None = None
        username = _embedded_username(r, path)
        if kind is ReportKind.USER:
            if target_user_id is not None:
                user = Author(
                    id=target_user_id,
                    username=opt_str(payload, "username", payload_path) or username,
                    trust_level=trust,
                )
        elif kind is ReportKind.QUEUED_POST:
            raw = opt_str(payload, "raw", payload_path, MAX_TEXT)
            if raw is None:
                raw = opt_str(r, "raw", path, MAX_TEXT) or ""
            cooked = opt_str(r, "cooked", path, MAX_TEXT) or ""
            category = opt_id(r, "category_id", path, strict_int=True)
            if category is None:
                category = opt_id(payload, "category", payload_path)
            topic_title = opt_str(payload, "title", payload_path, MAX_TITLE)
            held = status == "pending"
            post = Post(
                # No post exists until a moderator approves it; the id names the queue entry.
                id=post_id or f"queued:{report_id}",
                author=Author(id=author_id or "", username=username, trust_level=trust),
                topic_id=opt_id(r, "topic_id", path, strict_int=True),
                category_id=category,
                url=_absolute_to_path(opt_str(r, "target_url", path, MAX_URL)),
                topic_title=topic_title,
                text=raw,
                media=extract_media(raw, cooked, self._trusted),
                created_at=opt_dt(r, "created_at", path),
                held=held,
            )
        elif post_id is not None:
            raw = opt_str(r, "raw", path, MAX_TEXT) or ""
            cooked = opt_str(r, "cooked", path, MAX_TEXT) or ""
            url = _absolute_to_path(opt_str(r, "target_url", path, MAX_URL))
            number = _TOPIC_URL_RE.fullmatch(url or "")
            post = Post(
                id=post_id,
                author=Author(id=author_id or "", username=username, trust_level=trust),
                topic_id=opt_id(r, "topic_id", path, strict_int=True),
                category_id=opt_id(r, "category_id", path, strict_int=True),
                post_number=int(number["n"]) if number else None,
                url=url,
                text=raw,
                media=extract_media(raw, cooked, self._trusted),
                created_at=opt_dt(r, "target_created_at", path),
            )

        return Event(
            source=source,
            delivery_id=delivery_id,
            kind=_REVIEWABLE_EVENTS[event],
            occurred_at=opt_dt(r, "created_at", path) if event == "reviewable_created" else None,
            post=post,
            report=report,
            user=user,
            forum_event=event,
            extra=extra,
        )


def _key_mismatch(body: dict[str, Any], expected: str) -> str:
    keys = [k for k in list(body)[:3] if isinstance(k, str) and len(k) <= 32 and k.isidentifier()]
    found = ", ".join(repr(k) for k in keys) or "no usable key"
    return f"body: expected top-level key {expected!r} (from the event headers), found {found}"


def _is_staff(d: dict[str, Any], path: str) -> bool:
    return (
        opt_bool(d, "staff", path) or opt_bool(d, "admin", path) or opt_bool(d, "moderator", path)
    )


def _user(u: dict[str, Any], path: str) -> Author:
    # Only these fields go into the Event; profile and groups stay behind, email and
    # IPs go to Parsed.personal (see parse).
    return Author(
        id=req_id(u, "id", path, strict_int=True, negative=True),
        username=req_str(u, "username", path),
        created_at=opt_dt(u, "created_at", path),
        trust_level=opt_int(u, "trust_level", path, 0, 5),
        post_count=opt_int(u, "post_count", path, 0, 2**31),
        is_staff=_is_staff(u, path),
    )


def _post_url(p: dict[str, Any], path: str, topic_id: str | None, number: int | None) -> str | None:
    given = opt_str(p, "post_url", path, MAX_URL)
    if given and given.startswith("/") and not given.startswith("//"):
        return given
    if topic_id is None:
        return f"/p/{p['id']}"
    slug = opt_str(p, "topic_slug", path) or "-"
    if number is None:
        return f"/t/{slug}/{topic_id}"
    return f"/t/{slug}/{topic_id}/{number}"


def _absolute_to_path(url: str | None) -> str | None:
    """Reviewables carry absolute URLs; the domain keeps forum-relative ones."""
    if not url:
        return None
    if url.startswith("/") and not url.startswith("//"):
        return url
    parts = urlsplit(url)
    if not parts.path:
        return None
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _status(r: dict[str, Any], path: str) -> str:
    value = r.get("status")
    if value is None:
        return "pending"
    if isinstance(value, int) and not isinstance(value, bool):
        return _REVIEWABLE_STATUS.get(value, f"status_{value}" if 0 <= value < 1000 else "other")
    if isinstance(value, str) and 0 < len(value) <= MAX_NAME:
        return value.lower()
    raise PayloadError(f"{path}.status: expected an integer or a string, got {type_name(value)}")


def _actions(r: dict[str, Any], path: str) -> tuple[str, ...]:
    """Action ids Discourse offers: ``bundled_action_ids`` in webhooks, or embedded
    bundles ``[{"id", "actions": [{"id"}]}]`` in the API's serialisation."""
    found: list[str] = []
    for i, item in enumerate(opt_list(r, "bundled_action_ids", path, 100)):
        if not isinstance(item, str) or not 0 < len(item) <= MAX_NAME:
            raise PayloadError(f"{path}.bundled_action_ids[{i}]: expected a short string")
        found.append(item)
    for i, bundle in enumerate(opt_list(r, "bundled_actions", path, 100)):
        where = f"{path}.bundled_actions[{i}]"
        b = obj(bundle, where)
        for j, action in enumerate(opt_list(b, "actions", where, 100)):
            a = obj(action, f"{where}.actions[{j}]")
            found.append(req_str(a, "id", f"{where}.actions[{j}]"))
    return tuple(dict.fromkeys(found))


def _embedded_username(r: dict[str, Any], path: str) -> str:
    """Webhook reviewables name the author by id only; an embedded user, if any."""
    embedded = r.get("target_created_by")
    if isinstance(embedded, dict):
        return opt_str(embedded, "username", f"{path}.target_created_by") or ""
    return ""
