"""Pipeline stages of the core; each is small and idempotent.

Later stages (media and hashing, alerts, escalation) add themselves to the list in
``bot.app.default_stages``; they read what earlier stages left in ``ctx.facts``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from bot.clock import as_datetime
from bot.pipeline import EventContext
from bot.rules import RuleSet
from bot.tiers import decide

log = logging.getLogger(__name__)


class RulesStage:
    """Decide what the rules say about the event and its matches (``facts["decision"]``)."""

    name = "rules"

    def __init__(self, rules: Callable[[], RuleSet]) -> None:
        # A callable, so a rules reload takes effect for the very next event.
        self._rules = rules

    async def run(self, ctx: EventContext) -> None:
        """Evaluate every rule against the event and any matches found so far."""
        matches = ctx.facts.get("matches", ())
        # signals: lockdown and report windows, left by bot.raids.SignalsStage
        signals = ctx.facts.get("signals")
        # Forum actions only from confident matches: a review-tier match alerts a person.
        decision = decide(self._rules(), ctx.event, matches, as_datetime(ctx.now), signals)
        ctx.facts["decision"] = decision
        if decision.fired:
            log.info(
                "event %d: rules %s fired, severity=%s actions=%s",
                ctx.id,
                ",".join(decision.rules),
                decision.severity,
                ",".join(decision.actions) or "none",
            )
