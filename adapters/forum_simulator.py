"""A simulated Discourse forum on loopback, for the tests and for ``vigil demo``.

It does three things a real Discourse does, in Discourse's wire format:

* serves uploads at ``/uploads/default/original/1X/<sha1>.<ext>`` (and the
  ``/uploads/short-url/<base62>.<ext>`` redirect), and can misbehave on any path
  (status, redirect, delay, wrong type, huge body) for the media fetcher's tests;
* answers the admin API calls Vigil makes (review perform, staff flag, delete,
  unhide, suspend, silence, site settings), checking ``Api-Key`` / ``Api-Username`` and recording
  every call in :attr:`FakeDiscourse.calls`;
* builds webhook bodies with the keys of real captures and sends them signed,
  byte-exact, with every ``X-Discourse-*`` header.

Usage::

    async with FakeDiscourse() as forum:
        up = forum.add_upload(png_bytes)
        body = forum.post_created_payload(post_id=12, user_id=7, username="troll",
                                          raw=f"look ![x|100x100]({up.short_url})")
        status = await forum.send_webhook(vigil_url, "post", "post_created", body)
        ...
        assert forum.calls_to("PUT", "/review/")
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import itertools
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import aiohttp
from aiohttp import web

from adapters.discourse_webhooks import decode_base62_sha1, encode_base62_sha1

__all__ = [
    "Call",
    "FakeDiscourse",
    "FakePost",
    "FakeReviewable",
    "FakeUser",
    "Misbehaviour",
    "Upload",
    "sign",
]

INVALID_KEY_MESSAGE = (
    "You are not permitted to view the requested resource. The API username or key is invalid."
)
NOT_FOUND_MESSAGE = "The requested URL or resource could not be found."
FLAGGED_POST_ACTIONS = (
    "agree_and_keep",
    "agree_and_hide",
    "agree_and_suspend",
    "agree_and_silence",
    "delete_and_agree",
    "disagree",
    "ignore_and_do_nothing",
)
QUEUED_POST_ACTIONS = ("approve_post", "reject_post", "revise_and_reject_post", "delete_user")
USER_ACTIONS = ("approve_user", "reject_user_delete", "reject_user_block")
# Trust-level settings Discourse 3.3 replaced by group settings; changing one is a 422.
DEPRECATED_SETTINGS = {
    "min_trust_to_post_embedded_media": "embedded_media_post_allowed_groups",
    "review_media_unless_trust_level": "skip_review_media_groups",
}
_STATUS_NAMES = {0: "pending", 1: "approved", 2: "rejected", 3: "ignored", 4: "deleted"}
_CONTENT_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
    "bmp": "image/bmp",
    "svg": "image/svg+xml",
}
_MD_IMAGE = re.compile(r"!\[([^\]|]*)(?:\|[^\]]*)?\]\(upload://([0-9A-Za-z]+)\.([0-9A-Za-z]+)\)")


def sign(secret: str | bytes, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256(secret, body)>`` as Discourse sends it."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def rails_json(document: Any) -> bytes:
    """JSON as Rails writes it: compact, UTF-8, with < > & escaped as \\u003c etc.

    Signature tests need bytes that differ from a naive re-serialisation.
    """
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return text.encode()


def _iso(value: datetime | str | None) -> str:
    if value is None:
        value = datetime.now(UTC)
    if isinstance(value, str):
        return value
    return (
        value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    )


class Upload(NamedTuple):
    """An upload the fake serves: unpack as ``sha1, short_url, path``."""

    sha1: str
    short_url: str  # upload://<base62>.<ext>, as in a post's raw
    path: str  # /uploads/default/original/1X/<sha1>.<ext>


@dataclass
class Call:
    """One admin API request the fake received."""

    method: str
    path: str
    query: dict[str, str]
    json: Any
    auth_ok: bool
    api_username: str | None


@dataclass
class Misbehaviour:
    """How to answer requests for one path instead of normally."""

    status: int | None = None  # answer with this status (body: ``body`` or a short text)
    redirect_to: str | None = None  # 302 to this URL (absolute or a path here)
    delay_s: float = 0.0  # wait before answering (for client timeout tests)
    content_type: str | None = None  # lie about the type
    body: bytes | None = None  # serve these bytes instead
    stream_bytes: int | None = None  # stream this many bytes, chunked, no Content-Length
    times: int | None = None  # misbehave this many times, then behave (None: always)


@dataclass
class FakePost:
    """What the fake knows about a post."""

    id: int
    user_id: int | None = None
    hidden: bool = False
    deleted: bool = False
    flags: list[tuple[str, int]] = field(default_factory=list)  # (api username, type id)


@dataclass
class FakeReviewable:
    """A reviewable (flag, queued post, user) the admin API can act on."""

    id: int
    type: str
    post_id: int | None = None
    user_id: int | None = None
    version: int = 0
    status: int = 0
    actions: tuple[str, ...] = ()
    performed: list[str] = field(default_factory=list)


@dataclass
class FakeUser:
    """Suspension and silence state of an account."""

    id: int
    suspended_till: str | None = None
    suspend_reason: str | None = None
    silenced_till: str | None = None
    silence_reason: str | None = None
    silenced: bool = False


@dataclass
class _Failure:
    prefix: str
    status: int
    retry_after: str | None
    body: Any
    times: int


class FakeDiscourse:
    """A Discourse stand-in on 127.0.0.1 (a free port). Use as an async context manager.

    ``strict``: unknown post/user ids give 404 (as Discourse does); by default any id
    is accepted so a test can act on posts it never announced.
    ``bad_key_status``: what a wrong ``Api-Key``/``Api-Username`` gets; a real
    Discourse answers 403 with ``error_type: invalid_access``.
    """

    def __init__(
        self,
        api_key: str = "test-api-key",
        api_username: str = "vigil",
        *,
        webhook_secret: str = "test-webhook-secret",  # noqa: S107 (a simulator's)
        strict: bool = False,
        bad_key_status: int = 403,
        host: str = "127.0.0.1",
    ) -> None:
        self.api_key = api_key
        self.api_username = api_username
        self.webhook_secret = webhook_secret
        self.strict = strict
        self.bad_key_status = bad_key_status
        self.host = host
        self.port = 0
        self.calls: list[Call] = []
        self.posts: dict[int, FakePost] = {}
        self.users: dict[int, FakeUser] = {}
        self.reviewables: dict[int, FakeReviewable] = {}
        self.site_settings: dict[str, str] = {"embedded_media_post_allowed_groups": "1|2|10"}
        self.uploads: dict[str, tuple[bytes, str]] = {}  # path -> (bytes, content type)
        self.upload_requests: list[str] = []  # paths of every GET under /uploads/
        self.webhooks_sent: list[tuple[str, int]] = []  # (event, status)
        self._misbehaviour: dict[str, Misbehaviour] = {}
        self._failures: list[_Failure] = []
        self._delivery_ids = itertools.count(1000)
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> FakeDiscourse:
        """Listen on a free loopback port."""
        app = web.Application(middlewares=[self._misbehave_middleware])
        app.router.add_get("/uploads/short-url/{name}", self._short_url)
        app.router.add_get("/uploads/{site}/original/{n}/{name}", self._serve_upload)
        app.router.add_put("/review/{id}/perform/{action}", self._review_perform)
        app.router.add_post("/post_actions.json", self._post_action)
        app.router.add_delete("/posts/{id}.json", self._delete_post)
        app.router.add_put("/posts/{id}/unhide", self._unhide_post)
        app.router.add_put("/admin/users/{id}/suspend.json", self._suspend)
        app.router.add_put("/admin/users/{id}/silence.json", self._silence)
        app.router.add_put("/admin/site_settings/{name}", self._site_setting)
        app.router.add_get("/{tail:.*}", self._serve_any)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._client = aiohttp.ClientSession()
        return self

    async def stop(self) -> None:
        """Stop listening and close the webhook client."""
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeDiscourse:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``, what ``DiscourseForum`` and bot.toml take."""
        return f"http://{self.host}:{self.port}"

    def url(self, path: str) -> str:
        """An absolute URL for a path on the fake."""
        return self.base_url + path

    # --- uploads and misbehaviour ------------------------------------------------------

    def add_upload(self, data: bytes, ext: str = "png") -> Upload:
        """Serve ``data`` as a Discourse upload; returns (sha1, short_url, path)."""
        sha1 = hashlib.sha1(data).hexdigest()  # noqa: S324 (Discourse names uploads so)
        path = f"/uploads/default/original/1X/{sha1}.{ext}"
        self.uploads[path] = (data, _CONTENT_TYPES.get(ext.lower(), "application/octet-stream"))
        return Upload(sha1, f"upload://{encode_base62_sha1(sha1)}.{ext}", path)

    def serve(self, path: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        """Serve arbitrary bytes at ``path`` (e.g. an external-looking image); returns URL."""
        self.uploads[path] = (data, content_type)
        return self.url(path)

    def misbehave(self, path: str, **how: Any) -> Misbehaviour:
        """Answer GETs of ``path`` badly; see :class:`Misbehaviour` for the knobs."""
        rule = Misbehaviour(**how)
        self._misbehaviour[path] = rule
        return rule

    def behave(self, path: str | None = None) -> None:
        """Forget misbehaviour for ``path`` (all paths if None)."""
        if path is None:
            self._misbehaviour.clear()
        else:
            self._misbehaviour.pop(path, None)

    def fail_next(
        self,
        path_prefix: str,
        status: int,
        *,
        retry_after: float | None = None,
        body: Any = None,
        times: int = 1,
    ) -> None:
        """The next ``times`` admin calls whose path starts with ``path_prefix`` get
        ``status`` (e.g. 429 with ``retry_after``, 500, 502)."""
        self._failures.append(
            _Failure(
                path_prefix,
                status,
                None if retry_after is None else f"{retry_after:g}",
                body,
                times,
            )
        )

    # --- inspection --------------------------------------------------------------------

    def calls_to(self, method: str | None = None, path_prefix: str = "") -> list[Call]:
        """Recorded admin calls, filtered by method and path prefix."""
        return [
            c
            for c in self.calls
            if (method is None or c.method == method) and c.path.startswith(path_prefix)
        ]

    def post(self, post_id: int | str) -> FakePost:
        """The fake's record of a post (created on first use)."""
        pid = int(post_id)
        return self.posts.setdefault(pid, FakePost(pid))

    def user(self, user_id: int | str) -> FakeUser:
        """The fake's record of a user (created on first use)."""
        uid = int(user_id)
        return self.users.setdefault(uid, FakeUser(uid))

    def add_reviewable(
        self,
        reviewable_id: int,
        type: str = "ReviewableFlaggedPost",
        *,
        post_id: int | None = None,
        user_id: int | None = None,
        version: int = 0,
        actions: tuple[str, ...] | None = None,
    ) -> FakeReviewable:
        """Register a reviewable the admin API can act on."""
        if actions is None:
            actions = {
                "ReviewableFlaggedPost": FLAGGED_POST_ACTIONS,
                "ReviewableQueuedPost": QUEUED_POST_ACTIONS,
                "ReviewableUser": USER_ACTIONS,
            }.get(type, ())
        reviewable = FakeReviewable(reviewable_id, type, post_id, user_id, version, 0, actions)
        self.reviewables[reviewable_id] = reviewable
        if post_id is not None:
            self.post(post_id).user_id = user_id
        return reviewable

    # --- webhook bodies (keys as in real captures, Discourse 2025.12) --------------------

    def cook(self, raw: str) -> str:
        """A cooked HTML rendering close enough to Discourse's for upload images."""

        def image(m: re.Match[str]) -> str:
            b62, ext = m[2], m[3]
            sha1 = decode_base62_sha1(b62)
            alt = html.escape(m[1])
            return (
                f'<img src="/uploads/default/original/1X/{sha1}.{ext}" alt="{alt}" '
                f'data-base62-sha1="{b62}" width="100" height="100">'
            )

        paragraphs = []
        for block in raw.split("\n\n"):
            if not block.strip():
                continue
            parts = []
            last = 0
            for m in _MD_IMAGE.finditer(block):
                parts.append(html.escape(block[last : m.start()]))
                parts.append(image(m))
                last = m.end()
            parts.append(html.escape(block[last:]))
            paragraphs.append("<p>" + "".join(parts).replace("\n", "<br>\n") + "</p>")
        return "\n".join(paragraphs)

    def post_created_payload(
        self,
        post_id: int,
        user_id: int,
        username: str,
        raw: str,
        *,
        topic_id: int = 1,
        post_number: int = 1,
        category_id: int | None = 4,
        topic_slug: str = "a-topic",
        topic_title: str = "A topic",
        trust_level: int = 0,
        staff: bool = False,
        admin: bool = False,
        moderator: bool = False,
        cooked: str | None = None,
        created_at: datetime | str | None = None,
        updated_at: datetime | str | None = None,
        hidden: bool = False,
        archetype: str = "regular",
        reviewable_id: int | None = None,
        version: int = 1,
        **overrides: Any,
    ) -> dict[str, Any]:
        """A ``{"post": {...}}`` body for post_created / post_edited; registers the post."""
        created = _iso(created_at)
        post = {
            "id": post_id,
            "name": None,
            "username": username,
            "avatar_template": f"/letter_avatar_proxy/v4/letter/{username[:1].lower()}/5daacb/{{size}}.png",
            "created_at": created,
            "cooked": self.cook(raw) if cooked is None else cooked,
            "post_number": post_number,
            "post_type": 1,
            "posts_count": post_number,
            "updated_at": _iso(updated_at) if updated_at is not None else created,
            "reply_count": 0,
            "reply_to_post_number": None,
            "quote_count": 0,
            "incoming_link_count": 0,
            "reads": 0,
            "score": 0,
            "topic_id": topic_id,
            "topic_slug": topic_slug,
            "topic_title": topic_title,
            "category_id": category_id,
            "display_username": None,
            "primary_group_name": None,
            "flair_name": None,
            "flair_group_id": None,
            "version": version,
            "user_title": None,
            "bookmarked": False,
            "raw": raw,
            "moderator": moderator,
            "admin": admin,
            "staff": staff or admin or moderator,
            "user_id": user_id,
            "hidden": hidden,
            "trust_level": trust_level,
            "deleted_at": None,
            "user_deleted": False,
            "edit_reason": None,
            "wiki": False,
            "reviewable_id": reviewable_id,
            "reviewable_score_count": 0,
            "reviewable_score_pending_count": 0,
            "post_url": f"/t/{topic_slug}/{topic_id}/{post_number}",
            "topic_posts_count": post_number,
            "topic_filtered_posts_count": post_number,
            "topic_archetype": archetype,
            "category_slug": None if category_id is None else f"category-{category_id}",
        }
        post.update(overrides)
        record = self.post(post_id)
        record.user_id = user_id
        record.hidden = hidden
        return {"post": post}

    post_edited_payload = post_created_payload

    def user_created_payload(
        self,
        user_id: int,
        username: str,
        *,
        email: str | None = None,
        created_at: datetime | str | None = None,
        trust_level: int = 0,
        post_count: int = 0,
        admin: bool = False,
        moderator: bool = False,
        ip_address: str | None = None,
        registration_ip_address: str | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """A ``{"user": {...}}`` body for user_created (admin scope: email included).

        Real webhooks carry no IP address; pass ``ip_address`` to test that one sent
        by a modified forum is dropped all the same.
        """
        user: dict[str, Any] = {
            "id": user_id,
            "username": username,
            "name": None,
            "avatar_template": f"/letter_avatar_proxy/v4/letter/{username[:1].lower()}/c4cdca/{{size}}.png",
            "email": email if email is not None else f"{username.lower()}@example.org",
            "secondary_emails": [],
            "last_posted_at": None,
            "last_seen_at": None,
            "created_at": _iso(created_at),
            "muted": False,
            "trust_level": trust_level,
            "moderator": moderator,
            "admin": admin,
            "title": None,
            "badge_count": 0,
            "time_read": 0,
            "recent_time_read": 0,
            "primary_group_id": None,
            "primary_group_name": None,
            "flair_group_id": None,
            "flair_name": None,
            "flair_url": None,
            "flair_bg_color": None,
            "flair_color": None,
            "featured_topic": None,
            "staged": False,
            "pending_count": 0,
            "profile_view_count": 0,
            "second_factor_enabled": False,
            "can_upload_profile_header": True,
            "can_upload_user_card_background": True,
            "post_count": post_count,
            "locale": "en",
            "muted_category_ids": [],
            "regular_category_ids": [],
            "watched_tags": [],
            "watching_first_post_tags": [],
            "tracked_tags": [],
            "muted_tags": [],
            "tracked_category_ids": [],
            "watched_category_ids": [],
            "watched_first_post_category_ids": [],
            "system_avatar_template": f"/letter_avatar_proxy/v4/letter/{username[:1].lower()}/c4cdca/{{size}}.png",
            "muted_usernames": [],
            "ignored_usernames": [],
            "allowed_pm_usernames": [],
            "mailing_list_posts_per_day": 0,
            "featured_user_badge_ids": [],
            "invited_by": None,
            "groups": [],
            "user_option": {"user_id": user_id, "email_digests": True, "timezone": None},
        }
        if ip_address is not None:
            user["ip_address"] = ip_address
        if registration_ip_address is not None:
            user["registration_ip_address"] = registration_ip_address
        user.update(overrides)
        self.user(user_id)
        return {"user": user}

    def flagged_post_payload(
        self,
        reviewable_id: int,
        post_id: int,
        user_id: int,
        raw: str,
        *,
        flagger_id: int = 1,
        topic_id: int = 1,
        post_number: int = 2,
        category_id: int | None = 4,
        score: float = 0.0,
        status: int = 0,
        version: int = 0,
        trust_level: int = 0,
        created_at: datetime | str | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """A ``{"reviewable": {...}}`` body for a ReviewableFlaggedPost; registers it."""
        now = _iso(created_at)
        reviewable = self.reviewables.get(reviewable_id) or self.add_reviewable(
            reviewable_id, "ReviewableFlaggedPost", post_id=post_id, user_id=user_id
        )
        reviewable.version = version
        reviewable.status = status
        body = {
            "id": reviewable_id,
            "type": "ReviewableFlaggedPost",
            "type_source": "core",
            "topic_id": topic_id,
            "topic_url": self.url(f"/t/a-topic/{topic_id}"),
            "target_type": "Post",
            "target_id": post_id,
            "target_url": self.url(f"/t/a-topic/{topic_id}/{post_number}"),
            "target_created_at": now,
            "topic_tags": [],
            "category_id": category_id,
            "created_at": now,
            "can_edit": False,
            "score": score,
            "version": version,
            "target_created_by_trust_level": trust_level,
            "created_from_flag": True,
            "status": status,
            "cooked": self.cook(raw),
            "raw": raw,
            "reply_count": 0,
            "post_updated_at": now,
            "post_version": 1,
            "post_id": post_id,
            "created_by_id": flagger_id,
            "target_created_by_id": user_id,
            "editable_fields": [],
            "reviewable_score_ids": [],
            "bundled_action_ids": (
                [f"{reviewable_id}-agree", "post-disagree", f"{reviewable_id}-ignore"]
                if status == 0
                else []
            ),
            "reviewable_note_ids": [],
            "reviewable_history_ids": [1],
        }
        body.update(overrides)
        return {"reviewable": body}

    def queued_post_payload(
        self,
        reviewable_id: int,
        user_id: int,
        raw: str,
        *,
        title: str | None = None,
        topic_id: int | None = None,
        category_id: int | None = 4,
        status: int = 0,
        version: int = 0,
        trust_level: int = 0,
        created_post_id: int | None = None,
        created_at: datetime | str | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """A ``{"reviewable": {...}}`` body for a post held for approval; registers it.

        ``created_post_id`` is the post Discourse creates once it is approved.
        """
        reviewable = self.reviewables.get(reviewable_id) or self.add_reviewable(
            reviewable_id, "ReviewableQueuedPost", post_id=created_post_id, user_id=user_id
        )
        reviewable.version = version
        reviewable.status = status
        payload: dict[str, Any] = {"raw": raw, "tags": None, "typing_duration_msecs": 5000}
        if title is not None:
            payload["title"] = title
            payload["archetype"] = "regular"
        body: dict[str, Any] = {
            "id": reviewable_id,
            "type": "ReviewableQueuedPost",
            "type_source": "core",
            "topic_id": topic_id,
            "target_type": "Post" if created_post_id else None,
            "target_id": created_post_id,
            "topic_tags": [],
            "category_id": category_id,
            "created_at": _iso(created_at),
            "can_edit": True,
            "score": 0.0,
            "version": version,
            "target_created_by_trust_level": trust_level,
            "created_from_flag": False,
            "status": status,
            "created_by_id": -1,
            "target_created_by_id": user_id,
            "payload": payload,
            "editable_fields": [],
            "reviewable_score_ids": [],
            "bundled_action_ids": (
                [f"{reviewable_id}-approve_post", f"{reviewable_id}-reject_post"]
                if status == 0
                else []
            ),
            "reviewable_note_ids": [],
            "reviewable_history_ids": [1],
        }
        if topic_id is not None:
            body["topic_url"] = self.url(f"/t/a-topic/{topic_id}")
        if created_post_id is not None:
            body["post_id"] = created_post_id
        body.update(overrides)
        return {"reviewable": body}

    def user_reviewable_payload(
        self,
        reviewable_id: int,
        user_id: int,
        username: str,
        *,
        email: str | None = None,
        status: int = 0,
        version: int = 0,
        **overrides: Any,
    ) -> dict[str, Any]:
        """A ``{"reviewable": {...}}`` body for a ReviewableUser (account to approve)."""
        self.reviewables.get(reviewable_id) or self.add_reviewable(
            reviewable_id, "ReviewableUser", user_id=user_id
        )
        body: dict[str, Any] = {
            "id": reviewable_id,
            "type": "ReviewableUser",
            "type_source": "core",
            "target_type": "User",
            "target_id": user_id,
            "user_id": user_id,
            "created_at": _iso(None),
            "can_edit": False,
            "score": 0.0,
            "version": version,
            "target_created_by_trust_level": 0,
            "status": status,
            "created_by_id": -1,
            "target_created_by_id": user_id,
            "payload": {
                "username": username,
                "name": None,
                "email": email if email is not None else f"{username.lower()}@example.org",
            },
            "editable_fields": [],
            "reviewable_score_ids": [],
            "bundled_action_ids": [f"{reviewable_id}-approve_user", f"{reviewable_id}-reject_user"],
            "reviewable_note_ids": [],
            "reviewable_history_ids": [1],
        }
        body.update(overrides)
        return {"reviewable": body}

    @staticmethod
    def ping_payload() -> dict[str, Any]:
        """The body of Discourse's "ping" delivery."""
        return {"ping": "OK"}

    # --- sending webhooks ----------------------------------------------------------------

    def webhook_request(
        self,
        event_type: str,
        event: str,
        payload: Any,
        secret: str | None = None,
        delivery_id: str | int | None = None,
    ) -> tuple[dict[str, str], bytes]:
        """The exact headers and body bytes of one delivery, signed."""
        body = payload if isinstance(payload, bytes) else rails_json(payload)
        if delivery_id is None:
            delivery_id = next(self._delivery_ids)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Discourse/2025.12.0-latest; +https://www.discourse.org/",
            "X-Discourse-Instance": self.base_url,
            "X-Discourse-Event-Id": str(delivery_id),
            "X-Discourse-Event-Type": event_type,
            "X-Discourse-Event": event,
            "X-Discourse-Event-Signature": sign(
                self.webhook_secret if secret is None else secret, body
            ),
        }
        return headers, body

    async def send_webhook(
        self,
        target_url: str,
        event_type: str,
        event: str,
        payload: Any,
        secret: str | None = None,
        delivery_id: str | int | None = None,
        *,
        headers: dict[str, str | None] | None = None,
    ) -> int:
        """POST one signed delivery to ``target_url``; returns the HTTP status.

        ``payload`` is a dict (serialised like Rails) or exact bytes. ``headers``
        overrides or (with None) removes headers, e.g. a forged signature.
        """
        sent_headers, body = self.webhook_request(event_type, event, payload, secret, delivery_id)
        for name, value in (headers or {}).items():
            if value is None:
                sent_headers.pop(name, None)
            else:
                sent_headers[name] = value
        if self._client is None:
            raise RuntimeError("FakeDiscourse is not started")
        async with self._client.post(target_url, data=body, headers=sent_headers) as resp:
            await resp.read()
            self.webhooks_sent.append((event, resp.status))
            return resp.status

    # --- HTTP handlers -------------------------------------------------------------------

    @web.middleware
    async def _misbehave_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/uploads/"):
            self.upload_requests.append(request.path)
        rule = self._misbehaviour.get(request.path)
        if rule is None or request.method != "GET":
            return await handler(request)
        if rule.times is not None:
            if rule.times <= 0:
                return await handler(request)
            rule.times -= 1
        if rule.delay_s:
            await asyncio.sleep(rule.delay_s)  # the server is slow, not the test
        if rule.redirect_to is not None:
            raise web.HTTPFound(rule.redirect_to)
        if rule.stream_bytes is not None:
            resp = web.StreamResponse(status=rule.status or 200)
            resp.content_type = rule.content_type or "image/png"
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            chunk = b"\0" * 65536
            left = rule.stream_bytes
            try:
                while left > 0:
                    await resp.write(chunk[: min(left, len(chunk))])
                    left -= len(chunk)
            except (ConnectionResetError, aiohttp.ClientConnectionResetError):
                return resp
            await resp.write_eof()
            return resp
        if rule.status is not None or rule.body is not None or rule.content_type is not None:
            stored = self.uploads.get(request.path)
            body = rule.body if rule.body is not None else (stored[0] if stored else b"error")
            ctype = rule.content_type or (stored[1] if stored else "text/plain")
            return web.Response(status=rule.status or 200, body=body, content_type=ctype)
        return await handler(request)

    async def _serve_upload(self, request: web.Request) -> web.Response:
        return self._file(request.path)

    async def _serve_any(self, request: web.Request) -> web.Response:
        return self._file(request.path)

    def _file(self, path: str) -> web.Response:
        stored = self.uploads.get(path)
        if stored is None:
            return _error(404, NOT_FOUND_MESSAGE, "not_found")
        data, ctype = stored
        return web.Response(body=data, content_type=ctype)

    async def _short_url(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        b62, _, ext = name.partition(".")
        try:
            sha1 = decode_base62_sha1(b62)
        except ValueError:
            return _error(404, NOT_FOUND_MESSAGE, "not_found")
        for path in self.uploads:
            if f"/{sha1}." in path and (not ext or path.endswith(f".{ext}")):
                raise web.HTTPFound(path)
        return _error(404, NOT_FOUND_MESSAGE, "not_found")

    async def _admin(self, request: web.Request) -> tuple[Any, web.Response | None]:
        """Record the call, then apply injected failures and the key check."""
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            if request.content_type == "application/json":
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    return None, _error(400, "Invalid JSON body", "invalid_parameters")
            else:
                body = dict((await request.post()).items()) if raw else None
        key = request.headers.get("Api-Key")
        username = request.headers.get("Api-Username")
        auth_ok = key == self.api_key and username == self.api_username
        self.calls.append(
            Call(request.method, request.path, dict(request.query), body, auth_ok, username)
        )
        for failure in self._failures:
            if failure.times > 0 and request.path.startswith(failure.prefix):
                failure.times -= 1
                headers = {"Retry-After": failure.retry_after} if failure.retry_after else {}
                payload = failure.body
                if payload is None and failure.status == 429:
                    wait = failure.retry_after or "1"
                    payload = {
                        "errors": ["You’ve performed this action too many times."],
                        "error_type": "rate_limit",
                        "extras": {"wait_seconds": float(wait), "time_left": f"{wait} seconds"},
                    }
                elif payload is None:
                    payload = {"errors": [f"Injected failure {failure.status}"]}
                return None, web.json_response(payload, status=failure.status, headers=headers)
        if not auth_ok:
            return None, _error(self.bad_key_status, INVALID_KEY_MESSAGE, "invalid_access")
        return body, None

    def _known_post(self, post_id: int) -> FakePost | None:
        post = self.posts.get(post_id)
        if post is None and not self.strict:
            post = self.post(post_id)
        if post is not None and post.deleted:
            return None
        return post

    async def _review_perform(self, request: web.Request) -> web.Response:
        _, refused = await self._admin(request)
        if refused is not None:
            return refused
        reviewable = self.reviewables.get(_int(request.match_info["id"]))
        if reviewable is None:
            return _error(404, NOT_FOUND_MESSAGE, "not_found")
        action = request.match_info["action"]
        version = _int(request.query.get("version", ""))
        if version != reviewable.version:
            return _error(
                409,
                "This item was changed by someone else. Please refresh and try again.",
                "invalid_access",
            )
        if reviewable.status != 0 or action not in reviewable.actions:
            return _error(403, INVALID_KEY_MESSAGE.split(".")[0] + ".", "invalid_access")
        reviewable.performed.append(action)
        reviewable.version += 1
        if action.startswith(("agree", "approve", "delete_and_agree")):
            reviewable.status = 1
        elif action.startswith(("disagree", "reject")):
            reviewable.status = 2
        elif action.startswith("ignore"):
            reviewable.status = 3
        if reviewable.post_id is not None:
            post = self.post(reviewable.post_id)
            if action == "agree_and_hide":
                post.hidden = True
            elif action == "delete_and_agree":
                post.deleted = True
            elif action.startswith("disagree"):
                post.hidden = False
        return web.json_response(
            {
                "reviewable_perform_result": {
                    "success": True,
                    "transition_to": _STATUS_NAMES[reviewable.status],
                    "transition_to_id": reviewable.status,
                    "created_post_id": None,
                    "created_post_topic_id": None,
                    "remove_reviewable_ids": [reviewable.id],
                    "version": reviewable.version,
                }
            }
        )

    async def _post_action(self, request: web.Request) -> web.Response:
        body, refused = await self._admin(request)
        if refused is not None:
            return refused
        body = body or {}
        for name in ("id", "post_action_type_id"):
            if body.get(name) in (None, ""):
                return _error(
                    400, f"param is missing or the value is empty: {name}", "invalid_parameters"
                )
        post = self._known_post(_int(str(body["id"])))
        if post is None:
            return _error(404, NOT_FOUND_MESSAGE, "not_found")
        type_id = _int(str(body["post_action_type_id"]))
        flag = (request.headers.get("Api-Username") or "", type_id)
        if flag in post.flags:
            return _error(403, "You have already performed this action.", "invalid_access")
        post.flags.append(flag)
        if str(body.get("take_action")).lower() == "true" and type_id in (3, 4, 7, 8, 10):
            post.hidden = True
        return web.json_response({"id": post.id, "hidden": post.hidden, "actions_summary": []})

    async def _delete_post(self, request: web.Request) -> web.Response:
        _, refused = await self._admin(request)
        if refused is not None:
            return refused
        post = self._known_post(_int(request.match_info["id"]))
        if post is None:
            return _error(404, NOT_FOUND_MESSAGE, "not_found")
        post.deleted = True
        return web.Response(status=200)

    async def _unhide_post(self, request: web.Request) -> web.Response:
        _, refused = await self._admin(request)
        if refused is not None:
            return refused
        post = self._known_post(_int(request.match_info["id"]))
        if post is None:
            return _error(404, NOT_FOUND_MESSAGE, "not_found")
        post.hidden = False
        return web.Response(status=200)

    def _known_user(self, user_id: int) -> FakeUser | None:
        user = self.users.get(user_id)
        if user is None and not self.strict and user_id > 0:
            user = self.user(user_id)
        return user

    async def _suspend(self, request: web.Request) -> web.Response:
        body, refused = await self._admin(request)
        if refused is not None:
            return refused
        body = body or {}
        for name in ("suspend_until", "reason"):
            if not body.get(name):
                return _error(
                    400, f"param is missing or the value is empty: {name}", "invalid_parameters"
                )
        user = self._known_user(_int(request.match_info["id"]))
        if user is None:
            return _error(404, NOT_FOUND_MESSAGE, "not_found")
        user.suspended_till = str(body["suspend_until"])
        user.suspend_reason = str(body["reason"])
        return web.json_response(
            {
                "suspension": {
                    "suspend_reason": user.suspend_reason,
                    "full_suspend_reason": user.suspend_reason,
                    "suspended_till": user.suspended_till,
                    "suspended_at": _iso(None),
                    "suspended_by": {"id": -1, "username": self.api_username},
                }
            }
        )

    async def _silence(self, request: web.Request) -> web.Response:
        body, refused = await self._admin(request)
        if refused is not None:
            return refused
        body = body or {}
        user = self._known_user(_int(request.match_info["id"]))
        if user is None:
            return _error(404, NOT_FOUND_MESSAGE, "not_found")
        user.silenced = True
        user.silenced_till = body.get("silenced_till")
        user.silence_reason = body.get("reason")
        return web.json_response(
            {
                "silence": {
                    "silenced": True,
                    "silence_reason": user.silence_reason,
                    "silenced_till": user.silenced_till,
                    "silenced_at": _iso(None),
                    "silenced_by": {"id": -1, "username": self.api_username},
                }
            }
        )

    async def _site_setting(self, request: web.Request) -> web.Response:
        body, refused = await self._admin(request)
        if refused is not None:
            return refused
        name = request.match_info["name"]
        if name in DEPRECATED_SETTINGS:
            return _error(
                422,
                "You cannot change this site setting because it is deprecated, use "
                f"{DEPRECATED_SETTINGS[name]} instead.",
                "invalid_parameters",
            )
        value = (body or {}).get(name)
        if value is None:
            return _error(
                400, f"param is missing or the value is empty: {name}", "invalid_parameters"
            )
        self.site_settings[name] = str(value).strip()
        return web.Response(status=200)


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        return -(2**62)  # matches nothing


def _error(status: int, message: str, error_type: str) -> web.Response:
    return web.json_response({"errors": [message], "error_type": error_type}, status=status)
