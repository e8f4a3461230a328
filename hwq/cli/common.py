"""Shared pieces of the CLI: option types, data loading, JSON and table output, progress."""

from __future__ import annotations

import functools
import inspect
import json
import shlex
import sys
import typing
from pathlib import Path

import numpy as np
import typer
from tqdm import tqdm
from typer.core import TyperOption

from hwq.data import Dataset, load_dataset
from hwq.errors import UsageError
from hwq.files.program import load_program, read_stored

_display_type_rich = TyperOption.display_type_rich


def _flag_type(self: TyperOption, ctx) -> str | None:
    """No value column for flags (``--json``, ``--per-channel/--no-per-channel``): typer's rich
    help panel asks every option for its type, so flags showed ``<bool>`` as if they took a
    value; its plain help already skips them (``TyperOption.get_help_record``)."""
    if self.is_flag or self.count:
        return None
    return _display_type_rich(self, ctx)


TyperOption.display_type_rich = _flag_type

DATA_HELP = "spiral | spiral-paper | digits | fashion-mnist | mnist:DIR | FILE.npz"
TARGET_HELP = "NAME or NAME:OPT=V,... (see `hwq info --targets` for names and their options)"


OPTION = typer.Option(None, "--option", "-O", help="Target option NAME=VALUE (repeatable), e.g. backend=lava.")


def target_options(spec: str | None, items: list[str] | None) -> tuple[str | None, dict]:
    """``--target`` (maybe with inline options) plus repeated ``--option NAME=VALUE`` ->
    ``(name, options)``; the core names no target's options, the target validates them."""
    from hwq.target.registry import resolve_target

    if spec is None:
        if items:
            raise UsageError("--option needs --target (options belong to a target)")
        return None, {}
    return resolve_target(spec, items or [])


def command_line() -> str:
    return shlex.join(["hwq", *sys.argv[1:]])


def data(spec: str, limit: int | None = None, seed: int = 0) -> Dataset:
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be a positive integer, got {limit}")
    return load_dataset(spec, seed=seed).limit(limit)


def emit_json(obj: dict) -> None:
    print(json.dumps(obj, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o)))


def table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def progress(total: int, desc: str):
    """A progress bar on stderr (hidden when stderr is not a terminal)."""
    return tqdm(total=total, desc=desc, unit="in", file=sys.stderr, disable=None, leave=False)


def check_output(path: Path, suffixes: tuple[str, ...]) -> Path:
    if path.suffix not in suffixes:
        raise UsageError(f"output file {path} should end in {' or '.join(suffixes)}")
    if not path.parent.exists():
        raise UsageError(f"output folder {path.parent} does not exist")
    if path.is_dir():
        raise UsageError(f"output {path} is a folder; name a file (e.g. {path / ('out' + suffixes[0])})")
    return path


def program_for(model: Path, target: str | None, option: list[str] | None):
    """The program stored in ``model`` with its stored options (``--option`` overrides them;
    a loihi file keeps its mapping), or the network recompiled for another ``--target``."""
    if target is None and option:
        target = read_stored(model).target
    name, options = target_options(target, option)
    return load_program(model, name, options)


TARGET = typer.Option(None, help="Run on this target (default: the one the file was compiled for): " + TARGET_HELP)


def declared_options(options: list[tuple[str, type, object, tuple[str, ...], str]], *, into: str,
                     panel: str | None = None):
    """A decorator adding one typer option per declared parameter (``(name, type, default,
    flags, help)``, made by :func:`attack_options`, :func:`run_options` or :func:`train_options` from the
    dataclass fields) where the command has its parameter ``into``; the command receives the
    values as one dict ``into`` (name -> value, None: not given). The options' Python names
    are ``{into}__{name}`` (no clash with the command's own, e.g. ``hwq attack --seed``)."""
    def decorate(command):
        signature = inspect.signature(command, eval_str=True)
        hints = typing.get_type_hints(command)
        made = [inspect.Parameter(f"{into}__{name}", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=kind | None,
                                  default=typer.Option(default, *flags, help=text, rich_help_panel=panel))
                for name, kind, default, flags, text in options]
        params = []
        for p in signature.parameters.values():
            params.extend(made if p.name == into else [p.replace(annotation=hints.get(p.name, p.annotation))])
        names = [name for name, *_ in options]

        @functools.wraps(command)
        def wrapper(**kwargs):
            values = {name: kwargs.pop(f"{into}__{name}") for name in names}
            return command(**kwargs, **{into: values})

        wrapper.__signature__ = signature.replace(parameters=params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        del wrapper.__wrapped__
        return wrapper
    return decorate


def attack_options(panel: str | None = None):
    """The options of every attack parameter (``hwq.attack.ATTACK_PARAMETERS``, generated from
    the attack dataclasses), for ``hwq attack`` and ``hwq sweep``: into ``attack_params``."""
    from hwq.attack import ATTACK_PARAMETERS

    return declared_options([(p.name, p.type, p.shared_default, p.flags, p.help) for p in ATTACK_PARAMETERS.values()],
                            into="attack_params", panel=panel)


def gradient_options(panel: str | None = None):
    """The options of the gradient source (``hwq.attack.gradients.GradientOptions``: the masking
    remedies ``--temperature`` and ``--ste``), for ``hwq attack`` and ``hwq sweep``: into
    ``gradient_params``."""
    from hwq.attack.gradients import GRADIENT_OPTIONS

    return declared_options([(p.name, p.type, p.default, p.flags, p.declared.help) for p in GRADIENT_OPTIONS],
                            into="gradient_params", panel=panel)


def run_options(panel: str | None = None):
    """The options of an attack run besides the attack's and the gradient's parameters
    (``hwq.api.AttackRunOptions``: ``--grad``, ``--diagnostics/--no-diagnostics``, ``--seed``), for
    ``hwq attack``: into ``run_params``, the keywords of ``hwq.api.run_attack``."""
    from hwq.api import AttackRunOptions
    from hwq.params import declared

    return declared_options([(p.name, p.type, p.default, p.flags, p.declared.help) for p in declared(AttackRunOptions)],
                            into="run_params", panel=panel)


def train_options(*, sweep: bool, panel: str | None = None):
    """The options of the training parameters (``hwq.train.TrainConfig``'s declared fields;
    ``sweep``: only those a sweep sets, the rest being its axes): into ``train_params``.
    Parameters with a computed default (``auto``) default to None."""
    from hwq.params import declared
    from hwq.train import TrainConfig

    return declared_options(
        [(p.name, p.type, None if p.declared.auto else p.default, p.flags,
          p.declared.help + (f" (default: {p.declared.auto})" if p.declared.auto else ""))
         for p in declared(TrainConfig) if p.declared.sweep or not sweep],
        into="train_params", panel=panel)
