"""Member reports: who reported which post, and what a report adds to an alert.

A report (a Discourse reviewable, a generic ``report_*`` event) becomes an alert like
any other event; this module supplies the two things that are particular to reports:

* **Distinct reporters.** Rules may ask that N *different* members reported a post
  within M minutes (``when.distinct_reporters``). Each report is recorded once per
  (post, member) in a durable window (``report_windows``), so the same member
  reporting twice counts once and a restart forgets nothing.
* **Joining.** A report on a post that an open alert already shows is merged into
  that alert (who reported, why, the score; the forum's reviewable, so a takedown
  acts through it) instead of opening a second alert about the same post.

Who reported: a generic report names the member (``reporter``, a username). A
Discourse reviewable carries only the id of the member who created it
(``created_by_id``, the first flagger) and the ids of its scores
(``reviewable_score_ids``, one per flag; Discourse lets a member flag a post once).
Later flags arrive as ``reviewable_score_updated`` with the same creator, so Vigil
counts score ids when the parser passes them on (``extra["score_ids"]``) and the
creator otherwise (see docs/raids-and-reports.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bot.alerts import scrub
from bot.model import Event, ReportKind

# Reporter windows are kept at least this long (and as long as the longest rule window).
KEEP_REPORTS_S = 2 * 86400.0
MAX_REPORTS_SHOWN = 20  # per alert target: enough to read, bounded for a flood


def reporter_keys(event: Event) -> tuple[str, ...]:
    """Who made this report, as stable keys: ``name:<username>`` (a generic report),
    ``score:<id>`` for each flag of a Discourse reviewable when the event lists them
    (``extra["score_ids"]``; Discourse takes one flag per member and post), else
    ``id:<user id>`` of the member who created the reviewable."""
    report = event.report
    if report is None:
        return ()
    if report.reporter:
        return ("name:" + report.reporter.strip().casefold(),)
    scores = event.extra.get("score_ids")
    if isinstance(scores, list | tuple) and scores:
        return tuple(f"score:{s}" for s in scores if isinstance(s, str | int))
    reporter_id = event.extra.get("reporter_id")
    if isinstance(reporter_id, str | int) and str(reporter_id) not in ("", "-1"):
        return (f"id:{reporter_id}",)  # -1 is Discourse's system user, not a member
    return ()


def reported_post(event: Event) -> str | None:
    """The id of the visible post a report is about (None for accounts and held posts)."""
    report = event.report
    if report is None or report.kind in (ReportKind.USER, ReportKind.QUEUED_POST):
        return None
    post_id = report.target_post_id or (event.post.id if event.post else None)
    if post_id is None or post_id.startswith("queued:"):
        return None
    return post_id


def report_entry(event: Event) -> dict[str, Any]:
    """What an alert shows of one report: the reporter's username (never more), the
    reason and the score."""
    report = event.report
    assert report is not None
    who = scrub(report.reporter, 60) if report.reporter else ""
    if not who and event.extra.get("reporter_id") not in (None, "", "-1"):
        who = f"member {event.extra['reporter_id']}"
    return {
        "by": who,
        "reason": scrub(report.reason, 160) if report.reason else "",
        "score": report.score,
        "status": report.status,
    }


def merge_report(target: Mapping[str, Any], event: Event) -> dict[str, Any]:
    """The target of an alert with one more report on its post merged in.

    The newest reviewable wins (its version and actions are what the forum accepts
    now); each reporter is listed once.
    """
    report = event.report
    assert report is not None
    merged = dict(target)
    merged["report"] = {
        "id": report.id,
        "kind": report.kind.value,
        "version": report.version,
        "actions": list(report.actions),
        "score": report.score,
        "status": report.status,
        "reporter": scrub(report.reporter, 60) if report.reporter else None,
        "reason": scrub(report.reason, 160) if report.reason else None,
    }
    entries = [dict(e) for e in merged.get("reports") or ()]
    entry = report_entry(event)
    who = str(entry["by"]).casefold()
    same = next((e for e in entries if who and str(e.get("by", "")).casefold() == who), None)
    if same is not None:
        same.update({k: v for k, v in entry.items() if v not in (None, "")})
    elif len(entries) < MAX_REPORTS_SHOWN:
        entries.append(entry)
    merged["reports"] = entries
    merged["report_count"] = int(merged.get("report_count") or len(entries) - 1) + 1
    return merged
