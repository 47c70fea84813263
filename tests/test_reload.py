"""Rules reload without a restart; a bad file is rejected and the old rules stay."""

from __future__ import annotations

from pathlib import Path

from bot.app import App, RulesWatcher


async def test_valid_change_is_applied(app: App, config_path: Path) -> None:
    rules = config_path.parent / "rules" / "main.toml"
    rules.write_text(rules.read_text() + '\n[[rule]]\nname = "second"\nroom = "staff"\n')
    assert await app.reload_rules()
    assert [r.name for r in app.rules.rules] == ["reports", "second"]


async def test_invalid_change_is_rejected_and_old_rules_stay(app: App, config_path: Path) -> None:
    before = app.rules
    rules = config_path.parent / "rules" / "main.toml"
    rules.write_text('[[rule]]\nname = "broken"\nseverty = "high"\n')
    assert not await app.reload_rules()
    assert app.rules is before
    assert app.store is not None
    problems = await app.store.open_problems()
    assert problems[-1]["kind"] == "rules_rejected"
    # The admin sees the same message `vigil check` would give.
    assert (
        "rule[0].severty: error: unknown key (did you mean 'severity'?)" in problems[-1]["detail"]
    )


async def test_watcher_notices_a_changed_file(app: App, config_path: Path) -> None:
    watcher = RulesWatcher(app)
    rules = config_path.parent / "rules" / "main.toml"
    unchanged = watcher._scan()
    rules.write_text(rules.read_text() + "\n# a comment that changes the size\n")
    assert watcher._scan() != unchanged
    (config_path.parent / "rules" / "new.toml").write_text("")
    assert len(watcher._scan()) == len(unchanged) + 1
