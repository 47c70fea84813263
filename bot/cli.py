"""The ``vigil`` command (also ``python -m bot``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TextIO

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "bot.toml"


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        type=Path,
        default=Path(os.environ.get("VIGIL_CONFIG", DEFAULT_CONFIG)),
        help="path to bot.toml (default: $VIGIL_CONFIG or ./bot.toml)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="vigil", description="Vigil, a moderation assistant.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("run", help="run the service")
    _config_arg(p)
    p = sub.add_parser("check", help="validate bot.toml and every rules file")
    _config_arg(p)
    p = sub.add_parser("hash", help="print the hashes of image files as JSON lines")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p = sub.add_parser("hashlist", help="import a hash list file or show its statistics")
    p.add_argument("args", nargs=argparse.REMAINDER)
    for name, text in (
        ("audit", "verify the audit log's hash chain, or show entries (verify|show)"),
        ("export", "write an incident bundle for a police, NCMEC or IWF report"),
        ("evidence", "list, read (admins, audited) or purge kept evidence"),
    ):
        p = sub.add_parser(name, help=text, add_help=False)
        p.add_argument("args", nargs=argparse.REMAINDER)
    p = sub.add_parser("demo", help="replay an overnight attack on a throwaway Matrix server")
    p.add_argument("--fast", action="store_true", help="run in seconds, exit 1 if a step fails")
    p.add_argument("--port", type=int, help="the homeserver's port (default: a free one)")
    p.add_argument("--data", type=Path, help="keep the demo's files here (an empty directory)")
    p.add_argument("--skip", action="append", default=[], help=argparse.SUPPRESS)  # tests
    from bot.bank_cli import add_parsers

    add_parsers(sub, _config_arg)  # vigil bank add, vigil scan
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("audit", "export", "evidence"):
        # These parse their own options (argparse's REMAINDER would swallow none of them).
        argv = [argv[0], "--", *argv[1:]]
    args = build_parser().parse_args(argv)
    if args.command == "check":
        return check(args.config, sys.stdout)
    if args.command == "demo":
        # adapters.demo drives a Matrix client: imported only when asked for.
        from adapters.demo import DemoOptions
        from adapters.demo import main as demo_main

        return demo_main(DemoOptions(args.fast, args.port, args.data, frozenset(args.skip)))
    if args.command == "run":
        return run(args.config)
    if args.command == "hash":
        from bot.hashing import hash_paths

        return hash_paths(args.paths, sys.stdout)
    if args.command == "hashlist":
        from bot.hashlists import hashlist_command

        return hashlist_command(args.args, sys.stdout, sys.stderr)
    if args.command == "audit":
        from bot.audit import audit_command

        return audit_command(_rest(args.args), sys.stdout, sys.stderr)
    if args.command == "export":
        from bot.export import export_command

        return export_command(_rest(args.args), sys.stdout, sys.stderr)
    if args.command == "evidence":
        from bot.evidence import evidence_command

        return evidence_command(_rest(args.args), sys.stdout, sys.stderr)
    if args.command in ("bank", "scan"):
        from bot.bank_cli import dispatch

        return dispatch(args, sys.stdout, sys.stderr)
    return 2


def _rest(args: list[str]) -> list[str]:
    """A delegated command's own arguments, without the "--" main() put before them."""
    return args[1:] if args[:1] == ["--"] else args


def check(config_path: Path, out: TextIO) -> int:
    """``vigil check``: every problem at once, or a one-screen summary."""
    from bot.app import load_everything

    loaded, problems = load_everything(config_path)
    for problem in problems.items:
        print(problem, file=out)
    if loaded is None:
        n = len(problems.errors)
        print(f"\n{n} error{'s' if n != 1 else ''}; Vigil would not start.", file=out)
        return 1
    cfg, rules = loaded.config, loaded.rules
    print(f"{cfg.path}: OK", file=out)
    print(
        f"  service   {cfg.service.host}:{cfg.service.port}, database {cfg.store.path}"
        f"{', DRY RUN' if cfg.service.dry_run else ''}",
        file=out,
    )
    for s in cfg.sources:
        hosts = ", ".join(s.media_hosts) or "none"
        print(
            f"  source    {s.name} ({s.kind}) {s.base_url or '-'}; media hosts: {hosts}", file=out
        )
    for r in cfg.rooms:
        where = ", ".join(
            x
            for x in (r.matrix and f"matrix {r.matrix}", r.discord and f"discord {r.discord}")
            if x
        )
        print(f"  room      {r.name}: {where}", file=out)
    roles: dict[str, list[str]] = {}
    for person in cfg.staff:
        roles.setdefault(person.role.value, []).append(person.name)
    for role, names in roles.items():
        print(f"  staff     {role}: {', '.join(names)}", file=out)
    for spec in rules.lists:
        kind = "allow-list" if spec.allow else f"{spec.severity} {spec.category or ''}".strip()
        print(f"  list      {spec.name} ({spec.format}, {kind}) {spec.file}", file=out)
    for rule in rules.rules:
        acts = ", ".join(rule.actions) or "no forum action"
        print(
            f"  rule      {rule.name}: {rule.severity}, {acts}"
            f"{', alert ' + (rule.room or 'default room') if rule.alert else ''}",
            file=out,
        )
    _print_oncall(rules, out)
    pd = cfg.privacy
    kept = f"kept {pd.personal_data_days} days" if pd.keep_personal_data else "not kept"
    print(f"  privacy   personal data (IP, email) {kept}, admins only", file=out)
    ev = cfg.evidence
    state = "on" if cfg.secret(ev.key_env) else f"OFF (${ev.key_env} is not set)"
    marked = [s.name for s in rules.lists if s.illegal] + [f"category {c}" for c in ev.categories]
    print(
        f"  evidence  {state}; kept {ev.retention_days} days in {ev.directory};"
        f" for {', '.join(marked) or 'nothing (no list is marked illegal)'}",
        file=out,
    )
    print(f"  files     {len(rules.files)} rules file(s) in {cfg.service.rules_dir}", file=out)
    return 0


def _print_oncall(rules: object, out: TextIO) -> None:
    """Schedules (who is on now) and escalation policies, one line each."""
    from datetime import UTC, datetime

    from bot.rules import RuleSet
    from bot.schedules import who_is_on

    assert isinstance(rules, RuleSet)
    now = datetime.now(UTC)
    for s in rules.schedules:
        on = ", ".join(who_is_on(s, now)) or "nobody"
        layers = "; ".join(f"{layer.name}: {', '.join(layer.people())}" for layer in s.layers)
        print(f"  schedule  {s.name} ({s.timezone}) {layers}; on call now: {on}", file=out)
    for p in rules.policies:
        sev = ", ".join(p.severities) or "rules that name it"
        steps = " → ".join(" + ".join(str(t) for t in step.targets) for step in p.steps)
        print(f"  policy    {p.name} ({sev}): {steps}", file=out)


def run(config_path: Path) -> int:
    """``vigil run``: the service, until SIGTERM or Ctrl-C."""
    from bot.app import load_everything
    from bot.config import missing_secrets
    from bot.logs import setup_logging

    loaded, problems = load_everything(config_path)
    if loaded is None:
        for problem in problems.items:
            print(problem, file=sys.stderr)
        print("vigil: not starting; run `vigil check` for the full report.", file=sys.stderr)
        return 1
    missing = missing_secrets(loaded.config)
    if missing:
        print(
            "vigil: not starting; set these environment variables (or put them in "
            f"{loaded.config.path.parent / '.env'}): {', '.join(missing)}",
            file=sys.stderr,
        )
        return 1
    setup_logging(loaded.config.service.log_level, loaded.config.service.log_format)
    for warning in problems.warnings:
        log.warning("%s", warning)
    return asyncio.run(_serve(loaded))


async def _serve(loaded: object) -> int:
    from bot.app import App, Loaded

    assert isinstance(loaded, Loaded)
    app = App(loaded.config, loaded.rules)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(app.reload_rules()))
    await app.start()
    await stop.wait()
    log.info("shutting down: draining in-flight work")
    await app.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
