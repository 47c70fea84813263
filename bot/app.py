"""App wiring: the one aiohttp server, the store, the inbox writer, the pipeline.

This is the only core module that names adapters, and it imports them lazily, by
the kind of each configured source, so the core stays free of forum and chat code.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from bot import metrics
from bot.chat_service import ChatService
from bot.check_api import CheckApi
from bot.clock import Clock, SystemClock
from bot.config import Config, SourceConfig, SourceKind
from bot.escalation import EscalationEngine, prime_metrics
from bot.evidence import EvidenceVault
from bot.health import Health, Heartbeat, SilenceMonitor, SystemAlerts, make_heartbeat
from bot.ingest import GroupCommitter, Ingest, WebhookSource
from bot.lists import ListRegistry
from bot.personal_data import RetentionTask
from bot.pipeline import Pipeline, Stage
from bot.ports import ChatPort, ForumPort, WebhookParser
from bot.raids import LockdownManager
from bot.rules import RuleSet, load_rules
from bot.scanning import MediaScanner
from bot.schema import Problems
from bot.store import Store

log = logging.getLogger(__name__)


def make_parser(source: SourceConfig) -> WebhookParser:
    """The webhook parser for a source's kind (imported only when configured)."""
    if source.kind == SourceKind.DISCOURSE:
        from adapters.discourse_webhooks import DiscourseParser

        return DiscourseParser(trusted_upload_hosts=source.media_hosts)
    from adapters.generic_webhooks import GenericParser

    return GenericParser()


def make_chats(app: App) -> dict[str, ChatPort]:
    """The chat ports bot.toml configures (imported only when configured)."""
    cfg = app.config
    ports: dict[str, ChatPort] = {}
    if cfg.matrix is not None and app.store is not None:
        from adapters.matrix_chat import MatrixChat

        rooms = [r.matrix for r in cfg.rooms if r.matrix]
        ports["matrix"] = MatrixChat(
            cfg.matrix.homeserver,
            cfg.matrix.user_id,
            access_token=cfg.secret(cfg.matrix.access_token_env),
            password=cfg.secret(cfg.matrix.password_env),
            device_name=cfg.matrix.device_name,
            rooms=rooms,
            state=app.store,
        )
    if cfg.discord is not None and app.store is not None:
        from adapters.discord_chat import DiscordChat

        ports["discord"] = DiscordChat(
            cfg.secret(cfg.discord.token_env) or "",
            cfg.discord.guild_id,
            roster=lambda user: cfg.staff_by_chat_id("discord", user),
            state=app.store,
            rooms=[r.discord for r in cfg.rooms if r.discord],
            message_content=cfg.discord.message_content,
            mention_role=cfg.discord.mention_role,
        )
    return ports


def make_forum(
    source: SourceConfig, config: Config, session: aiohttp.ClientSession
) -> ForumPort:
    """The moderation API of a source: Discourse, a signed callback, or none (dry run
    wraps them all: nothing is sent, the outcome says what would have been)."""
    from adapters.generic_forum import DryRunForum

    if config.service.dry_run:
        return DryRunForum(source.name)
    from bot.actions import MissingForum

    key = config.secret(source.api_key_env)
    if source.kind == SourceKind.DISCOURSE and key and source.api_username:
        from adapters.discourse_api import DiscourseForum

        return DiscourseForum(source.base_url, key, source.api_username, session)
    secret = config.secret(source.callback_secret_env)
    if source.callback_url and secret:
        from adapters.generic_forum import GenericForum

        return GenericForum(source.callback_url, secret, session)
    return MissingForum(source.name)


@dataclass(frozen=True, slots=True)
class Loaded:
    """A configuration and its rules, both free of errors."""

    config: Config
    rules: RuleSet
    problems: Problems


def load_everything(config_path: Path) -> tuple[Loaded | None, Problems]:
    """Load ``bot.toml`` and every rules file; None when anything has an error."""
    problems = Problems()
    from bot.config import load_config

    config = load_config(config_path, problems)
    if config is None:
        return None, problems
    rules = load_rules(config.service.rules_dir, config, problems)
    if problems.errors:
        return None, problems
    return Loaded(config, rules, problems), problems


class RulesWatcher:
    """Reloads the rules when a file in the rules directory (or a list file) changes."""

    def __init__(self, app: App, interval_s: float = 2.0) -> None:
        self.app = app
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._fingerprint = self._scan()

    def _scan(self) -> tuple[tuple[str, int, int], ...]:
        paths = set(self.app.config.service.rules_dir.glob("*.toml"))
        paths |= {spec.file for spec in self.app.rules.lists}
        out = []
        for p in sorted(paths):
            try:
                st = p.stat()
                out.append((str(p), st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((str(p), -1, -1))
        return tuple(out)

    def start(self) -> None:
        """Start polling (cheap: a stat per file every couple of seconds)."""
        self._task = asyncio.create_task(self._run(), name="rules-watcher")

    async def stop(self) -> None:
        """Stop polling."""
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            now = self._scan()
            if now != self._fingerprint:
                self._fingerprint = now
                await self.app.reload_rules()
                self._fingerprint = self._scan()


class App:
    """A running Vigil: build with a config and rules, then ``start``/``stop``."""

    def __init__(
        self,
        config: Config,
        rules: RuleSet,
        *,
        clock: Clock | None = None,
        stages: Callable[[App], list[Stage]] | None = None,
        watch_rules: bool = True,
        chats: Callable[[App], Mapping[str, ChatPort]] | None = None,
    ) -> None:
        self.config = config
        self.rules = rules
        self.clock = clock or SystemClock()
        self._stage_factory = stages or default_stages
        self._chat_factory = chats or make_chats
        self.chat: ChatService | None = None  # alerts, buttons, outbox (bot.chat_service)
        self._forum_session: aiohttp.ClientSession | None = None
        self.watch_rules = watch_rules
        self.store: Store | None = None
        self.committer: GroupCommitter | None = None
        self.pipeline: Pipeline | None = None
        self.ingest: Ingest | None = None
        self.runner: web.AppRunner | None = None
        self.watcher: RulesWatcher | None = None
        self.port: int | None = None
        self.lists: ListRegistry | None = None  # hash lists in force (bot.lists)
        self.scanner: MediaScanner | None = None  # media fetch + hash pool (bot.scanning)
        self.health: Health | None = None  # /healthz and the gauges (bot.health)
        self.silence: SilenceMonitor | None = None  # feed-silence alarm (bot.health)
        self.heartbeat: Heartbeat | None = None  # call to an outside monitor (bot.health)
        self.lockdown: LockdownManager | None = None  # raids and lockdowns (bot.raids)
        self.vault: EvidenceVault | None = None  # encrypted evidence (bot.evidence)
        self.retention: RetentionTask | None = None  # purges personal data and evidence
        self.escalation: EscalationEngine | None = None  # pages people (bot.escalation)

    async def start(self) -> None:
        """Open the store, start the writer and workers, then listen for webhooks."""
        cfg = self.config
        self.store = await Store.open(cfg.store.path, synchronous=cfg.store.synchronous)
        released = await self.store.release_claims()
        if released:
            log.warning("resuming %d events left in progress by a previous run", released)
        # Lists before the workers: no event may be matched against half the lists.
        self.lists = ListRegistry(cfg.service.data_dir / "lists-cache", self.store, self.clock)
        await self.lists.load(self.rules)
        self.scanner = MediaScanner(cfg)
        # Evidence before the workers: its stage needs the vault (off without a key).
        self.vault = EvidenceVault.from_config(cfg)
        self.retention = RetentionTask(self.store, cfg, self.clock, self.vault)
        self.retention.start()
        await self._start_chat()
        self.pipeline = Pipeline(self.store, self._stage_factory(self), cfg.pipeline, self.clock)
        self.committer = GroupCommitter(
            self.store, self.clock, cfg.ingest.commit_max_batch, on_commit=self.pipeline.wake
        )
        self.committer.start()
        sources = {
            s.name: WebhookSource(
                s, make_parser(s), (cfg.secret(s.webhook_secret_env) or "").encode()
            )
            for s in cfg.sources
        }
        self.ingest = Ingest(
            sources,
            self.committer,
            cfg.ingest.max_body_bytes,
            keep_personal=cfg.privacy.keep_personal_data,
        )
        self.pipeline.start()
        self._start_health()
        # In-flight requests only wait for a commit; a few seconds is plenty to drain them.
        self.runner = web.AppRunner(self.web_app(), access_log=None, shutdown_timeout=3.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, cfg.service.host, cfg.service.port)
        await site.start()
        self.port = self._bound_port()
        if self.watch_rules:
            self.watcher = RulesWatcher(self)
            self.watcher.start()
        # Only once listening: a heartbeat says Vigil can take webhooks.
        assert self.health is not None
        self.heartbeat = make_heartbeat(cfg, self.clock, self.health.report)
        if self.heartbeat is not None:
            self.heartbeat.start()
        log.info(
            "vigil listening on %s:%s with %d sources, %d rules, %d lists%s",
            cfg.service.host,
            self.port,
            len(cfg.sources),
            len(self.rules.rules),
            len(self.rules.lists),
            " (dry run)" if cfg.service.dry_run else "",
        )

    async def _start_chat(self) -> None:
        """Forum ports, chat ports and the chat service (before the pipeline: it alerts)."""
        assert self.store is not None
        session = aiohttp.ClientSession()
        self._forum_session = session
        forums = {s.name: make_forum(s, self.config, session) for s in self.config.sources}

        def forum(name: str) -> ForumPort:
            from bot.actions import MissingForum

            return forums.get(name) or MissingForum(name)

        async def bank(alert: object, actor: str) -> None:
            # A takedown puts the post's images in the local bank, so a repost is known.
            from bot.store import AlertRecord

            assert isinstance(alert, AlertRecord)
            if alert.resolution in ("taken_down", "suspended", "deleted") and alert.resolved_at:
                took = max(0.0, alert.resolved_at - alert.created_at)
                metrics.TIME_TO_TAKEDOWN.labels(alert.severity).observe(took)
            if self.lists is None or alert.resolution not in ("taken_down", "suspended", "deleted"):
                return
            # With the scanner, each image's original is fetched again so its enrolment
            # variants (crops, lowfreq) are banked too (bot.lists.ListRegistry.bank_add_event).
            originals = None
            if self.scanner is not None and self.store is not None:
                originals = functools.partial(self.scanner.enrolment, self.store)
            for t in alert.targets:
                await self.lists.bank_add_event(
                    t.event_id, actor, f"alert #{alert.id}", alert.id, originals
                )

        def lists_status() -> list[str]:
            if self.lists is None:
                return []
            return [
                "Lists: " + ", ".join(f"{s.name} ({s.entries})" for s in self.lists.statuses())
            ]

        self.chat = ChatService(
            self.config,
            self.store,
            self.clock,
            self._chat_factory(self),
            forum,
            lists_status=lists_status,
            on_resolved=bank,
            rules=lambda: self.rules,
            alert_changed=self._alert_changed,
        )
        await self.chat.start()
        # After the chat service: its outbox carries the pages. The first pass sweeps
        # alerts a previous run left without an escalation and fires overdue steps once.
        self.escalation = EscalationEngine(
            self.store,
            self.clock,
            lambda: self.rules,
            self.config,
            on_queued=self.chat.outbox.wake,
        )
        prime_metrics(self.rules)
        self.escalation.start_loop()
        await self._start_lockdown(forum)

    async def _start_lockdown(self, forum: Callable[[str], ForumPort]) -> None:
        """The lockdown state machine (bot.raids): its state from the store, its timer on
        the clock (an overdue end or reminder happens now), ``!lockdown`` in chat."""
        assert self.store is not None and self.chat is not None
        self.lockdown = LockdownManager(
            self.config,
            self.store,
            self.clock,
            rooms=self.chat.room_addresses,
            forums=forum,
            wake_outbox=self.chat.outbox.wake,
            on_alert=lambda _alert_id: self._alert_changed(),
        )
        await self.lockdown.load()
        self.chat.moderation.lockdown = self.lockdown
        self.lockdown.start_loop()

    def _alert_changed(self) -> None:
        """An alert was created, acked or resolved: the escalation engine looks now."""
        if self.escalation is not None:
            self.escalation.wake()

    def _start_health(self) -> None:
        """The health model and the feed-silence alarm (bot.health)."""
        assert self.store is not None
        started = self.clock.now()
        self.health = Health(
            self.config, self.store, self.clock, chat=self.chat, started_at=started
        )
        alerts = SystemAlerts(self.config, self.store, self.clock, self.chat)
        self.silence = SilenceMonitor(
            self.config, self.store, self.clock, alerts, started_at=started
        )
        self.silence.start()

    def _bound_port(self) -> int | None:
        assert self.runner is not None
        for addr in self.runner.addresses:
            if isinstance(addr, tuple) and len(addr) >= 2:
                return int(addr[1])
        return None

    def web_app(self) -> web.Application:
        """The aiohttp application with every route of DESIGN §5."""
        assert self.ingest is not None
        # The body limit is enforced by the handler with a clear 413; aiohttp's own
        # limit sits just above it so oversized chunked bodies stop being read early.
        app = web.Application(client_max_size=self.config.ingest.max_body_bytes + 1)
        app.add_routes(self.ingest.routes())
        app.add_routes([web.get("/healthz", self.healthz), web.get("/metrics", self.metrics)])
        app.add_routes(CheckApi(self.config, lambda: self.lists, lambda: self.scanner).routes())
        return app

    async def healthz(self, _request: web.Request) -> web.Response:
        """The health model of bot.health: 200 when all is well, 503 and what is failing."""
        assert self.health is not None
        report = await self.health.report()
        return web.json_response(report.body, status=report.http_status)

    async def metrics(self, _request: web.Request) -> web.Response:
        """Prometheus text format (the health gauges are refreshed first)."""
        if self.health is not None:
            await self.health.report()
        return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")

    async def reload_rules(self) -> bool:
        """Load the rules again; keep the old ones if the new ones have errors."""
        problems = Problems()
        new = load_rules(self.config.service.rules_dir, self.config, problems)
        if problems.errors:
            metrics.RULES_RELOADS.labels("rejected").inc()
            detail = "; ".join(str(p) for p in problems.errors)
            log.error("rules reload rejected, the rules in force stay in force: %s", detail)
            if self.store is not None:
                await self.store.add_problem("rules_rejected", "rules", detail, self.clock.now())
            return False
        if self.lists is not None:
            await self.lists.reload(new)  # a list that fails keeps its old version
        self.rules = new
        prime_metrics(new)
        metrics.RULES_RELOADS.labels("applied").inc()
        log.info("rules reloaded: %d rules, %d lists", len(new.rules), len(new.lists))
        return True

    async def stop(self) -> None:
        """Stop taking deliveries, commit what was accepted, drain the workers, close."""
        if self.heartbeat:
            await self.heartbeat.stop()
        if self.silence:
            await self.silence.stop()
        if self.watcher:
            await self.watcher.stop()
        if self.runner:
            await self.runner.cleanup()
        if self.committer:
            await self.committer.close()
        if self.pipeline:
            await self.pipeline.stop()
        if self.escalation:
            await self.escalation.stop()  # it queues pages for the chat outbox: stop it first
        if self.lockdown:
            await self.lockdown.stop()  # its state stays in the store for the next start
        if self.chat:
            await self.chat.stop()
        if self._forum_session is not None:
            await self._forum_session.close()
        if self.scanner:
            await self.scanner.close()
        if self.retention:
            await self.retention.stop()
        if self.store:
            await self.store.close()
        log.info("vigil stopped")


def default_stages(app: App) -> list[Stage]:
    """The stages of a running service, in order."""
    from bot.chat_service import AlertStage
    from bot.evidence import EvidenceStage
    from bot.raids import SignalsStage
    from bot.scanning import MatchStage, MediaStage
    from bot.stages import RulesStage

    assert app.lists is not None and app.scanner is not None and app.store is not None
    assert app.vault is not None
    pipe = app.config.pipeline
    return [
        MediaStage(
            app.scanner,
            app.lists,
            app.store,
            pipe.max_attempts,
            pipe.lease_s,
            keep_bytes=app.vault.enabled,  # the bytes of matched images, for the evidence
        ),
        MatchStage(app.lists, app.store),
        EvidenceStage(app.vault, app.store, lambda: app.rules, app.config.evidence.categories),
        # Account age, distinct reporters, raid counters, lockdown: what rules may ask.
        SignalsStage(app.store, lambda: app.rules, app.lockdown),
        RulesStage(lambda: app.rules),
        *([AlertStage(app.chat)] if app.chat is not None else []),
        metrics.MetricsStage(),  # last: counts only what got through every stage
    ]
