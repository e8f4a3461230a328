"""Suites (per-input worst case), diagnostics, transfer sources, results files and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import test_attack_pgd
from builders import save, torch_style_mlp
from cli_runner import run_cli
from test_attack_pgd import centred_mlp, compiled

import hwq
from hwq.attack import FGSM, PGD, Square, Suite, make_suite
from hwq.attack.gradients import gradient_source
from hwq.cli import main
from hwq.errors import UsageError
from hwq.files import results
from hwq.onnx.importer import graph_from_model
from hwq.quant import reference

RNG = np.random.default_rng(9)


def test_suite_is_the_per_input_worst_case():
    program, x, y = compiled("step", n_in=16)
    eps = [0.0, 0.05, 0.15]
    suite = make_suite("fgsm,pgd,square", steps=10, queries=80)
    assert isinstance(suite, Suite)
    r = hwq.attack(program, x, y, eps, method=suite, bounds=(0, 1))
    assert [m.attack for m in r.members] == ["fgsm", "pgd", "square"]
    np.testing.assert_array_equal(r.correct, np.logical_and.reduce([m.correct for m in r.members]))
    assert np.all(r.accuracy <= np.min([m.accuracy for m in r.members], axis=0))
    # the members are the attacks run alone
    alone = hwq.attack(program, x, y, eps, method=PGD(steps=10), bounds=(0, 1), diagnostics=False)
    np.testing.assert_array_equal(r.members[1].correct, alone.correct)
    broken = ~r.correct
    for k in range(len(eps)):  # the recorded decision of a broken input is a wrong one
        assert np.all(r.predictions[k][broken[k]] != y[broken[k]])
    assert r.params["attacks"][2] == {"name": "square", "norm": "linf", "queries": 80, "p_init": 0.3, "seed": 0}


def test_masked_gradient_fires_every_flag():
    """Saturated sigmoid units (huge weights: s(1 - s) is exactly 0 in float64 for |z| > 37):
    FGSM and PGD do not move most inputs, the unbounded check fails, Square breaks them."""
    w1 = RNG.choice([-1.0, 1.0], (12, 16)) * 1e4
    model = torch_style_mlp(w1, -0.5 * w1.sum(axis=1) + 0.3, RNG.uniform(-1, 1, (4, 12)), np.zeros(4),
                            act="Sigmoid")
    graph = graph_from_model(model)
    x = RNG.uniform(0, 1, (100, 16))
    net = hwq.quantize(graph, 8, calibration=x, bounds=(0, 1), act_bits=8)
    program = hwq.compile(net)
    y = reference.predict(net, x)
    r = hwq.attack(program, x, y, [0.0, 0.2, 0.5], method=make_suite("fgsm,pgd,square", steps=5, queries=100),
                   bounds=(0, 1))
    d = r.diagnostics
    assert d["zero_gradient"] > 0
    assert "unbounded_not_broken:fgsm" in d["flags"] and "zero_gradient" in d["flags"]
    assert d["unbounded"]["fgsm"]["accuracy"] > d["unbounded"]["fgsm"]["chance"]
    assert "gradient_free_beats_gradient" in d["flags"] and d["gradient_free_beats_gradient"]["share"] > 0.01


def test_healthy_gradient_passes_the_sanity_check_and_pgd_weaker_fires(monkeypatch):
    # its own network, whatever ran before (``compiled`` draws from test_attack_pgd's shared
    # generator): the unbounded check compares with chance, so a network whose decisions
    # concentrate on one class (chance 0.55) would let one tiny PGD step look "broken"
    monkeypatch.setattr(test_attack_pgd, "RNG", np.random.default_rng(1))
    program, x, y = compiled("Relu", n_in=16)
    weak = Suite((FGSM(), PGD(steps=1, rel_stepsize=0.05, random_start=False)))
    r = hwq.attack(program, x, y, [0.0, 0.1, 0.3], method=weak, bounds=(0, 1))
    assert r.diagnostics["unbounded"]["fgsm"]["broken"]  # FGSM's gradient works
    assert "unbounded_not_broken:pgd" in r.diagnostics["flags"]  # one tiny step cannot reach
    assert "pgd_weaker_than_fgsm" in r.diagnostics["flags"]
    assert r.diagnostics["pgd_weaker_than_fgsm"]["epsilons"] == [0.1, 0.3]


def test_a_single_gradient_attack_says_when_it_is_weaker_than_fgsm(monkeypatch):
    """Issue 22: the suite flagged PGD weaker than FGSM, a single ``--attack pgd`` run said
    nothing; now FGSM runs beside it (same gradient, same inputs) and the flag is raised."""
    monkeypatch.setattr(test_attack_pgd, "RNG", np.random.default_rng(1))
    program, x, y = compiled("Relu", n_in=16)
    r = hwq.attack(program, x, y, [0.0, 0.05, 0.1], method=PGD(steps=5, rel_stepsize=0.01 / 0.3), bounds=(0, 1))
    check = r.diagnostics["weaker_than_fgsm"]["pgd"]
    assert "pgd_weaker_than_fgsm" in r.diagnostics["flags"] and check["fgsm"] == "rerun"
    assert check["epsilons"] == [0.05, 0.1] and check["max_accuracy_gap"] > 0.2
    fgsm = hwq.attack(program, x, y, [0.0, 0.05, 0.1], method=FGSM(), bounds=(0, 1), diagnostics=False)
    assert check["fgsm_accuracy"] == fgsm.accuracy.tolist()
    quiet = hwq.attack(program, x, y, [0.0, 0.05], method=PGD(steps=5, rel_stepsize=0.01 / 0.3), bounds=(0, 1),
                       diagnostics=False)  # --no-diagnostics: no extra runs
    assert "weaker_than_fgsm" not in quiet.diagnostics


def saturated_softmax():
    """A ReLU MLP whose output weights are scaled by 1e4: the surrogate's logits differ by
    thousands, the softmax is exactly one-hot in float64 and the cross-entropy's gradient exactly
    0 for most inputs (gradient masking by the output scale alone)."""
    rng = np.random.default_rng(9)
    w1 = rng.uniform(-1, 1, (12, 16))
    model = torch_style_mlp(w1, -0.5 * w1.sum(axis=1), rng.uniform(-1, 1, (10, 12)) * 1e4, np.zeros(10))
    x = rng.uniform(0, 1, (150, 16))
    net = hwq.quantize(graph_from_model(model), 4, calibration=x, bounds=(0, 1), act_bits=8)
    return hwq.compile(net), x, reference.predict(net, x)


def test_a_logit_temperature_unmasks_and_the_diagnostics_say_which():
    """Issue 22's masking remedy: a temperature on the gradient source's loss (fixed, or per
    input), and the diagnostics rerun each gradient attack with each remedy."""
    program, x, y = saturated_softmax()
    eps = [0.0, 0.05, 0.1]
    plain = hwq.attack(program, x, y, eps, method=PGD(steps=20), bounds=(0, 1))
    d = plain.diagnostics
    assert d["zero_gradient"] > 100 and "remedy_changed:T=auto" in d["flags"] and "T=auto" in d["remedies"]["changed"]
    auto = d["remedies"]["by_attack"]["pgd"]["T=auto"]
    assert auto["epsilons"] == [0.05, 0.1] and auto["accuracy"][1] < auto["without"][1] - 0.3
    assert not d["remedies"]["by_attack"]["pgd"]["T=0.25"]["changed"]  # sharpening does not help here
    tempered = gradient_source("surrogate", program, temperature="auto")
    r = hwq.attack(program, x, y, eps, method=PGD(steps=20), gradient=tempered, bounds=(0, 1), diagnostics=False)
    assert r.gradient == "surrogate T=auto" and r.accuracy[2] < plain.accuracy[2] - 0.4
    fixed = hwq.attack(program, x, y, eps, method=FGSM(), bounds=(0, 1), diagnostics=False,
                       gradient=gradient_source("float", program, temperature=300.0))
    assert fixed.gradient == "float T=300.0" and fixed.zero_gradient.sum() < plain.zero_gradient.sum()
    for bad in (0, -1, "hot", float("nan")):
        with pytest.raises(UsageError, match="--temperature"):
            gradient_source("surrogate", program, temperature=bad)


def test_the_auto_temperature_takes_the_largest_logit_gradient():
    from hwq.attack.gradients import TEMPERATURE_GRID, logit_temperature, output_loss

    z = np.array([[3000.0, 0.0, -10.0], [0.01, 0.0, 0.02], [2.0, 1.0, 0.0]])
    y = np.array([0, 2, 1])
    t = logit_temperature(z, y, False)
    for row in range(3):
        sizes = [np.linalg.norm(output_loss(z[row:row + 1] / c, y[row:row + 1], False)[1]) / c
                 for c in TEMPERATURE_GRID]
        assert t[row] == TEMPERATURE_GRID[int(np.argmax(sizes))]
    assert output_loss(z[:1], y[:1], False)[1].max() == 0 and t[0] >= 256  # saturated: softened


def mean_threshold(d=400):
    """A healthy two-class ReLU network on d = 400 inputs: class = [mean(x) > 1/2]; class-0
    inputs lie in [0, 0.3]^d, class-1 in [0.7, 1]^d (means about 0.15 and 0.85), so the decision
    changes about 0.35 away in l-inf and 0.35 sqrt(d) = 7 in l2: far beyond eps 1 in l2."""
    rng = np.random.default_rng(0)
    y = np.arange(100) % 2
    x = np.where(y[:, None] == 1, rng.uniform(0.7, 1, (100, d)), rng.uniform(0, 0.3, (100, d)))
    w1 = np.stack([np.full(d, 1 / d), np.full(d, -1 / d)])
    model = torch_style_mlp(w1, np.array([-0.5, 0.5]), np.array([[0.0, 4.0], [4.0, 0.0]]), np.zeros(2))
    net = hwq.quantize(graph_from_model(model), 8, calibration=x, bounds=(0, 1), act_bits=8)
    assert np.all(reference.predict(net, x) == y)
    return hwq.compile(net), x, y


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_the_unbounded_check_uses_the_norms_diameter(norm):
    """Issue 16: the l2 "masking?" warning fired on a healthy network (eps 1 in l2 is not the
    input range); the unbounded strength is the box's diameter: 1 (l-inf), sqrt(400) = 20 (l2)."""
    program, x, y = mean_threshold()
    r = hwq.attack(program, x, y, [0.0, 0.5 if norm == "linf" else 10.0], method=FGSM(norm), bounds=(0, 1))
    check = r.diagnostics["unbounded"]["fgsm"]
    assert check["eps"] == (1.0 if norm == "linf" else 20.0)
    assert check["broken"] and check["accuracy"] == 0.0 and r.diagnostics["flags"] == []
    assert r.accuracy[1] == 0.0  # the gradient works at a strength above the distance


def test_transfer_sources(tmp_path):
    graph = graph_from_model(centred_mlp(16, 10, 4, "Relu"))
    x = RNG.uniform(0, 1, (80, 16))
    net = hwq.quantize(graph, 4, calibration=x, bounds=(0, 1))
    program = hwq.compile(net)
    y = reference.predict(net, x)
    for name in ("float", "bits:1", "bits:8", "target:sim"):
        g = gradient_source(name, program, calibration=x, bounds=(0, 1))
        r = hwq.attack(program, x, y, [0, 0.2], gradient=g, bounds=(0, 1), diagnostics=False)
        assert r.gradient == name and r.accuracy[1] < r.accuracy[0]
    other = hwq.compile(hwq.quantize(graph, 2, calibration=x, bounds=(0, 1)))
    hwq.save_program(tmp_path / "q2.hwq", other)
    g = gradient_source(f"model:{tmp_path / 'q2.hwq'}", program)
    g2 = gradient_source("surrogate", other)
    np.testing.assert_array_equal(g.value_and_grad(x, y)[1], g2.value_and_grad(x, y)[1])
    g1 = gradient_source("bits:1", program, calibration=x, bounds=(0, 1)).value_and_grad(x, y)[1]
    assert not np.allclose(g1, gradient_source("surrogate", program).value_and_grad(x, y)[1])
    for bad in ("bits:", "bits:x", "bits:99", "nope", "target:"):
        with pytest.raises(UsageError):
            gradient_source(bad, program, calibration=x)


def test_results_file_keeps_members_queries_and_diagnostics(tmp_path):
    program, x, y = compiled("Relu", n_in=16)
    r = hwq.attack(program, x, y, [0.0, 0.1], method=Suite((FGSM(), Square(queries=30))), bounds=(0, 1))
    path = tmp_path / "r.h5"
    results.write_attack(path, r, {"data": "test"})
    back = results.read_attack(path)
    np.testing.assert_array_equal(back["correct"], r.correct)
    np.testing.assert_array_equal(back["members"]["square"]["queries"], r.members[1].queries)
    assert json.loads(back["attrs"]["diagnostics"])["flags"] == r.diagnostics["flags"]
    s = results.summary(r)
    assert s["members"]["square"]["attack_params"]["queries"] == 30 and s["robust_accuracy"] == r.accuracy.tolist()


hwq_cli = run_cli


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("m")
    onnx_path = save(centred_mlp(64, 12, 10, "Relu"), folder / "m.onnx")
    out = folder / "m.hwq"
    with pytest.raises(SystemExit) as info:
        main(["compile", onnx_path, "--bits", "3", "--calib", "digits", "-o", str(out)])
    assert info.value.code == 0
    return out


def test_cli_suite_json(model_file, tmp_path, capsys):
    code, stdout, err = hwq_cli("attack", model_file, "--data", "digits", "--limit", "40", "--eps", "0,0.1",
                                "--attacks", "fgsm,pgd,square", "--steps", "5", "--queries", "50", "--json",
                                "-o", tmp_path / "r.h5", capsys=capsys)
    assert code == 0, err
    out = json.loads(stdout)
    assert out["attack"] == "suite" and set(out["members"]) == {"fgsm", "pgd", "square"}
    assert out["members"]["pgd"]["attack_params"]["steps"] == 5
    assert out["robust_accuracy"][1] <= min(m["accuracy"][1] for m in out["members"].values())
    assert "flags" in out and "unbounded" in out["diagnostics"]


def test_cli_temperature(model_file, capsys):
    code, stdout, err = hwq_cli("attack", model_file, "--data", "digits", "--limit", "20", "--eps", "0,0.1",
                                "--temperature", "auto", "--json", capsys=capsys)
    assert code == 0, err
    out = json.loads(stdout)
    assert out["gradient"] == "surrogate T=auto" and "remedies" in out["diagnostics"]
    code, _, err = hwq_cli("attack", model_file, "--data", "digits", "--limit", "5", "--temperature", "-2",
                           capsys=capsys)
    assert code == 2 and "--temperature must be a positive number" in err and "Traceback" not in err


def test_cli_single_pgd_warns_and_reports_weaker_than_fgsm(model_file, capsys):
    args = ("attack", model_file, "--data", "digits", "--limit", "60", "--eps", "0,0.05,0.1", "--attack", "pgd",
            "--steps", "3", "--rel-stepsize", "0.01")
    code, stdout, err = hwq_cli(*args, "--json", capsys=capsys)
    assert code == 0, err
    out = json.loads(stdout)
    assert "pgd_weaker_than_fgsm" in out["flags"] and out["diagnostics"]["weaker_than_fgsm"]["pgd"]["epsilons"]
    code, stdout, err = hwq_cli(*args, capsys=capsys)
    assert code == 0 and "warning: PGD is weaker than FGSM" in err


@pytest.mark.parametrize("args,message", [
    (["--attack", "cw"], "unknown attack 'cw'"),
    (["--attacks", "fgsm,fgsm"], "duplicate attacks"),
    (["--attack", "pgd", "--steps", "0"], "--steps must be a positive integer"),
    (["--attack", "square", "--queries", "-3"], "--queries must be a positive integer"),
    (["--attack", "pgd", "--restarts", "3", "--no-random-start"], "needs a random start"),
    (["--grad", "bits:abc"], "bits must be an integer"),
    (["--attack", "apgd-t", "--target-classes", "-1"], "--target-classes must be a non-negative integer"),
    (["--attacks", "autoattack,nope"], "unknown attack 'nope'"),
    (["--attacks", "autoattack,apgd-ce"], "duplicate attacks"),
])
def test_cli_bad_attack_arguments(model_file, args, message, capsys):
    code, _, err = hwq_cli("attack", model_file, "--data", "digits", "--limit", "5", *args, capsys=capsys)
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_sweep_with_a_suite():
    from hwq.sweep.spec import AttackSettings, SweepSpec

    spec = SweepSpec(data=("spiral",), activations=("relu",), bits=(2,), seeds=(0,),
                     attack=AttackSettings(epsilons=(0.0, 0.1, 0.3), name="fgsm,pgd,square", steps=4,
                                           queries=20, limit=40))
    assert SweepSpec.from_json(spec.to_json()) == spec
    assert "steps" not in json.loads(SweepSpec(data=("spiral",)).to_json())["attack"]
    with pytest.raises(UsageError):
        SweepSpec(data=("spiral",), attack=AttackSettings(name="fgsm,nope"))
