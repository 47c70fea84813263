"""Match tiers: what Vigil may act on by itself, and what only a person may act on.

- **confident**: an exact hash, or PDQ within 31 bits (Meta's published threshold) of
  an image's PDQ or of a stored variant of it. Rules may act on these by themselves.
- **review**: anything looser: a ``lowfreq`` match (crops, frames, captions, small
  rotations), pHash/dHash, a PDQ beyond 31 bits on a list that widened its radius.
  A review match raises an alert for a person; it never triggers a forum action by
  itself and never makes ``/v1/check`` answer ``block`` (at most ``hold``).

The rules code asks :func:`may_act` (per match) or uses :func:`decide` in place of
``bot.rules.evaluate``: the alert comes from every match, the forum actions only from
the rules that still fire on the confident matches alone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime

from bot.model import Event, Match
from bot.rules import Decision, RuleSet, Signals, evaluate

log = logging.getLogger(__name__)

CONFIDENT = "confident"
REVIEW = "review"
TIERS = (CONFIDENT, REVIEW)

EXACT_KINDS = frozenset({"sha256", "sha1", "md5"})
# Meta's threshold for PDQ; the enrolment variants are held to the same one.
CONFIDENT_PDQ_DISTANCE = 31
# lowfreq (128 bits): edited copies measured at most ~22 bits from a stored variant for
# crops up to 10% a side, captions, borders and 5 degree rotations; distinct images
# below 22 in under 0.01% of pairs (docs/robustness.md).
REVIEW_LOWFREQ_DISTANCE = 22
VERDICT_RANK = {"allow": 0, "hold": 1, "block": 2}


def tier_of(kind: str, distance: int) -> str:
    """The tier of a match of ``kind`` at ``distance``."""
    if kind in EXACT_KINDS and distance == 0:
        return CONFIDENT
    if kind == "pdq" and distance <= CONFIDENT_PDQ_DISTANCE:
        return CONFIDENT
    return REVIEW


def may_act(match: Match) -> bool:
    """Whether Vigil may act on ``match`` without a person: only confident ones."""
    return match.tier == CONFIDENT


def confident(matches: Iterable[Match]) -> tuple[Match, ...]:
    """The matches Vigil may act on by itself."""
    return tuple(m for m in matches if may_act(m))


def decide(
    ruleset: RuleSet,
    event: Event,
    matches: Sequence[Match],
    now: datetime,
    signals: Signals | None = None,
) -> Decision:
    """``bot.rules.evaluate`` with the tier rule: forum actions only from confident matches.

    Rules are evaluated on every match for the alert (severity, room, which rules fired)
    and again on the confident matches alone for the forum actions; a rule that fires only
    because of a review-tier match alerts but does nothing on the forum.
    """
    full = evaluate(ruleset, event, matches, now, signals)
    sure = confident(matches)
    if len(sure) == len(matches):
        return full
    acting = evaluate(ruleset, event, sure, now, signals)
    if acting.actions != full.actions:
        log.info(
            "review-tier matches only: actions %s held for a person",
            ", ".join(a for a in full.actions if a not in acting.actions) or "none",
        )
    return replace(full, actions=acting.actions)


def verdict(list_verdict: str, match: Match) -> str:
    """What a pre-publication check answers for one match: ``block`` needs a confident one."""
    if match.tier != CONFIDENT and VERDICT_RANK.get(list_verdict, 2) > VERDICT_RANK["hold"]:
        return "hold"
    return list_verdict


def strictest(verdicts: Iterable[str]) -> str:
    """The strictest of several verdicts (``allow`` when there are none)."""
    return max(verdicts, key=lambda v: VERDICT_RANK[v], default="allow")
