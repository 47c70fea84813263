"""``vigil export INCIDENT``: an incident bundle for a police, NCMEC or IWF report.

The bundle is a new directory holding ``incident.json`` (everything, machine-readable),
``summary.txt`` (the same for a person: accounts, timeline, hashes, actions and who
took them), ``MANIFEST.sha256`` (the SHA-256 of every other file, for the chain of
custody) and, with ``--with-evidence``, ``images/`` with the decrypted originals.

What goes in depends on who asks (see bot.audit for the identity model):

- without ``--as``, or ``--as`` a volunteer or moderator: no personal data (IP, email)
  and no images: such a bundle can be handed around the staff;
- ``--as ADMIN``: the accounts' personal data from the restricted table, if any;
- ``--with-evidence``: admins only, and the evidence key must be set.

Every export, and every refusal, is written to the audit log.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from bot.audit import (
    CliRefused,
    cli_actor,
    entry_dict,
    iso,
    open_store,
    os_user,
    roster_person,
    verify_chain,
)
from bot.config import Config, Role, StaffMember
from bot.evidence import EvidenceVault, image_suffix, read_evidence
from bot.store import Store, now_s

log = logging.getLogger(__name__)

FORMAT = "vigil-incident/1"
_HASH_KEYS = ("sha256", "sha1", "md5", "pdq", "pdq_quality", "phash", "dhash")


class ExportError(Exception):
    """The export cannot be made as asked (the message says why and what to do)."""


def _parse_ts(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _media_line(row: dict[str, Any]) -> dict[str, Any]:
    hashes = json.loads(row["hashes"]) if row.get("hashes") else {}
    line: dict[str, Any] = {
        "index": row["media_index"],
        "url": row["url"],
        "sha1_named_by_forum": row["sha1_hint"],
        "reason_not_hashed": row["reason"],
        "allowed_by": row["allowed_by"],
    }
    line.update({k: hashes.get(k) for k in _HASH_KEYS})
    if not hashes:
        line["sha1"] = row["sha1_hint"]
    return line


async def build_incident(store: Store, alert_id: int, *, include_personal: bool) -> dict[str, Any]:
    """Everything Vigil knows about one alert, as JSON-ready data (no images).

    Personal data is read only when ``include_personal`` (the caller checked the role).
    """
    snapshot = await store.alert_snapshot(alert_id)
    if snapshot is None:
        raise ExportError(f"there is no alert {alert_id}")
    event_ids = [t.event_id for t in snapshot.targets]
    events: list[dict[str, Any]] = []
    accounts: dict[tuple[str, str], dict[str, Any]] = {}
    timeline: list[dict[str, Any]] = []

    def at(ts: float | None, what: str, by: str = "") -> None:
        if ts is not None:
            timeline.append({"at": ts, "time": iso(ts), "what": what, "by": by})

    for target in snapshot.targets:
        row = await store.event_row(target.event_id)
        if row is None:
            continue
        event = json.loads(row["payload"])
        media = [_media_line(m) for m in await store.media_results(target.event_id)]
        matches = await store.event_matches(target.event_id)
        events.append(
            {
                "event_id": target.event_id,
                "source": row["source"],
                "delivery_id": row["delivery_id"],
                "kind": row["kind"],
                "received_at": iso(row["received_at"]),
                "hidden_by_vigil": {0: "no", 1: "hidden", 2: "deleted"}.get(target.hidden),
                "event": event,
                "media": media,
                "matches": matches,
            }
        )
        author = (event.get("post") or {}).get("author") or event.get("user") or {}
        post = event.get("post") or {}
        what = f"{row['kind']} from {row['source']}"
        if post.get("id"):
            what += f": post {post['id']} {post.get('url') or ''}".rstrip()
        if author.get("username"):
            what += f" by {author['username']}"
        occurred = _parse_ts(event.get("occurred_at"))
        at(occurred, f"on the forum: {what}")
        at(row["received_at"], f"received by Vigil (event {target.event_id}): {what}")
        media_at = {m["media_index"]: m["at"] for m in await store.media_results(target.event_id)}
        for m in matches:
            at(
                media_at.get(m["media_index"], row["received_at"]),
                f"event {target.event_id} image {m['media_index']} matched list {m['list']}"
                f" ({m['kind']}, distance {m['distance']}, category {m['category'] or '-'})",
            )
        if author.get("id"):
            key = (row["source"], str(author["id"]))
            acc = accounts.setdefault(
                key,
                {
                    "source": row["source"],
                    "user_id": str(author["id"]),
                    "username": author.get("username"),
                    "account_created_at": author.get("created_at"),
                    "trust_level": author.get("trust_level"),
                    "post_count": author.get("post_count"),
                    "events": [],
                    "first_event_at": None,
                },
            )
            acc["events"].append(target.event_id)
            first = occurred or row["received_at"]
            if acc["first_event_at"] is None or first < acc["first_event_at"]:
                acc["first_event_at"] = first
    for acc in accounts.values():
        created = _parse_ts(acc["account_created_at"])
        first = acc.pop("first_event_at")
        acc["account_age_at_first_event_s"] = (
            round(first - created, 1) if created is not None and first is not None else None
        )

    a = snapshot
    at(a.created_at, f"alert {a.id} opened ({a.severity}): {a.summary}")
    if a.acked_at:
        at(a.acked_at, "alert acknowledged", a.acked_by or "")
    if a.resolved_at:
        at(a.resolved_at, f"alert resolved: {a.resolution}", a.resolved_by or "")
    actions = []
    for act in a.actions:
        actions.append(
            {
                "id": act.id,
                "kind": act.kind,
                "event_id": act.event_id,
                "action": act.action,
                "actor": act.actor,
                "reason": act.reason,
                "requested_at": iso(act.requested_at),
                "done_at": iso(act.done_at) if act.done_at else None,
                "ok": act.ok,
                "simulated": act.simulated,
                "detail": act.detail,
            }
        )
        at(act.requested_at, f"forum action {act.kind} requested (event {act.event_id})", act.actor)
        if act.done_at:
            result = "ok" if act.ok else "FAILED"
            if act.simulated:
                result += " (simulated: dry run)"
            at(act.done_at, f"forum action {act.kind} done: {result}", act.actor)
    audit = await store.audit_query(alert_id=alert_id, targets=[f"event {e}" for e in event_ids])
    for e in audit:
        at(e.at, f"{e.action} {e.target} -> {e.outcome} ({e.reason})", e.actor)
    escalation = await store.escalation_log(alert_id)
    for line in escalation:
        who = line.get("person") or ""
        at(
            line["at"],
            f"escalation {line['kind']} step {line.get('step')} {line.get('channel') or ''}".rstrip(),
            who,
        )
    evidence = [_evidence_line(r) for r in await store.evidence_records(event_ids)]
    report = verify_chain(await store.audit_chain())
    timeline.sort(key=lambda t: t["at"])

    bundle: dict[str, Any] = {
        "format": FORMAT,
        "alert": {
            "id": a.id,
            "incident_key": a.incident_key,
            "source": a.source,
            "severity": a.severity,
            "status": a.status,
            "summary": a.summary,
            "rules": list(a.rules),
            "created_at": iso(a.created_at),
            "resolution": a.resolution,
            "resolved_by": a.resolved_by,
            "resolved_at": iso(a.resolved_at) if a.resolved_at else None,
            "events": a.count,
            "dry_run": a.dry_run,
        },
        "accounts": sorted(accounts.values(), key=lambda x: (x["source"], x["user_id"])),
        "events": events,
        "actions": actions,
        "audit": [entry_dict(e) for e in audit],
        "escalation": escalation,
        "evidence": evidence,
        "timeline": timeline,
        "audit_chain": {"ok": report.ok, "entries": report.entries, "head": report.head},
        "contains_personal_data": include_personal,
    }
    if include_personal:
        bundle["personal_data"] = await store.personal_for_accounts(list(accounts))
    return bundle


def _evidence_line(r: dict[str, Any]) -> dict[str, Any]:
    from bot.evidence import record_summary

    return record_summary(r)


def render_summary(bundle: dict[str, Any], images: dict[int, str]) -> str:
    """``summary.txt``: the bundle for a person to read."""
    a = bundle["alert"]
    out = [f"Vigil incident export: alert {a['id']} ({a['source']})", ""]
    out.append(f"Generated {bundle['generated_at']} by {bundle['generated_by']}")
    pd = "INCLUDED (handle as restricted)" if bundle["contains_personal_data"] else "not included"
    out.append(f"Personal data (IP, email): {pd}")
    out.append(f"Images: {len(images)} included in images/" if images else "Images: not included")
    chain = bundle["audit_chain"]
    state = "verified" if chain["ok"] else "BROKEN (see vigil audit verify)"
    out.append(f"Audit log: {state}, {chain['entries']} entries, head {chain['head']}")
    out += ["", "Alert"]
    out.append(f"  severity {a['severity']}, status {a['status']}, {a['events']} event(s)")
    out.append(f"  {a['summary']}")
    out.append(f"  rules: {', '.join(a['rules']) or '-'}; opened {a['created_at']}")
    if a["resolved_at"]:
        out.append(f"  resolved {a['resolved_at']} by {a['resolved_by']}: {a['resolution']}")
    out += ["", "Accounts"]
    personal = bundle.get("personal_data") or []
    for acc in bundle["accounts"] or []:
        age = acc["account_age_at_first_event_s"]
        age_text = (
            f"{_duration(age)} old at its first event here" if age is not None else "age unknown"
        )
        out.append(
            f"  {acc['source']} user {acc['user_id']} {acc['username'] or '?'}: created"
            f" {acc['account_created_at'] or 'unknown'}, {age_text}; trust level"
            f" {acc['trust_level']}, events {', '.join(map(str, acc['events']))}"
        )
        for p in personal:
            if (p["source"], p["user_id"]) == (acc["source"], acc["user_id"]):
                out.append(
                    f"    {p['kind']}: {p['value']} (seen {iso(p['first_seen'])} to {iso(p['last_seen'])})"
                )
    if not bundle["accounts"]:
        out.append("  none named by the events")
    out += ["", "Timeline (UTC)"]
    for t in bundle["timeline"]:
        by = f" [{t['by']}]" if t["by"] else ""
        out.append(f"  {t['time']}{by} {t['what']}")
    out += ["", "Images and their hashes"]
    for e in bundle["events"]:
        for m in e["media"]:
            hashes = " ".join(f"{k}={m[k]}" for k in _HASH_KEYS if m.get(k) not in (None, ""))
            note = f" (not hashed: {m['reason_not_hashed']})" if m["reason_not_hashed"] else ""
            out.append(f"  event {e['event_id']} image {m['index']}: {hashes or '-'}{note}")
    out += ["", "Evidence kept (encrypted at rest)"]
    for ev in bundle["evidence"]:
        where = f"; file {images[ev['id']]}" if ev["id"] in images else ""
        kept = f"{ev['size']} bytes" if ev["bytes_kept"] else ev["note"]
        out.append(
            f"  evidence {ev['id']}: event {ev['event_id']} image {ev['media_index']}, {kept},"
            f" kept until {ev['expires']}{where}"
        )
    if not bundle["evidence"]:
        out.append("  none")
    out += ["", "MANIFEST.sha256 holds the SHA-256 of every file in this bundle.", ""]
    return "\n".join(out)


def _duration(seconds: float) -> str:
    if seconds < 0:
        return "created after it (clock skew)"
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} seconds"


async def export_incident(
    store: Store,
    config: Config,
    alert_id: int,
    out_dir: Path,
    *,
    person: StaffMember | None,
    with_evidence: bool,
    now: float,
) -> dict[str, Any]:
    """Write the bundle of one alert into ``out_dir`` (new or empty) and audit it.

    Personal data only when ``person`` is an admin; images only ``with_evidence``,
    which needs an admin and the key (ExportError otherwise, audited as refused).
    """
    actor = cli_actor(person)
    admin = person is not None and person.role is Role.ADMIN
    target = f"alert {alert_id}"

    async def audit(outcome: str, **detail: Any) -> None:
        await store.append_audit(
            actor=actor,
            action="export",
            target=target,
            reason="vigil export",
            outcome=outcome,
            now=now,
            alert_id=alert_id,
            detail={"os_user": os_user(), "out": str(out_dir), **detail},
        )

    if with_evidence and not admin:
        who = f"{person.name} is a {person.role.value}" if person else "no --as NAME was given"
        await audit("refused: images need an admin", with_evidence=True)
        raise ExportError(f"--with-evidence is for admins (--as NAME); {who}")
    vault = EvidenceVault.from_config(config) if with_evidence else None
    if vault is not None and not vault.enabled:
        await audit("refused: no evidence key", with_evidence=True)
        raise ExportError(f"--with-evidence needs the evidence key in ${config.evidence.key_env}")
    if not await asyncio.to_thread(_usable_dir, out_dir):
        raise ExportError(f"{out_dir} exists and is not an empty directory; name a new one")

    bundle = await build_incident(store, alert_id, include_personal=admin)
    bundle["generated_at"] = iso(now)
    bundle["generated_by"] = actor
    files: dict[str, bytes] = {}
    images: dict[int, str] = {}
    try:
        if vault is not None:
            for ev in await store.evidence_records([e["event_id"] for e in bundle["events"]]):
                if not ev["file"]:
                    continue
                data = await read_evidence(vault, ev)
                name = f"images/evidence-{ev['id']}{image_suffix(data)}"
                files[name] = data
                images[ev["id"]] = name
        for line in bundle["evidence"]:
            line["image_file"] = images.get(line["id"])
        bundle["contains_images"] = bool(images)
        files["incident.json"] = (json.dumps(bundle, indent=2, ensure_ascii=False) + "\n").encode()
        files["summary.txt"] = render_summary(bundle, images).encode()
        manifest = "".join(
            f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in sorted(files.items())
        )
        files["MANIFEST.sha256"] = manifest.encode()
        await asyncio.to_thread(_write_bundle, out_dir, files)
    except Exception as exc:
        await audit(f"failed: {type(exc).__name__}", with_evidence=with_evidence)
        raise
    await audit(
        "ok",
        with_evidence=with_evidence,
        images=len(images),
        personal_data=admin,
        manifest_sha256=hashlib.sha256(files["MANIFEST.sha256"]).hexdigest(),
    )
    return bundle


def _usable_dir(path: Path) -> bool:
    """Whether ``path`` is new or an empty directory (a bundle never mixes with files)."""
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def _write_bundle(out_dir: Path, files: dict[str, bytes]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(out_dir, 0o700)  # it may hold personal data or images: its owner only
    for name, data in files.items():
        path = out_dir / name
        path.parent.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


def _alert_id(text: str) -> int:
    value = text.strip().lstrip("#")
    if not value.isdigit():
        raise ExportError(f"INCIDENT is an alert number like 42 or #42, not {text!r}")
    return int(value)


def export_command(argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    """``vigil export INCIDENT [--with-evidence] [--as NAME] [--out DIR]``."""
    default = Path(os.environ.get("VIGIL_CONFIG", "bot.toml"))
    ap = argparse.ArgumentParser(prog="vigil export", description="an incident bundle")
    ap.add_argument("incident", metavar="INCIDENT", help="the alert number (as in the alert)")
    ap.add_argument("--with-evidence", action="store_true", help="decrypt the images into it")
    ap.add_argument("--as", dest="as_name", metavar="NAME", help="you, on the staff roster")
    ap.add_argument("--out", type=Path, metavar="DIR", help="a new directory")
    ap.add_argument("-c", "--config", type=Path, default=default, help="path to bot.toml")
    args = ap.parse_args(list(argv))

    async def body() -> int:
        opened = await open_store(args.config, err)
        if opened is None:
            return 1
        config, store = opened
        try:
            alert_id = _alert_id(args.incident)
            person = roster_person(config, args.as_name)
            now = now_s()
            out_dir = args.out or Path(f"incident-{alert_id}-{iso(now).replace(':', '')}")
            bundle = await export_incident(
                store,
                config,
                alert_id,
                out_dir,
                person=person,
                with_evidence=args.with_evidence,
                now=now,
            )
        except (ExportError, CliRefused, OSError, ValueError) as exc:
            print(f"vigil export: {exc}", file=err)
            return 1
        finally:
            await store.close()
        personal = "with personal data" if bundle["contains_personal_data"] else "no personal data"
        images = "with images" if bundle["contains_images"] else "no images"
        print(f"incident bundle written to {out_dir} ({personal}, {images})", file=out)
        return 0

    return asyncio.run(body())
