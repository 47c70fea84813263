"""Vigil's own webhook schema, for forums that are not Discourse.

Documented in ``docs/generic-webhooks.md``. The schema mirrors the domain model
(``bot/model.py``) closely, so a forum integration is a thin JSON mapping: one
``event`` name, and the ``post`` / ``user`` / ``report`` / ``media`` objects it needs.
Unknown keys are ignored (forward compatibility). Personal data has no field in the
Event: an ``email`` or ``ip_address`` on the ``user`` or the post's ``author`` leaves
this parser only in :attr:`~bot.model.Parsed.personal`, for the restricted table.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

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
)
from bot.model import (
    Author,
    Event,
    EventKind,
    MediaRef,
    Parsed,
    PayloadError,
    PersonalData,
    Post,
    Report,
    ReportKind,
    UnknownEvent,
)
from bot.personal_data import personal_from

__all__ = ["GenericParser"]

_SHA1_RE = re.compile(r"[0-9a-fA-F]{40}")
_MAX_MEDIA = 100
_EVENTS = {kind.value: kind for kind in EventKind}
_REPORT_KINDS = {kind.value: kind for kind in ReportKind}


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        lower = name.lower()
        for key, item in headers.items():
            if key.lower() == lower:
                return item
    return value


class GenericParser:
    """Parses deliveries to ``POST /webhooks/generic`` (docs/generic-webhooks.md)."""

    signature_header = "X-Vigil-Signature"
    delivery_header = "X-Vigil-Delivery"

    def parse(self, source: str, headers: Mapping[str, str], document: Any) -> Parsed:
        """One delivery -> Parsed; raises PayloadError / UnknownEvent naming the place."""
        delivery_id = _header(headers, self.delivery_header)
        if delivery_id is None:
            raise PayloadError(f"header {self.delivery_header} is missing")
        delivery_id = delivery_id.strip()
        if not delivery_id or len(delivery_id) > 128 or not delivery_id.isprintable():
            raise PayloadError(
                f"header {self.delivery_header}: expected 1 to 128 printable characters"
            )

        body = obj(document, "body")
        name = req_str(body, "event", "", 64)
        kind = _EVENTS.get(name)
        if kind is None:
            if name == "ping":
                return Parsed(delivery_id, None, "ping")
            raise UnknownEvent(f"event: unknown event; expected one of {', '.join(_EVENTS)}")

        post_doc = opt_obj(body, "post", "")
        user_doc = opt_obj(body, "user", "")
        report_doc = opt_obj(body, "report", "")
        post = _post(post_doc, "post") if post_doc is not None else None
        user = _author(user_doc, "user") if user_doc is not None else None
        report = _report(report_doc, "report") if report_doc is not None else None
        media = _media(body, "")
        extra: dict[str, Any] = {}

        if kind in (EventKind.POST_CREATED, EventKind.POST_EDITED) and post is None:
            raise PayloadError(f"post: required object is missing for {name}")
        if kind is EventKind.USER_CREATED and user is None:
            raise PayloadError("user: required object is missing for user_created")
        if kind in (EventKind.REPORT_CREATED, EventKind.REPORT_UPDATED) and report is None:
            raise PayloadError(f"report: required object is missing for {name}")
        if kind is EventKind.IMAGE_UPLOADED:
            if not media:
                raise PayloadError("media: image_uploaded needs at least one item")
            if user is None and post is None:
                raise PayloadError("user: required object is missing for image_uploaded")
            # The domain Event has no media of its own: the uploads travel in extra,
            # and join the post's media when the upload belongs to a post.
            extra["media"] = [{"url": m.url, "sha1": m.sha1, "filename": m.filename} for m in media]
        if media and post is not None:
            post = _with_media(post, media)

        personal = None
        if user is not None and user_doc is not None:
            personal = _personal(user, user_doc)
        elif post is not None and post_doc is not None:
            personal = _personal(post.author, post_doc.get("author"))
        return Parsed(
            delivery_id,
            Event(
                source=source,
                delivery_id=delivery_id,
                kind=kind,
                occurred_at=opt_dt(body, "occurred_at", ""),
                post=post,
                report=report,
                user=user,
                forum_event=name,
                extra=extra,
            ),
            personal=personal,
        )


def _personal(author: Author, doc: Any) -> PersonalData | None:
    """The account's ``email`` and ``ip_address``, if the forum sent them (invalid ones
    are dropped quietly: a delivery is never refused over personal data)."""
    if not isinstance(doc, dict):
        return None
    return personal_from(
        author.id, author.username, ips=(doc.get("ip_address"),), emails=(doc.get("email"),)
    )


def _author(d: dict[str, Any], path: str) -> Author:
    return Author(
        id=req_id(d, "id", path),
        username=req_str(d, "username", path),
        created_at=opt_dt(d, "created_at", path),
        trust_level=opt_int(d, "trust_level", path, 0, 5),
        post_count=opt_int(d, "post_count", path, 0, 2**31),
        is_staff=opt_bool(d, "is_staff", path),
    )


def _post(d: dict[str, Any], path: str) -> Post:
    return Post(
        id=req_id(d, "id", path),
        author=_author(req_obj(d, "author", path), join(path, "author")),
        topic_id=opt_id(d, "topic_id", path),
        category_id=opt_id(d, "category_id", path),
        post_number=opt_int(d, "post_number", path, 0, 2**31),
        url=_url(d, "url", path),
        topic_title=opt_str(d, "topic_title", path, MAX_TITLE),
        text=opt_str(d, "text", path, MAX_TEXT) or "",
        media=_media(d, path),
        created_at=opt_dt(d, "created_at", path),
        hidden=opt_bool(d, "hidden", path),
        held=opt_bool(d, "held", path),
    )


def _report(d: dict[str, Any], path: str) -> Report:
    kind_name = req_str(d, "kind", path, 32)
    kind = _REPORT_KINDS.get(kind_name)
    if kind is None:
        raise PayloadError(f"{path}.kind: expected one of {', '.join(_REPORT_KINDS)}")
    actions = []
    for i, item in enumerate(opt_list(d, "actions", path, 100)):
        if not isinstance(item, str) or not 0 < len(item) <= MAX_NAME:
            raise PayloadError(f"{path}.actions[{i}]: expected a short string")
        actions.append(item)
    return Report(
        id=req_id(d, "id", path),
        kind=kind,
        status=opt_str(d, "status", path) or "pending",
        score=opt_float(d, "score", path),
        version=opt_int(d, "version", path, 0, 2**31),
        actions=tuple(actions),
        reason=opt_str(d, "reason", path, MAX_TITLE),
        reporter=opt_str(d, "reporter", path),
        target_post_id=opt_id(d, "target_post_id", path),
        target_user_id=opt_id(d, "target_user_id", path),
    )


def _url(d: dict[str, Any], key: str, path: str) -> str | None:
    url = opt_str(d, key, path, MAX_URL)
    if url is None:
        return None
    if not (url.startswith(("http://", "https://")) or (url[:1] == "/" and url[1:2] != "/")):
        raise PayloadError(f"{join(path, key)}: expected an http(s) URL or a path starting with /")
    return url


def _media(d: dict[str, Any], path: str) -> tuple[MediaRef, ...]:
    refs: dict[str, MediaRef] = {}
    for i, item in enumerate(opt_list(d, "media", path, _MAX_MEDIA)):
        where = join(join(path, "media"), i)
        m = obj(item, where)
        url = _url(m, "url", where)
        sha1 = opt_str(m, "sha1", where, 40)
        if sha1 is not None:
            if _SHA1_RE.fullmatch(sha1) is None:
                raise PayloadError(f"{where}.sha1: expected 40 hexadecimal characters")
            sha1 = sha1.lower()
        if url is None and sha1 is None:
            raise PayloadError(f"{where}: needs a url, a sha1 or both")
        ref = MediaRef(url=url, sha1=sha1, filename=opt_str(m, "filename", where))
        key = sha1 or url or ""
        refs.setdefault(key, ref)
    return tuple(refs.values())


def _with_media(post: Post, media: tuple[MediaRef, ...]) -> Post:
    seen = {m.sha1 or m.url for m in post.media}
    extra = tuple(m for m in media if (m.sha1 or m.url) not in seen)
    return replace(post, media=post.media + extra) if extra else post
