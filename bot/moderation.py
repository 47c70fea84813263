"""The chat side of moderation: reactions and commands become operations on alerts.

Default deny. A reaction or command counts only if its sender is on the staff roster
with a role allowed the operation (volunteer: ack, take down; moderator: also
suspend, delete, dismiss, restore; admin: everything). Anything else does nothing,
is logged and audited, and the sender is told why (a DM for a reaction, a reply for
a command).

Exactly once. Chat delivery is at least once, so every handled chat event id is
recorded in the same transaction as its effects; a redelivery is a no-op. Two
moderators reacting at once: each decision is made on a snapshot of the alert and
applied only if the alert's version is unchanged (compare-and-set); the loser
decides again on the new state and is told the alert is already being handled.

Operations that touch the forum put the alert in 'acting' and journal their forum
actions; when the last one finishes, :meth:`Moderation.finalize` resolves the alert
(or returns it to where it was, saying what failed) and edits it with the outcome.
Redacting a reaction undoes nothing: ↩️ restores.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from bot.actions import describe, new_action
from bot.alerts import (
    CONFIRM_KEY,
    button_for,
    clock_time,
    help_text,
    scrub,
    span,
)
from bot.clock import Clock
from bot.config import Config, Role, StaffMember
from bot.escalation import person_channels, render_report, report
from bot.ports import ChatCommand, ChatMessage, ChatReaction
from bot.raids import LOCKDOWN_USAGE, LockdownManager
from bot.schedules import (
    OVERRIDE_USAGE,
    Override,
    OverrideRequest,
    Schedule,
    add_override,
    oncall_lines,
    override_from_row,
    parse_override,
    who_is_on,
)
from bot.store import (
    AlertRecord,
    AuditItem,
    FinishedAction,
    NewAction,
    OutboxItem,
    Plan,
    Store,
)

if TYPE_CHECKING:
    from bot.rules import RuleSet

log = logging.getLogger(__name__)

# The least role each operation needs.
ROLE_NEEDED: dict[str, Role] = {
    "ack": Role.VOLUNTEER,
    "takedown": Role.VOLUNTEER,
    "status": Role.VOLUNTEER,
    "oncall": Role.VOLUNTEER,
    "report": Role.VOLUNTEER,
    "override": Role.MODERATOR,
    # A volunteer may start a lockdown (they are awake when a raid comes; it only holds
    # back new accounts' images) and read it; ending one early needs a moderator.
    "lockdown_on": Role.VOLUNTEER,
    "lockdown_status": Role.VOLUNTEER,
    "lockdown_off": Role.MODERATOR,
    "suspend": Role.MODERATOR,
    "confirm": Role.MODERATOR,
    "delete": Role.MODERATOR,
    "dismiss": Role.MODERATOR,
    "restore": Role.MODERATOR,
    # Personal data (IP, email) is for admins only, answered in a DM, always audited.
    "whois": Role.ADMIN,
}
OP_LABEL = {
    "ack": "👀 (I'm on it)",
    "takedown": "✅ (take down)",
    "suspend": "🔨 (take down and suspend)",
    "confirm": "confirming a suspension",
    "delete": "deleting a post",
    "dismiss": "❎ (false positive)",
    "restore": "↩️ (restore)",
    "status": "!status",
    "oncall": "!oncall",
    "report": "!report",
    "override": "!override",
    "lockdown_on": "!lockdown on",
    "lockdown_off": "!lockdown off",
    "lockdown_status": "!lockdown status",
    "whois": "!whois",
}
ALERT_COMMANDS = ("ack", "takedown", "dismiss", "restore", "delete", "suspend", "confirm")
ESCALATION_COMMANDS = ("oncall", "override", "report")  # answered, no alert touched
REPORT_MAX_DAYS = 366.0
_RESOLUTION = {
    "takedown": "taken_down",
    "suspend": "suspended",
    "delete": "deleted",
    "restore": "restored",
}
_ALERT_ID = re.compile(r"#?(\d{1,12})")
_CAS_ATTEMPTS = 8

StatusProvider = Callable[[], Awaitable[list[str]]]
OnResolved = Callable[[AlertRecord, str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Request:
    """One person asking for one operation, from one chat event."""

    chat: str
    sender: str
    event_id: str
    op: str
    alert_id: int | None
    via: str  # "reaction ✅", "!takedown"
    room: str  # where it came from: confirmation prompts go there
    reply_in_room: bool  # commands are answered where typed; reactions by DM
    rest: str = ""  # the command's words after its name, as typed (!override, !report)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a request does to an alert (all of it applied in one transaction)."""

    changes: dict[str, object] | None = None
    actions: tuple[NewAction, ...] = ()
    audit: tuple[AuditItem, ...] = ()
    confirm: tuple[str, str, float, float] | None = None
    clear_confirm: str | None = None
    reply: str | None = None
    prompt: str | None = None  # a confirmation prompt for the room
    edit: bool = False


def allowed(person: StaffMember, op: str) -> bool:
    """Whether ``person``'s role covers ``op``."""
    return person.role.rank >= ROLE_NEEDED[op].rank


def _when(now: float, alert: AlertRecord, tz: str) -> str:
    return f"at {clock_time(now, tz)}, {span(now - alert.created_at)} after the alert"


def _author(alert: AlertRecord) -> str:
    for t in alert.targets:
        if t.target.get("username"):
            return str(t.target["username"])
    return "the author"


def decide(
    alert: AlertRecord, op: str, person: StaffMember, now: float, confirm_window_s: float
) -> Verdict:
    """What ``person`` asking for ``op`` does to ``alert`` as it stands (role already checked)."""
    name = person.name
    if alert.status == "acting":
        return Verdict(
            reply=f"Alert #{alert.id} is being handled by {alert.op_by} right now "
            f"({alert.op}). Nothing more was done."
        )
    if alert.status == "resolved":
        restorable = any(t.hidden == 1 for t in alert.targets)
        if op == "restore" and restorable:
            return _operation(alert, "restore", person, now)
        return Verdict(
            reply=f"Alert #{alert.id} is already handled: {alert.outcome or alert.resolution}. "
            "Nothing was done."
        )
    if not alert.targets and op in ("takedown", "suspend", "confirm", "delete", "restore"):
        # A lockdown's alert (bot.raids) is about no post: there is nothing to act on.
        return Verdict(
            reply=f"Alert #{alert.id} is about a lockdown, not a post: nothing to take down."
            " 👀 takes it, ❎ closes it; !lockdown off (moderators) ends the lockdown."
        )
    if op == "ack":
        if alert.acked_by:
            return Verdict(reply=f"{alert.acked_by} is already on alert #{alert.id}.")
        return Verdict(
            changes={"status": "acked", "acked_by": name, "acked_at": now},
            audit=(_audit(alert, person, "ack", "ok", "👀 on the alert"),),
            edit=True,
        )
    if op == "takedown":
        if not any(t.hidden == 0 for t in alert.targets):
            # Every post is already hidden (by the rule): taking down confirms it.
            text = f"✅ Taken down by {name} {_when(now, alert, person.timezone)}"
            return Verdict(
                changes=_resolved(alert, "taken_down", name, now, text + " (confirmed the hide)"),
                audit=(_audit(alert, person, "takedown", "ok", "confirmed the automatic hide"),),
                edit=True,
            )
        return _operation(alert, "takedown", person, now)
    if op in ("suspend", "confirm"):
        live = next(
            (c for c in alert.confirmations if c.op == "suspend" and c.expires_at > now), None
        )
        if live is None:
            if op == "confirm":
                return Verdict(
                    reply=f"Nothing to confirm on alert #{alert.id}: a 🔨 request lasts "
                    f"{span(confirm_window_s)}. React 🔨 on the alert to ask again."
                )
            prompt = (
                f"{name} asked to take down alert #{alert.id} and suspend {_author(alert)}. "
                f"To confirm, a moderator reacts {CONFIRM_KEY} on this message or types "
                f"!confirm {alert.id} within {span(confirm_window_s)}."
            )
            return Verdict(confirm=("suspend", name, now, now + confirm_window_s), prompt=prompt)
        if not any(t.target.get("user_id") for t in alert.targets):
            return Verdict(reply=f"Alert #{alert.id}: the author is unknown, cannot suspend.")
        verdict = _operation(alert, "suspend", person, now)
        return Verdict(
            changes=verdict.changes,
            actions=verdict.actions,
            clear_confirm="suspend",
            edit=True,
        )
    if op == "delete":
        if not any(t.hidden != 2 for t in alert.targets):
            return Verdict(reply=f"Alert #{alert.id}: its posts are already deleted.")
        return _operation(alert, "delete", person, now)
    if op == "dismiss":
        text = f"❎ Dismissed as a false positive by {name} {_when(now, alert, person.timezone)}"
        if any(t.hidden == 1 for t in alert.targets):
            text += ". The post stays hidden: ↩️ restores it"
        return Verdict(
            changes=_resolved(alert, "dismissed", name, now, text),
            audit=(_audit(alert, person, "dismiss", "ok", "marked a false positive"),),
            edit=True,
        )
    if op == "restore":
        if not any(t.hidden == 1 for t in alert.targets):
            return Verdict(
                reply=f"Nothing to restore on alert #{alert.id}: Vigil has hidden none of its posts."
            )
        return _operation(alert, "restore", person, now)
    raise ValueError(f"unknown operation {op!r}")


def _resolved(
    alert: AlertRecord, resolution: str, name: str, now: float, outcome: str
) -> dict[str, object]:
    return {
        "status": "resolved",
        "resolution": resolution,
        "resolved_by": name,
        "resolved_at": now,
        "outcome": outcome,
        "op": None,
    }


def _audit(
    alert: AlertRecord, person: StaffMember, action: str, outcome: str, reason: str
) -> AuditItem:
    return AuditItem(
        actor=person.name,
        action=action,
        target=f"alert #{alert.id} on {alert.source}",
        reason=reason,
        outcome=outcome,
        alert_id=alert.id,
    )


def _operation(alert: AlertRecord, op: str, person: StaffMember, now: float) -> Verdict:
    """Put the alert in 'acting' and journal the forum actions ``op`` needs."""
    seq = alert.op_seq + 1
    reason = f"{person.name} asked to {op} alert #{alert.id} (rules: {', '.join(alert.rules)})"
    actions: list[NewAction] = []

    def add(kind: str, target: dict[str, object], event_id: int | None, what: str) -> None:
        actions.append(
            new_action(
                f"op:{alert.id}:{seq}:{kind}:{what}",
                kind,
                alert.source,
                dict(target),
                actor=person.name,
                reason=reason,
                op_seq=seq,
                event_id=event_id,
            )
        )

    if op in ("takedown", "suspend"):
        for t in alert.targets:
            if t.hidden == 0:
                add("hide", t.target, t.event_id, str(t.event_id))
    if op == "suspend":
        users = {str(t.target["user_id"]): t for t in alert.targets if t.target.get("user_id")}
        for user_id, t in users.items():
            add("suspend", t.target, None, user_id)
    if op == "delete":
        for t in alert.targets:
            if t.hidden != 2:
                add("delete", t.target, t.event_id, str(t.event_id))
    if op == "restore":
        for t in alert.targets:
            if t.hidden == 1:
                add("unhide", t.target, t.event_id, str(t.event_id))
    return Verdict(
        changes={
            "status": "acting",
            "op": op,
            "op_seq": seq,
            "op_by": person.name,
            "op_at": now,
            "prev_status": alert.status,
        },
        actions=tuple(actions),
        edit=True,
    )


def conclude(alert: AlertRecord, tz: str, now: float) -> Verdict:
    """The end of an 'acting' operation whose forum actions all finished."""
    actions = [a for a in alert.actions if a.op_seq == alert.op_seq]
    failed = [a for a in actions if not a.ok]
    by = alert.op_by or "?"
    op = alert.op or "?"
    when = _when(now, alert, tz)
    if not failed:
        text = {
            "takedown": f"✅ Taken down by {by} {when}",
            "suspend": f"🔨 Taken down and {_author(alert)} suspended by {by} {when}",
            "delete": f"🗑️ Deleted by {by} {when}",
            "restore": f"↩️ Restored by {by} {when}",
        }.get(op, f"{op} by {by} {when}")
        if any(a.simulated for a in actions):
            text += " (dry run: simulated, nothing changed on the forum)"
        return Verdict(changes=_resolved(alert, _RESOLUTION.get(op, op), by, now, text), edit=True)
    details = "; ".join(f"{a.kind} {describe(a.action)}: {scrub(a.detail, 160)}" for a in failed)
    text = f"⚠️ {by}'s {op} FAILED {when}: {details}. React again to retry."
    return Verdict(
        changes={"status": alert.prev_status or "open", "op": None, "outcome": text}, edit=True
    )


def _local(at: datetime, tz: str) -> str:
    """``Wed 24 Dec 18:00 GMT``: an instant as the asker reads it."""
    return at.astimezone(ZoneInfo(tz)).strftime("%a %d %b %H:%M %Z")


def parse_alert_id(args: Sequence[str]) -> int | None:
    """The alert number in ``!ack 12`` / ``!ack #12``."""
    if not args:
        return None
    m = _ALERT_ID.fullmatch(args[0])
    return int(m.group(1)) if m else None


class Moderation:
    """Turns chat reactions and commands into alert operations."""

    def __init__(
        self,
        config: Config,
        store: Store,
        clock: Clock,
        *,
        wake_actions: Callable[[], None],
        wake_outbox: Callable[[], None],
        status: StatusProvider | None = None,
        on_resolved: OnResolved | None = None,
        rules: Callable[[], RuleSet] | None = None,
        alert_changed: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.wake_actions = wake_actions
        self.wake_outbox = wake_outbox
        self.status = status
        self.on_resolved = on_resolved
        self.rules = rules  # the rules in force: schedules for !oncall and !override
        # Called after an alert is acked, resolved or reopened: the escalation engine
        # looks at once instead of at its next poll.
        self.alert_changed = alert_changed or (lambda: None)
        self.lockdown: LockdownManager | None = None  # set by the app (bot.raids)

    # --- chat entry points --------------------------------------------------------

    async def on_reaction(self, reaction: ChatReaction) -> None:
        """A reaction: only the alert buttons on the bot's own alert messages count."""
        button = button_for(reaction.key)
        if button is None:
            return
        found = await self.store.alert_by_message(reaction.chat, reaction.message_id)
        if found is None:
            return
        alert_id, kind = found
        op = button.op
        if kind == "confirm":
            if button.key != CONFIRM_KEY:
                return
            op = "confirm"
        await self.handle(
            Request(
                reaction.chat,
                reaction.sender,
                reaction.event_id,
                op,
                alert_id,
                f"reaction {button.key}",
                reaction.room,
                reply_in_room=False,
            )
        )

    async def on_command(self, command: ChatCommand) -> None:
        """``!help``, ``!status`` and the alert commands (also bare words in a DM)."""
        if not command.args:
            return
        word, rest = command.args[0], command.args[1:]
        base = (command.chat, command.sender, command.event_id)
        if word == "help":
            await self._reply_only(command, help_text(await self.reach_lines(command.chat)))
            return
        if word == "lockdown":
            sub = rest[0].casefold() if rest else "status"
            if sub not in ("on", "off", "status") or self.lockdown is None:
                text = LOCKDOWN_USAGE if self.lockdown else "Lockdowns are not set up here."
                await self._reply_only(command, ChatMessage(text))
                return
            words = (sub, *rest[1:])
            await self.handle(
                Request(*base, f"lockdown_{sub}", None, f"!lockdown {sub}", command.room,
                        reply_in_room=True, rest=" ".join(words))
            )  # fmt: skip
            return
        if word == "whois":
            # Never answered in the room: the reply (and any refusal) goes by DM.
            await self.handle(
                Request(*base, "whois", None, "!whois", command.room, reply_in_room=False,
                        rest=" ".join(rest))
            )  # fmt: skip
            return
        if word == "status":
            await self.handle(
                Request(*base, "status", None, "!status", command.room, reply_in_room=True)
            )
            return
        if word in ESCALATION_COMMANDS:
            words = command.text.strip().removeprefix("!").split(None, 1)
            rest_text = words[1] if len(words) > 1 else ""
            await self.handle(
                Request(
                    *base, word, None, f"!{word}", command.room, reply_in_room=True, rest=rest_text
                )
            )
            return
        if word not in ALERT_COMMANDS:
            if command.is_direct:
                await self._reply_only(command, ChatMessage("Unknown command; try !help."))
            return
        alert_id = parse_alert_id(rest)
        if alert_id is None:
            await self._reply_only(
                command, ChatMessage(f"Usage: !{word} N, where N is the alert number.")
            )
            return
        await self.handle(
            Request(*base, word, alert_id, f"!{word}", command.room, reply_in_room=True)
        )

    # --- the decision -------------------------------------------------------------

    async def handle(self, req: Request) -> None:
        """Check the sender's role, decide on a fresh snapshot, apply once."""
        person = self.config.staff_by_chat_id(req.chat, req.sender)
        label = OP_LABEL[req.op]
        where = f" on alert #{req.alert_id}" if req.alert_id is not None else ""
        if person is None or not allowed(person, req.op):
            if person is None:
                why = "not on the staff roster"
                text = (
                    f"You used {label}{where}, but {req.sender} is not on Vigil's staff "
                    "roster, so nothing was done. An admin can add you to bot.toml."
                )
            else:
                need = ROLE_NEEDED[req.op].value
                why = f"role {person.role.value} lacks {req.op} (needs {need})"
                text = (
                    f"{label} needs the {need} role; you ({person.name}) are a "
                    f"{person.role.value}. Nothing was done{where}."
                )
            log.warning(
                "refused %s from chat=%s sender=%s alert=%s: %s",
                req.op,
                req.chat,
                req.sender,
                req.alert_id,
                why,
            )
            audit = AuditItem(
                actor=person.name if person else req.sender,
                action=req.op,
                target=f"alert #{req.alert_id}" if req.alert_id is not None else "chat",
                reason=f"{req.via}: {why}",
                outcome="refused",
                alert_id=req.alert_id,
                detail={"chat": req.chat, "sender": req.sender},
            )
            await self._apply(Plan(audit=(audit,)), req, text)
            return
        if req.op == "status":
            lines = await self.status() if self.status else ["No status available."]
            await self._apply(Plan(), req, "\n".join(lines))
            return
        if req.op.startswith("lockdown_"):
            await self._lockdown(req, person)
            return
        if req.op == "whois":
            await self._apply(Plan(), req, await self._whois(req, person))
            return
        if req.op in ESCALATION_COMMANDS:
            answer = {"oncall": self._oncall, "override": self._override, "report": self._report}
            await self._apply(Plan(), req, await answer[req.op](req, person))
            return
        assert req.alert_id is not None
        for _ in range(_CAS_ATTEMPTS):
            now = self.clock.now()
            alert = await self.store.alert_snapshot(req.alert_id)
            if alert is None:
                await self._apply(Plan(), req, f"There is no alert #{req.alert_id}.")
                return
            verdict = decide(alert, req.op, person, now, self.config.alerts.confirm_window_s)
            outbox: list[OutboxItem] = []
            if verdict.edit:
                outbox.append(OutboxItem("*", "edit_alert", alert_id=alert.id))
            if verdict.prompt:
                room = await self._alert_room(alert.id, req)
                outbox.append(
                    OutboxItem(
                        req.chat,
                        "confirm_prompt",
                        {"room": room, "text": verdict.prompt},
                        dedupe_key=f"prompt:{req.chat}:{req.event_id}",
                        alert_id=alert.id,
                    )
                )
            plan = Plan(
                alert_id=alert.id,
                expect_version=alert.version,
                changes=verdict.changes,
                actions=verdict.actions,
                outbox=tuple(outbox),
                audit=verdict.audit,
                confirm=verdict.confirm,
                clear_confirm=verdict.clear_confirm,
            )
            status = await self._apply(plan, req, verdict.reply)
            if status != "conflict":
                if status == "applied":
                    log.info("alert %d: %s by %s via %s", alert.id, req.op, person.name, req.via)
                    if verdict.changes:
                        self.alert_changed()
                    if verdict.actions:
                        self.wake_actions()
                    elif verdict.changes and verdict.changes.get("status") == "resolved":
                        await self._resolved(alert.id, person.name)
                return
        log.error("alert %s: gave up deciding %s after %d conflicts", req.alert_id, req.op,
                  _CAS_ATTEMPTS)  # fmt: skip
        raise RuntimeError(f"alert {req.alert_id} kept changing; the chat event will be retried")

    async def _alert_room(self, alert_id: int, req: Request) -> str:
        if req.reply_in_room:
            return req.room
        for _, room, _ in await self.store.alert_messages(alert_id, req.chat):
            return room
        return req.room

    async def _apply(self, plan: Plan, req: Request, reply: str | None) -> str:
        outbox = list(plan.outbox)
        if reply:
            outbox.append(self._reply_item(req, ChatMessage(reply)))
        plan = Plan(
            alert_id=plan.alert_id,
            expect_version=plan.expect_version,
            changes=plan.changes,
            actions=plan.actions,
            outbox=tuple(outbox),
            audit=plan.audit,
            confirm=plan.confirm,
            clear_confirm=plan.clear_confirm,
            chat_event=(req.chat, req.event_id),
        )
        result = await self.store.apply_plan(plan, self.clock.now())
        if result.status == "applied" and outbox:
            self.wake_outbox()
        return result.status

    def _reply_item(self, req: Request, message: ChatMessage) -> OutboxItem:
        payload = {"text": message.text, "html": message.html}
        key = f"reply:{req.chat}:{req.event_id}"
        if req.reply_in_room:
            return OutboxItem(req.chat, "send", {**payload, "room": req.room}, dedupe_key=key)
        return OutboxItem(req.chat, "dm", {**payload, "user": req.sender}, dedupe_key=key)

    async def _reply_only(self, command: ChatCommand, message: ChatMessage) -> None:
        req = Request(
            command.chat,
            command.sender,
            command.event_id,
            "status",
            None,
            command.text[:40],
            command.room,
            reply_in_room=True,
        )
        plan = Plan(outbox=(self._reply_item(req, message),), chat_event=(req.chat, req.event_id))
        if (await self.store.apply_plan(plan, self.clock.now())).status == "applied":
            self.wake_outbox()

    # --- !whois ------------------------------------------------------------------------

    async def _whois(self, req: Request, person: StaffMember) -> str:
        """The personal data kept for a forum account; the lookup itself is audited."""
        from bot.personal_data import NotAllowed, whois

        target = req.rest.strip()
        if not target:
            return "Usage: !whois USERNAME (or a forum user id). The answer comes in this DM."
        try:
            result = await whois(
                self.store,
                None,
                target,
                person,
                now=self.clock.now(),
                keep_days=self.config.privacy.personal_data_days,
                via=req.chat,
            )
        except NotAllowed:
            return "!whois needs the admin role. Nothing was looked up."
        return result.render()

    # --- !oncall, !override, !report --------------------------------------------------

    def _schedules(self) -> list[Schedule]:
        return list(self.rules().schedules) if self.rules is not None else []

    async def _stored_overrides(self, now: float) -> dict[str, list[Override]]:
        by_schedule: dict[str, list[Override]] = {}
        for row in await self.store.schedule_overrides(now):
            by_schedule.setdefault(row["schedule"], []).append(override_from_row(row))
        return by_schedule

    async def _oncall(self, req: Request, person: StaffMember) -> str:
        """``!oncall [SCHEDULE]``: who is on now and next, in the asker's time zone."""
        now = self.clock.now()
        schedules = self._schedules()
        wanted = req.rest.strip()
        if wanted:
            chosen = [s for s in schedules if s.name.casefold() == wanted.casefold()]
            if not chosen:
                return f"No schedule called {wanted!r}. {self._schedule_names(schedules)}"
            schedules = chosen
        lines = oncall_lines(
            schedules,
            datetime.fromtimestamp(now, UTC),
            person.timezone,
            await self._stored_overrides(now),
        )
        return f"On call (times in {person.timezone}):\n" + "\n".join(lines)

    @staticmethod
    def _schedule_names(schedules: Sequence[Schedule]) -> str:
        names = ", ".join(s.name for s in schedules)
        return f"Schedules: {names}." if names else "No schedules are defined in the rules files."

    async def _override(self, req: Request, person: StaffMember) -> str:
        """``!override SCHEDULE FROM TO ["PERSON"] [instead "PERSON"]``, in the asker's zone."""
        now = self.clock.now()
        parsed = parse_override(req.rest, person.timezone, datetime.fromtimestamp(now, UTC))
        if not isinstance(parsed, OverrideRequest):
            return parsed
        schedules = self._schedules()
        schedule = next(
            (s for s in schedules if s.name.casefold() == parsed.schedule.casefold()), None
        )
        if schedule is None:
            return f"No schedule called {parsed.schedule!r}. {self._schedule_names(schedules)}"
        taker = self.config.person(parsed.person) if parsed.person else person
        if taker is None:
            return f"{parsed.person!r} is not on the staff roster. {OVERRIDE_USAGE}"
        replaced = self.config.person(parsed.replaces) if parsed.replaces else None
        if parsed.replaces and replaced is None:
            return f"{parsed.replaces!r} is not on the staff roster. {OVERRIDE_USAGE}"
        if parsed.end.timestamp() - parsed.start.timestamp() > 31 * 86400:
            return "An override lasts at most 31 days; change the rules file for longer."
        replaces = replaced.name if replaced else None
        tz = person.timezone
        when = f"from {_local(parsed.start, tz)} to {_local(parsed.end, tz)}"
        swap = f" instead of {replaces}" if replaces else ""
        # A chat event can be delivered twice: the same override again is not added again.
        for row in await self.store.schedule_overrides(now, schedule.name):
            if (
                row["person"] == taker.name
                and row["replaces"] == replaces
                and row["starts_at"] == parsed.start.timestamp()
                and row["ends_at"] == parsed.end.timestamp()
            ):
                return f"Already recorded: {taker.name} on call in {schedule.name}{swap} {when}."
        override_id = await add_override(
            self.store,
            schedule.name,
            taker.name,
            parsed.start,
            parsed.end,
            person.name,
            replaces=replaces,
            reason=f"{req.via} by {person.name}",
            now=now,
        )
        self.alert_changed()  # a step waiting for someone on call may find them now
        text = f"Override #{override_id}: {taker.name} on call in {schedule.name}{swap} {when}."
        if not person_channels(taker, self.config):
            text += f" ⚠️ {taker.name} has no chat identity Vigil can page them on."
        lines = oncall_lines(
            [schedule], datetime.fromtimestamp(now, UTC), tz, await self._stored_overrides(now)
        )
        return text + "\n" + "\n".join(lines)

    async def _report(self, req: Request, person: StaffMember) -> str:
        """``!report [days]``: alerts, time to ack and to take down, pages, who did what."""
        word = req.rest.strip().removesuffix("d")
        try:
            days = float(word) if word else 7.0
        except ValueError:
            days = -1.0
        if not 0 < days <= REPORT_MAX_DAYS:
            return f"Usage: !report [days], e.g. !report 7 (at most {REPORT_MAX_DAYS:g} days)."
        rep = await report(self.store, self.clock.now(), days)
        return render_report(rep, person.timezone)

    # --- !lockdown and how to reach a person (bot.raids) ---------------------------------

    async def _lockdown(self, req: Request, person: StaffMember) -> None:
        """``!lockdown on|off|status``: the chat event is claimed first, so a redelivered
        command does nothing twice; the lockdown audits its own change."""
        assert self.lockdown is not None
        claimed = await self.store.apply_plan(
            Plan(chat_event=(req.chat, req.event_id)), self.clock.now()
        )
        if claimed.status == "duplicate":
            return
        log.info("%s by %s", req.via, person.name)
        answer = await self.lockdown.command(person, req.rest.split())
        plan = Plan(outbox=(self._reply_item(req, ChatMessage(answer)),))
        if (await self.store.apply_plan(plan, self.clock.now())).status == "applied":
            self.wake_outbox()

    async def reach_lines(self, chat: str) -> list[str]:
        """What ``!help`` says first: who is on call now (from the schedules, with their
        handle in this chat) and how to reach them; else the moderators and admins."""
        now = self.clock.now()
        at = datetime.fromtimestamp(now, UTC)
        overrides = await self._stored_overrides(now)
        on_call: list[str] = []
        for schedule in self._schedules():
            names = who_is_on(schedule, at, overrides.get(schedule.name, []))
            if names:
                people = ", ".join(self._handle(n, chat) for n in names)
                on_call.append(f"{schedule.name}: {people}")
        if on_call:
            return [
                "Need a person? On call now: " + "; ".join(on_call) + ". Send them a direct"
                " message; an alert nobody takes pages them by itself. !oncall shows who is next."
            ]
        staff = [p.name for p in self.config.staff if p.role is not Role.VOLUNTEER]
        who = ", ".join(self._handle(n, chat) for n in staff) or "none on the roster"
        return [
            "Need a person? Nobody is on an on-call schedule right now. Moderators and admins:"
            f" {who}. Send one a direct message."
        ]

    def _handle(self, name: str, chat: str) -> str:
        person = self.config.person(name)
        handle = getattr(person, chat, None) if person is not None else None
        return f"{name} ({handle})" if handle else name

    # --- the end of an operation ----------------------------------------------------

    async def finalize(self, finished: FinishedAction) -> None:
        """Called when a forum action finished: conclude its operation if it was the last."""
        if finished.alert_id is None or finished.op_seq == 0 or finished.remaining:
            return
        await self.conclude(finished.alert_id)

    async def conclude(self, alert_id: int) -> None:
        """Resolve (or reopen) an 'acting' alert whose forum actions are all done."""
        for _ in range(_CAS_ATTEMPTS):
            alert = await self.store.alert_snapshot(alert_id)
            if alert is None or alert.status != "acting":
                return
            if any(a.state != "done" for a in alert.actions if a.op_seq == alert.op_seq):
                return
            person = self.config.person(alert.op_by or "")
            now = self.clock.now()
            verdict = conclude(alert, person.timezone if person else "UTC", now)
            resolved = bool(verdict.changes and verdict.changes.get("status") == "resolved")
            plan = Plan(
                alert_id=alert.id,
                expect_version=alert.version,
                changes=verdict.changes,
                outbox=(OutboxItem("*", "edit_alert", alert_id=alert.id),),
            )
            result = await self.store.apply_plan(plan, now)
            if result.status == "applied":
                self.wake_outbox()
                self.alert_changed()
                log.info("alert %d: %s by %s concluded", alert.id, alert.op, alert.op_by)
                if resolved:
                    await self._resolved(alert.id, alert.op_by or "?")
                return

    async def _resolved(self, alert_id: int, actor: str) -> None:
        if self.on_resolved is None:
            return
        alert = await self.store.alert_snapshot(alert_id)
        if alert is None:
            return
        try:
            await self.on_resolved(alert, actor)
        except Exception:  # banking is a bonus; the takedown itself is done and recorded
            log.exception("alert %d: the after-resolution hook failed", alert_id)
