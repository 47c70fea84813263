"""Pipeline stages that check every image of an event against the hash lists.

``MediaStage`` fetches each image the event references (only from the source's forum
hosts, under the limits of ``[media]``), hashes it once in the shared pool, and
records per image either its hashes or the reason it has none. The hashes are the
query hashes of :func:`bot.variants.hash_for_query` (one decode): the image's own, and
those of the picture cut out of a frame, at the variants' scale and ``lowfreq``; all of
them are kept in ``media_results.hashes`` so a retry or a repost reuses them.
``MatchStage`` matches them (and any SHA-1 the forum named before download) against
every list (:meth:`bot.lists.ListRegistry.match_query`, each match with its tier) and
records the matches; ``RulesStage`` then decides.

What a failure means:

- A refused or broken image (a host that is not allowed, a private address, SVG, HTML,
  a truncated file, a decompression bomb, a body over the cap, a server that trickles
  or stalls past the timeouts) is a *result*: its reason is recorded on the event and
  the event goes on. Retrying would give the same answer, and a hostile upload must
  never be able to hold up or park the event that carries it.
- The forum itself failing (connection refused or reset, DNS failure of a configured
  host, HTTP 408/429/5xx) is *transient*: the event is retried with the pipeline's
  backoff (images already hashed are not fetched again). On the last attempt the
  reason is recorded instead, a problem is raised, and the event goes on, so the
  rules still see the rest of it.

An image whose SHA-1 is known before download (Discourse names uploads by it) and is
already on a list is not fetched at all: there is nothing to learn from its pixels,
and Vigil does not download known abuse material it does not need. An upload whose
bytes were hashed before (same SHA-1) is not fetched again either.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

import aiohttp

from bot.config import Config, SourceConfig
from bot.hashing import DecodeLimits, FrameHashes, HashPool, ImageHashes, ImageRejected
from bot.lists import ListRegistry, MatchResult
from bot.media import MediaPolicy, MediaRefused, absolute_url, fetch_media, host_key
from bot.model import Event, Match, MediaRef, event_from_dict
from bot.pipeline import EventContext
from bot.store import Store
from bot.trimming import Box
from bot.variants import EnrolmentHashes, QueryHashes, hash_for_enrolment, hash_for_query

log = logging.getLogger(__name__)

# Images of one event fetched at once: enough to hide the latency of a forum, few
# enough that one post with hundreds of images cannot monopolise the forum or the pool.
_CONCURRENT_FETCHES = 4
# The share of the pipeline lease one event's images may take in all, so a post full
# of trickling images ends before another worker would think this one dead.
_BUDGET_SHARE_OF_LEASE = 0.5
# Bytes one event may hold for the evidence stage: a post with hundreds of large images
# must not exhaust memory (the images past it are recorded as evidence without bytes).
_KEEP_BYTES_MAX = 256 * 1024 * 1024
_TRANSIENT = re.compile(
    r"^(HTTP (408|429|5\d\d)\b|could not download from |host \S+ does not resolve)"
)


class MediaUnavailable(Exception):
    """The forum could not serve an image right now; the event is retried later."""


@dataclass(frozen=True, slots=True)
class MediaResult:
    """One image of an event: its hashes, or why it has none."""

    index: int
    ref: MediaRef
    hashes: ImageHashes | None = None
    reason: str | None = None
    query: QueryHashes | None = None  # the robust query hashes (None in rows from before)


_IMAGE_FIELDS = frozenset(f.name for f in fields(ImageHashes))


def hashes_to_json(h: ImageHashes, query: QueryHashes | None = None) -> str:
    """Every hash of an image as JSON (what ``media_results.hashes`` holds).

    With ``query``, its robust query hashes too, under ``"query"`` (the image's own are
    not repeated there).
    """
    d: dict[str, Any] = asdict(h)
    if query is not None:
        box = query.trimmed
        d["query"] = {
            "trimmed": None if box is None else [box.left, box.top, box.right, box.bottom],
            "trimmed_pdq": list(query.trimmed_pdq),
            "trimmed_pdq_quality": query.trimmed_pdq_quality,
            "lowfreq": list(query.lowfreq),
            "small_pdq": list(query.small_pdq),
        }
    return json.dumps(d, separators=(",", ":"))


def hashes_from_json(text: str) -> ImageHashes:
    """The image's own hashes from :func:`hashes_to_json` output."""
    d: dict[str, Any] = json.loads(text)
    return _image_hashes(d)


def _image_hashes(d: dict[str, Any]) -> ImageHashes:
    return ImageHashes(
        **{
            **{k: v for k, v in d.items() if k in _IMAGE_FIELDS},
            "pdq_dihedral": tuple(d["pdq_dihedral"]),
            "extra_frames": tuple(FrameHashes(**f) for f in d.get("extra_frames", ())),
        }
    )


def query_from_json(text: str) -> QueryHashes | None:
    """The query hashes from :func:`hashes_to_json` output; None if it has none."""
    d: dict[str, Any] = json.loads(text)
    q = d.get("query")
    if not isinstance(q, dict):
        return None
    box = q.get("trimmed")
    return QueryHashes(
        base=_image_hashes(d),
        trimmed=Box(*box) if box else None,
        trimmed_pdq=tuple(q.get("trimmed_pdq", ())),
        trimmed_pdq_quality=int(q.get("trimmed_pdq_quality", 0)),
        lowfreq=tuple(q.get("lowfreq", ())),
        small_pdq=tuple(q.get("small_pdq", ())),
    )


def event_media(event: Event) -> tuple[MediaRef, ...]:
    """Every image an event references: the post's, then a generic upload's own."""
    refs: list[MediaRef] = list(event.post.media) if event.post else []
    seen = {(r.url, r.sha1) for r in refs}
    for item in event.extra.get("media", ()) or ():
        if not isinstance(item, dict):
            continue
        ref = MediaRef(item.get("url"), item.get("sha1"), item.get("filename"))
        if (ref.url, ref.sha1) not in seen:
            seen.add((ref.url, ref.sha1))
            refs.append(ref)
    return tuple(refs)


def is_transient(reason: str) -> bool:
    """Whether a fetch refusal is the forum failing (retry) rather than the image (final)."""
    return _TRANSIENT.match(reason) is not None


def safe_url(url: str) -> str:
    """A URL without its query string and fragment (they may carry signed tokens)."""
    return url.split("#", 1)[0].split("?", 1)[0]


class MediaScanner:
    """Fetches and hashes images under the configured limits; shared by the stages and /v1/check."""

    def __init__(self, config: Config, pool: HashPool | None = None) -> None:
        self.config = config
        self.pool = pool or HashPool(limits=DecodeLimits(max_pixels=config.media.max_pixels))
        self._session: aiohttp.ClientSession | None = None

    def policy(self, source: SourceConfig) -> MediaPolicy:
        """Where a source's images may come from: its own host and its ``media_hosts``."""
        hosts = {h.lower().rstrip(".") for h in source.media_hosts}
        if source.base_url:
            try:
                from yarl import URL

                hosts.add(host_key(URL(source.base_url)))
            except ValueError:
                pass
        m = self.config.media
        return MediaPolicy(
            allowed_hosts=frozenset(hosts),
            max_bytes=m.max_bytes,
            connect_timeout=m.connect_timeout_s,
            read_timeout=m.read_timeout_s,
            total_timeout=m.total_timeout_s,
        )

    def session(self) -> aiohttp.ClientSession:
        """The HTTP client for media (no cookies kept, no proxy from the environment)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
                headers={"User-Agent": "Vigil media check"},
            )
        return self._session

    async def fetch_and_query(self, url: str, policy: MediaPolicy) -> QueryHashes:
        """Download one image and compute its query hashes (:func:`hash_for_query`);
        MediaRefused or ImageRejected say why not."""
        return (await self.fetch_bytes_and_query(url, policy))[1]

    async def fetch_bytes_and_query(
        self, url: str, policy: MediaPolicy
    ) -> tuple[bytes, QueryHashes]:
        """:meth:`fetch_and_query` that also gives the bytes (for the evidence stage)."""
        fetched = await fetch_media(self.session(), url, policy)
        return fetched.data, await self.pool.run(hash_for_query, fetched.data)

    async def query_bytes(self, data: bytes) -> QueryHashes:
        """The query hashes of bytes already in hand (an upload to /v1/check)."""
        if len(data) > self.config.media.max_bytes:
            raise ImageRejected(f"file is larger than the {self.config.media.max_bytes} byte limit")
        return await self.pool.run(hash_for_query, data)

    async def enrolment(
        self, store: Store, event_id: int, index: int
    ) -> tuple[ImageHashes, EnrolmentHashes] | None:
        """Image ``index`` of stored event ``event_id`` fetched again and hashed for the
        bank with its variants (:func:`hash_for_enrolment`); None when it cannot be had.

        Only from the event's source's media hosts, under the same limits as the
        pipeline (bytes, pixels, timeouts); a failure is logged and gives None.
        """
        row = await store.event_row(event_id)
        try:
            event = event_from_dict(json.loads(row["payload"])) if row else None
        except (KeyError, TypeError, ValueError):
            event = None
        refs = event_media(event) if event is not None else ()
        source = self.config.source(event.source) if event is not None else None
        if source is None or index >= len(refs) or not refs[index].url:
            log.info("event %d image %d: nowhere to fetch the original from", event_id, index)
            return None
        url = absolute_url(source.base_url, refs[index].url) if source.base_url else refs[index].url
        try:
            fetched = await fetch_media(self.session(), url, self.policy(source))
            return await self.pool.run(hash_for_enrolment, fetched.data)
        except (MediaRefused, ImageRejected) as e:
            log.info(
                "event %d image %d: cannot fetch the original again (%s): %s",
                event_id,
                index,
                safe_url(url)[:200],
                e.reason,
            )
            return None

    async def close(self) -> None:
        """Close the HTTP client and the hash pool."""
        if self._session is not None:
            await self._session.close()
        await asyncio.get_running_loop().run_in_executor(None, self.pool.close)


class MediaStage:
    """Fetch and hash every image of the event (``facts["media"]``: MediaResults).

    ``keep_bytes`` (evidence is on): the bytes fetched stay in ``facts["media_bytes"]``
    ({media index: bytes}) for this run of the event only; the evidence stage takes
    them (bot.evidence.EvidenceStage) and nothing else stores them.
    """

    name = "media"

    def __init__(
        self,
        scanner: MediaScanner,
        lists: ListRegistry,
        store: Store,
        max_attempts: int,
        lease_s: float,
        *,
        keep_bytes: bool = False,
    ) -> None:
        self.scanner = scanner
        self.lists = lists
        self.store = store
        self.max_attempts = max_attempts
        self.budget_s = max(1.0, lease_s * _BUDGET_SHARE_OF_LEASE)
        self.keep_bytes = keep_bytes

    async def run(self, ctx: EventContext) -> None:
        """Hash what is not yet hashed; raise MediaUnavailable to retry a failing forum."""
        refs = event_media(ctx.event)
        ctx.facts["media"] = ()
        if not refs:
            return
        done = {row["media_index"]: row for row in await self.store.media_results(ctx.id)}
        source = self.scanner.config.source(ctx.event.source)
        policy = self.scanner.policy(source) if source is not None else None
        last_attempt = ctx.attempt >= self.max_attempts
        slots = asyncio.Semaphore(_CONCURRENT_FETCHES)

        async def one(index: int, ref: MediaRef) -> MediaResult | str:
            row = done.get(index)
            if row is not None:
                return _from_row(index, ref, row)
            async with slots:
                return await self._scan(ctx, index, ref, source, policy, last_attempt)

        tasks = [asyncio.create_task(one(i, ref)) for i, ref in enumerate(refs)]
        _done, pending = await asyncio.wait(tasks, timeout=self.budget_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        results: list[MediaResult] = []
        transient: list[str] = []
        for index, task in enumerate(tasks):
            if task in pending:
                reason = (
                    f"not checked: the event's images took longer than {self.budget_s:g} s in all"
                )
                result = MediaResult(index, refs[index], reason=reason)
                await self._save(ctx, result, None)
                await self.store.add_problem(
                    "media_unchecked", f"event {ctx.id}", f"image {index}: {reason}", ctx.now
                )
            else:
                outcome = task.result()
                if isinstance(outcome, str):
                    transient.append(outcome)
                    continue
                result = outcome
            results.append(result)
        ctx.facts["media"] = tuple(results)
        if transient:
            raise MediaUnavailable("; ".join(transient))

    async def _scan(
        self,
        ctx: EventContext,
        index: int,
        ref: MediaRef,
        source: SourceConfig | None,
        policy: MediaPolicy | None,
        last_attempt: bool,
    ) -> MediaResult | str:
        """One image not seen before: a MediaResult (saved), or a transient reason."""
        hashes: ImageHashes | None = None
        query: QueryHashes | None = None
        reason: str | None = None
        url = absolute_url(source.base_url, ref.url) if source is not None and ref.url else ref.url
        if ref.sha1:
            known = self.lists.match_sha1(ref.sha1, index)
            if known.allowed_by or known.matches:
                names = known.allowed_by or ", ".join(sorted({m.list for m in known.matches}))
                reason = f"not fetched: its SHA-1 is already on {names}"
            else:
                stored = await self.store.hashes_by_sha1(ref.sha1)
                if stored is not None:
                    hashes = hashes_from_json(stored)
                    query = query_from_json(stored)
        if hashes is None and reason is None:
            if source is None or policy is None:
                reason = f"source {ctx.event.source!r} is not configured any more"
            elif not url:
                reason = "the image has no URL"
            else:
                try:
                    if self.keep_bytes:
                        data, query = await self.scanner.fetch_bytes_and_query(url, policy)
                        kept = ctx.facts.setdefault("media_bytes", {})
                        if sum(map(len, kept.values())) + len(data) <= _KEEP_BYTES_MAX:
                            kept[index] = data
                    else:
                        query = await self.scanner.fetch_and_query(url, policy)
                    hashes = query.base
                except MediaRefused as e:
                    if is_transient(e.reason):
                        if not last_attempt:
                            log.info("event %d image %d: %s; will retry", ctx.id, index, e.reason)
                            return f"image {index}: {e.reason}"
                        reason = f"{e.reason} (gave up after {ctx.attempt} attempts)"
                        await self.store.add_problem(
                            "media_unavailable",
                            f"event {ctx.id}",
                            f"image {index}: {reason}",
                            ctx.now,
                        )
                    else:
                        reason = e.reason
                except ImageRejected as e:
                    reason = e.reason
        result = MediaResult(index, ref, hashes, reason, query)
        await self._save(ctx, result, url)
        if reason is not None:
            log.info(
                "event %d image %d not hashed (%s): %s",
                ctx.id,
                index,
                safe_url(url or "")[:200],
                reason,
            )
        return result

    async def _save(self, ctx: EventContext, result: MediaResult, url: str | None) -> None:
        h = result.hashes
        await self.store.save_media_result(
            ctx.id,
            result.index,
            url=safe_url(url) if url else None,
            sha1_hint=result.ref.sha1,
            sha256=h.sha256 if h else None,
            sha1=h.sha1 if h else None,
            hashes=hashes_to_json(h, result.query) if h else None,
            reason=result.reason,
            now=ctx.now,
        )


def _from_row(index: int, ref: MediaRef, row: dict[str, Any]) -> MediaResult:
    text = row["hashes"]
    hashes = hashes_from_json(text) if text else None
    query = query_from_json(text) if text else None
    return MediaResult(index, ref, hashes, row["reason"], query)


def merge_results(*results: MatchResult) -> MatchResult:
    """One image's results from several lookups: allowed if any says so, else best matches."""
    allowed = next((r.allowed_by for r in results if r.allowed_by), None)
    if allowed is not None:
        return MatchResult((), allowed)
    best: dict[tuple[str, str], Match] = {}
    for r in results:
        for m in r.matches:
            key = (m.list, m.kind)
            if key not in best or m.distance < best[key].distance:
                best[key] = m
    return MatchResult(tuple(best[k] for k in sorted(best)))


class MatchStage:
    """Match every image of the event (``facts["matches"]``, ``facts["allowed"]``)."""

    name = "match"

    def __init__(self, lists: ListRegistry, store: Store) -> None:
        self.lists = lists
        self.store = store

    async def run(self, ctx: EventContext) -> None:
        """Match hashes and known SHA-1s, record the matches (a retry adds no duplicates)."""
        matches: list[Match] = []
        allowed: dict[int, str] = {}
        for media in ctx.facts.get("media", ()):
            lookups = []
            if media.query is not None:
                lookups.append(self.lists.match_query(media.query, media.index))
            elif media.hashes is not None:  # hashed before the query hashes were kept
                lookups.append(self.lists.match_image(media.hashes, media.index))
            if media.ref.sha1:
                lookups.append(self.lists.match_sha1(media.ref.sha1, media.index))
            result = merge_results(*lookups)
            if result.allowed_by is not None:
                allowed[media.index] = result.allowed_by
                await self.store.set_media_allowed(ctx.id, media.index, result.allowed_by)
                log.info(
                    "event %d image %d cleared by allow-list %s",
                    ctx.id,
                    media.index,
                    result.allowed_by,
                )
            for m in result.matches:
                log.warning(
                    "event %d image %d matched list=%s kind=%s distance=%d category=%s tier=%s",
                    ctx.id,
                    m.media_index,
                    m.list,
                    m.kind,
                    m.distance,
                    m.category,
                    m.tier,
                )
            matches += result.matches
        ctx.facts["matches"] = tuple(matches)
        ctx.facts["allowed"] = allowed
        await self.store.save_matches(ctx.id, matches)
