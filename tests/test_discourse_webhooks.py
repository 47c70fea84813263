"""DiscourseParser on Discourse-shaped deliveries (tests/data/discourse/*.json)."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.discourse_webhooks import (
    DiscourseParser,
    decode_base62_sha1,
    encode_base62_sha1,
    extract_media,
)
from bot.model import EventKind, PayloadError, ReportKind, UnknownEvent, event_from_dict

DATA = Path(__file__).parent / "data" / "discourse"
SHA_A = hashlib.sha1(b"vigil test image A").hexdigest()
SHA_B = hashlib.sha1(b"vigil test image B").hexdigest()


def load(name: str) -> tuple[dict[str, str], dict[str, Any]]:
    doc = json.loads((DATA / name).read_text())
    return doc["headers"], doc["body"]


def parse(name: str, parser: DiscourseParser | None = None):
    headers, body = load(name)
    return (parser or DiscourseParser()).parse("forum", headers, body)


# --- base62 ------------------------------------------------------------------------


def test_base62_name_from_a_real_discourse_post_decodes_to_the_sha1_in_its_url():
    # The pair seen in a real Discourse 2.9 post: raw upload:// name and cooked URL.
    assert decode_base62_sha1("jJCWGKWQzL1BVt7XkAi7MmaVTjd") == (
        "8a51b4e6da79f0481b90ebb54e1b54ca935ed81b"
    )
    assert decode_base62_sha1("upload://jJCWGKWQzL1BVt7XkAi7MmaVTjd.jpeg") == (
        "8a51b4e6da79f0481b90ebb54e1b54ca935ed81b"
    )


def test_small_sha1_is_zero_padded_to_40_hex():
    assert decode_base62_sha1("z") == "0" * 38 + "23"
    assert decode_base62_sha1("0") == "0" * 40


@pytest.mark.parametrize("name", ["", "abc-def", "ü", "z" * 28, "1" * 29])
def test_names_that_are_no_sha1_are_rejected(name):
    with pytest.raises(ValueError):
        decode_base62_sha1(name)


@given(st.binary(max_size=64))
def test_encode_and_decode_round_trip(data):
    sha1 = hashlib.sha1(data).hexdigest()
    assert decode_base62_sha1(encode_base62_sha1(sha1)) == sha1


# --- posts ---------------------------------------------------------------------------


def test_post_with_images_gives_every_upload_once_with_its_sha1():
    parsed = parse("post_created_with_images.json")
    event = parsed.event
    assert parsed.delivery_id == "9001"
    assert event.kind is EventKind.POST_CREATED
    assert event.forum_event == "post_created"
    post = event.post
    assert post.id == "1207"
    assert (post.topic_id, post.category_id, post.post_number) == ("388", "7", 3)
    assert post.url == "/t/school-holidays/388/3"
    assert post.topic_title == "School holidays"
    assert post.author.id == "4021"
    assert post.author.username == "new_member_42"
    assert post.author.trust_level == 0
    assert post.author.is_staff is False
    assert post.created_at.isoformat() == "2026-03-01T23:14:05.123000+00:00"
    assert event.occurred_at == post.created_at
    by_sha1 = {m.sha1: m for m in post.media if m.sha1}
    assert set(by_sha1) == {SHA_A, SHA_B}
    # The original upload's URL wins over the optimized thumbnail and the short name.
    assert by_sha1[SHA_A].url == f"/uploads/default/original/1X/{SHA_A}.jpeg"
    for ref in by_sha1.values():
        assert ref.sha1 in ref.url
    external = [m for m in post.media if m.sha1 is None]
    assert [m.url for m in external] == ["https://images.example.net/cat.gif"]
    assert not any("emoji" in (m.url or "") for m in post.media)


def test_sha1_decoded_from_raw_equals_the_one_in_the_cooked_url():
    _, body = load("post_created_with_images.json")
    raw_only = extract_media(body["post"]["raw"])
    cooked_only = extract_media("", body["post"]["cooked"])
    assert {m.sha1 for m in raw_only if m.sha1} == {m.sha1 for m in cooked_only if m.sha1}


def test_plain_post_has_no_media_and_text_is_raw():
    event = parse("post_created_plain.json").event
    assert event.post.media == ()
    assert event.post.text.startswith("Has anyone tried")
    assert event.post.author.trust_level == 2


def test_private_message_is_a_post_marked_as_such():
    event = parse("post_created_private_message.json").event
    assert event.post.category_id is None
    assert event.post.author.is_staff is True  # a moderator
    assert event.extra["archetype"] == "private_message"


def test_post_edited_uses_updated_at_as_the_time_it_happened():
    event = parse("post_edited.json").event
    assert event.kind is EventKind.POST_EDITED
    assert event.occurred_at.isoformat() == "2026-03-01T23:31:47.500000+00:00"
    assert [m.sha1 for m in event.post.media] == [SHA_A]


def test_event_round_trips_through_its_dict():
    event = parse("post_created_with_images.json").event
    assert event_from_dict(json.loads(json.dumps(event.to_dict()))) == event


def test_post_without_slug_or_post_url_still_gets_a_forum_link():
    headers, body = load("post_created_plain.json")
    del body["post"]["post_url"]
    del body["post"]["topic_slug"]
    event = DiscourseParser().parse("forum", headers, body).event
    assert event.post.url == "/t/-/389/1"


def test_upload_url_on_another_host_keeps_no_sha1_unless_trusted():
    sha1 = SHA_A
    cooked = f'<img src="https://cdn.example.org/original/2X/5/{sha1}.jpeg">'
    [ref] = extract_media("", cooked)
    assert ref.sha1 is None  # anyone can put a SHA-1-looking path on their server
    [ref] = extract_media("", cooked, trusted_hosts=["cdn.example.org"])
    assert ref.sha1 == sha1


def test_base62_attribute_before_src_is_still_found():
    b62 = encode_base62_sha1(SHA_B)
    cooked = (
        f'<img data-base62-sha1="{b62}" alt="x" src="/uploads/default/original/1X/{SHA_B}.png">'
    )
    [ref] = extract_media("", cooked)
    assert ref.sha1 == SHA_B
    assert ref.url == f"/uploads/default/original/1X/{SHA_B}.png"


def test_upload_only_in_raw_points_at_the_short_url_route():
    b62 = encode_base62_sha1(SHA_A)
    [ref] = extract_media(f"![x|10x10](upload://{b62}.webp)")
    assert ref.sha1 == SHA_A
    assert ref.url == f"/uploads/short-url/{b62}.webp"


def test_avatars_in_quotes_are_not_media():
    cooked = (
        '<aside class="quote"><div class="title"><img alt="" width="24" height="24" '
        'src="/user_avatar/forum/anna/48/2_2.png" class="avatar"> anna:</div></aside>'
    )
    assert extract_media("", cooked) == ()


# --- users ----------------------------------------------------------------------------


def test_user_created_keeps_the_account_facts_and_drops_personal_data():
    headers, body = load("user_created.json")
    event = DiscourseParser().parse("forum", headers, body).event
    assert event.kind is EventKind.USER_CREATED
    user = event.user
    assert (user.id, user.username, user.trust_level, user.post_count) == (
        "4022",
        "fresh_account",
        0,
        0,
    )
    assert user.created_at.isoformat() == "2026-03-01T22:58:17.185000+00:00"
    serialised = json.dumps(event.to_dict())
    inner = body["user"]
    assert "@" in inner["email"]  # the input did carry personal data
    assert "@" not in serialised
    for secret in (
        inner["email"],
        inner["secondary_emails"][0],
        inner["ip_address"],
        inner["registration_ip_address"],
        inner["location"],
        inner["name"],
    ):
        assert secret not in serialised


# --- reviewables ----------------------------------------------------------------------


def test_flagged_post_report_carries_the_post_and_the_reviewable_version():
    event = parse("reviewable_created_flagged_post.json").event
    assert event.kind is EventKind.REPORT_CREATED
    report = event.report
    assert report.id == "31"
    assert report.kind is ReportKind.FLAGGED_POST
    assert (report.status, report.score, report.version) == ("pending", 0.0, 0)
    assert report.actions == ("31-agree", "post-disagree", "31-ignore")
    assert (report.target_post_id, report.target_user_id) == ("1207", "4021")
    assert event.extra["reporter_id"] == "52"
    post = event.post
    assert post.id == "1207"
    assert post.author.id == "4021"
    assert post.url == "/t/school-holidays/388/3"  # absolute target_url made relative
    assert post.post_number == 3
    assert {m.sha1 for m in post.media if m.sha1} == {SHA_A, SHA_B}
    assert event.occurred_at.isoformat() == "2026-03-01T23:16:40+00:00"


def test_score_update_and_transition_are_report_updates():
    updated = parse("reviewable_score_updated_flagged_post.json").event
    assert updated.kind is EventKind.REPORT_UPDATED
    assert updated.report.score == 6.0
    done = parse("reviewable_transitioned_to_flagged_post.json").event
    assert done.kind is EventKind.REPORT_UPDATED
    assert (done.report.status, done.report.version, done.report.actions) == ("approved", 1, ())


def test_queued_post_is_held_and_has_no_real_post_id_yet():
    event = parse("reviewable_created_queued_post.json").event
    report = event.report
    assert report.kind is ReportKind.QUEUED_POST
    assert report.target_post_id is None
    assert report.target_user_id == "4023"
    post = event.post
    assert post.held is True
    assert post.id == "queued:32"
    assert post.author.id == "4023"  # the poster, not the system user that queued it
    assert post.topic_title == "Hello everyone"
    assert post.text.startswith("first post from me")
    assert [m.sha1 for m in post.media] == [SHA_B]
    assert "reporter_id" not in event.extra


def test_approved_queued_post_gets_its_real_post_id():
    headers, body = load("reviewable_created_queued_post.json")
    r = body["reviewable"]
    r.update(status=1, target_type="Post", target_id=1300, post_id=1300, version=1)
    event = (
        DiscourseParser()
        .parse("forum", {**headers, "X-Discourse-Event": "reviewable_transitioned_to"}, body)
        .event
    )
    assert event.post.id == "1300"
    assert event.post.held is False
    assert event.report.status == "approved"


def test_user_reviewable_names_the_account_without_its_email():
    headers, body = load("reviewable_created_user.json")
    event = DiscourseParser().parse("forum", headers, body).event
    assert event.report.kind is ReportKind.USER
    assert event.report.target_user_id == "4024"
    assert event.user.username == "spammy_signup"
    assert event.post is None
    serialised = json.dumps(event.to_dict())
    assert "@" not in serialised
    assert "watches" not in serialised  # the bio stays behind too


def test_unknown_reviewable_type_is_other():
    headers, body = load("reviewable_created_flagged_post.json")
    body["reviewable"]["type"] = "ReviewableChatMessage"
    event = DiscourseParser().parse("forum", headers, body).event
    assert event.report.kind is ReportKind.OTHER


def test_reviewable_actions_from_embedded_bundles_are_read_too():
    headers, body = load("reviewable_created_flagged_post.json")
    r = body["reviewable"]
    del r["bundled_action_ids"]
    r["bundled_actions"] = [
        {"id": "31-agree", "actions": [{"id": "agree_and_keep"}, {"id": "agree_and_hide"}]},
        {"id": "31-disagree", "actions": [{"id": "disagree"}]},
    ]
    report = DiscourseParser().parse("forum", headers, body).event.report
    assert report.actions == ("agree_and_keep", "agree_and_hide", "disagree")


# --- deliveries Vigil does not act on ------------------------------------------------


def test_ping_is_valid_and_produces_no_event():
    parsed = parse("ping.json")
    assert parsed.event is None
    assert parsed.note == "ping"
    assert parsed.delivery_id == "9011"


def test_known_event_vigil_ignores_is_acknowledged_without_an_event():
    parsed = parse("topic_created.json")
    assert parsed.event is None
    assert parsed.note == "ignored: topic_created"


@pytest.mark.parametrize(
    ("event", "key"),
    [
        ("post_destroyed", "post"),
        ("post_recovered", "post"),
        ("user_updated", "user"),
        ("user_logged_in", "user"),
        ("topic_closed_status_updated", "topic"),
        ("notification_created", "notification"),
        ("user_badge_granted", "user_badge"),
        ("category_updated", "category"),
    ],
)
def test_other_known_events_are_ignored(event, key):
    headers = {"X-Discourse-Event-Id": "5", "X-Discourse-Event": event}
    headers["X-Discourse-Event-Type"] = key
    parsed = DiscourseParser().parse("forum", headers, {key: {"id": 1}})
    assert parsed.event is None
    assert parsed.note == f"ignored: {event}"


# --- bad input ------------------------------------------------------------------------


def with_change(name: str, change) -> tuple[dict[str, str], dict[str, Any]]:
    headers, body = load(name)
    body = copy.deepcopy(body)
    change(body)
    return headers, body


def assert_payload_error(headers, body, *fragments: str) -> PayloadError:
    with pytest.raises(PayloadError) as info:
        DiscourseParser().parse("forum", headers, body)
    for fragment in fragments:
        assert fragment in str(info.value)
    return info.value


def test_string_user_id_names_the_path_and_the_type():
    headers, body = with_change("post_created_plain.json", lambda b: b["post"].update(user_id="52"))
    assert_payload_error(headers, body, "post.user_id", "expected an integer id", "string")


@pytest.mark.parametrize("value", [2**63, 10**30, -(2**63) - 1])
def test_huge_ids_are_refused(value):
    headers, body = with_change("post_created_plain.json", lambda b: b["post"].update(id=value))
    assert_payload_error(headers, body, "post.id", "out of range")


def test_negative_post_id_is_refused_but_system_user_id_is_fine():
    headers, body = with_change("post_created_plain.json", lambda b: b["post"].update(id=-5))
    assert_payload_error(headers, body, "post.id")
    headers, body = with_change(
        "post_created_plain.json", lambda b: b["post"].update(user_id=-1, username="system")
    )
    assert DiscourseParser().parse("forum", headers, body).event.post.author.id == "-1"


@pytest.mark.parametrize(
    ("change", "path"),
    [
        (lambda b: b["post"].pop("username"), "post.username"),
        (lambda b: b["post"].update(trust_level="2"), "post.trust_level"),
        (lambda b: b["post"].update(trust_level=9), "post.trust_level"),
        (lambda b: b["post"].update(raw=["x"]), "post.raw"),
        (lambda b: b["post"].update(hidden="no"), "post.hidden"),
        (lambda b: b["post"].update(created_at="yesterday"), "post.created_at"),
        (lambda b: b["post"].update(created_at="2026-03-01T23:14:05"), "post.created_at"),
        (lambda b: b["post"].update(username="x" * 1000), "post.username"),
        (lambda b: b["post"].update(topic_id=True), "post.topic_id"),
        (lambda b: b.update(post=[1, 2]), "post"),
    ],
)
def test_wrong_shapes_name_their_path(change, path):
    headers, body = with_change("post_created_plain.json", change)
    error = assert_payload_error(headers, body, path)
    assert "Has anyone" not in str(error)  # never quotes the body


def test_reviewable_with_bad_score_names_its_path():
    headers, body = with_change(
        "reviewable_created_flagged_post.json", lambda b: b["reviewable"].update(score="high")
    )
    assert_payload_error(headers, body, "reviewable.score")


def test_body_key_that_does_not_match_the_event_is_refused():
    headers, body = load("post_created_plain.json")
    assert_payload_error(headers, {"user": body["post"]}, "body", "'post'")


def test_event_type_header_that_contradicts_the_event_is_refused():
    headers, body = load("post_created_plain.json")
    headers = {**headers, "X-Discourse-Event-Type": "user"}
    assert_payload_error(headers, body, "X-Discourse-Event-Type")


def test_body_that_is_not_an_object_is_refused():
    headers, _ = load("post_created_plain.json")
    assert_payload_error(headers, [1, 2, 3], "body", "array")


@pytest.mark.parametrize("header", ["X-Discourse-Event", "X-Discourse-Event-Id"])
def test_missing_headers_are_named(header):
    headers, body = load("post_created_plain.json")
    del headers[header]
    assert_payload_error(headers, body, header)


def test_unknown_event_raises_unknown_event():
    headers, body = load("post_created_plain.json")
    with pytest.raises(UnknownEvent) as info:
        DiscourseParser().parse("forum", {**headers, "X-Discourse-Event": "post_exploded"}, body)
    assert "X-Discourse-Event" in str(info.value)


def test_event_name_with_odd_characters_is_unknown_and_not_quoted():
    headers, body = load("post_created_plain.json")
    with pytest.raises(UnknownEvent) as info:
        DiscourseParser().parse("forum", {**headers, "X-Discourse-Event": "<script>"}, body)
    assert "<script>" not in str(info.value)


def test_headers_are_found_whatever_their_case():
    headers, body = load("post_created_plain.json")
    lower = {k.lower(): v for k, v in headers.items()}
    assert DiscourseParser().parse("forum", lower, body).event.post.id == "1208"


@given(st.text(max_size=300))
def test_media_scan_never_crashes_on_arbitrary_text(text):
    extract_media(text, text)


def test_flag_score_ids_count_distinct_reporters() -> None:
    from bot.reports import reporter_keys

    body = {
        "reviewable": {
            "id": 31, "type": "ReviewableFlaggedPost", "status": 0, "version": 2,
            "score": 9.0, "target_type": "Post", "target_id": 70, "post_id": 70,
            "topic_id": 24, "created_by_id": 5, "target_created_by_id": 8,
            "reviewable_score_ids": [101, 102, 103],
            "raw": "text", "cooked": "<p>text</p>",
        }
    }
    headers = {
        "X-Discourse-Event-Id": "9", "X-Discourse-Event-Type": "reviewable",
        "X-Discourse-Event": "reviewable_score_updated",
    }
    event = DiscourseParser().parse("forum", headers, body).event
    assert event is not None
    assert reporter_keys(event) == ("score:101", "score:102", "score:103")
