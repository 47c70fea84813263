"""Alerts: one per incident, and what a moderator reads in chat.

An incident is the run of events of one author (else one post) on one source; later
matches within the grouping window update the open alert ("+12 more") instead of
flooding the room. The text says enough to decide without opening anything:
severity, what matched (list, kind, distance, category), the post's link and the
forum's admin view, the author (username, account age, post count), what was done
automatically and the outcome. Never the image, never an IP address or an email:
the parsers drop those at the boundary, and :func:`scrub` removes any that a member
typed into a free-text field (a title, a username) before it reaches a room.
"""

from __future__ import annotations

import html
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from bot.model import Event, Match
from bot.ports import ChatMessage
from bot.store import AlertRecord, TargetRecord

# --- buttons -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Button:
    """A reaction the bot seeds under an alert, and the operation it asks for."""

    key: str
    op: str
    label: str


BUTTONS: tuple[Button, ...] = (
    Button("✅", "takedown", "take down"),
    Button("🔨", "suspend", "take down + suspend the author (asks to confirm)"),
    Button("👀", "ack", "I'm on it"),
    Button("❎", "dismiss", "false positive"),
    Button("↩️", "restore", "restore (unhide)"),
)
_BY_KEY = {b.key.replace("\ufe0f", ""): b for b in BUTTONS}
CONFIRM_KEY = "🔨"


def button_for(key: str) -> Button | None:
    """The button a reaction key stands for; clients differ on the U+FE0F variation selector."""
    return _BY_KEY.get(key.replace("\ufe0f", "").strip())


def legend() -> str:
    """One line naming every button."""
    return " · ".join(f"{b.key} {b.label}" for b in BUTTONS)


# --- personal data -------------------------------------------------------------------

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\d)")
_IPV6 = re.compile(r"(?<![0-9A-Za-z:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f.]{0,15}(?![0-9A-Za-z:])")


def _ipv6(m: re.Match[str]) -> str:
    try:
        ipaddress.IPv6Address(m.group(0))
    except ValueError:
        return m.group(0)  # e.g. a time of day, 02:13:07
    return "[IP removed]"


def scrub(text: str | None, limit: int = 120) -> str:
    """Forum-supplied free text fit for a staff room: emails and IP addresses removed,
    whitespace collapsed, at most ``limit`` characters."""
    if not text:
        return ""
    text = _EMAIL.sub("[email removed]", text)
    text = _IPV4.sub("[IP removed]", text)
    text = _IPV6.sub(_ipv6, text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- incidents -----------------------------------------------------------------------


def incident_key(event: Event) -> str:
    """Events of one author on one source are one incident; without an author, one post."""
    author = event.author
    if author is not None and author.id:
        return f"{event.source}:user:{author.id}"
    if event.post is not None:
        return f"{event.source}:post:{event.post.id}"
    if event.report is not None:
        return f"{event.source}:report:{event.report.id}"
    return f"{event.source}:delivery:{event.delivery_id}"


def target_of(event: Event, matches: Sequence[Match]) -> dict[str, Any]:
    """What an alert keeps of one event: enough to act on it and to describe it."""
    post, report, author = event.post, event.report, event.author
    post_id = post.id if post is not None else (report.target_post_id if report else None)
    queued = bool(post_id and post_id.startswith("queued:"))
    target: dict[str, Any] = {
        "kind": event.kind.value,
        "post_id": None if queued else post_id,
        "queued": queued,
        "held": bool(post and post.held),
        "url": post.url if post is not None else None,
        "topic_title": scrub(post.topic_title) if post is not None else "",
        "images": len(post.media) if post is not None else 0,
        "user_id": (author.id if author else None) or (report.target_user_id if report else None),
        "username": scrub(author.username, 60) if author else "",
        "account_created_at": (
            author.created_at.isoformat() if author and author.created_at else None
        ),
        "post_count": author.post_count if author else None,
        "trust_level": author.trust_level if author else None,
        "occurred_at": event.occurred_at.isoformat() if event.occurred_at else None,
        "matches": [
            {"list": m.list, "kind": m.kind, "distance": m.distance, "category": m.category}
            for m in matches
        ],
    }
    if report is not None:
        target["report"] = {
            "id": report.id,
            "kind": report.kind.value,
            "version": report.version,
            "actions": list(report.actions),
            "score": report.score,
            "status": report.status,
            "reporter": scrub(report.reporter, 60) if report.reporter else None,
            "reason": scrub(report.reason, 160) if report.reason else None,
        }
        if report.kind.value != "queued_post":
            from bot.reports import report_entry  # bot.reports builds on this module

            target["reports"] = [report_entry(event)]
            target["report_count"] = 1
    return target


def image_check(media: Sequence[Any], matches: Sequence[Match]) -> dict[str, Any]:
    """What the image check found for one event (``MediaResult``s and matches), for the
    alert of a post held for approval: how many images, hashed, matched, not checked."""
    matched = {m.media_index for m in matches}
    unchecked = [scrub(r.reason, 120) for r in media if r.hashes is None and r.reason]
    return {
        "total": len(media),
        "hashed": sum(1 for r in media if r.hashes is not None),
        "matched": len(matched),
        "lists": sorted({m.list for m in matches}),
        "unchecked": unchecked[:3],
    }


def summary_of(target: Mapping[str, Any], rules: Sequence[str]) -> str:
    """A one-line summary for the alerts table (no personal data)."""
    what = ", ".join(sorted({m["list"] for m in target.get("matches", ())})) or ", ".join(rules)
    who = target.get("username") or "unknown author"
    return scrub(f"{what}: post {target.get('post_id') or '?'} by {who}", 200)


# --- time ----------------------------------------------------------------------------


def clock_time(ts: float, tz: str = "UTC") -> str:
    """``02:13:07 GMT`` in the given IANA zone."""
    return datetime.fromtimestamp(ts, ZoneInfo(tz)).strftime("%H:%M:%S %Z")


def span(seconds: float) -> str:
    """A short duration: ``41 s``, ``3 min 5 s``, ``2 h 4 min``, ``3 d``."""
    s = max(0, round(seconds))
    if s < 120:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 2 * 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d"


def _age(iso: str | None, now: float) -> str | None:
    if not iso:
        return None
    try:
        created = datetime.fromisoformat(iso)
    except ValueError:
        return None
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return span(now - created.timestamp())


# --- rendering -----------------------------------------------------------------------

_SEVERITY_MARK = {"critical": "🚨", "high": "🔴", "medium": "🟠", "low": "🟡"}
DISTRESSING_LINE = "⚠ Distressing material: do not open the post; act from the buttons"
_MORE_LINKS = 5


@dataclass(frozen=True, slots=True)
class SourceLinks:
    """How to link into one forum: its base URL and whether it is a Discourse."""

    base_url: str
    discourse: bool = True


@dataclass(frozen=True, slots=True)
class _Line:
    text: str
    html: str


def _link(url: str, label: str | None = None) -> tuple[str, str]:
    shown = label or url
    plain = f"{shown} {url}" if label else url
    return plain, f'<a href="{html.escape(url)}">{html.escape(shown)}</a>'


def _post_url(t: Mapping[str, Any], links: SourceLinks | None) -> str | None:
    url = t.get("url")
    base = links.base_url if links else ""
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        return url
    if isinstance(url, str) and url.startswith("/") and base:
        return base + url
    if t.get("post_id") and base and (links is None or links.discourse):
        return f"{base}/p/{t['post_id']}"
    return None


def _match_text(m: Mapping[str, Any]) -> str:
    how = "exact" if m.get("distance", 0) == 0 else f"distance {m['distance']}"
    category = f", category {m['category']}" if m.get("category") else ""
    return f"list {m['list']} ({m['kind']}, {how}{category})"


def _target_lines(t: TargetRecord, links: SourceLinks | None, now: float) -> list[_Line]:
    data = t.target
    lines: list[_Line] = []
    matches = data.get("matches") or []
    if matches:
        text = "Matched: " + "; ".join(_match_text(m) for m in matches)
        lines.append(_Line(text, html.escape(text)))
    post_label = f"post {data['post_id']}" if data.get("post_id") else "post held for approval"
    if data.get("queued") and not data.get("held"):
        post_label = "queued post"
    title = data.get("topic_title")
    bits_t = [post_label.capitalize()]
    bits_h = [html.escape(post_label.capitalize())]
    if title:
        bits_t.append(f"in “{title}”")
        bits_h.append(f"in “{html.escape(title)}”")
    if data.get("images"):
        n = data["images"]
        note = f"({n} image{'s' if n != 1 else ''}, not shown)"
        bits_t.append(note)
        bits_h.append(html.escape(note))
    url = _post_url(data, links)
    if url:
        lt, lh = _link(url)
        bits_t.append(lt)
        bits_h.append(lh)
    report = data.get("report")
    if report and links and links.discourse:
        lt, lh = _link(f"{links.base_url}/review/{report['id']}", "review")
        bits_t.append(lt)
        bits_h.append(lh)
    lines.append(_Line(" · ".join(bits_t), " · ".join(bits_h)))
    if data.get("held"):
        text = (
            "⏸ Held for approval: members cannot see it yet. ✅ rejects it; ❎ leaves it in"
            " the forum's approval queue."
        )
        lines.append(_Line(text, html.escape(text)))
        check = data.get("image_check")
        if check:
            lines.append(_check_line(check))
    if report and (report.get("kind") != "queued_post" or not data.get("held")):
        lines.append(_report_line(data, report))
    who = data.get("username") or "unknown"
    parts = [f"Author: {who}"]
    if data.get("user_id"):
        parts[0] += f" (user {data['user_id']})"
    age = _age(data.get("account_created_at"), now)
    if age:
        parts.append(f"account {age} old")
    if data.get("post_count") is not None:
        parts.append(f"{data['post_count']} posts")
    if data.get("trust_level") is not None:
        parts.append(f"trust level {data['trust_level']}")
    text = " · ".join(parts)
    html_text = html.escape(text)
    if data.get("user_id") and who != "unknown" and links and links.discourse:
        lt, lh = _link(f"{links.base_url}/admin/users/{data['user_id']}/{who}", "admin view")
        text += " · " + lt
        html_text += " · " + lh
    lines.append(_Line(text, html_text))
    return lines


def _report_line(data: Mapping[str, Any], report: Mapping[str, Any]) -> _Line:
    """``Report: flagged post, score 6 · 3 reports: alice (spam), bob, member 12``."""
    text = f"Report: {str(report.get('kind', 'other')).replace('_', ' ')}"
    if report.get("score") is not None:
        text += f", score {report['score']:g}"
    entries = data.get("reports") or []
    count = int(data.get("report_count") or len(entries) or 1)
    shown = []
    for e in entries:
        if not e.get("by"):
            continue
        shown.append(f"{e['by']} ({e['reason']})" if e.get("reason") else str(e["by"]))
    if shown or count > 1:
        text += f" · {count} report{'s' if count != 1 else ''}"
        if shown:
            text += " by " + ", ".join(shown)
    elif report.get("reason"):
        text += f" · reason: {report['reason']}"
    if report.get("status") not in (None, "pending"):
        text += f" · on the forum: {report['status']}"
    return _Line(text, html.escape(text))


def _check_line(check: Mapping[str, Any]) -> _Line:
    """What the image check found before anyone approved a held post."""
    total = int(check.get("total") or 0)
    n = f"{total} image{'s' if total != 1 else ''}"
    if not total:
        text = "Image check before approval: no images"
    elif check.get("matched"):
        text = (
            f"Image check before approval: {check['matched']} of {n} on a list"
            f" ({', '.join(check.get('lists') or ())}): do not approve"
        )
    else:
        text = f"Image check before approval: {check.get('hashed', 0)} of {n} checked, no match"
    for reason in check.get("unchecked") or ():
        text += f"; not checked: {reason}"
    return _Line(text, html.escape(text))


def _auto_lines(alert: AlertRecord) -> list[_Line]:
    auto = [a for a in alert.actions if a.op_seq == 0]
    if not auto:
        return []
    parts = []
    for a in auto:
        what = f"{a.kind} {_action_object(a.action)}"
        if a.state != "done":
            parts.append(f"{what}: in progress")
        elif a.simulated:
            parts.append(f"{what}: simulated (dry run)")
        elif a.ok:
            parts.append(f"{what} ✓")
        else:
            parts.append(f"{what} FAILED ({scrub(a.detail, 160)})")
    text = "Done automatically: " + "; ".join(parts)
    return [_Line(text, html.escape(text))]


def _action_object(action: Mapping[str, Any]) -> str:
    if action.get("kind") in ("suspend", "silence"):
        return f"user {action.get('user_id') or '?'}"
    if action.get("post_id"):
        return f"post {action['post_id']}"
    if action.get("report_id"):
        return f"queued post (review {action['report_id']})"
    return "post ?"


def render_alert(
    alert: AlertRecord,
    links: Mapping[str, SourceLinks],
    now: float,
    *,
    show_buttons: bool = True,
) -> ChatMessage:
    """The alert's text and HTML, as it stands now (posted first, edited on every change)."""
    source_links = links.get(alert.source)
    mark = _SEVERITY_MARK.get(alert.severity, "⚠️")
    head = f"{mark} {alert.severity.upper()} · alert #{alert.id} · {alert.source}"
    if alert.rules:
        head += " · " + ", ".join(alert.rules)
    if alert.dry_run:
        head += " · DRY RUN: forum actions are simulated"
    lines = [_Line(head, f"<b>{html.escape(head)}</b>")]
    if any(t.target.get("distressing") for t in alert.targets):
        # First, before anything that might tempt a click: the people acting matter too.
        lines.insert(0, _Line(DISTRESSING_LINE, f"<b>{html.escape(DISTRESSING_LINE)}</b>"))
    first, rest = alert.targets[0] if alert.targets else None, alert.targets[1:]
    if first is not None:
        lines += _target_lines(first, source_links, now)
    elif alert.summary:
        # An alert about no post (a raid that started a lockdown): its summary says it all.
        lines.append(_Line(alert.summary, html.escape(alert.summary)))
    if rest:
        who = (first.target.get("username") if first else None) or "the same author"
        urls = [_post_url(t.target, source_links) for t in rest[-_MORE_LINKS:]]
        text = f"+{len(rest)} more post{'s' if len(rest) != 1 else ''} by {who}"
        html_text = html.escape(text)
        shown = [u for u in urls if u]
        if shown:
            text += ": " + " ".join(shown)
            html_text += ": " + " ".join(_link(u)[1] for u in shown)
        lines.append(_Line(text, html_text))
    lines += _auto_lines(alert)
    if alert.acked_by and alert.status in ("open", "acked"):
        text = f"👀 {alert.acked_by} is on it"
        lines.append(_Line(text, html.escape(text)))
    if alert.status == "acting":
        text = f"⏳ {alert.op_by} asked to {alert.op}; working on it"
        lines.append(_Line(text, html.escape(text)))
    if alert.outcome:
        lines.append(_Line(alert.outcome, f"<b>{html.escape(alert.outcome)}</b>"))
    if show_buttons:
        if alert.status in ("open", "acked"):
            text = "React: " + legend()
            lines.append(_Line(text, f"<i>{html.escape(text)}</i>"))
        elif alert.status == "resolved" and any(t.hidden == 1 for t in alert.targets):
            text = "React ↩️ to restore the post if this was a mistake."
            lines.append(_Line(text, f"<i>{html.escape(text)}</i>"))
    return ChatMessage(
        text="\n".join(line.text for line in lines),
        html="<br>\n".join(line.html for line in lines),
    )


def help_text(reach: Sequence[str] = ()) -> ChatMessage:
    """The legend of buttons and commands (``!help``); ``reach``: how to reach a person
    on call now (bot.moderation.reach_lines), shown first."""
    rows = [
        *reach,
        "Vigil: react under an alert, or type a command with the alert's number.",
        *(f"{b.key}  {b.label}" for b in BUTTONS),
        "!ack N · !takedown N · !dismiss N · !restore N · !delete N · !suspend N · !confirm N",
        "!status: open alerts, lists loaded, feed health",
        "!oncall: who is on call now and next (your time zone) · !report [days]: alerts,"
        " time to ack and to take down, pages, who handled what",
        '!override SCHEDULE FROM TO ["PERSON"] [instead "PERSON"]: take a shift'
        " (moderators; FROM now or 22:00, TO 07:00 or 4h, your time zone)",
        "!lockdown on [2h] · !lockdown off · !lockdown status: image posts from new accounts"
        " are hidden (and, where set up, switched off on the forum) while it is on",
        "!whois USER: admins only; the account's IP addresses and emails, sent to you in a"
        " direct message (never in the room), and the lookup is audited",
        "Volunteers may ack, take down and start a lockdown; moderators also suspend, delete,"
        " dismiss, restore and end a lockdown; admins everything."
        " Redacting a reaction undoes nothing: ↩️ does.",
        "You never need to open an image to act: the alert says what matched.",
    ]
    return ChatMessage(text="\n".join(rows), html="<br>\n".join(html.escape(r) for r in rows))
