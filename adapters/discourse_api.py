"""Forum actions through the Discourse admin API (implements ``bot.ports.ForumPort``).

Hide acts on the post's reviewable when Vigil knows it (``PUT /review/{id}/perform/
{action}?version=N``), else flags the post as staff with ``take_action`` (Discourse
hides it at once). Delete, unhide, suspend and silence are one call each. A site
setting (a lockdown switching image posting off) is ``PUT /admin/site_settings/{name}``
with ``{name: value}``, which needs an admin's API key.

HTTP failures never raise: they come back as ``ActionOutcome(ok=False)`` with a short
detail (status, path, Discourse's first error message) fit for an alert and the audit
log. The API key is only ever sent to ``base_url``: redirects are not followed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp

from bot.ports import ActionKind, ActionOutcome, ForumAction

log = logging.getLogger(__name__)

__all__ = ["FLAG_INAPPROPRIATE", "HIDE_ACTION_PREFERENCE", "DiscourseForum"]

FLAG_INAPPROPRIATE = 4  # PostActionType "inappropriate"; flagging as staff with take_action hides
# Reviewable actions that take a post out of sight, best first. Webhooks carry only
# bundle ids ("1-agree"), so when none of these is listed we ask for agree_and_hide
# (flagged posts) or reject_post (posts held for approval).
HIDE_ACTION_PREFERENCE = (
    "agree_and_hide",
    "agree_and_keep_hidden",
    "reject_post",
    "delete_and_agree",
)
_NUMERIC_ID = re.compile(r"[1-9][0-9]{0,18}")
_ACTION_ID = re.compile(r"[a-z0-9_\-]{1,64}")
_SETTING_NAME = re.compile(r"[a-z][a-z0-9_]{0,99}")
_DETAIL_MAX = 200
Sleep = Callable[[float], Awaitable[None]]


class DiscourseForum:
    """A Discourse forum's moderation API, authenticated as ``api_username``."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        api_username: str,
        session: aiohttp.ClientSession,
        *,
        flag_type_id: int = FLAG_INAPPROPRIATE,
        timeout_s: float = 10.0,
        max_retry_after_s: float = 30.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._headers = {
            "Api-Key": api_key,
            "Api-Username": api_username,
            "Accept": "application/json",
        }
        self._session = session
        self._flag_type_id = flag_type_id
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_retry_after = max_retry_after_s
        self._sleep = sleep

    def __repr__(self) -> str:  # never show the key
        return f"DiscourseForum({self._base!r}, api_username={self._headers['Api-Username']!r})"

    async def perform(self, action: ForumAction) -> ActionOutcome:
        """Carry out one action; never raises for HTTP or network failures."""
        try:
            if action.kind is ActionKind.HIDE:
                return await self._hide(action)
            if action.kind is ActionKind.UNHIDE:
                post = _post_id(action)
                return await self._call("PUT", f"/posts/{post}/unhide", None, f"unhid post {post}")
            if action.kind is ActionKind.DELETE:
                return await self._delete(action)
            if action.kind is ActionKind.SUSPEND:
                user = _user_id(action)
                body = {
                    "suspend_until": action.until or _forever(),
                    "reason": action.reason or "Suspended by Vigil",
                }
                until = action.until or "forever"
                return await self._call(
                    "PUT",
                    f"/admin/users/{user}/suspend.json",
                    body,
                    f"suspended user {user} until {until}",
                )
            if action.kind is ActionKind.SILENCE:
                user = _user_id(action)
                body = {"reason": action.reason or "Silenced by Vigil"}
                if action.until:
                    body["silenced_till"] = action.until
                until = action.until or "forever"
                return await self._call(
                    "PUT",
                    f"/admin/users/{user}/silence.json",
                    body,
                    f"silenced user {user} until {until}",
                )
            if action.kind is ActionKind.SITE_SETTING:
                name = action.setting or ""
                if not _SETTING_NAME.fullmatch(name) or action.value is None:
                    raise _BadAction(f"cannot change site setting {_show(name)}: bad name or value")
                return await self._call(
                    "PUT",
                    f"/admin/site_settings/{name}",
                    {name: action.value},
                    f"set site setting {name} to {action.value[:60]!r}",
                )
        except _BadAction as exc:
            return ActionOutcome(ok=False, detail=str(exc))
        return ActionOutcome(ok=False, detail=f"unsupported action {action.kind}")

    # --- the actions ---------------------------------------------------------------

    async def _hide(self, action: ForumAction) -> ActionOutcome:
        post = action.post_id if action.post_id and _NUMERIC_ID.fullmatch(action.post_id) else None
        if action.report_id:
            outcome = await self._perform_review(action, post)
            # A stale version (409) or an action the reviewable no longer offers must
            # not leave the post visible: a staff flag hides it all the same.
            if outcome.ok or post is None or not _worth_flagging(outcome):
                return outcome
            flagged = await self._flag(post)
            return ActionOutcome(ok=flagged.ok, detail=f"{outcome.detail}; then {flagged.detail}")
        if post is None:
            raise _BadAction(f"cannot hide: no Discourse post id (got {_show(action.post_id)})")
        return await self._flag(post)

    async def _perform_review(self, action: ForumAction, post: str | None) -> ActionOutcome:
        report = action.report_id or ""
        if not _NUMERIC_ID.fullmatch(report):
            raise _BadAction(f"cannot hide: {_show(report)} is not a Discourse reviewable id")
        chosen = _hide_action(action.report_actions, held=post is None)
        version = action.report_version or 0
        path = f"/review/{report}/perform/{chosen}?version={version}"
        what = f"post {post}" if post else "queued post"
        return await self._call("PUT", path, None, f"hid {what} via review {report} ({chosen})")

    async def _flag(self, post: str) -> ActionOutcome:
        body = {"id": int(post), "post_action_type_id": self._flag_type_id, "take_action": True}
        return await self._call("POST", "/post_actions.json", body, f"hid post {post} (staff flag)")

    async def _delete(self, action: ForumAction) -> ActionOutcome:
        post = action.post_id or ""
        if _NUMERIC_ID.fullmatch(post):
            return await self._call("DELETE", f"/posts/{post}.json", None, f"deleted post {post}")
        if action.report_id and _NUMERIC_ID.fullmatch(action.report_id):
            # A post held for approval has no post id yet: rejecting it deletes it.
            report = action.report_id
            version = action.report_version or 0
            return await self._call(
                "PUT",
                f"/review/{report}/perform/reject_post?version={version}",
                None,
                f"rejected queued post via review {report}",
            )
        raise _BadAction(f"cannot delete: no Discourse post id (got {_show(action.post_id)})")

    # --- HTTP ----------------------------------------------------------------------

    async def _call(
        self, method: str, path: str, body: dict[str, Any] | None, done: str
    ) -> ActionOutcome:
        short_path = path.split("?", 1)[0]
        for attempt in (1, 2):
            try:
                async with self._session.request(
                    method,
                    self._base + path,
                    json=body,
                    headers=self._headers,
                    timeout=self._timeout,
                    allow_redirects=False,
                ) as resp:
                    if 200 <= resp.status < 300:
                        await resp.read()
                        log.info("discourse action done: %s", done)
                        return ActionOutcome(ok=True, detail=done)
                    text = await _read_capped(resp)
                    if resp.status == 429 and attempt == 1:
                        wait = _retry_after(resp.headers.get("Retry-After"), text)
                        if wait <= self._max_retry_after:
                            log.warning("discourse rate limit on %s, retrying in %.1fs",
                                        short_path, wait)  # fmt: skip
                            await self._sleep(wait)
                            continue
                    detail = f"HTTP {resp.status} from {short_path}: {_error_text(text)}"
                    log.warning("discourse action failed: %s", detail)
                    return ActionOutcome(ok=False, detail=detail)
            except (aiohttp.ClientError, TimeoutError) as exc:
                detail = f"network error on {short_path}: {type(exc).__name__}"
                log.warning("discourse action failed: %s", detail)
                return ActionOutcome(ok=False, detail=detail)
        return ActionOutcome(ok=False, detail=f"HTTP 429 from {short_path}: still rate limited")


class _BadAction(Exception):
    """An action that cannot be sent to Discourse as given (no call is made)."""


def _show(value: str | None) -> str:
    if not value:
        return "none"
    return repr(value[:40])


def _post_id(action: ForumAction) -> str:
    if action.post_id and _NUMERIC_ID.fullmatch(action.post_id):
        return action.post_id
    raise _BadAction(f"cannot {action.kind}: no Discourse post id (got {_show(action.post_id)})")


def _user_id(action: ForumAction) -> str:
    if action.user_id and _NUMERIC_ID.fullmatch(action.user_id):
        return action.user_id
    raise _BadAction(f"cannot {action.kind}: no Discourse user id (got {_show(action.user_id)})")


def _hide_action(offered: tuple[str, ...], *, held: bool) -> str:
    for name in HIDE_ACTION_PREFERENCE:
        if name in offered:
            return name
    for name in offered:
        if "hide" in name and _ACTION_ID.fullmatch(name):
            return name
    return "reject_post" if held else "agree_and_hide"


def _worth_flagging(outcome: ActionOutcome) -> bool:
    return outcome.detail.startswith(("HTTP 403", "HTTP 404", "HTTP 409", "HTTP 422"))


def _forever() -> str:
    # Discourse's own "forever" is a date a thousand years ahead.
    return f"{datetime.now(UTC).year + 1000}-01-01T00:00:00Z"


async def _read_capped(resp: aiohttp.ClientResponse, limit: int = 16_384) -> str:
    data = await resp.content.read(limit)
    return data.decode("utf-8", "replace")


def _error_text(text: str) -> str:
    """Discourse's first error message (``{"errors": [...]}``), shortened."""
    message = ""
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        errors = doc.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], str):
            message = errors[0]
        elif isinstance(doc.get("error"), str):
            message = doc["error"]
    if not message:
        message = text if not text.lstrip().startswith("<") else "(HTML error page)"
    message = " ".join(message.split())
    if len(message) > _DETAIL_MAX:
        message = message[: _DETAIL_MAX - 1] + "…"
    return message or "(empty body)"


def _retry_after(header: str | None, text: str) -> float:
    if header:
        try:
            return max(0.0, float(header))
        except ValueError:
            pass
    try:
        doc = json.loads(text)
        wait = doc["extras"]["wait_seconds"]  # Discourse's rate-limit body
        return max(0.0, float(wait))
    except (ValueError, KeyError, TypeError):
        return 1.0
