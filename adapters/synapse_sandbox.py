"""A real Synapse homeserver on loopback: for the Matrix tests and for ``vigil demo``.

SQLite, a free port (or a given one), no TLS, no federation, rate limits raised far
out of the way. Users are registered with the shared-secret admin API. The pytest
fixture that shares one server per test session is in tests/synapse_server.py.

A caller that stops or restarts the server must leave it running for whoever
shares it (``try/finally`` with :meth:`SynapseServer.start`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

SERVER_NAME = "vigil.test"
START_TIMEOUT = 90.0  # seconds; a cold start on a slow CI runner creates the schema
STOP_TIMEOUT = 20.0

# Every rate limiter this (and older/newer) Synapse knows; unknown keys are ignored.
_UNLIMITED = {"per_second": 100_000, "burst_count": 100_000}
_RATE_LIMITS = {
    "rc_message": _UNLIMITED,
    "rc_registration": _UNLIMITED,
    "rc_registration_token_validity": _UNLIMITED,
    "rc_login": {"address": _UNLIMITED, "account": _UNLIMITED, "failed_attempts": _UNLIMITED},
    "rc_admin_redaction": _UNLIMITED,
    "rc_joins": {"local": _UNLIMITED, "remote": _UNLIMITED},
    "rc_joins_per_room": _UNLIMITED,
    "rc_3pid_validation": _UNLIMITED,
    "rc_invites": {"per_room": _UNLIMITED, "per_user": _UNLIMITED, "per_issuer": _UNLIMITED},
    "rc_third_party_invite": _UNLIMITED,
    "rc_room_creation": _UNLIMITED,
    "rc_media_create": _UNLIMITED,
    "rc_presence": {"per_user": _UNLIMITED},
    "rc_delayed_event_mgmt": _UNLIMITED,
    "rc_reports": _UNLIMITED,
    "rc_user_directory": _UNLIMITED,
    "rc_profile": _UNLIMITED,
    "rc_key_requests": _UNLIMITED,
}

_LOG_CONFIG = """\
version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(message)s'
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: {path}
root:
  level: WARNING
  handlers: [file]
disable_existing_loggers: false
"""


def _free_port() -> int:
    """A port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write_json_as_yaml(path: Path, document: dict[str, object]) -> None:
    # JSON is valid YAML, so no YAML writer is needed here.
    import json

    path.write_text(json.dumps(document, indent=2), encoding="utf-8")


class SynapseError(RuntimeError):
    """Synapse could not be started, stopped or asked for something."""


class SynapseServer:
    """A Synapse subprocess with its own data directory; restartable on the same data."""

    def __init__(
        self,
        data_dir: Path,
        *,
        server_name: str = SERVER_NAME,
        rate_limits: Mapping[str, object] | None = None,
        port: int | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.server_name = server_name
        self.rate_limits = {**_RATE_LIMITS, **(rate_limits or {})}
        self.port = port or _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.shared_secret = secrets.token_hex(32)
        self.passwords: dict[str, str] = {}  # user id -> password, for login tests
        self.last_start_seconds: float | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._config_path = self.data_dir / "homeserver.yaml"
        self._output_path = self.data_dir / "synapse.out"
        self._log_path = self.data_dir / "homeserver.log"
        self._write_config()

    # --- configuration ---------------------------------------------------------

    def _write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_config = self.data_dir / "log.yaml"
        log_config.write_text(_LOG_CONFIG.format(path=self._log_path), encoding="utf-8")
        signing_key = self.data_dir / "signing.key"
        if not signing_key.exists():
            # Imported here so that collecting the tests works without Synapse installed.
            from signedjson.key import generate_signing_key, write_signing_keys

            with signing_key.open("w", encoding="utf-8") as handle:
                write_signing_keys(handle, [generate_signing_key("a_vigil")])
        config: dict[str, object] = {
            "server_name": self.server_name,
            "public_baseurl": self.base_url + "/",
            "pid_file": str(self.data_dir / "homeserver.pid"),
            "listeners": [
                {
                    "port": self.port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": False,
                    "resources": [{"names": ["client"], "compress": False}],
                }
            ],
            "database": {
                "name": "sqlite3",
                "args": {"database": str(self.data_dir / "homeserver.db")},
            },
            "log_config": str(log_config),
            "media_store_path": str(self.data_dir / "media"),
            "signing_key_path": str(signing_key),
            "registration_shared_secret": self.shared_secret,
            "macaroon_secret_key": secrets.token_hex(32),
            "form_secret": secrets.token_hex(32),
            "enable_registration": False,
            "bcrypt_rounds": 4,  # the lowest bcrypt allows; registration is ~0.3 s at the default
            "report_stats": False,
            "enable_metrics": False,
            "url_preview_enabled": False,
            "presence": {"enabled": False},
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "federation_domain_whitelist": [],
            "require_auth_for_profile_requests": False,
            **self.rate_limits,
        }
        _write_json_as_yaml(self._config_path, config)

    # --- process ---------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the Synapse process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start Synapse (no-op if it runs) and wait until the client API answers."""
        if self.running:
            return
        began = time.monotonic()
        output = self._output_path.open("ab")
        try:
            self._process = subprocess.Popen(  # noqa: S603 (our own interpreter, fixed args)
                [sys.executable, "-m", "synapse.app.homeserver", "-c", str(self._config_path)],
                cwd=self.data_dir,
                stdout=output,
                stderr=subprocess.STDOUT,
                env={**os.environ, "SYNAPSE_CACHE_FACTOR": "0.5"},
            )
        finally:
            output.close()
        self._wait_ready(began)
        self.last_start_seconds = time.monotonic() - began
        log.info("synapse ready port=%d seconds=%.2f", self.port, self.last_start_seconds)

    def _wait_ready(self, began: float) -> None:
        deadline = began + START_TIMEOUT
        url = f"{self.base_url}/_matrix/client/versions"
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise SynapseError(
                    f"Synapse exited with status {self._process.returncode} while starting; "
                    f"its output ends with:\n{self._tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (http://127.0.0.1)
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SynapseError(
                    f"Synapse did not answer {url} within {START_TIMEOUT:.0f} s; "
                    f"its output ends with:\n{self._tail()}"
                )
            time.sleep(0.05)  # polling a subprocess, not waiting out test behaviour

    def _tail(self, lines: int = 30) -> str:
        text = ""
        for path in (self._output_path, self._log_path):
            if path.exists():
                text += "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        return text or "(no output)"

    def stop(self) -> None:
        """Stop Synapse (SIGTERM, then SIGKILL after a grace period)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)

    def restart(self) -> None:
        """Stop and start again on the same data directory and port."""
        self.stop()
        self.start()

    # --- users -----------------------------------------------------------------

    async def register(
        self, localpart: str, admin: bool = False, password: str | None = None
    ) -> tuple[str, str]:
        """Register a user with the shared secret; returns (user id, access token)."""
        password = password or secrets.token_urlsafe(16)
        url = f"{self.base_url}/_synapse/admin/v1/register"
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as response:
                if response.status != 200:
                    raise SynapseError(f"GET {url} answered {response.status}")
                nonce = (await response.json())["nonce"]
            kind = "admin" if admin else "notadmin"
            message = b"\x00".join(p.encode() for p in (nonce, localpart, password, kind))
            mac = hmac.new(self.shared_secret.encode(), message, hashlib.sha1)
            body = {
                "nonce": nonce,
                "username": localpart,
                "password": password,
                "admin": admin,
                "mac": mac.hexdigest(),
            }
            async with session.post(url, json=body) as response:
                document = await response.json()
                if response.status != 200:
                    raise SynapseError(
                        f"registering {localpart!r} failed: {response.status} "
                        f"{document.get('errcode')} {document.get('error')}"
                    )
        self.passwords[document["user_id"]] = password
        return document["user_id"], document["access_token"]


def start_synapse(data_dir: Path, **options: Any) -> SynapseServer:
    """Create and start a Synapse in ``data_dir``; the caller stops it.

    ``options`` go to :class:`SynapseServer` (e.g. ``rate_limits={"rc_message": ...}``
    for a server that rate-limits).
    """
    server = SynapseServer(data_dir, **options)
    server.start()
    return server
