"""`--help` of every command: boolean flags render as flags (no `<bool>` value column)."""

from __future__ import annotations

import pytest
import typer

from hwq.cli import main, register_plugins
from hwq.cli.app import app


def help_text(args, capsys, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "160")
    monkeypatch.setenv("TERM", "dumb")
    with pytest.raises(SystemExit) as info:
        main([*args, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def command_paths() -> list[list[str]]:
    from hwq.cli import core, study  # noqa: F401  (register commands)

    register_plugins()
    paths = []

    def walk(cmd, prefix):
        if getattr(cmd, "commands", None):  # typer's own groups (not click.Group subclasses)
            for name, sub in cmd.commands.items():
                walk(sub, [*prefix, name])
        else:
            paths.append(prefix)

    walk(typer.main.get_command(app), [])
    return paths


def test_compile_help_shows_flags_as_flags(capsys, monkeypatch):
    out = help_text(["compile"], capsys, monkeypatch)
    assert "<bool>" not in out
    flag_lines = [line for line in out.splitlines() if "--per-channel" in line or "--json" in line]
    assert len(flag_lines) == 2 and "--no-per-channel" in flag_lines[0]
    assert all("<" not in line.split("  One")[0] and "<" not in line.split("Print")[0] for line in flag_lines)
    assert "<int>" in out and "<path>" in out  # options with values keep their type


def test_every_command_help_has_no_bool_values(capsys, monkeypatch):
    paths = command_paths()
    assert ["compile"] in paths and ["export"] in paths
    for path in paths:
        out = help_text(path, capsys, monkeypatch)
        assert "<bool>" not in out, path
