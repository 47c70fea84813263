"""GenericParser: Vigil's own schema, checked against the examples in its documentation."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from adapters.generic_webhooks import GenericParser
from bot.model import EventKind, PayloadError, ReportKind, UnknownEvent, event_from_dict

DOC = Path(__file__).parent.parent / "docs" / "generic-webhooks.md"
HEADERS = {"X-Vigil-Delivery": "d-1", "X-Vigil-Signature": "sha256=checked-by-ingest"}
SHA = "5f142ec4aa9b09366f8c79652aab2fbcc3bba23f"


def doc_examples() -> dict[str, dict[str, Any]]:
    """The JSON example under each "### <event>" heading of the documentation."""
    text = DOC.read_text()
    found = {}
    for m in re.finditer(r"^### (\w+)\n(.*?)```json\n(.*?)```", text, re.S | re.M):
        found[m[1]] = json.loads(m[3])
    return found


EXAMPLES = doc_examples()


def parse(document: Any, headers: dict[str, str] | None = None):
    return GenericParser().parse("myforum", headers or HEADERS, document)


def example(name: str) -> dict[str, Any]:
    return copy.deepcopy(EXAMPLES[name])


def test_the_documentation_has_an_example_for_every_event():
    assert set(EXAMPLES) == {e.value for e in EventKind}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_documented_example_parses_and_round_trips(name):
    parsed = parse(example(name))
    event = parsed.event
    assert parsed.delivery_id == "d-1"
    assert event.kind.value == name
    assert event.forum_event == name
    assert event.source == "myforum"
    assert event.occurred_at is not None and event.occurred_at.tzinfo is not None
    assert event_from_dict(json.loads(json.dumps(event.to_dict()))) == event


def test_post_created_maps_every_field():
    post = parse(example("post_created")).event.post
    assert (post.id, post.topic_id, post.category_id, post.post_number) == ("1207", "388", "7", 3)
    assert post.url == "/threads/school-holidays.388/post-1207"
    assert post.author.id == "4021"
    assert post.author.trust_level == 0
    assert post.author.created_at.isoformat() == "2026-03-01T22:58:17+00:00"
    [media] = post.media
    assert media.sha1 == SHA
    assert media.filename == "holiday.jpg"


def test_image_uploaded_carries_its_media_and_uploader():
    event = parse(example("image_uploaded")).event
    assert event.kind is EventKind.IMAGE_UPLOADED
    assert event.user.username == "new_member_42"
    assert event.post is None
    assert event.extra["media"] == [
        {
            "url": "https://forum.example.org/attachments/holiday.jpg",
            "sha1": SHA,
            "filename": "holiday.jpg",
        }
    ]


def test_image_uploaded_with_a_post_joins_the_post_media():
    doc = example("image_uploaded")
    doc["post"] = {"id": 5, "author": doc.pop("user"), "media": [{"url": "/a.png"}]}
    post = parse(doc).event.post
    assert [m.url for m in post.media] == [
        "/a.png",
        "https://forum.example.org/attachments/holiday.jpg",
    ]


def test_report_created_keeps_reason_and_reporter():
    event = parse(example("report_created")).event
    report = event.report
    assert report.kind is ReportKind.FLAGGED_POST
    assert (report.id, report.reason, report.reporter) == ("r-31", "Inappropriate images", "Anna_M")
    assert report.actions == ("hide", "delete", "dismiss")
    assert report.status == "pending"
    assert event.post.id == "1207"


def test_user_created_ignores_personal_data_a_forum_sends_anyway():
    doc = example("user_created")
    doc["user"].update(email="fresh@mail.example.com", ip_address="203.0.113.9")
    serialised = json.dumps(parse(doc).event.to_dict())
    assert "@" not in serialised
    assert "203.0.113.9" not in serialised


def test_ping_is_acknowledged_without_an_event():
    parsed = parse({"event": "ping"})
    assert parsed.event is None
    assert parsed.note == "ping"


def test_unknown_event_is_refused_as_unknown():
    with pytest.raises(UnknownEvent) as info:
        parse({"event": "post_exploded"})
    assert str(info.value).startswith("event:")


def bad(doc: Any, *fragments: str) -> None:
    with pytest.raises(PayloadError) as info:
        parse(doc)
    for fragment in fragments:
        assert fragment in str(info.value)


def changed(name: str, change) -> dict[str, Any]:
    doc = example(name)
    change(doc)
    return doc


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        (lambda d: d.pop("post"), ("post", "required")),
        (lambda d: d["post"].pop("author"), ("post.author", "required")),
        (lambda d: d["post"]["author"].update(id=True), ("post.author.id", "boolean")),
        (lambda d: d["post"]["author"].update(id=2**63), ("post.author.id", "out of range")),
        (lambda d: d["post"]["author"].update(id=-1), ("post.author.id",)),
        (lambda d: d["post"]["author"].update(id="x" * 129), ("post.author.id", "128")),
        (lambda d: d["post"]["author"].update(id=""), ("post.author.id",)),
        (lambda d: d["post"].update(id=1.5), ("post.id", "number")),
        (lambda d: d["post"]["media"][0].update(sha1="xyz"), ("post.media[0].sha1", "40")),
        (lambda d: d["post"]["media"].append({}), ("post.media[1]", "url")),
        (lambda d: d["post"]["media"].append({"url": "ftp://x/y"}), ("post.media[1].url",)),
        (lambda d: d["post"].update(media={"url": "/x"}), ("post.media", "array")),
        (lambda d: d["post"].update(url="//evil.example/x"), ("post.url",)),
        (lambda d: d.update(occurred_at="2026-03-01T23:14:05"), ("occurred_at", "time zone")),
        (lambda d: d.update(occurred_at=1700000000), ("occurred_at", "number")),
        (lambda d: d["post"].update(text="x" * 1_000_001), ("post.text", "longer")),
        (lambda d: d["post"].update(media=[{"url": f"/{i}"} for i in range(101)]), ("post.media",)),
    ],
)
def test_wrong_shapes_name_their_path(change, fragments):
    bad(changed("post_created", change), *fragments)


def test_report_needs_a_known_kind():
    bad(changed("report_created", lambda d: d["report"].update(kind="rude")), "report.kind")


def test_each_event_needs_its_object():
    bad({"event": "user_created"}, "user", "required")
    bad({"event": "report_created"}, "report", "required")
    bad({"event": "image_uploaded", "user": {"id": 1, "username": "a"}}, "media")
    bad({"event": "image_uploaded", "media": [{"url": "/a.png"}]}, "user")


def test_body_must_be_an_object_with_an_event():
    bad([], "body", "array")
    bad({}, "event", "required")
    bad({"event": 7}, "event", "string")


def test_delivery_header_is_required_and_bounded():
    with pytest.raises(PayloadError, match="X-Vigil-Delivery"):
        parse(example("user_created"), {"X-Vigil-Signature": "x"})
    with pytest.raises(PayloadError, match="X-Vigil-Delivery"):
        parse(example("user_created"), {"X-Vigil-Delivery": "d" * 200})
    assert parse(example("user_created"), {"x-vigil-delivery": "abc"}).delivery_id == "abc"


def test_string_ids_are_kept_as_given_and_sha1_is_lowercased():
    doc = changed(
        "post_created",
        lambda d: d["post"].update(id="post-abc", media=[{"sha1": SHA.upper()}]),
    )
    post = parse(doc).event.post
    assert post.id == "post-abc"
    assert post.media[0].sha1 == SHA
