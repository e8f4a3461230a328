"""The entry-point registry that finds backends, and the one generic path of target options.

A backend is a package with an object registered in the ``hwq.targets`` entry-point group
(``hwq.target.protocol`` says what it must provide). The core never imports a backend: it
asks the registry by name. Lookup is lazy and cached, and a backend that fails to import is
reported with the reason instead of breaking the others.

Options travel one way from the CLI and the API to ``compile`` and ``load``: as text
(``--option backend=lava`` or the target spec ``loihi:backend=lava``), parsed and validated
by the target's declared ``Option``s, and stored in the ``.hwq`` file as the program's
``options``.
"""

from __future__ import annotations

import functools
from importlib.metadata import entry_points
from typing import Any

from hwq.errors import TargetError, UsageError
from hwq.target.protocol import Target

GROUP = "hwq.targets"
INSTALL_HINTS = {"loihi": "reinstall hwq (./bootstrap.sh); the Lava backend needs .venv-lava"}


@functools.cache
def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def available_targets() -> list[str]:
    return sorted(_entry_points())


@functools.cache
def get_target(name: str) -> Target:
    eps = _entry_points()
    if name not in eps:
        raise TargetError(
            f"unknown target '{name}'",
            hint="available: " + (", ".join(sorted(eps)) or "none (is hwq installed?)"),
        )
    try:
        factory = eps[name].load()
    except Exception as exc:  # a broken backend must not take the others down
        hint = INSTALL_HINTS.get(name, "reinstall the package that provides it")
        raise TargetError(
            f"target '{name}' is not usable here ({type(exc).__name__}: {exc})", hint=hint
        ) from None
    return factory()


def split_target_spec(spec: str) -> tuple[str, list[str]]:
    """``"loihi:backend=lava,shifts=3"`` -> ``("loihi", ["backend=lava", "shifts=3"])``."""
    name, _, rest = spec.partition(":")
    items, current = [], ""
    for part in rest.split(",") if rest else []:  # commas inside a value continue it
        if "=" in part or not current:
            if current:
                items.append(current)
            current = part
        else:
            current += "," + part
    if current:
        items.append(current)
    return name.strip(), items


def parse_options(target: str, items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Text options ``name=value`` -> values, validated against the target's declared options."""
    declared = {o.name: o for o in get_target(target).options}
    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UsageError(f"malformed option '{item}'", hint="use NAME=VALUE, e.g. backend=lava")
        if name not in declared:
            raise UsageError(f"unknown {target} option '{name}'",
                             hint="options: " + (", ".join(sorted(declared)) or "none"))
        opt = declared[name]
        if opt.choices and text not in opt.choices:
            raise UsageError(f"{target} option {name}={text} is not one of {', '.join(opt.choices)}")
        try:
            out[name] = opt.parse(text)
        except (ValueError, TypeError):
            raise UsageError(f"bad value for {target} option {name}: '{text}'", hint=opt.help) from None
    return out


def resolve_target(spec: str, items: list[str] | tuple[str, ...] = ()) -> tuple[str, dict[str, Any]]:
    """A target spec plus ``--option`` items -> ``(name, options)``."""
    name, inline = split_target_spec(spec)
    get_target(name)
    return name, parse_options(name, [*inline, *items])
