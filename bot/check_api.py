"""``POST /v1/check``: may this upload be published? A synchronous answer for a forum.

Request (``Authorization: Bearer <token>``, the token from the environment variable
that ``service.check_token_env`` names):

- ``multipart/form-data`` with the image in a part named ``image``; or
- JSON ``{"url": "https://forum.example/uploads/...", "source": "forum"}``: an image on
  an allowed media host of a source (``source`` optional: by default the source whose
  hosts include the URL's). A relative URL needs ``source`` and resolves against its
  ``base_url``.

Answer ``200 {"verdict": "allow" | "hold" | "block", "matches": [...], "sha256": ...,
"allowed_by": null | "<allow-list>"}``. The verdict is the strictest ``verdict`` of
the lists matched (``block`` > ``hold`` > ``allow``); an allow-list match wins and
gives ``allow``; no match gives ``allow``. The same limits as the pipeline apply
(bytes cap, pixel cap, formats, hosts, timeouts). Errors: 401 wrong or missing token,
503 endpoint not enabled, 413 image over the cap, 415 wrong body type, 422 an image
that cannot be checked (with the reason), 502 the forum did not serve the URL. The
image is never echoed, stored or logged.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from yarl import URL

from bot.config import Config, SourceConfig
from bot.hashing import ImageRejected
from bot.lists import ListRegistry, strictest_verdict
from bot.media import MediaRefused, absolute_url, host_key
from bot.scanning import MediaScanner, is_transient
from bot.variants import QueryHashes

log = logging.getLogger(__name__)

_MAX_JSON_BYTES = 64 * 1024


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


class CheckApi:
    """The handler of ``POST /v1/check``."""

    def __init__(
        self,
        config: Config,
        lists: Callable[[], ListRegistry | None],
        scanner: Callable[[], MediaScanner | None],
    ) -> None:
        self.config = config
        self._lists = lists
        self._scanner = scanner
        token = config.secret(config.service.check_token_env)
        self._token = token.encode() if token else None

    def routes(self) -> list[web.RouteDef]:
        """The route to add to the service's aiohttp application."""
        return [web.post("/v1/check", self.check)]

    def _authorised(self, request: web.Request) -> bool:
        assert self._token is not None
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer":
            given = ""
        # Constant-time, and compared even when empty so timing says nothing.
        return hmac.compare_digest(given.strip().encode(), self._token)

    async def check(self, request: web.Request) -> web.Response:
        """Hash the image (uploaded or fetched), match it, answer with the verdict."""
        if self._token is None:
            return _error(
                503,
                "the pre-publication check is not enabled: set service.check_token_env in "
                "bot.toml to the name of an environment variable holding a token",
            )
        if not self._authorised(request):
            return _error(401, "missing or wrong bearer token", **{"WWW-Authenticate": "Bearer"})
        lists, scanner = self._lists(), self._scanner()
        if lists is None or scanner is None:
            return _error(503, "Vigil is starting; try again in a moment")
        ctype = request.content_type
        try:
            if ctype == "multipart/form-data":
                query = await self._from_upload(request, scanner)
            elif ctype == "application/json":
                query = await self._from_url(request, scanner)
            else:
                return _error(
                    415, "send multipart/form-data with an 'image' part, or JSON {\"url\": ...}"
                )
        except _Answer as a:
            return a.response
        except ImageRejected as e:
            return _error(422, f"image cannot be checked: {e.reason}")
        # The query hashes, as the pipeline matches a post's images: a cropped, framed or
        # captioned copy is found too (a review-tier match holds at most, never blocks).
        result = lists.match_query(query)
        hashes = query.base
        verdict = strictest_verdict(lists, result)
        log.info(
            "check: verdict=%s matches=%d sha256=%s",
            verdict,
            len(result.matches),
            hashes.sha256,
        )
        return web.json_response(
            {
                "verdict": verdict,
                "matches": [
                    {
                        "list": m.list,
                        "kind": m.kind,
                        "distance": m.distance,
                        "category": m.category,
                        "tier": m.tier,
                    }
                    for m in result.matches
                ],
                "allowed_by": result.allowed_by,
                "sha256": hashes.sha256,
            }
        )

    async def _from_upload(self, request: web.Request, scanner: MediaScanner) -> QueryHashes:
        cap = self.config.media.max_bytes
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if getattr(part, "name", None) != "image":
                    continue
                data = bytearray()
                while chunk := await part.read_chunk(64 * 1024):  # type: ignore[union-attr]
                    data += chunk
                    if len(data) > cap:
                        raise _Answer(_error(413, f"image is over the {cap} byte limit"))
                return await scanner.query_bytes(bytes(data))
        except (ValueError, AssertionError) as e:  # aiohttp's multipart reader on bad input
            raise _Answer(_error(400, f"malformed multipart body: {e}")) from None
        raise _Answer(_error(400, "no part named 'image' in the multipart body"))

    async def _from_url(self, request: web.Request, scanner: MediaScanner) -> QueryHashes:
        body = await request.content.read(_MAX_JSON_BYTES + 1)
        if len(body) > _MAX_JSON_BYTES:
            raise _Answer(_error(413, "JSON body is too large"))
        try:
            doc: Any = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise _Answer(_error(400, "body is not valid JSON")) from None
        if not isinstance(doc, dict) or not isinstance(doc.get("url"), str) or not doc["url"]:
            raise _Answer(_error(400, 'expected {"url": "<image URL>", "source": "<optional>"}'))
        source = self._source_for(doc["url"], doc.get("source"))
        url = absolute_url(source.base_url, doc["url"]) if source.base_url else doc["url"]
        try:
            return await scanner.fetch_and_query(url, scanner.policy(source))
        except MediaRefused as e:
            status = 502 if is_transient(e.reason) else 422
            raise _Answer(_error(status, f"image cannot be checked: {e.reason}")) from None

    def _source_for(self, url: str, name: Any) -> SourceConfig:
        if name is not None:
            source = self.config.source(name) if isinstance(name, str) else None
            if source is None:
                names = ", ".join(s.name for s in self.config.sources) or "none"
                raise _Answer(_error(400, f"no source called {name!r}; sources: {names}"))
            return source
        try:
            key = host_key(URL(url))
        except ValueError:
            raise _Answer(_error(422, "image cannot be checked: malformed URL")) from None
        if not URL(url).is_absolute():
            raise _Answer(_error(400, 'a relative URL needs "source"'))
        scanner = self._scanner()
        assert scanner is not None
        for source in self.config.sources:
            if key in scanner.policy(source).allowed_hosts:
                return source
        raise _Answer(
            _error(422, f"image cannot be checked: host {key} is not an allowed media host")
        )


class _Answer(Exception):
    """An early HTTP answer from deep inside a handler."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response
