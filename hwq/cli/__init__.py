"""The ``hwq`` command line: thin commands over the public API.

Every command validates its arguments, calls one library function, writes one file (via a
temporary name and a rename) and prints one summary (``--json``: one JSON object on stdout).
Errors from the ``HwqError`` hierarchy are caught here, once, and printed as one line.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

import typer

from hwq.cli.app import app
from hwq.errors import HwqError

COMMANDS_GROUP = "hwq.commands"  # backends add command groups (``hwq truenorth ...``) here


_MOUNTED: set[str] = set()


def register_plugins() -> None:
    """Mount every typer app registered in the ``hwq.commands`` entry-point group under its
    name (once); a plugin that fails to import is skipped (its target reports why when used)."""
    for ep in entry_points(group=COMMANDS_GROUP):
        if ep.name in _MOUNTED:
            continue
        _MOUNTED.add(ep.name)
        try:
            app.add_typer(ep.load(), name=ep.name)
        except Exception:  # noqa: BLE001  (a broken backend must not take the CLI down)
            continue


def fail(message: str, code: int) -> None:
    print(f"hwq: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    from hwq.cli import core, devices, study  # noqa: F401  (register commands)

    register_plugins()

    try:
        code = app(args=argv, standalone_mode=False)
    except HwqError as exc:
        fail(exc.line(), exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        fail("interrupted", 130)
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.TyperException as exc:  # usage errors: missing or malformed options
        message = exc.format_message().replace("\n", " ") if hasattr(exc, "format_message") else str(exc)
        fail(message, getattr(exc, "exit_code", 2))
    except OSError as exc:
        fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), 1)
    raise SystemExit(code if isinstance(code, int) else 0)
