"""Every module the documentation names exists: ``hwq/...py`` paths and dotted ``hwq.x.y`` names
in docs/ (and the READMEs) and in the comments and text strings of the Python sources (docstrings,
and text the code writes, such as an exported ONNX file's ``doc_string``; a string without a
space is a key, such as a metadata name, and is not read).

A path must be a file of the repository; a dotted name must import as a module, or be an
attribute of the longest prefix that does (``hwq.quant.reference.decide``). The only dotted
names that are not modules are the keys hwq writes into files and the entry-point groups
(``NOT_MODULES``); they have one component after ``hwq.``.
"""

from __future__ import annotations

import ast
import importlib
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("hwq", "targets", "tests", "benchmarks")
PATH = re.compile(r"(?<![\w./-])hwq/[\w/]+\.py\b")
DOTTED = re.compile(r"(?<![\w./-])hwq(?:\.[A-Za-z_]\w*)+")
PROSE = re.compile(r"\s")  # a string with a space is text (a docstring, a doc_string); one without is a key

# ONNX metadata keys (hwq/onnx/exporter.py, hwq/train.py, hwq compile) and entry-point groups
NOT_MODULES = {
    "hwq.activation", "hwq.best_epoch", "hwq.bits", "hwq.dataset", "hwq.decision", "hwq.gain", "hwq.hidden",
    "hwq.init", "hwq.input", "hwq.input_dtype", "hwq.layers", "hwq.n_classes", "hwq.scheme", "hwq.seed",
    "hwq.semantics", "hwq.sweep", "hwq.val_accuracy", "hwq.version",
    "hwq.commands", "hwq.targets",
}


def doc_texts():
    """``(where, text)``: each Markdown file, and each string literal and comment of a source."""
    for md in sorted([*ROOT.glob("*.md"), *(ROOT / "docs").rglob("*.md"), *(ROOT / "benchmarks").glob("*.md")]):
        yield md.relative_to(ROOT).as_posix(), md.read_text()
    for top in SOURCES:
        for py in sorted((ROOT / top).rglob("*.py")):
            where = py.relative_to(ROOT).as_posix()
            if where == "tests/test_stale_references.py":
                continue
            source = py.read_text()
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and PROSE.search(node.value):
                    yield f"{where}:{node.lineno}", node.value
            for tok in tokenize.generate_tokens(io.StringIO(source).readline):
                if tok.type == tokenize.COMMENT:
                    yield f"{where}:{tok.start[0]}", tok.string


def resolves(name: str) -> bool:
    if name in NOT_MODULES:
        return True
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        for attr in parts[k:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def stale(texts) -> list[str]:
    out = []
    for where, text in texts:
        out += [f"{where}: {p}" for p in PATH.findall(text) if not (ROOT / p).is_file()]
        out += [f"{where}: {d}" for d in DOTTED.findall(text) if not resolves(d)]
    return sorted(set(out))


def test_docs_and_docstrings_name_existing_modules():
    found = stale(doc_texts())
    assert not found, f"{len(found)} references to modules that do not exist:\n" + "\n".join(found)


@pytest.mark.parametrize("text", [
    "the numpy reference `hwq/reference.py`", "``hwq.onnx_export``", "(``hwq.sweep_cell``)",
    "`hwq.reference.decide`", "hwq.quant.reference.no_such_function", "hwq.quant.qnet.InputFormat.nope",
])
def test_the_check_catches_pre_wave_2_paths(text):
    assert stale([("x", text)])


def test_the_check_accepts_current_paths():
    assert not stale([("x", "`hwq/quant/reference.py`, ``hwq.quant.reference.decide``, hwq.onnx.exporter, "
                            "hwq.target.protocol.Traceable, the metadata's `hwq.input`, model.hwq, .x.hwq.k3j2.tmp")])
