"""Every command in the README's "Use" block runs as written (in a temporary folder)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def use_commands() -> list[list[str]]:
    text = README.read_text()
    block = re.search(r"## Use\n\n```\n(.*?)```", text, re.S).group(1)
    lines = [line.split("#")[0].strip() for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line]


def test_readme_starts_with_the_two_setup_commands():
    first = re.search(r"```[a-z]*\n(.*?)```", README.read_text(), re.S).group(1).split("\n")
    commands = [c for c in first if c.strip()]
    ci = (README.parent / ".ci" / "run").read_text()
    assert len(commands) == 2 and commands[1] in ci


@pytest.mark.slow
def test_use_block_runs(tmp_path):
    commands = use_commands()
    assert commands and all(c[0] == "hwq" for c in commands)
    background = []
    # the README's cnn.onnx: the shipped Brevitas QAT CNN on 8x8 inputs (it says so)
    shutil.copy(README.parent / "tests" / "data" / "exporters" / "brevitas_cnn_qcdq.onnx", tmp_path / "cnn.onnx")
    try:
        for argv in commands:
            if argv[-1] == "&":  # a server: start it, wait until it listens, stop it at the end
                proc = subprocess.Popen([sys.executable, "-m", "hwq", *argv[1:-1]], cwd=tmp_path,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                background.append(proc)
                line = proc.stdout.readline()
                assert line.startswith("listening "), f"{shlex.join(argv)}: {line!r} {proc.stderr.read()[-800:]}"
                continue
            proc = subprocess.run([sys.executable, "-m", "hwq", *argv[1:]], cwd=tmp_path,
                                  capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, f"{shlex.join(argv)}: {proc.stderr[-1500:]}"
    finally:
        for proc in background:
            proc.terminate()
            proc.wait(timeout=30)
    assert (tmp_path / "figures" / "report.md").exists()
    assert (tmp_path / "dev.h5").exists() and (tmp_path / "tn.json").exists()
    assert (tmp_path / "cnn-int.onnx").exists()
