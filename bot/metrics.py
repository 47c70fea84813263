"""Prometheus metrics, in a registry of Vigil's own (served at ``GET /metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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


def render() -> bytes:
    """The registry in the Prometheus text format."""
    return generate_latest(REGISTRY)
