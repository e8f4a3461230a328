"""The shape of the code, checked from its source: the core never imports a backend, no backend
imports another (only ``targets/common``), and ``hwq/`` has no import circle. Imports are parsed
with ``ast`` (function-level ones too), so a hidden import counts like any other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "targets":
        parts[0] = "hwq_targets"
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def exists(module: str) -> bool:
    parts = module.split(".")
    base = ROOT / ("targets" if parts[0] == "hwq_targets" else parts[0]) / Path(*parts[1:]) if len(parts) > 1 \
        else ROOT / ("targets" if parts[0] == "hwq_targets" else parts[0])
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; ``from pkg import sub`` -> ``pkg.sub``)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if exists(sub) else target)
    return out


def sources(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def graph(folder: str) -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in sources(folder)}


def test_the_core_never_imports_a_backend():
    bad = {m: sorted(i for i in deps if i.split(".")[0] in ("hwq_targets", "targets"))
           for m, deps in graph("hwq").items()}
    assert not {m: d for m, d in bad.items() if d}


def test_backends_import_only_the_core_common_and_themselves():
    found = {}
    for module, deps in graph("targets").items():
        parts = module.split(".")
        if len(parts) < 2 or parts[1] == "common":
            own = "hwq_targets.common"
        else:
            own = f"hwq_targets.{parts[1]}"
        for dep in deps:
            if dep.startswith("hwq_targets") and not (dep.startswith(own) or dep.startswith("hwq_targets.common")
                                                      or dep == "hwq_targets"):
                found.setdefault(module, []).append(dep)
    assert not found, f"backends importing other backends: {found}"


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_in_the_core():
    # The root package ``hwq`` is the public facade (it imports the API); modules must not
    # import it back, and nothing else may close a loop.
    edges = graph("hwq")
    back = sorted(m for m, deps in edges.items() if m != "hwq" and "hwq" in deps)
    assert not back, f"modules importing the hwq facade (use hwq.version / the module itself): {back}"
    assert cycles(edges) == []


def test_the_cycle_finder_finds_a_planted_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_import_parser_sees_relative_and_function_level_imports(tmp_path, monkeypatch):
    # The parser on a real backend file: loihi's emulator imports common products relatively.
    deps = imports(ROOT / "targets" / "loihi" / "emulator.py")
    assert "hwq_targets.common.products" in deps and "hwq_targets.loihi.kernels" in deps
    deps = imports(ROOT / "hwq" / "attack" / "base.py")  # a function-level import
    assert "hwq.attack.gradients" in deps


@pytest.mark.parametrize("folder", ["hwq", "targets"])
def test_every_module_parses(folder):
    assert sources(folder)
