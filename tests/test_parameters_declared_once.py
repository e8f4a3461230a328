"""Every attack and training parameter is declared once, as a dataclass field (``hwq.params``),
and reaches every place generated from it: ``hwq attack``, ``hwq train`` and ``hwq sweep``
options, the sweep spec (``AttackSettings``/``TrainSettings``, its JSON) and the parameters an
attack records in its results. A field added without its option or spec entry fails here."""

from __future__ import annotations

import dataclasses
import importlib
import json

import pytest
import typer
from cli_runner import run_cli

from hwq.attack import ATTACKS
from hwq.cli.app import app
from hwq.errors import UsageError
from hwq.train import TrainConfig

META = "hwq.param"
ATTACK_CLASSES = {getattr(make, "func", make) for make in ATTACKS.values()}
ALL_ATTACKS = "fgsm,pgd,square,apgd-ce,apgd-t"
STR_VALUES = {"norm": "l2"}


def option_names(command: str) -> set[str]:
    """Every spelling of every option of ``hwq COMMAND`` (``--no-x`` included)."""
    from hwq.cli import core, study  # noqa: F401  (register the commands)

    params = typer.main.get_command(app).commands[command].params
    return {name for p in params for name in (*p.opts, *p.secondary_opts)}


def declarations(cls):
    """``(field, Declared)`` for every field of ``cls``; a field without a declaration fails."""
    out = []
    for f in dataclasses.fields(cls):
        assert META in f.metadata, f"{cls.__name__}.{f.name} is not declared with hwq.params.param"
        out.append((f, f.metadata[META]))
    return out


def flags(name: str, kind, declared) -> list[str]:
    spelled = declared.flags or ((f"--{name.replace('_', '-')}/--no-{name.replace('_', '-')}",) if kind is bool
                                 else (f"--{name.replace('_', '-')}",))
    return [flag for s in spelled for flag in s.split("/")]


def attack_fields():
    """``(cls, field, public name, type, Declared)`` of every attack field the CLI sets."""
    for cls in sorted(ATTACK_CLASSES, key=lambda c: c.__name__):
        for f, d in declarations(cls):
            if d.cli:
                yield cls, f, d.name or f.name, field_type(f), d


def field_type(f) -> type:
    """``int | None`` (a string under postponed annotations) -> int."""
    return {"str": str, "int": int, "float": float, "bool": bool}[str(f.type).split(" |")[0]]


def sample(name: str, kind, default):
    """A valid value other than the default."""
    if kind is bool:
        return not default
    if kind is str:
        return STR_VALUES[name]
    return 3 if kind is int else 0.125


ATTACK_FIELDS = list(attack_fields())


def takers(suite, cls, declared) -> list:
    """The suite's members of class ``cls`` that take the parameter (``declared.attacks``)."""
    return [m for m in suite.attacks if isinstance(m, cls) and (declared.attacks is None or m.name in declared.attacks)]


@pytest.mark.parametrize("command", ["attack", "sweep"])
def test_every_attack_field_has_an_option_in_both_commands(command):
    names = option_names(command)
    missing = [f"{cls.__name__}.{f.name}: {flag}" for cls, f, name, kind, d in ATTACK_FIELDS
               for flag in flags(name, kind, d) if flag not in names]
    assert not missing, f"hwq {command} lacks options for {missing}"


def test_every_attack_field_is_a_field_of_the_sweep_spec():
    from hwq.sweep.spec import AttackSettings

    spec_fields = {f.name for f in dataclasses.fields(AttackSettings)}
    missing = [f"{cls.__name__}.{f.name}" for cls, f, name, _, _ in ATTACK_FIELDS if name not in spec_fields]
    assert not missing, f"AttackSettings lacks {missing}"


@pytest.mark.parametrize("cls, field, name, kind, declared", ATTACK_FIELDS,
                         ids=[f"{c.__name__}.{f.name}" for c, f, *_ in ATTACK_FIELDS])
def test_an_attack_parameter_given_to_hwq_sweep_is_recorded_in_the_spec(
        cls, field, name, kind, declared, tmp_path, monkeypatch, capsys):
    import hwq.cli.study as study
    from hwq.sweep.spec import SweepSpec

    seen = {}

    def capture(spec, output, **kwargs):
        seen["spec"] = spec
        raise UsageError("captured")

    monkeypatch.setattr(study, "run_spec", capture)
    value = sample(name, kind, field.default)
    flag = flags(name, kind, declared)[0 if kind is not bool or value else 1]
    args = [flag] if kind is bool else [flag, value]
    code, _, err = run_cli("sweep", "--data", "spiral", "--attacks", ALL_ATTACKS, *args,
                           "-o", tmp_path / "s.h5", capsys=capsys)
    assert "captured" in err, err
    recorded = json.loads(seen["spec"].to_json())["attack"]
    assert recorded[name] == value
    method = SweepSpec.from_json(seen["spec"].to_json()).attack.method()
    takes = takers(method, cls, declared)
    assert takes and all(m.params()[field.name] == value for m in takes)


@pytest.mark.parametrize("cls, field, name, kind, declared", ATTACK_FIELDS,
                         ids=[f"{c.__name__}.{f.name}" for c, f, *_ in ATTACK_FIELDS])
def test_an_attack_parameter_given_to_hwq_attack_is_recorded_in_its_results(
        cls, field, name, kind, declared, tmp_path, monkeypatch, capsys):
    """The attack built from ``hwq attack``'s options records the value (its ``params()``,
    which the results file and ``--json`` write)."""
    attack_mod = importlib.import_module("hwq.attack")  # (``hwq.attack`` the name is hwq.api's function)
    built = {}
    make_suite = attack_mod.make_suite

    def capture(*args, **kwargs):
        built["method"] = make_suite(*args, **kwargs)
        raise UsageError("captured")

    monkeypatch.setattr(attack_mod, "make_suite", capture)
    value = sample(name, kind, field.default)
    flag = flags(name, kind, declared)[0 if kind is not bool or value else 1]
    args = [flag] if kind is bool else [flag, value]
    code, _, err = run_cli("attack", tmp_path / "m.hwq", "--data", "spiral", "--attacks", ALL_ATTACKS, *args,
                           capsys=capsys)
    assert "captured" in err, err
    takes = takers(built["method"], cls, declared)
    assert takes and all(m.params()[field.name] == value for m in takes)


def test_every_training_field_is_declared_and_has_an_option():
    train_names, sweep_names = option_names("train"), option_names("sweep")
    from hwq.sweep.spec import TrainSettings

    settings = {f.name for f in dataclasses.fields(TrainSettings)}
    for f, d in declarations(TrainConfig):
        for flag in flags(f.name, field_type(f), d):
            assert flag in train_names, f"hwq train lacks {flag}"
            if d.sweep:
                assert flag in sweep_names, f"hwq sweep lacks {flag}"
        if d.sweep:
            assert f.name in settings, f"TrainSettings lacks {f.name}"


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "epochs must be a positive integer, got 0"),  # was: the default budget
    (["--patience", "0"], "patience must be a positive integer, got 0"),
    (["--lr", "inf"], "learning_rate must be finite and positive"),
    (["--lr", "nan"], "learning_rate must be finite and positive"),
    (["--gain", "inf"], "gain must be finite and positive"),
    (["--gain", "0"], "gain must be finite and positive"),  # was: the default gain
    (["--val-fraction", "1"], "val_fraction must lie in (0, 1)"),
])
@pytest.mark.parametrize("command", ["train", "sweep"])
def test_bad_training_values_are_refused_alike_before_anything_runs(command, args, message, tmp_path, monkeypatch,
                                                                     capsys):
    import hwq.cli.study as study

    monkeypatch.setattr(study, "run_spec", lambda *a, **k: pytest.fail("the sweep ran"))
    out = tmp_path / ("m.onnx" if command == "train" else "s.h5")
    code, _, err = run_cli(command, "--data", "spiral", *args, "-o", out, capsys=capsys)
    assert code != 0 and message in err and "Traceback" not in err, err
    assert err.count("\n") == 1 and not out.exists()


def test_a_sweep_spec_with_a_bad_training_value_is_refused_when_read():
    from hwq.sweep.spec import SweepSpec, TrainSettings

    text = SweepSpec(data=("spiral",), train=TrainSettings(epochs=5)).to_json()
    with pytest.raises(UsageError, match="epochs must be a positive integer"):
        SweepSpec.from_json(text.replace('"epochs": 5', '"epochs": 0'))
    with pytest.raises(UsageError, match="--steps must be an integer"):
        SweepSpec.from_json(text.replace('"attack": {', '"attack": {"steps": "many", '))


LEGACY = {  # every spelling these commands had before their options were generated (users' scripts)
    "attack": "--norm --steps --restarts --rel-stepsize --abs-stepsize --random-start --no-random-start --queries "
              "--p-init --attack-seed --target-classes --temperature --diagnostics --no-diagnostics",
    "sweep": "--epochs --patience --batch-size --lr --hidden --init --gain --scheme --norm --attacks --attack --steps "
             "--restarts --rel-stepsize --no-random-start --queries --p-init --attack-seed --target-classes "
             "--temperature --no-diagnostics",
    "train": "--data --activation --bits --scheme --hidden --gain --epochs --patience --batch-size --lr --init --seed "
             "--output -o --json",
}


@pytest.mark.parametrize("command", sorted(LEGACY))
def test_every_old_spelling_still_works(command):
    assert set(LEGACY[command].split()) <= option_names(command)
