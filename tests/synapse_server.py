"""The real Synapse of the Matrix tests: the server itself lives in
adapters/synapse_sandbox.py (packaged, so ``vigil demo`` can start one) and is
re-exported here; the session fixture is defined here. ``tests/conftest.py`` and
the Matrix tests use it as::

    from tests.synapse_server import synapse  # noqa: F401

Tests that stop or restart the server must leave it running (``try/finally``
with :meth:`SynapseServer.start`), since the other tests share it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from adapters.synapse_sandbox import (
    SERVER_NAME,
    START_TIMEOUT,
    STOP_TIMEOUT,
    SynapseError,
    SynapseServer,
    start_synapse,
)

__all__ = [
    "SERVER_NAME",
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "SynapseError",
    "SynapseServer",
    "start_synapse",
    "synapse",
]


@pytest.fixture(scope="session")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SynapseServer]:
    """A running Synapse shared by the whole session; stopped at the end."""
    try:
        import synapse as _synapse_package  # noqa: F401
    except ImportError as error:  # fail loud: a skipped Matrix suite would hide breakage
        raise SynapseError(
            "matrix-synapse is not installed; install the test extra: pip install -e '.[test]'"
        ) from error
    server = start_synapse(tmp_path_factory.mktemp("synapse"))
    try:
        yield server
    finally:
        server.stop()
