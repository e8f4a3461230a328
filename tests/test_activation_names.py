"""Activation names are compared in one place, the kind table (``hwq/ir/activations.py``):
everywhere else code asks the typed kind (``binary``, ``requantizes``, ``codes``,
``code_range``) or compares kind objects, so a new kind is taught to the table, not to a dozen
files. Parsed with ``ast`` (as ``tests/test_layering.py`` parses imports)."""

from __future__ import annotations

import ast
from pathlib import Path

from hwq.ir import activations

ROOT = Path(__file__).resolve().parents[1]
NAMES = frozenset(activations.KINDS)
TABLE = "hwq/ir/activations.py"
# File-format readers that translate names found in a file into kinds (ONNX operator patterns:
# the importer's partial step pattern is also called "sign").
ALLOWED = frozenset({"hwq/onnx/importer.py"})
# Other vocabularies that share a name: a Loihi layer map's neuron model (``lm.neuron``: lif,
# relu, identity) is not an activation (docs/layout.md, "Where the architecture review's
# findings stand").
OTHER_VOCABULARIES = (("targets/loihi/", "neuron"),)


def names_in(node: ast.AST) -> set[str]:
    """Activation names written as string constants in ``node`` (a constant, or a tuple, list
    or set of them)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value} & NAMES
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return set().union(*(names_in(e) for e in node.elts)) if node.elts else set()
    return set()


def output_rule(node: ast.AST) -> bool:
    """An operand that is the output rule ("argmax" or "sign", a separate vocabulary)."""
    text = ast.unparse(node)
    return "output" in text or "rule" in text


def other_vocabulary(path: str, node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and any(path.startswith(prefix) and node.attr == attr
                                                   for prefix, attr in OTHER_VOCABULARIES)


def comparisons(source: str, path: str) -> list[tuple[int, str]]:
    """``(line, text)`` of every comparison of an activation name in ``source``."""
    out = []
    for node in ast.walk(ast.parse(source, path)):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        hit = [n for n in operands if names_in(n)]
        others = [n for n in operands if n not in hit]
        if hit and not any(output_rule(n) or other_vocabulary(path, n) for n in others):
            out.append((node.lineno, ast.unparse(node)))
    return out


def sources() -> list[Path]:
    return sorted(p for folder in ("hwq", "targets") for p in (ROOT / folder).rglob("*.py")
                  if "__pycache__" not in p.parts)


def test_activation_names_compared_only_in_the_kind_table():
    found = []
    for path in sources():
        rel = path.relative_to(ROOT).as_posix()
        if rel != TABLE and rel not in ALLOWED:
            found += [f"{rel}:{line}: {text}" for line, text in comparisons(path.read_text(), rel)]
    assert not found, "activation names compared outside the kind table:\n" + "\n".join(found)


def test_the_check_finds_each_form_of_comparison():
    """The check sees ==, !=, in and not in against a name or a tuple of names, on any
    expression, and leaves the output rule and the kind table's own API alone."""
    bad = ['layer.activation == "relu"', 'act != "identity"', 'kind in ("step", "sign")',
           '"sigmoid" == layer.activation', 'x.activation not in ["relu", "sigmoid"]']
    for text in bad:
        assert comparisons(text, "x.py"), text
    good = ['net.output == "sign"', 'rule == "sign"', 'layer.activation_kind.requantizes',
            'kind is activations.RELU', 'mode == "argmax"']
    for text in good:
        assert not comparisons(text, "x.py"), text
    assert not comparisons('lm.neuron == "relu"', "targets/loihi/spec.py")  # the neuron model
    assert comparisons('lm.neuron == "relu"', "targets/sim/x.py")
    assert comparisons('lm.kind == "relu"', "targets/loihi/spec.py")  # kind means an activation
    assert comparisons('layer.activation == "relu"', "targets/loihi/spec.py")
