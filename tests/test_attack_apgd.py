"""APGD and the autoattack suite: against a plain numpy transcription of the reference
implementation's ``attack_single_run`` (fra31/auto-attack, autopgd_base.py: every row every
step, broken rows keep iterating), every kept point re-judged on the device's grid, the losses'
gradients against finite differences, randomness per strength, the registry, CLI and sweeps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import test_attack_pgd
from cli_runner import run_cli
from test_attack_pgd import compiled
from test_attack_suite import model_file  # noqa: F401 (fixture)

import hwq
from hwq.attack import APGD, Square, Suite, make_attack, make_suite
from hwq.attack import noise as streams
from hwq.attack.apgd import ce_targeted, dlr, dlr_targeted, halving
from hwq.attack.gradients import SurrogateGradient
from hwq.errors import UsageError
from hwq.quant import reference


def plain_dz(z, y, loss, t):
    """d loss / d z written out per row (maximised losses)."""
    n = len(z)
    g = np.zeros_like(z)
    for r in range(n):
        s = z[r]
        if loss == "ce":
            p = np.exp(s - s.max())
            p /= p.sum()
            if t is None:  # CE(z, y)
                g[r] = p
                g[r, y[r]] -= 1
            else:  # -CE(z, t)
                g[r] = -p
                g[r, t[r]] += 1
            continue
        order = np.argsort(s, kind="stable")
        if t is None:
            other = order[-2] if order[-1] == y[r] else order[-1]
            den = s[order[-1]] - s[order[-3]] + 1e-12
            gap = s[y[r]] - s[other]
            g[r, y[r]] += -1 / den
            g[r, other] += 1 / den
            g[r, order[-1]] += gap / den**2
            g[r, order[-3]] -= gap / den**2
        else:
            den = s[order[-1]] - 0.5 * (s[order[-3]] + s[order[-4]]) + 1e-12
            gap = s[y[r]] - s[t[r]]
            g[r, y[r]] += -1 / den
            g[r, t[r]] += 1 / den
            g[r, order[-1]] += gap / den**2
            g[r, order[-3]] -= 0.5 * gap / den**2
            g[r, order[-4]] -= 0.5 * gap / den**2
    return g


def plain_value(z, y, loss, t):
    r = np.arange(len(z))
    if loss == "ce":
        logp = z - z.max(axis=1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(axis=1, keepdims=True))
        return -logp[r, y] if t is None else logp[r, t]
    s = np.sort(z, axis=1)
    if t is None:
        other = np.where(np.argsort(z, axis=1, kind="stable")[:, -1] == y, s[:, -2], s[:, -1])
        return -(z[r, y] - other) / (s[:, -1] - s[:, -3] + 1e-12)
    return -(z[r, y] - z[r, t]) / (s[:, -1] - 0.5 * (s[:, -3] + s[:, -4]) + 1e-12)


def plain_grad(net, x, y, loss, t):
    """(loss value, dL/dx) at the integer model's operating point (one hidden ReLU layer)."""
    xq = reference.quantize_input(net.input, x)
    accs = reference.trace(net, xq)
    l1, l2 = net.layers
    z1, z2 = accs[0] * l1.acc_scale, accs[1] * l2.acc_scale
    delta = plain_dz(z2, y, loss, t)
    top = (2**l1.act_bits - 1) * l1.out_scale
    h = l2.gain * delta @ l2.real_weight * ((z1 > 0) & (z1 < top))
    return plain_value(z2, y, loss, t), l1.gain * h @ l1.real_weight


def plain_single_run(net, x, y, t, e, norm, loss, steps, key, idx, lo=0.0, hi=1.0):
    """The reference's attack_single_run for one epsilon, all rows all steps (the random
    start from the documented streams of inputs ``idx``); returns acc."""
    n, d = x.shape

    def decide(v):
        return reference.decide(reference.forward(net, reference.quantize_input(net.input, v)), net.output)

    if norm == "linf":
        u = 2 * streams.uniform(key, idx, d) - 1
        x_adv = x + e * u / np.abs(u).max(axis=1, keepdims=True)
    else:
        u = streams.normal(key, idx, d)
        x_adv = x + e * u / (np.sqrt((u**2).sum(axis=1, keepdims=True)) + 1e-12)
    x_adv = np.clip(x_adv, lo, hi)

    def proj2(v):
        dv = v - x
        nv = np.sqrt((dv**2).sum(axis=1, keepdims=True))
        return np.clip(x + dv / (nv + 1e-12) * np.minimum(e, nv), lo, hi)

    n2, nmin, decr = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    loss_indiv, grad = plain_grad(net, x_adv, y, loss, t)
    acc = decide(x_adv) == y
    x_best, grad_best, loss_best = x_adv.copy(), grad.copy(), loss_indiv.copy()
    step = 2.0 * e * np.ones(n)
    x_old = x_adv.copy()
    loss_steps = np.zeros((steps, n))
    k, counter3 = n2, 0
    last_check, reduced = loss_best.copy(), np.ones(n)
    for i in range(steps):
        grad2 = x_adv - x_old
        x_old = x_adv.copy()
        a = 0.75 if i > 0 else 1.0
        if norm == "linf":
            x1 = np.clip(np.minimum(np.maximum(x_adv + step[:, None] * np.sign(grad), x - e), x + e), lo, hi)
            x1 = np.clip(np.minimum(np.maximum(x_adv + (x1 - x_adv) * a + grad2 * (1 - a), x - e), x + e), lo, hi)
        else:
            gn = grad / (np.sqrt((grad**2).sum(axis=1, keepdims=True)) + 1e-12)
            x1 = proj2(x_adv + step[:, None] * gn)
            x1 = proj2(x_adv + (x1 - x_adv) * a + grad2 * (1 - a))
        x_adv = x1
        loss_indiv, grad = plain_grad(net, x_adv, y, loss, t)
        acc = acc & (decide(x_adv) == y)
        loss_steps[i] = loss_indiv
        ind = loss_indiv > loss_best
        x_best[ind], grad_best[ind], loss_best[ind] = x_adv[ind], grad[ind], loss_indiv[ind]
        counter3 += 1
        if counter3 == k:
            tt = np.zeros(n)
            for c in range(k):
                tt += loss_steps[i - c] > loss_steps[i - c - 1]
            fl = (tt <= k * 0.75).astype(float)
            fl = np.maximum(fl, (1 - reduced) * (last_check >= loss_best))
            reduced, last_check = fl.copy(), loss_best.copy()
            on = fl > 0
            step[on] /= 2
            x_adv[on], grad[on] = x_best[on], grad_best[on]
            k = max(k - decr, nmin)
            counter3 = 0
    return acc


def plain_apgd(net, x, y, eps, norm, loss, targets, steps, seed):
    """Robust (K, N) of the reference's perturb(): restarts/targets over the still-robust rows."""
    clean = reference.forward(net, reference.quantize_input(net.input, x))
    ranked = np.argsort(-clean.astype(np.float64), axis=1, kind="stable")
    out = np.empty((len(eps), len(x)), bool)
    for k, e in enumerate(np.round(eps, 12)):
        acc = reference.decide(clean, net.output) == y
        if e > 0:
            for run, t_rank in enumerate(range(1, targets + 1) if targets else [0]):
                rows = np.flatnonzero(acc)
                key = np.repeat(streams.keys(seed, [e], run), len(rows))
                t = ranked[rows, t_rank] if targets else None
                acc[rows] = plain_single_run(net, x[rows], y[rows], t, e, norm, loss, steps, key, rows)
        out[k] = acc
    return out


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("loss,targets", [("ce", 0), ("dlr", 0), ("dlr", 3), ("ce", 2)])
def test_matches_a_plain_transcription_of_the_reference(norm, loss, targets, monkeypatch):
    monkeypatch.setattr(test_attack_pgd, "RNG", np.random.default_rng(3))
    program, x, y = compiled("Relu", n_in=16)
    eps = np.array([0.0, 0.03, 0.08]) * (1 if norm == "linf" else 4)
    attack = APGD(norm, loss=loss, targets=targets, steps=25, seed=5)
    # float64 products (the plain transcription's), so that no sign can differ by rounding
    gradient = SurrogateGradient(program, sign_dtype=None)
    r = hwq.attack(program, x, y, eps, method=attack, gradient=gradient, bounds=(0, 1), diagnostics=False)
    want = plain_apgd(program.net, x, y, eps, norm, loss, targets, 25, 5)
    np.testing.assert_array_equal(r.correct, want)
    assert r.accuracy[-1] < r.accuracy[0] and r.accuracy[1] > 0  # it does something, not everything
    fmt = program.net.input
    for k, e in enumerate(eps):  # every kept point: on the grid, in the ball, judged as recorded
        pts = r.adversarial(k)
        np.testing.assert_array_equal(reference.predict(program.net, pts), r.predictions[k])
        dist = np.abs(pts - x).max(axis=1) if norm == "linf" else np.linalg.norm(pts - x, axis=1)
        assert np.all(dist <= e + fmt.scale / 2 * (1 if norm == "linf" else 4) + 1e-9)


def test_float32_signs_change_nothing_here():
    program, x, y = compiled("Relu", n_in=16)
    eps = [0.0, 0.03, 0.08]
    a = hwq.attack(program, x, y, eps, method=APGD(steps=25), bounds=(0, 1), diagnostics=False)
    b = hwq.attack(program, x, y, eps, method=APGD(steps=25), bounds=(0, 1), diagnostics=False,
                   gradient=SurrogateGradient(program, sign_dtype=None))
    np.testing.assert_array_equal(a.correct, b.correct)


def test_the_checkpoint_rule():
    """The reference's step-size rule at a checkpoint after k = 4 steps: halve where the loss
    rose in at most rho k = 3 of them, or where the row was not halved last time and its best
    loss has not improved since."""
    steps = np.zeros((10, 4))
    rises = [0, 1, 2, 3, 4, 5]  # column 0: rises at every step; 1: never; 2, 3: every step
    steps[rises, 0] = np.arange(6.0)
    steps[rises, 2] = np.arange(6.0)
    steps[rises, 3] = np.arange(6.0)
    best = np.array([5.0, 0.0, 5.0, 5.0])
    last = np.array([1.0, 0.0, 5.0, 5.0])  # column 2 and 3: no improvement since the last check
    reduced = np.array([False, False, False, True])  # column 3 was halved last time
    halve = halving(steps, 5, 4, 0.75, best, last, reduced)
    np.testing.assert_array_equal(halve, [False, True, True, False])
    # the wrap of the first checkpoint: loss_steps[-1] (0 until the last step) precedes step 0
    first = np.zeros((10, 1))
    first[:4, 0] = [1.0, 2.0, 3.0, 4.0]
    assert not halving(first, 3, 4, 0.75, np.array([4.0]), np.array([1.0]), np.array([True]))[0]


@pytest.mark.parametrize("make", [lambda y, t: ce_targeted(t), lambda y, t: dlr(y), lambda y, t: dlr_targeted(y, t)])
def test_loss_gradients_against_finite_differences(make):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(20, 10))
    y, t = rng.integers(0, 10, 20), rng.integers(0, 10, 20)
    t = np.where(t == y, (t + 1) % 10, t)
    value, grad = make(y, t)(z)
    h = 1e-6
    for j in range(10):
        dz = np.zeros_like(z)
        dz[:, j] = h
        numeric = (make(y, t)(z + dz)[0] - make(y, t)(z - dz)[0]) / (2 * h)
        np.testing.assert_allclose(grad[:, j], numeric, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_a_strength_gives_the_same_result_alone_or_in_a_longer_list(norm):
    program, x, y = compiled("Relu", n_in=16)
    e = 0.05 if norm == "linf" else 0.3
    attack = make_attack("apgd-t", norm=norm, steps=15, targets=3)
    alone = hwq.attack(program, x, y, [e], method=attack, bounds=(0, 1), diagnostics=False)
    within = hwq.attack(program, x, y, [0.0, e / 2, e, 2 * e], method=attack, bounds=(0, 1), diagnostics=False,
                        batch_size=31)
    np.testing.assert_array_equal(within.correct[2], alone.correct[0])
    np.testing.assert_array_equal(within.points[2], alone.points[0])


def test_dlr_needs_classes_and_bad_parameters():
    program, x, y = compiled("Relu", n_out=1)
    with pytest.raises(UsageError, match="at least 3 classes"):
        hwq.attack(program, x, y, [0.1], method=make_attack("apgd-dlr"), bounds=(0, 1))
    r = hwq.attack(program, x, y, [0.0, 0.2], method=make_attack("apgd-ce", steps=10), bounds=(0, 1))
    assert r.accuracy[1] < r.accuracy[0]  # CE works on one sigmoid output
    for params in (dict(steps=0), dict(loss="cw"), dict(targets=-1), dict(restarts=0), dict(norm="l1")):
        with pytest.raises(UsageError):
            APGD(**params)


def test_autoattack_suite_members_and_worst_case():
    suite = make_suite("autoattack", steps=10, queries=60)
    assert isinstance(suite, Suite) and [a.name for a in suite.attacks] == ["apgd-ce", "apgd-t", "apgd-dlr", "square"]
    assert make_suite("autoattack").attacks[3] == Square(queries=5000)  # AutoAttack's budget by default
    assert make_suite("autoattack").attacks[1] == APGD(loss="dlr", targets=9)
    program, x, y = compiled("Relu", n_in=16)
    r = hwq.attack(program, x, y, [0.0, 0.05], method=suite, bounds=(0, 1))
    assert [m.attack for m in r.members] == ["apgd-ce", "apgd-t", "apgd-dlr", "square"]
    np.testing.assert_array_equal(r.correct, np.logical_and.reduce([m.correct for m in r.members]))
    assert set(r.diagnostics["weaker_than_fgsm"]) == {"apgd-ce", "apgd-t", "apgd-dlr"}
    assert set(r.diagnostics["remedies"]["by_attack"]) == {"apgd-ce"}  # DLR does not see a temperature
    with pytest.raises(UsageError, match="unknown attack"):
        make_suite("autoattack,nope")


def test_cli_apgd_and_autoattack(model_file, capsys):  # noqa: F811
    code, stdout, err = run_cli("attack", model_file, "--data", "digits", "--limit", "30", "--eps", "0,0.1",
                                "--attacks", "autoattack", "--steps", "5", "--queries", "30", "--target-classes", "2",
                                "--json", capsys=capsys)
    assert code == 0, err
    out = json.loads(stdout)
    assert list(out["members"]) == ["apgd-ce", "apgd-t", "apgd-dlr", "square"]
    assert out["members"]["apgd-t"]["attack_params"]["targets"] == 2
    assert out["robust_accuracy"][1] <= min(m["accuracy"][1] for m in out["members"].values())
    code, stdout, err = run_cli("attack", model_file, "--data", "digits", "--limit", "30", "--eps", "0,0.1",
                                "--attack", "apgd-ce", "--steps", "5", capsys=capsys)
    assert code == 0 and "apgd-ce" in stdout


def test_sweep_runs_apgd(tmp_path, capsys):
    from hwq.sweep.spec import AttackSettings, SweepSpec

    spec = SweepSpec(data=("digits",), activations=("relu",), bits=(4,), seeds=(0,),
                     attack=AttackSettings(epsilons=(0.0, 0.1), name="autoattack", steps=4, queries=20, limit=30,
                                           target_classes=3, temperature="auto"))
    assert SweepSpec.from_json(spec.to_json()) == spec
    assert [a.name for a in spec.attack.method().attacks] == ["apgd-ce", "apgd-t", "apgd-dlr", "square"]
    assert spec.attack.method().attacks[1].targets == 3
    with pytest.raises(UsageError, match="--temperature"):
        SweepSpec(data=("spiral",), attack=AttackSettings(temperature=-1.0))
    out = tmp_path / "s.h5"
    code, _, err = run_cli("sweep", "--data", "spiral", "--activations", "relu", "--bits", "4", "--seeds", "1",
                           "--epochs", "5", "--patience", "5", "--eps", "0,0.2", "--attacks", "apgd-ce,pgd",
                           "--steps", "3", "--temperature", "0.5", "--limit", "40", "--workers", "1", "-o", out,
                           capsys=capsys)
    assert code == 0, err
    from hwq.sweep.store import read_sweep

    sweep = read_sweep(out)
    assert sweep.spec.attack.temperature == 0.5 and sweep.spec.attack.name == "apgd-ce,pgd"
    (cell,) = sweep.cells
    assert cell.attrs["attack"] == "suite" and cell.accuracy[1] <= cell.accuracy[0]


@pytest.mark.parametrize("momentum", [1.0, 0.75])
def test_the_fused_linf_step_equals_the_numpy_step_bit_for_bit(momentum):
    """``apgd.linf_step`` (Numba, in place) against ``linf_step_reference`` (the reference's
    numpy form) on rows where the eps-ball and the bounds both clip, zero and float32 gradients;
    a step with the momentum's weights swapped fails."""
    from hwq.attack.apgd import linf_step, linf_step_reference

    rng = np.random.default_rng(3)
    m, d = 40, 33
    x0 = rng.uniform(0, 1, (m, d))
    e = rng.uniform(0.0, 0.2, m)
    cur = np.clip(x0 + rng.uniform(-1, 1, (m, d)) * e[:, None], 0, 1)
    old = np.clip(x0 + rng.uniform(-1, 1, (m, d)) * e[:, None], 0, 1)
    grad = rng.normal(size=(m, d)).astype(np.float32)
    grad[rng.uniform(size=(m, d)) < 0.1] = 0
    step = rng.uniform(0, 0.4, m)
    a = np.sort(rng.choice(m, 25, replace=False))
    want_cur, want_old = cur.copy(), old.copy()
    want = linf_step_reference(want_cur, want_old, x0, a, e, step, grad, momentum, 0.0, 1.0)
    got_cur, got_old = cur.copy(), old.copy()
    got = linf_step(got_cur, got_old, x0, a, e, step, grad, momentum, 0.0, 1.0)
    assert np.array_equal(got, want) and np.array_equal(got_cur, want_cur) and np.array_equal(got_old, want_old)
    assert (want == 0).any() and (want == 1).any()  # the bounds clipped somewhere
    if momentum != 1.0:
        wrong_cur, wrong_old = cur.copy(), old.copy()
        wrong = linf_step(wrong_cur, wrong_old, x0, a, e, step, grad, 1 - momentum, 0.0, 1.0)
        assert not np.array_equal(wrong, want)
