"""Every example script runs (docs examples are files the tests run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CASES = {
    "quickstart.py": ["--epochs", "5"],
    "hardware_in_the_loop.py": ["--limit", "100"],
    "import_sklearn.py": [],
    "device_server.py": ["--self-test"],
    # trains with PyTorch + Brevitas, which stay out of the test environment: here only its
    # command line; the files such training exports are read in tests/test_import_cnn.py
    "brevitas_cnn.py": ["--help"],
}


@pytest.mark.parametrize("script", sorted(CASES))
def test_example_runs(script):
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *CASES[script]],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip()


def test_all_examples_are_tested():
    scripts = {p.name for p in EXAMPLES.glob("*.py")}
    assert scripts <= set(CASES) | {p for p in scripts if p.startswith("sweep")}
