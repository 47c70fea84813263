"""The simulated Discourse forum the tests use; it lives in adapters/forum_simulator.py
(packaged, so ``vigil demo`` can run it) and is re-exported here under its old name.

Edit adapters/forum_simulator.py, not this file.
"""

from __future__ import annotations

from adapters.forum_simulator import (
    DEPRECATED_SETTINGS,
    FLAGGED_POST_ACTIONS,
    INVALID_KEY_MESSAGE,
    NOT_FOUND_MESSAGE,
    QUEUED_POST_ACTIONS,
    USER_ACTIONS,
    Call,
    FakeDiscourse,
    FakePost,
    FakeReviewable,
    FakeUser,
    Misbehaviour,
    Upload,
    rails_json,
    sign,
)

__all__ = [
    "DEPRECATED_SETTINGS",
    "FLAGGED_POST_ACTIONS",
    "INVALID_KEY_MESSAGE",
    "NOT_FOUND_MESSAGE",
    "QUEUED_POST_ACTIONS",
    "USER_ACTIONS",
    "Call",
    "FakeDiscourse",
    "FakePost",
    "FakeReviewable",
    "FakeUser",
    "Misbehaviour",
    "Upload",
    "rails_json",
    "sign",
]
