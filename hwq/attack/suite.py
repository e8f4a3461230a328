"""Suites of attacks (per-input worst case = robust accuracy) and the diagnostics reported
with every attack run.

A suite runs each attack on the same inputs and epsilons; an input counts as robust at
``eps_k`` only if every attack failed there (AutoAttack's worst case). Its decision is that of
the first attack (in the suite's order) that broke the input, else the first attack's.

Diagnostics (``diagnose``), stored in ``result.diagnostics`` (results file, ``--json``,
sweep cells, the report):

* ``zero_gradient`` / ``nonfinite_gradient``: inputs whose gradient was exactly 0 / had a
  NaN or Inf (gradient masking; a broken gradient source);
* ``unbounded``: each gradient attack rerun at ``eps`` = the diameter of the input box in its
  norm (l-inf: the range ``hi - lo``, the data's spread for unbounded data; l2: that times
  ``sqrt(d)``) on the first ``SANITY_INPUTS`` inputs: its accuracy must
  reach chance (the most common label's share) or below; flag ``unbounded_not_broken``;
* ``gradient_free_beats_gradient``: the share of inputs, at the worst epsilon, that the
  gradient-free attack broke and every gradient attack missed; flagged above
  ``GRADIENT_FREE_SHARE``;
* ``remedies``: each gradient attack rerun with logit temperatures (``REMEDIES``) on the
  first ``SANITY_INPUTS`` inputs at up to ``REMEDY_STRENGTHS`` strengths: which remedy broke
  more inputs (flag ``remedy_changed:T=<value>``);
* ``weaker_than_fgsm``: per iterative gradient attack (PGD, APGD), the epsilons where its
  accuracy is above FGSM's (same norm, same gradient): FGSM's of the suite, else an FGSM run
  beside it on the same inputs when ``sanity`` (so a single ``--attack pgd`` run says so too);
  flag ``pgd_weaker_than_fgsm`` (PGD; also kept under that key) or ``weaker_than_fgsm:<attack>``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from hwq.attack.base import Attack, AttackResult
from hwq.errors import UsageError

SANITY_INPUTS = 256
GRADIENT_FREE_SHARE = 0.01
# logit temperatures tried as masking remedies: Galloway et al.'s 0.25 (sharpens small logits),
# 4 (softens a saturated softmax), and "auto" (per input, gradients.logit_temperature)
REMEDIES = (0.25, 4.0, "auto")
REMEDY_STRENGTHS = 3
# a remedy "changed the result" when it breaks this share of the inputs beyond the attack's own
# result at some strength: on healthy networks another loss scale moves a few inputs either way
# (measured: up to 6 %), masked ones differ by tens of percent
REMEDY_SHARE = 0.1


@dataclass(frozen=True)
class Suite:
    attacks: tuple[Attack, ...]
    name = "suite"

    def __post_init__(self):
        names = [a.name for a in self.attacks]
        if not names:
            raise UsageError("--attacks needs at least one attack")
        if len(set(names)) != len(names):
            raise UsageError(f"duplicate attacks in the suite: {','.join(names)}")

    @property
    def label(self) -> str:
        return ",".join(a.name for a in self.attacks)

    def params(self) -> dict[str, Any]:
        return {"attacks": [{"name": a.name, **a.params()} for a in self.attacks]}

    def run(self, program, x, y, epsilons, gradient=None, *, bounds=None, batch_size=2048,
            progress=None) -> AttackResult:
        members = tuple(a.run(program, x, y, epsilons, gradient if a.needs_gradient else None,
                              bounds=bounds, batch_size=batch_size, progress=progress)
                        for a in self.attacks)
        return combine(members, self.params())


def combine(members: tuple[AttackResult, ...], params: dict) -> AttackResult:
    first = members[0]
    correct = np.logical_and.reduce([m.correct for m in members])
    preds = first.predictions.copy()
    for m in reversed(members):  # the first attack that broke an input gives its decision
        preds = np.where(~m.correct, m.predictions, preds)
    grads = [m for m in members if m.gradient != "none"]
    zero = np.logical_or.reduce([m.zero_gradient for m in grads]) if grads else np.zeros_like(first.zero_gradient)
    nonfinite = [m.nonfinite_gradient for m in grads if m.nonfinite_gradient is not None]
    return replace(first, correct=correct, predictions=preds, zero_gradient=zero,
                   attack="suite", params=params,
                   gradient=grads[0].gradient if grads else "none", direction=None, points=None,
                   queries=None, nonfinite_gradient=np.logical_or.reduce(nonfinite) if nonfinite else None,
                   members=members, diagnostics={})


def chance(y: np.ndarray) -> float:
    return float(np.bincount(y).max() / len(y)) if len(y) else 0.0


def input_range(x: np.ndarray, bounds) -> float:
    if bounds is not None:
        return float(bounds[1] - bounds[0])
    return float(x.max() - x.min()) if x.size else 0.0


def diameter(x: np.ndarray, bounds, norm: str) -> float:
    """The input box's diameter in ``norm``: the range width (l-inf), ``width * sqrt(d)`` (l2):
    no two points of the box are farther apart, so an attack of this strength can reach any."""
    width = input_range(x, bounds)
    return width if norm == "linf" else width * float(np.sqrt(x.shape[1]))


def remedies(out, flags, members, attacks, result, program, gradient, batch_size):
    """Each gradient attack rerun with each logit temperature of ``REMEDIES`` (other than the
    source's own) on the first ``SANITY_INPUTS`` inputs at up to ``REMEDY_STRENGTHS`` strengths
    (the largest included); ``remedies[attack][remedy]`` holds both accuracies, and a remedy
    that breaks more than ``REMEDY_SHARE`` of those inputs beyond the attack's own
    result at some strength is flagged ``remedy_changed:<remedy>`` (gradient masking that a
    temperature removes). Needs a source with ``with_temperature`` (surrogate, float, transfer).
    Attacks with a DLR loss are skipped: DLR is invariant to the scale of the scores."""
    if gradient is None or not callable(getattr(gradient, "with_temperature", None)):
        return
    n = min(SANITY_INPUTS, len(result.labels))
    nonzero = np.flatnonzero(result.epsilons > 0)
    if n == 0 or nonzero.size == 0:
        return
    picks = nonzero[np.unique(np.linspace(0, nonzero.size - 1, min(REMEDY_STRENGTHS, nonzero.size)).round()
                              .astype(int))]
    x, y, eps = result.x[:n], result.labels[:n], result.epsilons[picks]
    own = getattr(gradient, "temperature", None)
    report = {}
    for m, attack in zip(members, attacks):
        if not attack.needs_gradient or getattr(attack, "loss", "ce") == "dlr":  # DLR ignores the scale
            continue
        base = m.correct[picks, :n].mean(axis=1)
        entry = {}
        for remedy in REMEDIES:
            if remedy == own:
                continue
            label = f"T={remedy}"
            r = attack.run(program, x, y, eps, gradient.with_temperature(remedy), bounds=result.bounds,
                           batch_size=batch_size)
            gain = base - r.accuracy
            changed = bool(gain.max() > REMEDY_SHARE)
            entry[label] = {"epsilons": eps.tolist(), "accuracy": r.accuracy.tolist(), "without": base.tolist(),
                            "max_gain": float(gain.max()), "changed": changed}
            if changed and f"remedy_changed:{label}" not in flags:
                flags.append(f"remedy_changed:{label}")
        report[m.attack] = entry
    out["remedies"] = {"n_inputs": n, "by_attack": report,
                       "changed": sorted({k for e in report.values() for k, v in e.items() if v["changed"]})}


def diagnose(result: AttackResult, method, program, gradient=None, *, sanity: bool = True,
             batch_size: int = 2048) -> dict[str, Any]:
    """The diagnostics of ``result`` (see the module doc); reruns gradient attacks once at
    the input range when ``sanity``."""
    members = result.members or (result,)
    attacks = method.attacks if hasattr(method, "attacks") else (method,)
    out: dict[str, Any] = {"zero_gradient": int(result.zero_gradient.sum()),
                           "nonfinite_gradient": int(result.nonfinite_gradient.sum())
                           if result.nonfinite_gradient is not None else 0}
    flags = []
    if out["zero_gradient"]:
        flags.append("zero_gradient")
    if out["nonfinite_gradient"]:
        flags.append("nonfinite_gradient")
    if sanity:
        n = min(SANITY_INPUTS, len(result.labels))
        x, y = result.x[:n], result.labels[:n]
        ch = chance(y)
        checks = {}
        for attack in attacks:
            if not attack.needs_gradient or n == 0:
                continue
            eps = diameter(result.x, result.bounds, getattr(attack, "norm", "linf"))
            r = attack.run(program, x, y, [eps], gradient, bounds=result.bounds, batch_size=batch_size)
            acc = float(r.accuracy[0])
            checks[attack.name] = {"eps": eps, "accuracy": acc, "chance": ch, "n_inputs": n,
                                   "broken": acc <= ch}
            if acc > ch:
                flags.append(f"unbounded_not_broken:{attack.name}")
        out["unbounded"] = checks
    fgsm = {m.norm: m for m in members if m.attack == "fgsm"}
    for m, attack in zip(members, attacks):
        if m.attack == "fgsm" or not attack.needs_gradient:
            continue
        reference, source = fgsm.get(m.norm), "member"
        if reference is None:  # a run without FGSM of its norm: FGSM beside it, same gradient
            if not sanity:
                continue
            from hwq.attack.fgsm import FGSM

            reference = fgsm[m.norm] = FGSM(m.norm).run(program, result.x, result.labels, result.epsilons,
                                                        gradient, bounds=result.bounds, batch_size=batch_size)
            source = "rerun"
        diff = m.accuracy - reference.accuracy
        weaker = [float(e) for e, dv in zip(result.epsilons, diff) if dv > 0]
        check = {"epsilons": weaker, "max_accuracy_gap": float(max(diff.max(), 0.0)),
                 "fgsm_accuracy": reference.accuracy.tolist(), "fgsm": source}
        out.setdefault("weaker_than_fgsm", {})[m.attack] = check
        if m.attack == "pgd":  # the name sweeps, reports and older results files know
            out["pgd_weaker_than_fgsm"] = check
        if weaker:
            flags.append("pgd_weaker_than_fgsm" if m.attack == "pgd" else f"weaker_than_fgsm:{m.attack}")
    if sanity:
        remedies(out, flags, members, attacks, result, program, gradient, batch_size)
    free = [m for m in members if m.gradient == "none"]
    grads = [m for m in members if m.gradient != "none"]
    if free and grads:
        grad_correct = np.logical_and.reduce([m.correct for m in grads])
        free_broke = np.logical_or.reduce([~m.correct for m in free])
        share = (grad_correct & free_broke).mean(axis=1)  # (K,)
        k = int(np.argmax(share))
        out["gradient_free_beats_gradient"] = {"share": float(share[k]), "eps": float(result.epsilons[k]),
                                               "threshold": GRADIENT_FREE_SHARE,
                                               "share_per_eps": share.tolist()}
        if share[k] > GRADIENT_FREE_SHARE:
            flags.append("gradient_free_beats_gradient")
    q = [m.queries for m in members if m.queries is not None]
    if q:
        out["queries"] = {"total": int(sum(a.sum() for a in q)),
                          "mean_per_input": [float(v) for v in sum(a.mean(axis=1) for a in q)]}
    out["flags"] = flags
    return out
