"""Forum actions for forums that are not Discourse, and the dry-run forum.

:class:`GenericForum` POSTs each action as JSON to the forum's callback URL, signed
like the generic webhooks (``X-Vigil-Signature: sha256=<hex HMAC-SHA256(secret,
body)>``); any 2xx means done. The request schema is in docs/generic-webhooks.md.

:class:`DryRunForum` performs nothing and says what it would have done, so an admin
can try rules on the live feed without touching the forum.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Awaitable, Callable

import aiohttp

from bot.ports import ActionKind, ActionOutcome, ForumAction

log = logging.getLogger(__name__)

__all__ = ["DryRunForum", "GenericForum", "describe_action", "sign_body"]

Sleep = Callable[[float], Awaitable[None]]


def sign_body(secret: str | bytes, body: bytes) -> str:
    """The ``X-Vigil-Signature`` value for ``body``: ``sha256=<hex HMAC>``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def describe_action(action: ForumAction) -> str:
    """A short human phrase: "hide post 12", "suspend user 7 until 2026-02-01"."""
    if action.kind in (ActionKind.SUSPEND, ActionKind.SILENCE):
        target = f"user {action.user_id or '?'}"
        if action.until:
            target += f" until {action.until}"
    elif action.post_id:
        target = f"post {action.post_id}"
    elif action.report_id:
        target = f"the post under report {action.report_id}"
    else:
        target = "post ?"
    return f"{action.kind} {target}"


class GenericForum:
    """Sends actions to a forum's signed callback URL."""

    def __init__(
        self,
        callback_url: str,
        secret: str,
        session: aiohttp.ClientSession,
        *,
        timeout_s: float = 10.0,
        max_retry_after_s: float = 30.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._url = callback_url
        self._secret = secret.encode()
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_retry_after = max_retry_after_s
        self._sleep = sleep

    def __repr__(self) -> str:  # never show the secret
        return f"GenericForum({self._url!r})"

    async def perform(self, action: ForumAction) -> ActionOutcome:
        """POST the action; 2xx is success. Never raises for HTTP or network failures."""
        action_id = uuid.uuid4().hex  # the same id on a retry lets the forum deduplicate
        body = json.dumps(
            {
                "action": action.kind.value,
                "action_id": action_id,
                "source": action.source,
                "post_id": action.post_id,
                "user_id": action.user_id,
                "report_id": action.report_id,
                "reason": action.reason,
                "until": action.until,
            },
            separators=(",", ":"),
        ).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Vigil-Signature": sign_body(self._secret, body),
            "X-Vigil-Delivery": action_id,
        }
        what = describe_action(action)
        for attempt in (1, 2):
            try:
                async with self._session.post(
                    self._url,
                    data=body,
                    headers=headers,
                    timeout=self._timeout,
                    allow_redirects=False,
                ) as resp:
                    text = (await resp.content.read(4096)).decode("utf-8", "replace")
                    if 200 <= resp.status < 300:
                        return ActionOutcome(ok=True, detail=f"{what}: done by the forum")
                    if resp.status == 429 and attempt == 1:
                        wait = _seconds(resp.headers.get("Retry-After"))
                        if wait <= self._max_retry_after:
                            await self._sleep(wait)
                            continue
                    short = " ".join(text.split())[:200] or "(empty body)"
                    detail = f"{what}: HTTP {resp.status} from the forum callback: {short}"
                    log.warning("generic forum action failed: %s", detail)
                    return ActionOutcome(ok=False, detail=detail)
            except (aiohttp.ClientError, TimeoutError) as exc:
                detail = f"{what}: network error on the forum callback: {type(exc).__name__}"
                log.warning("generic forum action failed: %s", detail)
                return ActionOutcome(ok=False, detail=detail)
        return ActionOutcome(ok=False, detail=f"{what}: forum callback still rate limited")


class DryRunForum:
    """Performs nothing; reports what the real forum port would have been asked."""

    def __init__(self, inner_description: str = "") -> None:
        self._inner = inner_description

    async def perform(self, action: ForumAction) -> ActionOutcome:
        """Always ok and ``simulated``: "dry run: would hide post 12"."""
        detail = f"dry run: would {describe_action(action)}"
        if self._inner:
            detail += f" on {self._inner}"
        log.info("%s", detail)
        return ActionOutcome(ok=True, detail=detail, simulated=True)


def _seconds(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 1.0
    except ValueError:
        return 1.0
