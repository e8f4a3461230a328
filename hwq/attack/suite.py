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
* ``remedies``: each gradient attack rerun with logit temperatures (``REMEDIES``) and, where
  the network has step/sign activations, straight-through shapes (``STE_REMEDIES``) on the
  first ``SANITY_INPUTS`` inputs at up to ``REMEDY_STRENGTHS`` strengths: which remedy broke
  more inputs (flag ``remedy_changed:T=<value>`` or ``remedy_changed:ste=<shape>``);
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
from hwq.attack.ste import has_binary
from hwq.errors import UsageError
from hwq.progress_lines import ShareLines

SANITY_INPUTS = 256
GRADIENT_FREE_SHARE = 0.01
# logit temperatures tried as masking remedies: Galloway et al.'s 0.25 (sharpens small logits),
# 4 (softens a saturated softmax), and "auto" (per input, gradients.logit_temperature)
REMEDIES = (0.25, 4.0, "auto")
# straight-through shapes tried where a binary activation (step, sign) is differentiated
# (hwq.attack.ste): the plain STE (every unit passes the gradient), the hardtanh STE (only
# units within 1 of their threshold), a sigmoid of slope 4 (narrower than the default
# fast sigmoid's tails)
STE_REMEDIES = ("identity", "box:1", "sigmoid:4")
# the kinds of remedy ``diagnose`` tries by default; sweeps try the temperatures only, so a
# sweep's cells keep the flags they always had (hwq reproduce's content digest)
REMEDY_KINDS = ("temperature", "ste")
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
        """Every member on the same inputs; ``progress(n)`` hears of finished inputs, and a
        ``progress`` with ``member_done`` (``ProgressLines``) of each finished member."""
        members = []
        for i, a in enumerate(self.attacks):
            members.append(a.run(program, x, y, epsilons, gradient if a.needs_gradient else None,
                                 bounds=bounds, batch_size=batch_size, progress=progress))
            report_member(progress, i, len(self.attacks), members[-1])
        return combine(tuple(members), self.params())


def report_member(progress, index: int, count: int, result: AttackResult) -> None:
    """Tell ``progress`` that member ``index`` of ``count`` finished, where it listens
    (``member_done``, also through its bound ``update``; a terminal bar's ``update`` does not)."""
    done = getattr(getattr(progress, "__self__", progress), "member_done", None)
    if done is not None:
        done(index, count, result)


class ProgressLines(ShareLines):
    """The progress of an attack run as lines on ``stream`` (stderr where no terminal shows the
    bar: a log, CI, nohup), as ``hwq reproduce`` writes a line per finished cell. Called with
    the number of inputs finished (``Attack.run``'s ``progress``), it writes a line at every
    ``every`` share of ``total`` (``attack: 250/1000 inputs (25 %), 3.1 s``; the shared writer,
    ``hwq.progress_lines.ShareLines``); ``member_done`` (a suite's member, or the single attack)
    writes one line per strength with its accuracy (``attack 2/3 square: eps 0.1 accuracy 0.4056
    (12.0 s)``). With ``after`` > 0 the input lines start only once the work has run that many
    seconds (a quick job writes none)."""

    def __init__(self, total: int, label: str = "attack", stream=None, every: float = 0.1, clock=None,
                 after: float = 0.0):
        super().__init__(total, label, "inputs", stream=stream, every=every, after=after, clock=clock)

    def __call__(self, n: int) -> None:
        self.show(self.done + int(n))

    update = __call__  # a tqdm bar's name, so callers can pass either

    def member_done(self, index: int, count: int, result: AttackResult) -> None:
        name = f"{self.label} {index + 1}/{count} {result.attack}"
        for eps, acc in zip(np.asarray(result.epsilons).tolist(), np.asarray(result.accuracy).tolist()):
            self.write(f"{name}: eps {eps:g} accuracy {acc:.4f} ({self.elapsed():.1f} s)")

    def close(self) -> None:
        pass


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


def remedy_sources(gradient, kinds=REMEDY_KINDS) -> list[tuple[str, object, bool]]:
    """``(label, source, scales_scores)`` per remedy tried on ``gradient``: each logit
    temperature of ``REMEDIES`` (``T=<t>``; scales the scores) and, where the source
    differentiates a binary activation, each straight-through shape of ``STE_REMEDIES``
    (``ste=<shape>``), other than the source's own; the other remedy stays the source's.
    ``kinds``: which of ``REMEDY_KINDS`` to try."""
    out = []
    if "temperature" in kinds and callable(getattr(gradient, "with_temperature", None)):
        own = getattr(gradient, "temperature", None)
        out += [(f"T={t}", gradient.with_temperature(t), True) for t in REMEDIES if t != own]
    if "ste" in kinds and callable(getattr(gradient, "with_ste", None)) and has_binary(getattr(gradient, "acts", ())):
        own = getattr(gradient, "ste", None)
        out += [(f"ste={s}", gradient.with_ste(s), False) for s in STE_REMEDIES if s != own]
    return out


def remedies(out, flags, members, attacks, result, program, gradient, batch_size, kinds=REMEDY_KINDS):
    """Each gradient attack rerun with each remedy of ``remedy_sources`` on the first
    ``SANITY_INPUTS`` inputs at up to ``REMEDY_STRENGTHS`` strengths (the largest included);
    ``remedies[attack][remedy]`` holds both accuracies, and a remedy that breaks more than
    ``REMEDY_SHARE`` of those inputs beyond the attack's own result at some strength is
    flagged ``remedy_changed:<remedy>`` (gradient masking that the remedy removes). Needs a
    source with ``with_temperature`` / ``with_ste`` (surrogate, float, transfer). Attacks with
    a DLR loss skip the temperatures: DLR is invariant to the scale of the scores."""
    tries = remedy_sources(gradient, kinds) if gradient is not None else []
    if not tries:
        return
    n = min(SANITY_INPUTS, len(result.labels))
    nonzero = np.flatnonzero(result.epsilons > 0)
    if n == 0 or nonzero.size == 0:
        return
    picks = nonzero[np.unique(np.linspace(0, nonzero.size - 1, min(REMEDY_STRENGTHS, nonzero.size)).round()
                              .astype(int))]
    x, y, eps = result.x[:n], result.labels[:n], result.epsilons[picks]
    report = {}
    for m, attack in zip(members, attacks):
        dlr = getattr(attack, "loss", "ce") == "dlr"  # DLR ignores the scale of the scores
        if not attack.needs_gradient or all(dlr and scales for _, _, scales in tries):
            continue
        base = m.correct[picks, :n].mean(axis=1)
        entry = {}
        for label, source, scales in tries:
            if dlr and scales:
                continue
            r = attack.run(program, x, y, eps, source, bounds=result.bounds, batch_size=batch_size)
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
             batch_size: int = 2048, remedy_kinds=REMEDY_KINDS) -> dict[str, Any]:
    """The diagnostics of ``result`` (see the module doc); reruns gradient attacks once at
    the input range when ``sanity``; ``remedy_kinds``: the kinds of remedy tried (``remedies``)."""
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
    if not getattr(program, "exact", True):
        # an approximate program (an option the target names: a stochastic input encoding, a rate
        # ReLU, a population vote) judges the points, while gradients follow the integer surrogate:
        # hwq takes no expectation over the program's randomness (no EOT), so say so
        report = getattr(program, "report", None)
        approximations = list(report.get("approximations", [])) if isinstance(report, dict) else []
        out["approximate_target"] = {"approximations": approximations}
        flags.append("approximate_target")
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
        remedies(out, flags, members, attacks, result, program, gradient, batch_size, remedy_kinds)
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
