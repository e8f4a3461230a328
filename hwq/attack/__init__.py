"""Attacks judged on the bit-exact model: the shared base (``base``), the attacks (``fgsm``),
and gradient sources (``gradients``). ``ATTACKS`` names every attack the CLI and sweeps accept."""

from __future__ import annotations

from hwq.attack.base import Attack, AttackResult, Judge, check_inputs
from hwq.attack.fgsm import FGSM
from hwq.attack.pgd import PGD
from hwq.attack.square import Square
from hwq.attack.suite import Suite, diagnose
from hwq.errors import UsageError

ATTACKS: dict[str, type[Attack]] = {"fgsm": FGSM, "pgd": PGD, "square": Square}

__all__ = ["ATTACKS", "FGSM", "PGD", "Square", "Suite", "Attack", "AttackResult", "Judge", "attack",
           "check_inputs", "diagnose", "make_attack", "make_suite"]

# CLI/sweep parameter names each attack takes (the rest are ignored for it)
PARAMS = {"fgsm": ("norm",),
          "pgd": ("norm", "steps", "rel_stepsize", "abs_stepsize", "random_start", "restarts", "seed"),
          "square": ("norm", "queries", "p_init", "seed")}


def make_attack(name: str, **params) -> Attack:
    """An attack by name with its parameters (``make_attack("fgsm", norm="l2")``)."""
    if name not in ATTACKS:
        raise UsageError(f"unknown attack '{name}'", hint="use " + ", ".join(sorted(ATTACKS)))
    return ATTACKS[name](**params)


def parse_attack_names(text: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    for name in names:
        if name not in ATTACKS:
            raise UsageError(f"unknown attack '{name}'", hint="use " + ", ".join(sorted(ATTACKS)))
    if not names:
        raise UsageError("--attacks needs at least one attack", hint="e.g. fgsm,pgd,square")
    return names


def make_suite(names, **params) -> Attack | Suite:
    """One attack (one name) or a worst-case suite; each attack takes from ``params`` the
    parameters it knows (``PARAMS``), None values meaning its default."""
    names = parse_attack_names(names) if isinstance(names, str) else tuple(names)
    built = [make_attack(n, **{k: v for k, v in params.items() if k in PARAMS[n] and v is not None})
             for n in names]
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
