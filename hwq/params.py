"""Parameters declared once: a dataclass field with its help text and CLI spelling.

The attack dataclasses (``hwq.attack.*``) and :class:`hwq.train.TrainConfig` declare their
parameters with :func:`param`; everything else is generated from those fields: the options of
``hwq attack``, ``hwq train`` and ``hwq sweep`` (``hwq.cli.common``), the sweep spec's
``AttackSettings`` and ``TrainSettings`` (``hwq.sweep.spec``), and the parameters an attack
records in its results (:func:`declared_values`). A new parameter is one field.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

from hwq.errors import UsageError

META = "hwq.param"


@dataclass(frozen=True)
class Declared:
    """A field's declaration. ``flags``: its CLI spellings (default ``--field-name``); ``name``:
    the name the CLI and the sweep spec use where it differs from the field's; ``attacks``: the
    attacks that take it (default: every attack with the field); ``cli`` False: set by
    something else (the attack's name); ``auto``: what the default is when it is computed
    (the option then defaults to None); ``sweep``: a ``hwq sweep`` setting (training)."""

    help: str
    flags: tuple[str, ...] = ()
    name: str | None = None
    attacks: tuple[str, ...] | None = None
    cli: bool = True
    auto: str | None = None
    sweep: bool = True


def param(default=dataclasses.MISSING, *, help: str, **declared) -> Any:  # noqa: A002 (typer's word)
    """A declared dataclass field (``steps: int = param(40, help="...")``)."""
    return dataclasses.field(default=default, metadata={META: Declared(help=help, **declared)})


@dataclass(frozen=True)
class Parameter:
    """One declared field, resolved: ``name`` (CLI dest and spec key), ``field`` (the
    dataclass's), ``type`` (int, float, str or bool), ``default``."""

    name: str
    field: str
    type: type
    default: Any
    declared: Declared

    @property
    def flags(self) -> tuple[str, ...]:
        if self.declared.flags:
            return self.declared.flags
        flag = "--" + self.name.replace("_", "-")
        return (f"{flag}/--no-{flag[2:]}",) if self.type is bool else (flag,)

    @property
    def flag(self) -> str:
        """The canonical spelling, for messages (``--random-start``)."""
        return self.flags[0].split("/")[0]

    def check(self, value):
        """``value`` (None: unset) as the declared type, else a one-line ``UsageError``."""
        if value is None:
            return None
        kind = self.type
        ok = (isinstance(value, bool) if kind is bool else
              isinstance(value, int) and not isinstance(value, bool) if kind is int else
              isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
              isinstance(value, kind))
        if not ok:
            raise UsageError(f"{self.flag} must be {_TYPE_WORDS[kind]}, got {value!r}")
        return value


_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def base_type(annotation) -> type:
    """``int | None`` -> int."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0]
    return annotation


def declared(cls) -> list[Parameter]:
    """The declared fields of dataclass ``cls``, in field order."""
    cls = getattr(cls, "func", cls)  # functools.partial of a dataclass
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if META in f.metadata:
            d = f.metadata[META]
            out.append(Parameter(d.name or f.name, f.name, base_type(hints[f.name]), f.default, d))
    return out


def declared_values(obj) -> dict:
    """The declared fields of a dataclass instance (what an attack records), in field order."""
    return {p.field: getattr(obj, p.field) for p in declared(type(obj))}

