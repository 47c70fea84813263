"""`vigil check` and the config/rules loaders: every problem named by file and key."""

from __future__ import annotations

import io
import shutil
import textwrap
from pathlib import Path

from bot.cli import check, main
from bot.config import Role
from tests.conftest import write_config

ROOT = Path(__file__).resolve().parent.parent


def run_check(path: Path) -> tuple[int, str]:
    out = io.StringIO()
    code = check(path, out)
    return code, out.getvalue()


def test_example_config_passes_check(tmp_path: Path) -> None:
    # A fresh clone: the example config and the shipped rules, nothing else.
    shutil.copy(ROOT / "bot.toml.example", tmp_path / "bot.toml")
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    code, out = run_check(tmp_path / "bot.toml")
    assert code == 0, out
    assert "OK" in out
    assert "rule      known-image" in out


def test_cli_check_exit_status_from_main(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    assert main(["check", "-c", str(path)]) == 0


def test_misspelt_rules_key_names_file_and_key(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        rules='[[rule]]\nname = "r"\nsevrity = "high"\nroom = "staff"\n',
    )
    code, out = run_check(path)
    assert code == 1
    assert str(tmp_path / "rules" / "main.toml") in out
    assert "rule[0].sevrity: error: unknown key (did you mean 'severity'?)" in out


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        extra_toml=textwrap.dedent(
            """
            [[staff]]
            name = "Bob"
            role = "superuser"
            timezone = "Mars/Olympus"
            matrix = "bob"
            """
        ),
        rules=textwrap.dedent(
            """
            [[rule]]
            name = "r1"
            severity = "urgent"
            room = "nowhere"
            when = { lists = ["missing-list"], account_younger_than = "soon" }
            """
        ),
    )
    code, out = run_check(path)
    assert code == 1
    assert "staff[1].role: error: 'superuser' is not allowed" in out
    assert "staff[1].timezone: error: 'Mars/Olympus' is not an IANA time zone" in out
    assert "staff[1].matrix: error: 'bob' is not a user id" in out
    assert "rule[0].severity: error: 'urgent' is not allowed" in out
    assert "rule[0].when.account_younger_than: error: expected a duration" in out
    assert "rule 'r1'.when.lists: error: no list called 'missing-list'" in out
    assert "rule 'r1'.room: error: no room called 'nowhere'" in out
    assert "7 errors" in out


def test_wrong_types_say_what_was_expected(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    text = (
        path.read_text()
        .replace("port = 0", 'port = "eighty"')
        .replace("workers = 2", "workers = true")
    )
    path.write_text(text)
    code, out = run_check(path)
    assert code == 1
    assert "service.port: error: expected an integer from 0 to 65535, got a string" in out
    assert "pipeline.workers: error: expected an integer from 1 to 64, got a boolean" in out


def test_unknown_top_level_table_is_an_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, extra_toml="\n[sevice]\nport = 1\n")
    code, out = run_check(path)
    assert code == 1
    assert "sevice: error: unknown key (did you mean 'service'?)" in out


def test_not_toml_gives_line_and_column(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    (tmp_path / "rules" / "broken.toml").write_text("[[rule]\nname = 1\n")
    code, out = run_check(path)
    assert code == 1
    assert "broken.toml: error: not valid TOML" in out
    assert "line 1" in out


def test_missing_list_file_is_an_error(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, rules='[[list]]\nname = "l"\nfile = "lists/none.txt"\nformat = "plain"\n'
    )
    code, out = run_check(path)
    assert code == 1
    assert "list[0].file: error:" in out and "not found" in out


def test_missing_secret_is_a_warning_for_check(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    (tmp_path / ".env").write_text("")
    code, out = run_check(path)
    assert code == 0
    assert "TEST_WEBHOOK_SECRET is not set" in out


def test_run_refuses_to_start_without_secrets(tmp_path: Path, capsys) -> None:
    path = write_config(tmp_path)
    (tmp_path / ".env").write_text("")
    assert main(["run", "-c", str(path)]) == 1
    assert "TEST_WEBHOOK_SECRET" in capsys.readouterr().err


def test_roster_is_typed(tmp_path: Path) -> None:
    from bot.app import load_everything

    loaded, _ = load_everything(write_config(tmp_path))
    assert loaded is not None
    alice = loaded.config.staff_by_chat_id("matrix", "@alice:vigil.test")
    assert alice is not None and alice.role is Role.MODERATOR and alice.timezone == "Europe/London"
    assert loaded.config.staff_by_chat_id("matrix", "@mallory:vigil.test") is None


def test_secrets_come_from_env_file_not_toml(tmp_path: Path) -> None:
    from bot.app import load_everything

    loaded, _ = load_everything(write_config(tmp_path))
    assert loaded is not None
    assert loaded.config.secret("TEST_WEBHOOK_SECRET") == "test-webhook-secret"
    assert "test-webhook-secret" not in repr(loaded.config)


def test_unknown_array_item_names_the_allowed_values(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        rules='[[rule]]\nname = "r"\nroom = "staff"\nwhen = { events = ["post_creatd"] }\n',
    )
    code, out = run_check(path)
    assert code == 1
    assert "rule[0].when.events[0]: error: 'post_creatd' is not one of 'post_created'," in out
    assert "(did you mean 'post_created'?)" in out
