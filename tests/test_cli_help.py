"""`--help` of every command (boolean flags render as flags) and `hwq info` (--ops, an ONNX file's grids)."""

from __future__ import annotations

import json

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


DATA = __import__("pathlib").Path(__file__).parent / "data" / "exporters"


def run(args, capsys):
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return info.value.code, out.out


def test_info_ops_lists_every_op(capsys):
    from hwq.onnx.importer import SUPPORTED

    code, out = run(["info", "--ops"], capsys)
    assert code == 0 and "QuantizeLinear" in out and "quantizer (QONNX)" in out
    code, out = run(["info", "--ops", "--json"], capsys)
    assert code == 0 and set(json.loads(out)["ops"]) == set(SUPPORTED)


@pytest.mark.parametrize("name,weights,acts,input_bits", [
    ("brevitas_w4a4_qcdq", [4, 4], [4, None], 8),
    ("brevitas_w2a2_u8in_qonnx", [2, 2], [2, None], 8),
    ("brevitas_binary_qonnx", [1, 4], [1, None], 8),
    ("brevitas_w2_weights_only_qcdq", [2, 2], [None, None], None),
    ("torch_relu_classic", [None, None], [None, None], None),
])
def test_info_onnx_reports_grids(capsys, name, weights, acts, input_bits):
    code, out = run(["info", DATA / f"{name}.onnx", "--json"], capsys)
    grids = json.loads(out)["grids"]
    assert code == 0
    assert [w and w["bits"] for w in grids["weights"]] == weights
    assert [a and a["bits"] for a in grids["activations"]] == acts
    assert (grids["input"] and grids["input"]["bits"]) == input_bits
    assert grids["bits"] == (max(weights) if all(weights) else None)
    code, text = run(["info", DATA / f"{name}.onnx"], capsys)
    assert code == 0 and "weight grid" in text
    assert f"weight grids on {sum(w is not None for w in weights)}/2 layers" in text
