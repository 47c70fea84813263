"""Evidence: the originals of images matched on lists of illegal material, encrypted.

A match is evidence when its list is declared ``illegal = true`` in a rules file, or
its category is one of ``[evidence] categories`` in bot.toml. For each such image the
:class:`EvidenceStage` (after the match stage) records its hashes, its matches and the
event (which holds no personal data) in the ``evidence`` table, and writes the bytes
the media stage fetched to ``<data_dir>/evidence/`` encrypted with AES-256-GCM under
the key in ``[evidence] key_env``. Nothing is fetched again for it: an image whose
SHA-1 was on a list before download was never downloaded, and its record says so.

Each file is ``MAGIC | 12-byte nonce | ciphertext+tag``, the file name bound in as
associated data so files cannot be swapped. Without a key evidence is off (loud
warnings at start and in ``vigil check``); with a wrong key, reading fails cleanly.
Records and files are deleted at ``expires_at`` (``retention_days``, at least 90).

Reading is for admins only and audited: ``vigil evidence get ID --as ADMIN --out FILE``
(``vigil evidence list`` shows the records, no bytes).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import secrets
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

from bot.config import Config
from bot.model import Match
from bot.pipeline import EventContext
from bot.rules import RuleSet
from bot.store import AuditItem, Store

log = logging.getLogger(__name__)

KEY_BYTES = 32
MAGIC = b"VGE1"
NONCE_BYTES = 12
SUFFIX = ".vge"
DAY_S = 86_400.0
# A file written but never recorded (a crash in between) is swept after this long.
ORPHAN_GRACE_S = 3600.0


class EvidenceKeyError(Exception):
    """A file that does not open with this key (wrong key, or the file was altered)."""


class EvidenceUnavailable(Exception):
    """Evidence cannot be read: no key, no such record, or the record has no bytes."""


def parse_key(text: str) -> bytes:
    """The 32-byte key from 64 hex digits or base64; ValueError saying what is wrong."""
    value = text.strip()
    if len(value) == 2 * KEY_BYTES:
        with contextlib.suppress(ValueError):
            return bytes.fromhex(value)
    standard = value.replace("-", "+").replace("_", "/").rstrip("=")  # URL-safe too
    try:
        raw = base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_BYTES:
        raise ValueError(
            f"expected a {KEY_BYTES}-byte key as base64 (openssl rand -base64 32) or"
            f" {2 * KEY_BYTES} hex digits (openssl rand -hex 32)"
        )
    return raw


def is_evidence(match: Match, rules: RuleSet, categories: Iterable[str]) -> bool:
    """Whether a match is of illegal material: its list says so, or its category does."""
    spec = rules.list(match.list)
    if spec is not None and spec.illegal:
        return True
    return match.category is not None and match.category in set(categories)


class EvidenceVault:
    """Encrypted files under one directory; ``enabled`` only with a key."""

    def __init__(self, directory: Path, key: bytes | None, retention_days: int) -> None:
        self.directory = directory
        self.retention_s = retention_days * DAY_S
        self._aead: Any = None
        if key is not None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            if len(key) != KEY_BYTES:
                raise ValueError(f"the evidence key must be {KEY_BYTES} bytes")
            self._aead = AESGCM(key)

    @classmethod
    def from_config(cls, config: Config) -> EvidenceVault:
        """The vault bot.toml describes; without the key it is disabled, loudly."""
        ev = config.evidence
        raw = config.secret(ev.key_env)
        if not raw:
            log.warning(
                "EVIDENCE IS OFF: the environment variable %s is not set, so originals of"
                " images matched on illegal lists will NOT be kept (see docs/evidence.md)",
                ev.key_env,
            )
            return cls(ev.directory, None, ev.retention_days)
        return cls(ev.directory, parse_key(raw), ev.retention_days)

    @property
    def enabled(self) -> bool:
        """Whether bytes can be kept and read (a key is set)."""
        return self._aead is not None

    def seal(self, data: bytes, name: str) -> bytes:
        """Encrypt ``data`` for the file called ``name``."""
        if self._aead is None:
            raise EvidenceUnavailable("evidence is off: no key")
        nonce = secrets.token_bytes(NONCE_BYTES)
        return MAGIC + nonce + self._aead.encrypt(nonce, data, _aad(name))

    def unseal(self, blob: bytes, name: str) -> bytes:
        """Decrypt the contents of the file called ``name``; EvidenceKeyError if it fails."""
        from cryptography.exceptions import InvalidTag

        if self._aead is None:
            raise EvidenceUnavailable("evidence cannot be read without the key")
        if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + NONCE_BYTES + 16:
            raise EvidenceKeyError(f"{name} is not a Vigil evidence file")
        nonce = blob[len(MAGIC) : len(MAGIC) + NONCE_BYTES]
        try:
            return bytes(self._aead.decrypt(nonce, blob[len(MAGIC) + NONCE_BYTES :], _aad(name)))
        except InvalidTag:
            raise EvidenceKeyError(
                f"{name} does not open with this key: the key is not the one it was written"
                " with, or the file was altered"
            ) from None

    async def write(self, data: bytes) -> str:
        """Encrypt and store ``data`` durably; returns the new file's name."""
        name = secrets.token_hex(16) + SUFFIX
        blob = self.seal(data, name)
        await asyncio.to_thread(self._write_file, name, blob)
        return name

    def _write_file(self, name: str, blob: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        tmp = self.directory / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, blob)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.directory / name)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself must survive a power cut
        finally:
            os.close(dir_fd)

    async def read(self, name: str) -> bytes:
        """The decrypted bytes of one file."""
        if Path(name).name != name or not name.endswith(SUFFIX):
            raise EvidenceUnavailable(f"{name!r} is not an evidence file name")
        blob = await asyncio.to_thread((self.directory / name).read_bytes)
        return self.unseal(blob, name)

    async def purge(self, store: Store, now: float) -> tuple[tuple[int, ...], int]:
        """Delete expired records (audited), then their files and orphaned files;
        returns (record ids, files deleted). Works without the key: no reading needed."""
        ids, files = await store.purge_evidence(now)
        live = await store.evidence_files()
        removed = await asyncio.to_thread(self._remove, files, live, now)
        return tuple(ids), removed

    def _remove(self, files: Sequence[str], live: set[str], now: float) -> int:
        removed = 0
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                (self.directory / name).unlink()
                removed += 1
        if not self.directory.is_dir():
            return removed
        for path in self.directory.iterdir():
            name = path.name.lstrip(".").removesuffix(".tmp")
            orphan = path.name.endswith(".tmp") or (name.endswith(SUFFIX) and name not in live)
            with contextlib.suppress(FileNotFoundError):
                if orphan and path.stat().st_mtime < now - ORPHAN_GRACE_S:
                    path.unlink()
                    removed += 1
        return removed


def _aad(name: str) -> bytes:
    return b"vigil-evidence-v1:" + name.encode()


class EvidenceStage:
    """Keep evidence of every image of the event matched as illegal (after MatchStage,
    before RulesStage): one record per image, with the bytes when they are at hand."""

    name = "evidence"

    def __init__(
        self,
        vault: EvidenceVault,
        store: Store,
        rules: Callable[[], RuleSet],
        categories: Iterable[str] = (),
    ) -> None:
        self.vault = vault
        self.store = store
        self._rules = rules  # a callable: a rules reload applies to the next event
        self.categories = frozenset(categories)

    async def run(self, ctx: EventContext) -> None:
        """Record evidence for illegal matches; the bytes leave ``ctx.facts`` either way."""
        kept: dict[int, bytes] = ctx.facts.pop("media_bytes", None) or {}
        rules = self._rules()
        by_index: dict[int, list[Match]] = defaultdict(list)
        for m in ctx.facts.get("matches", ()):
            if is_evidence(m, rules, self.categories):
                by_index[m.media_index].append(m)
        if not by_index:
            return
        media = {r.index: r for r in ctx.facts.get("media", ())}
        for index, matches in sorted(by_index.items()):
            if await self.store.evidence_exists(ctx.id, index):
                continue  # a retried event: recorded on an earlier run
            await self._keep(ctx, index, matches, media.get(index), kept.get(index))

    async def _keep(
        self,
        ctx: EventContext,
        index: int,
        matches: list[Match],
        result: Any,
        data: bytes | None,
    ) -> None:
        hashes = getattr(result, "hashes", None)
        ref = getattr(result, "ref", None)
        sha256 = hashes.sha256 if hashes is not None else None
        sha1 = hashes.sha1 if hashes is not None else getattr(ref, "sha1", None)
        file: str | None = None
        note = ""
        size = len(data) if data is not None else None
        if not self.vault.enabled:
            note = "bytes not kept: evidence is off (no key)"
        elif (existing := await self.store.evidence_file_for(sha256, sha1)) is not None:
            file, note = existing, "same image as earlier evidence; one encrypted copy is kept"
        elif data is not None and (sha256 is None or hashlib.sha256(data).hexdigest() == sha256):
            file = await self.vault.write(data)
        elif data is not None:
            note = "bytes not kept: they differ from the image that was hashed"
        elif getattr(result, "reason", None):
            note = f"bytes not kept: {result.reason}"
        else:
            note = "bytes not kept: not at hand in this run (hashed earlier)"
        listed = sorted({m.list for m in matches})
        record = {
            "event_id": ctx.id,
            "media_index": index,
            "source": ctx.event.source,
            "matches": json.dumps(
                [
                    {"list": m.list, "kind": m.kind, "distance": m.distance, "category": m.category}
                    for m in matches
                ],
                sort_keys=True,
            ),
            "sha256": sha256,
            "sha1": sha1,
            "hashes": _hashes_json(hashes),
            "size": size,
            "file": file,
            "note": note,
            "metadata": json.dumps(
                {
                    "event_id": ctx.id,
                    "media_url": getattr(ref, "url", None),
                    "event": ctx.event.to_dict(),
                },
                sort_keys=True,
                ensure_ascii=False,
            ),
            "created_at": ctx.now,
            "expires_at": ctx.now + self.vault.retention_s,
        }
        audit = AuditItem(
            actor="vigil",
            action="evidence_keep",
            target=f"event {ctx.id}",
            reason=f"matched {', '.join(listed)}",
            outcome="kept" if file else "recorded without bytes",
            detail={"image": index, "sha256": sha256, "sha1": sha1},
        )
        evidence_id = await self.store.add_evidence(record, audit, ctx.now)
        if file is None:
            log.warning(
                "event %d image %d: evidence recorded WITHOUT the image (%s)", ctx.id, index, note
            )
        else:
            log.info("event %d image %d: evidence %s kept, encrypted", ctx.id, index, evidence_id)


def _hashes_json(hashes: Any) -> str | None:
    if hashes is None:
        return None
    from bot.scanning import hashes_to_json

    return hashes_to_json(hashes)


def image_suffix(data: bytes) -> str:
    """A file extension from the image's magic bytes (``.bin`` when unknown)."""
    if data.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return ".gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return ".bin"


async def read_evidence(vault: EvidenceVault, record: dict[str, Any]) -> bytes:
    """The original bytes of an evidence record, checked against its recorded hashes."""
    if not record.get("file"):
        raise EvidenceUnavailable(f"evidence {record['id']} has no bytes: {record['note']}")
    data = await vault.read(record["file"])
    if record.get("sha256") and hashlib.sha256(data).hexdigest() != record["sha256"]:
        raise EvidenceKeyError(f"evidence {record['id']}: the bytes do not match its SHA-256")
    sha1 = record.get("sha1")
    if (
        not record.get("sha256")
        and sha1
        and hashlib.sha1(data, usedforsecurity=False).hexdigest() != sha1
    ):
        raise EvidenceKeyError(f"evidence {record['id']}: the bytes do not match its SHA-1")
    return data


# --- command line ---------------------------------------------------------------------


def record_summary(r: dict[str, Any]) -> dict[str, Any]:
    """One evidence record as plain JSON (no bytes, no personal data)."""
    from bot.audit import iso

    return {
        "id": r["id"],
        "event_id": r["event_id"],
        "media_index": r["media_index"],
        "source": r["source"],
        "matches": json.loads(r["matches"]),
        "sha256": r["sha256"],
        "sha1": r["sha1"],
        "size": r["size"],
        "bytes_kept": bool(r["file"]),
        "note": r["note"],
        "kept_at": iso(r["created_at"]),
        "expires": iso(r["expires_at"]),
    }


async def _get(config: Config, store: Store, args: argparse.Namespace, out: TextIO) -> int:
    from bot.audit import CliRefused, os_user, require_admin

    now = _now()
    target = f"evidence {args.id}"
    try:
        person = require_admin(config, args.as_name, "reading evidence")
    except CliRefused as exc:
        await store.append_audit(
            actor=args.as_name or f"cli:{os_user()}",
            action="evidence_get",
            target=target,
            reason="vigil evidence get",
            outcome=f"refused: {exc}",
            now=now,
            detail={"os_user": os_user()},
        )
        raise
    record = await store.evidence_record(args.id)
    if record is None:
        raise EvidenceUnavailable(f"there is no evidence {args.id} (see `vigil evidence list`)")
    vault = EvidenceVault.from_config(config)
    outcome = "ok"
    try:
        data = await read_evidence(vault, record)
    except (EvidenceKeyError, EvidenceUnavailable) as exc:
        outcome = f"failed: {exc}"
        raise
    finally:
        await store.append_audit(
            actor=person.name,
            action="evidence_get",
            target=target,
            reason=args.reason or "vigil evidence get",
            outcome=outcome,
            now=now,
            detail={"os_user": os_user(), "out": str(args.out), "event_id": record["event_id"]},
        )
    _write_private(args.out, data)
    print(f"evidence {args.id}: {len(data)} bytes written to {args.out}", file=out)
    return 0


def _write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read; never over an existing one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _now() -> float:
    from bot.store import now_s

    return now_s()


def evidence_command(argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    """``vigil evidence list|get|purge ...``; returns the exit status."""
    from bot.audit import CliRefused, open_store

    default = Path(os.environ.get("VIGIL_CONFIG", "bot.toml"))
    ap = argparse.ArgumentParser(prog="vigil evidence", description="evidence of illegal images")
    sub = ap.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = sub.add_parser("list", help="the evidence records (no bytes), one JSON line each")
    ls.add_argument("--event", type=int, action="append", metavar="ID", help="only these events")
    get = sub.add_parser("get", help="decrypt one original into a new file (admins, audited)")
    get.add_argument("id", type=int, metavar="ID")
    get.add_argument("--out", type=Path, required=True, metavar="FILE", help="a new file")
    get.add_argument("--as", dest="as_name", metavar="NAME", help="you, an admin on the roster")
    get.add_argument("--reason", help="why (kept in the audit log), e.g. a case number")
    purge = sub.add_parser("purge", help="delete expired evidence now (the service does it hourly)")
    for p in (ls, get, purge):
        p.add_argument("-c", "--config", type=Path, default=default, help="path to bot.toml")
    args = ap.parse_args(list(argv))

    async def body() -> int:
        opened = await open_store(args.config, err)
        if opened is None:
            return 1
        config, store = opened
        try:
            if args.action == "list":
                for r in await store.evidence_records(args.event):
                    print(json.dumps(record_summary(r), sort_keys=True), file=out)
                return 0
            if args.action == "purge":
                ids, files = await EvidenceVault.from_config(config).purge(store, _now())
                print(f"deleted {len(ids)} expired record(s) and {files} file(s)", file=out)
                return 0
            return await _get(config, store, args, out)
        except (CliRefused, EvidenceKeyError, EvidenceUnavailable, ValueError, OSError) as exc:
            print(f"vigil evidence: {exc}", file=err)
            return 1
        finally:
            await store.close()

    return asyncio.run(body())
