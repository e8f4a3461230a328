"""Attacks judged on the bit-exact model: the shared base (``base``), the attacks (``fgsm``,
``pgd``, ``square``, ``apgd``), and gradient sources (``gradients``). ``ATTACKS`` names every
attack the CLI and sweeps accept, ``SUITES`` the named suites (``autoattack``)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from hwq.attack.apgd import APGD
from hwq.attack.base import Attack, AttackResult, Judge, check_inputs
from hwq.attack.fgsm import FGSM
from hwq.attack.pgd import PGD
from hwq.attack.square import Square
from hwq.attack.suite import REMEDY_KINDS, Suite, diagnose
from hwq.errors import UsageError
from hwq.params import Parameter, declared

ATTACKS = {"fgsm": FGSM, "pgd": PGD, "square": Square,
           "apgd-ce": partial(APGD, loss="ce"), "apgd-dlr": partial(APGD, loss="dlr"),
           "apgd-t": partial(APGD, loss="dlr", targets=9)}

__all__ = ["APGD", "ATTACKS", "ATTACK_PARAMETERS", "PARAMS", "FGSM", "PGD", "SUITES", "Square", "Suite", "Attack",
           "AttackResult", "Judge", "attack", "check_inputs", "diagnose", "make_attack", "make_suite"]



@dataclass(frozen=True)
class AttackParameter:
    """One attack parameter across attacks, generated from the attack dataclasses' declared
    fields (``hwq.params``): ``defaults`` maps each attack that takes it to its default there.
    The CLI options of ``hwq attack`` and ``hwq sweep`` and the sweep spec's ``AttackSettings``
    are made from these."""

    parameter: Parameter
    defaults: dict

    name = property(lambda self: self.parameter.name)
    field = property(lambda self: self.parameter.field)
    type = property(lambda self: self.parameter.type)
    flags = property(lambda self: self.parameter.flags)

    @property
    def shared_default(self):
        """The default when every attack that takes it has the same one (``norm``), else None."""
        values = set(map(repr, self.defaults.values()))
        return next(iter(self.defaults.values())) if len(values) == 1 and len(self.defaults) == len(ATTACKS) else None

    @property
    def help(self) -> str:
        """The declared help, which attacks take it and their defaults (``hwq attack --help``)."""
        d = self.parameter.declared
        if self.shared_default is not None:
            return d.help  # the option's own default
        groups: dict[str, list[str]] = {}
        for attack, value in self.defaults.items():
            if value is not None or d.auto:
                groups.setdefault(d.auto if value is None else str(value), []).append(attack)
        default = ("" if not groups else f" (default {next(iter(groups))})" if len(groups) == 1 else
                   " (default " + ", ".join(f"{' '.join(_short(names))} {v}" for v, names in groups.items()) + ")")
        return f"{'/'.join(_short(self.defaults))}: {d.help}{default}"


def _short(names) -> list[str]:
    """``pgd, apgd-ce, apgd-dlr, apgd-t`` -> ``pgd, apgd-*``."""
    apgd = [n for n in names if n.startswith("apgd")]
    rest = [n for n in names if not n.startswith("apgd")]
    return rest + (["apgd-*"] if len(apgd) > 1 and len(apgd) == sum(a.startswith("apgd") for a in ATTACKS)
                   else apgd)


def _attack_parameters() -> dict[str, AttackParameter]:
    found: dict[str, tuple[Parameter, dict]] = {}
    for attack_name, make in ATTACKS.items():
        fixed = getattr(make, "keywords", {})  # a partial's keywords: defaults under this name
        for p in declared(make):
            if not p.declared.cli or (p.declared.attacks is not None and attack_name not in p.declared.attacks):
                continue
            entry = found.setdefault(p.name, (p, {}))
            entry[1][attack_name] = fixed.get(p.field, p.default)
    return {name: AttackParameter(p, defaults) for name, (p, defaults) in found.items()}


ATTACK_PARAMETERS = _attack_parameters()
# the parameter fields each attack takes (the rest are ignored for it)
PARAMS = {name: tuple(p.field for p in ATTACK_PARAMETERS.values() if name in p.defaults) for name in ATTACKS}
_FIELD = {p.name: p.field for p in ATTACK_PARAMETERS.values()}

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
    parameters it knows (``PARAMS``; by field or CLI name, ``targets`` or ``target_classes``), None
    values meaning its default."""
    params = {_FIELD.get(k, k): v for k, v in params.items()}
    pairs = expand_names(names) if isinstance(names, str) else expand_names(",".join(names))
    built = [make_attack(n, **{**defaults, **{k: v for k, v in params.items() if k in PARAMS[n] and v is not None}})
             for n, defaults in pairs]
    return built[0] if len(built) == 1 else Suite(tuple(built))


def attack(program, x, y, epsilons, *, method: Attack | Suite | None = None, gradient=None, bounds=None,
           batch_size: int = 2048, progress=None, diagnostics: bool = True,
           remedy_kinds=REMEDY_KINDS) -> AttackResult:
    """Attack ``program`` (a compiled target program) on inputs ``x`` with labels ``y``
    (FGSM l-inf unless ``method`` says otherwise; a :class:`Suite` gives the per-input worst
    case). ``diagnostics``: also run the checks of ``hwq.attack.suite`` (one extra run of
    each gradient attack at the input range on at most 256 inputs, and its reruns with the
    masking remedies of ``remedy_kinds``: logit temperatures, straight-through shapes)."""
    from dataclasses import replace

    from hwq.attack.gradients import default_gradient

    method = method or FGSM()
    if gradient is None and any(a.needs_gradient for a in getattr(method, "attacks", (method,))):
        gradient = default_gradient(program)
    result = method.run(program, x, y, epsilons, gradient, bounds=bounds, batch_size=batch_size,
                        progress=progress)
    diag = diagnose(result, method, program, gradient, sanity=diagnostics, batch_size=batch_size,
                    remedy_kinds=remedy_kinds)
    return replace(result, diagnostics=diag)
