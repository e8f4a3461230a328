"""Attacks judged on the bit-exact model: the shared base (``base``), the attacks (``fgsm``,
``pgd``, ``square``, ``apgd``), and gradient sources (``gradients``). ``ATTACKS`` names every
attack the CLI and sweeps accept, ``SUITES`` the named suites (``autoattack``)."""

from __future__ import annotations

from functools import partial

from hwq.attack.apgd import APGD
from hwq.attack.base import Attack, AttackResult, Judge, check_inputs
from hwq.attack.fgsm import FGSM
from hwq.attack.pgd import PGD
from hwq.attack.square import Square
from hwq.attack.suite import Suite, diagnose
from hwq.errors import UsageError

ATTACKS = {"fgsm": FGSM, "pgd": PGD, "square": Square,
           "apgd-ce": partial(APGD, loss="ce"), "apgd-dlr": partial(APGD, loss="dlr"),
           "apgd-t": partial(APGD, loss="dlr", targets=9)}

__all__ = ["APGD", "ATTACKS", "FGSM", "PGD", "SUITES", "Square", "Suite", "Attack", "AttackResult", "Judge",
           "attack", "check_inputs", "diagnose", "make_attack", "make_suite"]

# CLI/sweep parameter names each attack takes (the rest are ignored for it)
_APGD = ("norm", "steps", "restarts", "seed", "rho")
PARAMS = {"fgsm": ("norm",),
          "pgd": ("norm", "steps", "rel_stepsize", "abs_stepsize", "random_start", "restarts", "seed"),
          "square": ("norm", "queries", "p_init", "seed"),
          "apgd-ce": _APGD, "apgd-dlr": _APGD, "apgd-t": (*_APGD, "targets")}

# named suites: members and the defaults they take there (parameters given still win).
# AutoAttack's standard suite (Croce & Hein 2020): APGD-CE, APGD-T (9 targets), FAB-T, Square
# 5000 queries; FAB-T is not built here and APGD-DLR (untargeted) stands in (docs/attacks.md).
SUITES = {"autoattack": (("apgd-ce", {}), ("apgd-t", {}), ("apgd-dlr", {}), ("square", {"queries": 5000}))}


def make_attack(name: str, **params) -> Attack:
    """An attack by name with its parameters (``make_attack("fgsm", norm="l2")``)."""
    if name not in ATTACKS:
        raise UsageError(f"unknown attack '{name}'", hint="use " + ", ".join(sorted(ATTACKS)))
    return ATTACKS[name](**params)


def parse_attack_names(text: str) -> tuple[str, ...]:
    return tuple(name for name, _ in expand_names(text))


def expand_names(text: str) -> tuple[tuple[str, dict], ...]:
    """``a,b,c`` -> ``((name, defaults), ...)``, named suites (``SUITES``) expanded."""
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part in SUITES:
            out.extend(SUITES[part])
        elif part in ATTACKS:
            out.append((part, {}))
        else:
            raise UsageError(f"unknown attack '{part}'", hint="use " + ", ".join([*sorted(ATTACKS), *SUITES]))
    if not out:
        raise UsageError("--attacks needs at least one attack", hint="e.g. fgsm,pgd,square or autoattack")
    return tuple(out)


def make_suite(names, **params) -> Attack | Suite:
    """One attack (one name) or a worst-case suite; each attack takes from ``params`` the
    parameters it knows (``PARAMS``), None values meaning its default."""
    pairs = expand_names(names) if isinstance(names, str) else expand_names(",".join(names))
    built = [make_attack(n, **{**defaults, **{k: v for k, v in params.items() if k in PARAMS[n] and v is not None}})
             for n, defaults in pairs]
    return built[0] if len(built) == 1 else Suite(tuple(built))


def attack(program, x, y, epsilons, *, method: Attack | Suite | None = None, gradient=None, bounds=None,
           batch_size: int = 2048, progress=None, diagnostics: bool = True) -> AttackResult:
    """Attack ``program`` (a compiled target program) on inputs ``x`` with labels ``y``
    (FGSM l-inf unless ``method`` says otherwise; a :class:`Suite` gives the per-input worst
    case). ``diagnostics``: also run the checks of ``hwq.attack.suite`` (one extra run of
    each gradient attack at the input range on at most 256 inputs)."""
    from dataclasses import replace

    from hwq.attack.gradients import default_gradient

    method = method or FGSM()
    if gradient is None and any(a.needs_gradient for a in getattr(method, "attacks", (method,))):
        gradient = default_gradient(program)
    result = method.run(program, x, y, epsilons, gradient, bounds=bounds, batch_size=batch_size,
                        progress=progress)
    diag = diagnose(result, method, program, gradient, sanity=diagnostics, batch_size=batch_size)
    return replace(result, diagnostics=diag)
