"""Hash list importers: every format, bad lines, tombstones, safety, cache, CLI, scale.

Samples live in tests/data/hashlists/ (hashes of generated images or random hex;
see the README there). Bad inputs are built per test in tmp_path.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.hashlists import (
    KIND_HEX_LEN,
    HashListError,
    HashRecord,
    ImportProblem,
    ListFormat,
    detect_format,
    hashlist_command,
    import_list,
    list_stats,
    load_cache,
    save_cache,
)

DATA = Path(__file__).parent / "data" / "hashlists"

A_MD5 = "a23c9a47aa618341dae39318fd282bd9"
A_SHA1 = "4ab1c23ec7970aad97cf9a64f3faa4ba8131e469"
A_SHA256 = "3eafc821cb75425f51e326cda070eee8e35475fa0f513c9e22da348a11e1bc30"
A_PDQ = "3d676336e1363d261d8399bcc53ce73627642161698ccb0ce3995b9936c332e3"
B_MD5 = "94b6f74ca6c4f759499109d001002981"
B_PDQ = "a3934b6b4b4becd4cc9cccc95a69024365e4c581c7c9ced8c6cb752c3336b336"
C_MD5 = "579616d2c082379fea4da7e9f4d195fc"
C_SHA1 = "8e5abed6cd8adca6bf840e7d155a423b9080af31"
C_PDQ = "58ce496c61b162d34ace89ce796972618c0b8e0e1e96ef31f76996ac998be1c3"
D_MD5 = "3015d4fbdb6ad66ac0234437f0d61bed"
D_PDQ = "2aa56ba1883e2cb33593d45a945a75d2d642c71e664cbdc3e0692c7b39e36f09"


def values(result, kind=None):
    return {(r.kind, r.value) for r in result.records if kind is None or r.kind == kind}


def problem_lines(result):
    return [p.line for p in result.problems]


# --- each format parses its sample ---------------------------------------------------


def test_plain_sample_loads_typed_bare_and_md5sum_lines():
    r = import_list(DATA / "plain.txt", ListFormat.PLAIN)
    assert values(r) == {
        ("md5", A_MD5),
        ("sha1", A_SHA1),  # written in upper case in the file
        ("sha256", A_SHA256),
        ("pdq", B_PDQ),
        ("phash", "ee36b61ae989c9c0"),
        ("dhash", "2d2d874321396c01"),
        ("md5", C_MD5),
        ("md5", D_MD5),
    }
    by_value = {r.value: r for r in r.records}
    assert by_value[C_MD5].ref == "image-c.png"  # "<hex>  <file>" as md5sum writes it
    assert r.loaded == 8
    assert r.skip_reasons == {"unsupported type url": 1, "unsupported type video_md5": 1}


def test_threatexchange_csv_sample():
    r = import_list(DATA / "threatexchange.csv", ListFormat.THREATEXCHANGE_CSV)
    assert [(x.kind, x.value, x.category) for x in r.records] == [
        ("pdq", A_PDQ, "POSITIVE_CLASS"),
        ("pdq", B_PDQ, "INVESTIGATION_SEED"),
        ("pdq", D_PDQ, "POSITIVE_CLASS"),  # quoted row with a comma in its tags
    ]
    assert r.skip_reasons == {
        "unsupported type video_md5": 1,
        "unsupported type url": 1,
        "negative opinion (NEGATIVE_CLASS)": 1,
    }
    assert problem_lines(r) == [7]


def test_threatexchange_csv_columns_found_by_header_name(tmp_path):
    # Older `threatexchange dataset --csv` wrote collab first.
    f = tmp_path / "old.csv"
    f.write_text(f"collab,signal_type,signal_str,category,tags\nC,pdq,{A_PDQ},TRUE_POSITIVE,\n")
    r = import_list(f, ListFormat.THREATEXCHANGE_CSV)
    assert [(x.kind, x.value, x.category) for x in r.records] == [("pdq", A_PDQ, "TRUE_POSITIVE")]


def test_hma_csv_sample_defaults_to_pdq_and_keeps_ids():
    r = import_list(DATA / "hma.csv", ListFormat.HMA_CSV)
    assert [(x.kind, x.value, x.ref, x.category) for x in r.records] == [
        ("pdq", A_PDQ, "1001", "generated test"),
        ("pdq", B_PDQ, "1002", None),
        ("pdq", D_PDQ, "1004", "generated"),
    ]
    assert [str(p) for p in r.problems] == [f"{DATA / 'hma.csv'}:3: not a hexadecimal hash"]


def test_hma_csv_header_line_is_ignored(tmp_path):
    f = tmp_path / "hma.csv"
    f.write_text(f"hash,id,timestamp,tags\n{A_PDQ},1,2,\n")
    r = import_list(f, ListFormat.HMA_CSV)
    assert values(r) == {("pdq", A_PDQ)}
    assert r.problems == []


def test_stopncii_json_sample():
    r = import_list(DATA / "stopncii.json", ListFormat.STOPNCII_JSON)
    # B was withdrawn later in the page, the video MD5 is not ours to match.
    assert values(r) == {("pdq", A_PDQ), ("pdq", C_PDQ)}
    assert r.deleted == 1
    assert r.skip_reasons == {"unsupported type VideoMD5": 1}
    assert problem_lines(r) == [29]  # the record without hashValue starts there
    assert all(x.ref is None for x in r.records)  # case numbers are never kept


def test_tcap_json_sample():
    r = import_list(DATA / "tcap.json", ListFormat.TCAP_JSON)
    assert {(x.kind, x.value, x.ref, x.category) for x in r.records} == {
        ("pdq", A_PDQ, "2820", "far-right"),
        ("sha256", A_SHA256, "2822", "islamist"),
        ("md5", B_MD5, "2825", "islamist"),
    }
    assert r.deleted == 1  # 2819's MD5 is tombstoned by 2824 (deleted: true)
    assert r.skip_reasons == {"video entries": 1}
    assert [str(p) for p in r.problems] == [
        f"{DATA / 'tcap.json'}:6: md5 needs 32 hex digits, got 6"
    ]


def test_ncmec_xml_sample():
    r = import_list(DATA / "ncmec.xml", ListFormat.NCMEC_XML)
    assert {(x.kind, x.value, x.ref, x.category) for x in r.records} == {
        ("md5", A_MD5, "img-a", "A1"),
        ("sha1", A_SHA1, "img-a", "A1"),
        ("pdq", A_PDQ, "img-a", "A1"),
        ("sha1", C_SHA1, "img-c", "A2"),  # its bad md5 is a problem, its sha1 still loads
    }
    assert r.deleted == 2  # img-b's md5 and sha1, by <deletedImage><id>img-b</id>
    assert r.skip_reasons == {"video entries": 2, "unsupported type pdna": 1}
    assert [str(p) for p in r.problems] == [
        f"{DATA / 'ncmec.xml'}:40: md5 value is not hexadecimal"
    ]


# --- bad lines: reported, skipped, import goes on -----------------------------------


def test_bad_lines_are_reported_with_file_and_line_and_skipped():
    path = DATA / "plain.txt"
    r = import_list(path, ListFormat.PLAIN)
    assert [str(p) for p in r.problems] == [
        f"{path}:15: md5 needs 32 hex digits, got 31",
        f"{path}:16: not a hexadecimal hash",
    ]
    # the line after the bad ones was still read
    assert ("md5", D_MD5) in values(r)
    assert (r.loaded, r.skipped, r.invalid) == (8, 4, 2)
    assert r.summary().startswith("loaded 8, skipped 4 (2 invalid, ")


def test_import_problem_str():
    assert str(ImportProblem("l.txt", 3, "bad")) == "l.txt:3: bad"
    assert str(ImportProblem("l.txt", None, "bad")) == "l.txt: bad"


def test_every_bad_line_kind_is_a_problem_not_an_exception(tmp_path):
    f = tmp_path / "bad.txt"
    f.write_bytes(
        b"\n".join(
            [
                A_MD5.encode(),
                b"md5 " + b"g" * 32,  # 2: typed, not hex
                b"\xff\xfe not utf-8",  # 3
                b"pdq " + A_PDQ[:-1].encode(),  # 4: one digit short
                b"a b c d",  # 5: "a" is hex, but no hash is one digit long
                b"x" * (2 << 20),  # 6: over-long line
                b"sha1 " + A_SHA1[:20].encode() + b" " + A_SHA1[20:].encode(),  # 7: split value
                B_MD5.encode(),  # 8
            ]
        )
    )
    r = import_list(f, ListFormat.PLAIN)
    assert values(r) == {("md5", A_MD5), ("md5", B_MD5)}
    assert problem_lines(r) == [2, 3, 4, 5, 6, 7]
    assert r.skip_reasons == {}
    assert r.skipped == 6


def test_json_record_that_is_not_an_object_is_a_problem(tmp_path):
    f = tmp_path / "t.json"
    f.write_text(
        "[\n"
        + json.dumps({"hash_digest": A_MD5, "algorithm": "MD5", "deleted": False})
        + ",\n42,\n"
        + json.dumps({"hash_digest": B_MD5, "algorithm": "md5"})
        + "\n]\n"
    )
    r = import_list(f, ListFormat.TCAP_JSON)
    assert values(r) == {("md5", A_MD5), ("md5", B_MD5)}
    assert [str(p) for p in r.problems] == [f"{f}:3: expected a record object, got int"]


# --- tombstones -----------------------------------------------------------------------


def ncmec(body: str) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<queryResult xmlns="https://hashsharing.ncmec.org/hashsharing/v2"><images>\n'
        f"{body}\n</images></queryResult>\n"
    )


def image(ref: str, md5: str, cls: str = "A1") -> str:
    return (
        f"<image><id>{ref}</id><classification>{cls}</classification>"
        f"<fingerprints><md5>{md5}</md5></fingerprints></image>"
    )


def deleted(ref: str) -> str:
    return f"<deletedImage><id>{ref}</id></deletedImage>"


def test_ncmec_deleted_image_removes_only_earlier_entries_with_that_id(tmp_path):
    f = tmp_path / "n.xml"
    f.write_text(
        ncmec(
            "\n".join(
                [
                    image("x", A_MD5),
                    image("y", B_MD5),
                    deleted("x"),
                    deleted("nobody"),  # deletes nothing, is no problem
                    image("x", C_MD5, "B2"),  # re-added after its deletion: stays
                ]
            )
        )
    )
    r = import_list(f, ListFormat.NCMEC_XML)
    assert {(x.value, x.ref, x.category) for x in r.records} == {
        (B_MD5, "y", "A1"),
        (C_MD5, "x", "B2"),
    }
    assert r.deleted == 1
    assert r.problems == []


def tcap(rec_id: int, digest: str, algorithm: str = "MD5", deleted: bool = False) -> dict:
    return {
        "id": rec_id,
        "hash_digest": digest,
        "algorithm": algorithm,
        "ideology": "far-right",
        "file_type": "png",
        "deleted": deleted,
        "updated_on": 1704901040.0 + rec_id,
    }


def test_tcap_deleted_true_removes_earlier_same_hash_and_a_readd_survives(tmp_path):
    recs = [
        tcap(1, A_MD5),
        tcap(2, B_MD5),
        tcap(3, A_MD5.upper(), "md5", deleted=True),  # case differs: same hash
        tcap(4, B_MD5, deleted=True),
        tcap(5, B_MD5),
    ]
    f = tmp_path / "t.json"
    f.write_text(json.dumps(recs))
    r = import_list(f, ListFormat.TCAP_JSON)
    assert [(x.value, x.ref) for x in r.records] == [(B_MD5, "5")]
    assert r.deleted == 2


def test_tcap_list_page_and_json_lines_read_the_same(tmp_path):
    recs = [tcap(1, A_MD5), tcap(2, A_PDQ, "PDQ"), tcap(3, A_SHA256, "SHA256")]
    as_list = tmp_path / "list.json"
    as_list.write_text(json.dumps(recs, indent=2))
    as_page = tmp_path / "page.json"
    as_page.write_text(
        json.dumps(
            {"count": 3, "next": None, "previous": None, "checkpoint": "1,2", "results": recs}
        )
    )
    as_lines = tmp_path / "lines.jsonl"
    as_lines.write_text("".join(json.dumps(x) + "\n" for x in recs))
    results = [import_list(p, ListFormat.TCAP_JSON) for p in (as_list, as_page, as_lines)]
    assert results[0].records == results[1].records == results[2].records
    assert len(results[0].records) == 3
    assert problem_lines(import_list(as_lines, ListFormat.TCAP_JSON)) == []


def test_stopncii_pages_concatenated_later_record_replaces_earlier(tmp_path):
    def page(*recs):
        return json.dumps({"count": len(recs), "hasMoreRecords": True, "hashRecords": list(recs)})

    active = {"signalType": "ImagePDQ", "hashValue": A_PDQ, "hashStatus": "Active"}
    gone = {"signalType": "ImagePDQ", "hashValue": A_PDQ, "hashStatus": "Deleted"}
    other = {"signalType": "ImagePDQ", "hashValue": C_PDQ, "hashStatus": "Active"}
    f = tmp_path / "s.json"
    f.write_text(page(active, other) + "\n" + page(gone) + "\n")
    r = import_list(f, ListFormat.STOPNCII_JSON)
    assert values(r) == {("pdq", C_PDQ)}


# --- kinds: ambiguity, declaration, normalisation -----------------------------------


def test_ambiguous_64_hex_without_declared_kind_is_a_problem():
    path = DATA / "plain_ambiguous.txt"
    r = import_list(path, ListFormat.PLAIN)
    assert [str(p) for p in r.problems] == [
        f"{path}:2: 64 hex digits is ambiguous (pdq or sha256): declare the list's kind",
        f"{path}:3: 64 hex digits is ambiguous (pdq or sha256): declare the list's kind",
    ]
    assert values(r) == {("md5", "ef64dd751e36896ba9eed4d3833c9b60")}


def test_ambiguous_64_hex_loads_with_default_kind_or_a_single_declared_kind():
    path = DATA / "plain_ambiguous.txt"
    r = import_list(path, ListFormat.PLAIN, default_kind="pdq")
    assert values(r, "pdq") == {("pdq", A_PDQ), ("pdq", C_PDQ)}
    assert r.problems == []
    r = import_list(path, ListFormat.PLAIN, kinds=frozenset({"sha256", "md5"}))
    assert values(r, "sha256") == {("sha256", A_PDQ), ("sha256", C_PDQ)}
    assert r.problems == []


def test_kinds_filter_skips_other_kinds_with_a_reason():
    r = import_list(DATA / "plain.txt", ListFormat.PLAIN, kinds=frozenset({"pdq", "phash"}))
    assert values(r) == {("pdq", B_PDQ), ("phash", "ee36b61ae989c9c0")}
    # 4: line 15's short md5 too; an undeclared kind is not checked further
    assert r.skip_reasons["md5 not declared for this list"] == 4
    assert r.skip_reasons["sha1 not declared for this list"] == 1
    assert r.skip_reasons["sha256 not declared for this list"] == 1


def test_unknown_default_kind_or_kind_outside_declaration_is_refused():
    with pytest.raises(HashListError, match="not a hash kind"):
        import_list(DATA / "plain.txt", ListFormat.PLAIN, default_kind="photodna")
    with pytest.raises(HashListError, match="not one of the list's kinds"):
        import_list(
            DATA / "plain.txt", ListFormat.PLAIN, default_kind="pdq", kinds=frozenset({"md5"})
        )


def test_hex_is_normalised_to_lowercase_and_0x_prefix_dropped(tmp_path):
    f = tmp_path / "n.txt"
    f.write_text(f"  {A_MD5.upper()}  \nMD5 0x{B_MD5.upper()}\nSHA-256 {A_SHA256.upper()}\n")
    r = import_list(f, ListFormat.PLAIN)
    assert [(x.kind, x.value) for x in r.records] == [
        ("md5", A_MD5),
        ("md5", B_MD5),
        ("sha256", A_SHA256),
    ]


def test_duplicates_are_merged_and_the_later_entry_wins(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text(f"{A_PDQ},1,0,old\n{B_PDQ},2,0,\n{A_PDQ.upper()},3,0,new\n")
    r = import_list(f, ListFormat.HMA_CSV)
    assert [(x.value, x.ref, x.category) for x in r.records] == [
        (B_PDQ, "2", None),
        (A_PDQ, "3", "new"),
    ]
    assert r.duplicates == 1
    assert "1 duplicates merged" in r.summary()


def test_a_value_repeated_many_times_keeps_only_its_last_entry(tmp_path):
    f = tmp_path / "d.csv"
    rows = [(A_PDQ, 1), (B_PDQ, 2), (A_PDQ, 3), (C_PDQ, 4), (A_PDQ, 5)]
    f.write_text("".join(f"{v},{i},0,\n" for v, i in rows))
    r = import_list(f, ListFormat.HMA_CSV)
    assert [(x.value, x.ref) for x in r.records] == [(B_PDQ, "2"), (C_PDQ, "4"), (A_PDQ, "5")]
    assert r.duplicates == 2


def test_rows_whose_sort_keys_collide_are_not_merged(tmp_path):
    # md5 rows are keyed as w0 * MIX ^ w1 (64-bit); build a different row with A's key.
    mask = (1 << 64) - 1
    mix = 0x9E3779B97F4A7C15
    raw = bytes.fromhex(A_MD5)
    a0, a1 = int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little")
    b0 = (a0 + 1) & mask
    b1 = ((a0 * mix) & mask) ^ a1 ^ ((b0 * mix) & mask)
    twin = (b0.to_bytes(8, "little") + b1.to_bytes(8, "little")).hex()
    assert twin != A_MD5
    f = tmp_path / "c.txt"
    f.write_text(f"{A_MD5}\n{twin}\n{A_MD5}\n")
    r = import_list(f, ListFormat.PLAIN)
    assert [x.value for x in r.records] == [twin, A_MD5]
    assert r.duplicates == 1


def test_csv_with_crlf_and_a_multiline_field_reports_true_line_numbers(tmp_path):
    f = tmp_path / "te.csv"
    f.write_bytes(
        (
            "signal_type,signal_str,collab,category,tags\r\n"
            f'pdq,{A_PDQ},C,POSITIVE_CLASS,"two\r\nlines"\r\n'
            f"pdq,{B_PDQ},C,POSITIVE_CLASS,\r\n"
            "pdq,zz,C,POSITIVE_CLASS,\r\n"
        ).encode()
    )
    r = import_list(f, ListFormat.THREATEXCHANGE_CSV)
    assert values(r) == {("pdq", A_PDQ), ("pdq", B_PDQ)}
    assert problem_lines(r) == [5]


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(st.sampled_from(sorted(KIND_HEX_LEN)), st.randoms(use_true_random=False)),
        max_size=60,
    )
)
def test_typed_plain_list_round_trips_any_entries(tmp_path, entries):
    expected: dict[tuple[str, str], None] = {}
    lines = []
    for kind, rnd in entries:
        value = "".join(rnd.choice("0123456789abcdef") for _ in range(KIND_HEX_LEN[kind]))
        lines.append(f"{kind} {value.upper() if rnd.random() < 0.5 else value}")
        expected.pop((kind, value), None)  # the later duplicate wins the position
        expected[(kind, value)] = None
    f = tmp_path / "h.txt"
    f.write_text("\n".join(lines) + "\n")
    r = import_list(f, ListFormat.PLAIN)
    got = [(x.kind, x.value) for x in r.records]
    kind_order = list(dict.fromkeys(kind for kind, _ in entries))
    want = sorted(expected, key=lambda kv: kind_order.index(kv[0]))  # stable within a kind
    assert got == want
    assert r.problems == [] and r.skipped == 0


# --- whole-file failures ----------------------------------------------------------------


def test_missing_file_and_directory_raise(tmp_path):
    with pytest.raises(HashListError, match="no such file"):
        import_list(tmp_path / "nope.txt", ListFormat.PLAIN)
    with pytest.raises(HashListError, match="directory"):
        import_list(tmp_path, ListFormat.PLAIN)


def test_file_not_in_the_format_at_all_raises(tmp_path):
    with pytest.raises(HashListError, match="not ThreatExchange CSV"):
        import_list(DATA / "hma.csv", ListFormat.THREATEXCHANGE_CSV)
    with pytest.raises(HashListError, match="not StopNCII JSON"):
        import_list(DATA / "plain.txt", ListFormat.STOPNCII_JSON)
    with pytest.raises(HashListError, match="not XML"):
        import_list(DATA / "tcap.json", ListFormat.NCMEC_XML)
    html = tmp_path / "page.xml"
    html.write_text("<html><body><p>hello</p></body></html>")
    with pytest.raises(HashListError, match="not NCMEC"):
        import_list(html, ListFormat.NCMEC_XML)
    with pytest.raises(HashListError, match="no valid entry"):
        import_list(DATA / "ncmec.xml", ListFormat.PLAIN)


def test_big_binary_file_as_plain_list_is_refused_early(tmp_path):
    f = tmp_path / "blob.bin"
    rnd = random.Random(1)
    f.write_bytes(b"\n".join(rnd.randbytes(40) for _ in range(20_000)))
    with pytest.raises(HashListError, match="first 8192 lines"):
        import_list(f, ListFormat.PLAIN)


def test_empty_file_is_an_empty_list(tmp_path):
    f = tmp_path / "empty.txt"
    f.write_text("# nothing yet\n")
    r = import_list(f, ListFormat.PLAIN)
    assert (r.loaded, r.skipped, r.problems) == (0, 0, [])


# --- XML safety and truncation --------------------------------------------------------


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<queryResult><images><image><id>&lol3;</id></image></images></queryResult>
"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE q [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<queryResult><images><image><id>&secret;</id></image></images></queryResult>
"""

DOCTYPE_ONLY = """<?xml version="1.0"?>
<!DOCTYPE queryResult SYSTEM "http://example.invalid/ncmec.dtd">
<queryResult><images/></queryResult>
"""


@pytest.mark.parametrize("doc", [BILLION_LAUGHS, EXTERNAL_ENTITY, DOCTYPE_ONLY])
def test_xml_with_doctype_or_entities_is_refused(tmp_path, doc):
    f = tmp_path / "evil.xml"
    f.write_text(doc)
    with pytest.raises(HashListError, match="DOCTYPE"):
        import_list(f, ListFormat.NCMEC_XML)


def test_truncated_xml_keeps_what_was_read_and_says_where_it_stopped(tmp_path):
    doc = ncmec("\n".join([image("a", A_MD5), image("b", B_MD5)]))
    f = tmp_path / "cut.xml"
    f.write_text(doc[: doc.index(B_MD5) + 5])
    r = import_list(f, ListFormat.NCMEC_XML)
    assert values(r) == {("md5", A_MD5)}
    assert not r.complete
    assert "XML broke off" in r.problems[-1].reason
    assert r.problems[-1].line == 4  # the line the file ends on, inside image b
    assert "INCOMPLETE" in r.summary()


def test_truncated_json_keeps_what_was_read(tmp_path):
    text = json.dumps([tcap(1, A_MD5), tcap(2, B_MD5)], indent=1)
    f = tmp_path / "cut.json"
    f.write_text(text[: text.index(B_MD5)])
    r = import_list(f, ListFormat.TCAP_JSON)
    assert values(r) == {("md5", A_MD5)}
    assert not r.complete
    assert "JSON broke off" in r.problems[-1].reason


# --- detection, gzip ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("plain.txt", ListFormat.PLAIN),
        ("plain_ambiguous.txt", ListFormat.PLAIN),
        ("threatexchange.csv", ListFormat.THREATEXCHANGE_CSV),
        ("hma.csv", ListFormat.HMA_CSV),
        ("stopncii.json", ListFormat.STOPNCII_JSON),
        ("tcap.json", ListFormat.TCAP_JSON),
        ("ncmec.xml", ListFormat.NCMEC_XML),
    ],
)
def test_detect_format_recognises_each_sample(name, fmt):
    assert detect_format(DATA / name) is fmt


def test_detect_format_gives_none_when_unsure(tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("hello world\n")
    assert detect_format(f) is None
    assert detect_format(tmp_path / "missing") is None


def test_gzipped_list_imports_like_the_plain_file(tmp_path):
    gz = tmp_path / "ncmec.xml.gz"
    gz.write_bytes(gzip.compress((DATA / "ncmec.xml").read_bytes()))
    assert detect_format(gz) is ListFormat.NCMEC_XML
    assert (
        import_list(gz, ListFormat.NCMEC_XML).records
        == import_list(DATA / "ncmec.xml", ListFormat.NCMEC_XML).records
    )


def test_cut_off_gzip_keeps_what_was_read_and_is_marked_incomplete(tmp_path):
    rnd = random.Random(6)
    text = "".join(f"{rnd.randbytes(16).hex()}\n" for _ in range(200_000))
    packed = gzip.compress(text.encode())
    f = tmp_path / "cut.txt.gz"
    f.write_bytes(packed[: len(packed) // 2])
    r = import_list(f, ListFormat.PLAIN)
    assert 0 < r.loaded < 200_000
    assert not r.complete
    assert "read error" in r.problems[-1].reason


# --- result API, cache ---------------------------------------------------------------


def test_by_kind_and_record_table_access():
    r = import_list(DATA / "ncmec.xml", ListFormat.NCMEC_XML)
    groups = r.by_kind()
    assert sorted(groups) == ["md5", "pdq", "sha1"]
    assert groups["pdq"] == [HashRecord("pdq", A_PDQ, "img-a", "A1")]
    assert len(r.records) == 4
    assert r.records[-1] == list(r.records)[-1]
    assert r.records[0:2] == list(r.records)[0:2]
    assert r.tables["sha1"].values.shape == (2, 20)
    with pytest.raises(IndexError):
        r.records[4]


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("ncmec.xml", ListFormat.NCMEC_XML),
        ("plain.txt", ListFormat.PLAIN),
        ("tcap.json", ListFormat.TCAP_JSON),
    ],
)
def test_cache_round_trip_equals_the_original(tmp_path, name, fmt):
    r = import_list(DATA / name, fmt, name="test-list")
    cache = tmp_path / "c" / "list.npz"
    save_cache(r, cache)
    back = load_cache(cache)
    assert back.records == r.records
    assert list(back.records) == list(r.records)
    assert back.problems == r.problems
    assert list_stats(back) == list_stats(r)
    assert back.summary() == r.summary()
    assert back.name == "test-list"


def test_cache_of_a_big_list_round_trips(tmp_path):
    rnd = random.Random(5)
    f = tmp_path / "big.csv"
    with f.open("w") as out:
        for i in range(50_000):
            out.write(f"{rnd.randbytes(32).hex()},{i},0,{'t' + str(i % 7) if i % 3 else ''}\n")
    r = import_list(f, ListFormat.HMA_CSV)
    save_cache(r, tmp_path / "big.npz")
    back = load_cache(tmp_path / "big.npz")
    assert back.records == r.records
    assert back.records[12345] == r.records[12345]
    assert r.loaded == 50_000


def test_not_a_cache_is_refused(tmp_path):
    with pytest.raises(HashListError, match="not a hash list cache"):
        load_cache(DATA / "plain.txt")
    with pytest.raises(HashListError, match="no such file"):
        load_cache(tmp_path / "none.npz")


def test_list_stats_counts():
    s = list_stats(import_list(DATA / "ncmec.xml", ListFormat.NCMEC_XML, name="ncmec"))
    assert s["by_kind"] == {"md5": 1, "sha1": 2, "pdq": 1}
    assert (s["loaded"], s["deleted"], s["problems"], s["skipped"]) == (4, 2, 1, 4)


# --- progress and scale -----------------------------------------------------------------


def test_progress_reports_growing_byte_counts_up_to_the_total(tmp_path):
    f = tmp_path / "p.txt"
    rnd = random.Random(2)
    f.write_text("".join(f"{rnd.randbytes(16).hex()}\n" for _ in range(100_000)))
    calls: list[tuple[int, int]] = []
    import_list(f, ListFormat.PLAIN, progress=lambda d, t: calls.append((d, t)))
    size = f.stat().st_size
    assert len(calls) >= size >> 20  # at least once per MiB read
    assert all(t == size for _, t in calls)
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == size


def test_million_line_plain_file_streams(tmp_path, capsys):
    f = tmp_path / "million.txt"
    rnd = random.Random(3)
    with f.open("w") as out:
        for i in range(1_000_000):
            kind = ("md5", "sha256")[i % 2]
            out.write(f"{kind} {rnd.randbytes(KIND_HEX_LEN[kind] // 2).hex()}\n")
    calls = []
    t0 = time.perf_counter()
    r = import_list(f, ListFormat.PLAIN, progress=lambda d, t: calls.append(d))
    elapsed = time.perf_counter() - t0
    assert r.loaded == 1_000_000
    assert len(calls) >= f.stat().st_size >> 20  # read in pieces, not slurped
    with capsys.disabled():
        print(f"\n[hashlists] 1M-line plain import: {1_000_000 / elapsed:,.0f} lines/s")


def test_hundred_thousand_ncmec_records_stream(tmp_path, capsys):
    rnd = random.Random(4)
    f = tmp_path / "n.xml"
    with f.open("w") as out:
        out.write(
            '<?xml version="1.0"?>\n<queryResult xmlns="https://hashsharing.ncmec.org/hashsharing/v2"><images>\n'
        )
        for i in range(100_000):
            out.write(
                f'<image><member id="1">M</member><timestamp>2024-01-01T00:00:00Z</timestamp>'
                f"<id>i{i}</id><classification>A1</classification><fingerprints>"
                f"<md5>{rnd.randbytes(16).hex()}</md5><sha1>{rnd.randbytes(20).hex()}</sha1>"
                f"<pdq>{rnd.randbytes(32).hex()}</pdq></fingerprints></image>\n"
            )
            if i % 10 == 9:
                out.write(f"<deletedImage><id>i{i - 5}</id></deletedImage>\n")
        out.write("</images></queryResult>\n")
    t0 = time.perf_counter()
    r = import_list(f, ListFormat.NCMEC_XML)
    elapsed = time.perf_counter() - t0
    assert r.loaded == 90_000 * 3
    assert r.deleted == 10_000 * 3
    with capsys.disabled():
        print(f"\n[hashlists] 100k-record NCMEC XML: {100_000 / elapsed:,.0f} records/s")


# --- CLI ------------------------------------------------------------------------------


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_cli_import_writes_cache_and_stats_reads_it(tmp_path):
    out, err = io.StringIO(), io.StringIO()
    cache = tmp_path / "ncmec.npz"
    code = hashlist_command(
        ["import", str(DATA / "ncmec.xml"), "--name", "ncmec", "--out", str(cache)], out, err
    )
    assert code == 0
    assert out.getvalue().startswith("ncmec: loaded 4, skipped 4 (1 invalid, ")
    assert f"{DATA / 'ncmec.xml'}:40: md5 value is not hexadecimal" in err.getvalue()
    assert "ncmec.xml: 100%" in err.getvalue()  # not a TTY: plain progress lines
    assert "\r" not in err.getvalue()

    out2, err2 = io.StringIO(), io.StringIO()
    assert hashlist_command(["stats", str(cache), "--json"], out2, err2) == 0
    stats = json.loads(out2.getvalue().splitlines()[-1])
    assert stats["by_kind"] == {"md5": 1, "sha1": 2, "pdq": 1}
    assert stats["name"] == "ncmec"


def test_cli_detects_format_and_draws_a_bar_on_a_tty():
    out, err = io.StringIO(), TTY()
    assert hashlist_command(["import", str(DATA / "tcap.json")], out, err) == 0
    assert "\r" in err.getvalue() and "100%" in err.getvalue()
    assert "loaded 3" in out.getvalue()


def test_cli_stats_of_a_list_file(tmp_path):
    out, err = io.StringIO(), io.StringIO()
    code = hashlist_command(["stats", str(DATA / "plain_ambiguous.txt"), "--kind", "pdq"], out, err)
    assert code == 0
    assert "pdq: 2" in out.getvalue() and "md5: 1" in out.getvalue()


def test_cli_errors_are_messages_and_exit_codes(tmp_path):
    out, err = io.StringIO(), io.StringIO()
    assert hashlist_command(["import", str(tmp_path / "nope.txt")], out, err) == 1
    assert "no such file" in err.getvalue()
    unknown = tmp_path / "x.txt"
    unknown.write_text("hello\n")
    err = io.StringIO()
    assert hashlist_command(["import", str(unknown)], out, err) == 1
    assert "pass --format" in err.getvalue()
    err = io.StringIO()
    assert hashlist_command(["import", str(unknown), "--format", "nope"], out, err) == 2
    assert "invalid choice" in err.getvalue()
    err = io.StringIO()
    assert hashlist_command(["import", str(DATA / "plain.txt"), "--strict"], out, err) == 1


def test_cli_help_goes_to_out():
    out, err = io.StringIO(), io.StringIO()
    assert hashlist_command(["import", "--help"], out, err) == 0
    assert "--format" in out.getvalue()
