"""Attacks judged on the bit-exact model: the shared base (``base``), the attacks (``fgsm``),
and gradient sources (``gradients``). ``ATTACKS`` names every attack the CLI and sweeps accept."""

from __future__ import annotations

from hwq.attack.base import Attack, AttackResult, Judge, check_inputs
from hwq.attack.fgsm import FGSM
from hwq.attack.pgd import PGD
from hwq.attack.square import Square
from hwq.errors import UsageError

ATTACKS: dict[str, type[Attack]] = {"fgsm": FGSM, "pgd": PGD, "square": Square}

__all__ = ["ATTACKS", "FGSM", "PGD", "Square", "Attack", "AttackResult", "Judge", "attack", "check_inputs",
           "make_attack"]


def make_attack(name: str, **params) -> Attack:
    """An attack by name with its parameters (``make_attack("fgsm", norm="l2")``)."""
    if name not in ATTACKS:
        raise UsageError(f"unknown attack '{name}'", hint="use " + ", ".join(sorted(ATTACKS)))
    return ATTACKS[name](**params)


def attack(program, x, y, epsilons, *, method: Attack | None = None, gradient=None, bounds=None,
           batch_size: int = 2048, progress=None) -> AttackResult:
    """Attack ``program`` (a compiled target program) on inputs ``x`` with labels ``y``
    (FGSM l-inf unless ``method`` says otherwise)."""
    method = method or FGSM()
    return method.run(program, x, y, epsilons, gradient, bounds=bounds, batch_size=batch_size,
                      progress=progress)
