"""Run the ``hwq`` command line in-process for tests: ``(exit code, stdout, stderr)``."""

from __future__ import annotations

import pytest

from hwq.cli import main


def run_cli(*args, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return info.value.code, out.out, out.err
