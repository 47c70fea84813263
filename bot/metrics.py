"""Prometheus metrics, in a registry of Vigil's own (served at ``GET /metrics``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from bot.pipeline import EventContext

REGISTRY = CollectorRegistry(auto_describe=True)

WEBHOOKS = Counter(
    "vigil_webhooks_total",
    "Webhook deliveries received, by source and outcome (stored, duplicate, ignored, rejected)",
    ["source", "outcome"],
    registry=REGISTRY,
)
WEBHOOK_REJECTS = Counter(
    "vigil_webhook_rejections_total",
    "Webhook deliveries refused, by HTTP status",
    ["status"],
    registry=REGISTRY,
)
COMMIT_BATCH = Histogram(
    "vigil_ingest_commit_batch_size",
    "Deliveries committed per inbox transaction",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
    registry=REGISTRY,
)
EVENTS_PROCESSED = Counter(
    "vigil_events_processed_total",
    "Inbox events by outcome of processing (done, retried, parked)",
    ["outcome"],
    registry=REGISTRY,
)
STAGE_SECONDS = Histogram(
    "vigil_stage_seconds",
    "Time spent in each pipeline stage",
    ["stage"],
    registry=REGISTRY,
)
RULES_RELOADS = Counter(
    "vigil_rules_reloads_total",
    "Rules reloads by outcome (applied, rejected)",
    ["outcome"],
    registry=REGISTRY,
)
INBOX_PENDING = Gauge(
    "vigil_inbox_pending",
    "Events waiting to be processed",
    registry=REGISTRY,
)

# --- health (bot.health) and outcomes. Events in: vigil_webhooks_total{outcome="stored"};
# time to ack: vigil_alert_time_to_ack_seconds (bot.escalation).
MATCHES = Counter(
    "vigil_matches_total",
    "Image hash matches in processed events, by list and hash kind",
    ["list", "kind"],
    registry=REGISTRY,
)
ALERTS_OPEN = Gauge(
    "vigil_alerts_open",
    "Alerts open, acknowledged or being acted on (refreshed by /healthz and /metrics)",
    registry=REGISTRY,
)
CHAT_SEND_FAILURES = Counter(
    "vigil_chat_send_failures_total",
    "Chat messages that failed to send (each failed attempt; retried until given up)",
    ["chat"],
    registry=REGISTRY,
)
CHAT_UP = Gauge(
    "vigil_chat_up",
    "1 when the chat connection is up and in every configured room, else 0",
    ["chat"],
    registry=REGISTRY,
)
OUTBOX_BACKLOG = Gauge(
    "vigil_outbox_backlog",
    "Chat messages waiting to be sent",
    registry=REGISTRY,
)
LAST_EVENT_AGE = Gauge(
    "vigil_feed_last_event_age_seconds",
    "Seconds since the last webhook from each source",
    ["source"],
    registry=REGISTRY,
)
FEED_SILENT = Gauge(
    "vigil_feed_silent",
    "1 while a source has been silent longer than its silence_alarm in its busy hours",
    ["source"],
    registry=REGISTRY,
)
SYSTEM_ALERTS = Counter(
    "vigil_system_alerts_total",
    "Alerts about Vigil itself posted in the staff room, by kind (feed_silent, feed_back)",
    ["kind"],
    registry=REGISTRY,
)
HEARTBEATS = Counter(
    "vigil_heartbeats_total",
    "Heartbeat calls to the outside monitor, by outcome (sent, skipped, failed)",
    ["outcome"],
    registry=REGISTRY,
)
TIME_TO_TAKEDOWN = Histogram(
    "vigil_alert_time_to_takedown_seconds",
    "Seconds from an alert to its takedown (taken down, suspended or deleted), by severity",
    ["severity"],
    buckets=(30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400),
    registry=REGISTRY,
)


class MetricsStage:
    """The last pipeline stage: counts what the event came to (it runs once the others
    succeeded, so a retried event is counted once)."""

    name = "metrics"

    async def run(self, ctx: EventContext) -> None:
        """Count the event's hash matches."""
        for m in ctx.facts.get("matches", ()):
            MATCHES.labels(m.list, m.kind).inc()


def render() -> bytes:
    """The registry in the Prometheus text format."""
    return generate_latest(REGISTRY)
