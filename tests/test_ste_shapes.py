"""The straight-through estimator's shape (``--ste``, ``hwq.attack.ste``): a masking remedy of
the surrogate gradient through step and sign activations.

Each shape's gradient is checked two independent ways on tiny integer step/sign networks: a
hand-written numpy backward (softmax, ``s(z)`` written out here, the real weights and gains),
and a central finite difference of the network linearized at its operating point with the
step replaced by the shape's smooth stand-in ``F`` (``F' = s``): ``z1(x) = z1_0 + g1 (x - x0)
W1^T`` and ``z2(x) = z2_0 + g2 (F(z1(x)) - F(z1_0)) W2^T``, whose gradient at ``x0`` is what the
surrogate computes. The default gives the old gradient bit for bit."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_runner import run_cli
from factories import codes, onnx_net, random_net

import hwq
from hwq.attack import FGSM
from hwq.attack.gradients import FloatGradient, SurrogateGradient, gradient_source
from hwq.attack.ste import check_ste, has_binary
from hwq.attack.suite import STE_REMEDIES
from hwq.errors import UsageError
from hwq.ir import activations
from hwq.target.protocol import ReferenceProgram


def stable_sigmoid_derivative(u):
    e = np.exp(-np.abs(u))  # symmetric: no overflow
    return e / (1 + e) ** 2


# shape -> (s(z) for the step, its stand-in F with F' = s), written independently of hwq
SHAPES = {
    "identity": (lambda z: np.ones_like(z), lambda z: z),
    "box:0.1": (lambda z: (np.abs(z) <= 0.1).astype(float), lambda z: np.clip(z, -0.1, 0.1)),
    "sigmoid:20": (lambda z: 20 * stable_sigmoid_derivative(20 * z), lambda z: 1 / (1 + np.exp(-20 * z))),
    "fast-sigmoid:10": (lambda z: 1 / (1 + 10 * np.abs(z)) ** 2, lambda z: z / (1 + 10 * np.abs(z))),
    None: (lambda z: 1 / (1 + np.abs(z)) ** 2, lambda z: z / (1 + np.abs(z))),  # the default
}
JUMP = {"step": 1.0, "sign": 2.0}  # sign = 2 step - 1


def problem(act, hidden=(7,), seed=0, n=12):
    """An integer network (step/sign: ``random_net``; relu/sigmoid: a quantized float MLP with
    one hidden layer), its reference program, input codes and labels."""
    rng = np.random.default_rng(seed)
    if act in ("relu", "sigmoid"):
        net, _ = onnx_net(rng, {"relu": "Relu", "sigmoid": "Sigmoid"}[act], 4)
    else:
        net = random_net(rng, 6, list(hidden), [act] * len(hidden), 7)
    program = ReferenceProgram(net)
    c = codes(rng, net, n)
    y = rng.integers(0, 3, n)
    return net, program, c, y


def hand_gradient(net, zs, y, s, jump):
    """dL/dx of the cross-entropy by hand: softmax minus one-hot, then per layer down (the
    ReLU's derivative 0 above its top code)."""
    z = zs[-1]
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    delta = p - np.eye(z.shape[1])[y]
    for k in range(len(net.layers) - 1, -1, -1):
        layer = net.layers[k]
        grad = layer.gain * (delta @ layer.real_weight)
        if k == 0:
            return grad
        delta = grad * jump * s(zs[k - 1])
        below = net.layers[k - 1]
        if below.activation_kind is activations.RELU:  # 0 where the integer ReLU saturates
            delta = delta * (zs[k - 1] < (2**below.act_bits - 1) * below.out_scale)


@pytest.mark.parametrize("act", ["step", "sign"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=str)
def test_each_shape_is_the_hand_written_backward(act, shape):
    net, program, c, y = problem(act, hidden=(7, 5))
    zs = program.trace(c)
    source = SurrogateGradient(program, ste=shape)
    _, grad = source.grad_at(zs, y)
    s, _ = SHAPES[shape]
    expected = hand_gradient(net, zs, y, s, JUMP[act])
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-15 * np.abs(expected).max())
    # the wrong variants fail: sign without its factor 2, another width or slope
    wrong = hand_gradient(net, zs, y, s, 1.0 if act == "sign" else 2.0)
    assert not np.allclose(grad, wrong, rtol=1e-6)
    if shape in ("box:0.1", "sigmoid:20", "fast-sigmoid:10"):
        kind, value = shape.split(":")
        other = SurrogateGradient(program, ste=f"{kind}:{float(value) * 2}").grad_at(zs, y)[1]
        assert not np.allclose(grad, other, rtol=1e-6)


@pytest.mark.parametrize("act", ["step", "sign"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=str)
def test_each_shape_is_the_derivative_of_its_stand_in(act, shape):
    """Central finite differences of the network linearized at the operating point, with the
    binary activation replaced by the shape's smooth stand-in ``F``."""
    net, program, c, y = problem(act, seed=1)
    zs = program.trace(c)
    l1, l2 = net.layers
    _, F = SHAPES[shape]
    jump = JUMP[act]

    def loss(dx):  # per row, the cross-entropy at x0 + dx
        z1 = zs[0] + l1.gain * dx @ l1.real_weight.T
        z2 = zs[1] + l2.gain * jump * (F(z1) - F(zs[0])) @ l2.real_weight.T
        m = z2.max(axis=1, keepdims=True)
        return (m[:, 0] + np.log(np.exp(z2 - m).sum(axis=1))) - z2[np.arange(len(y)), y]

    _, grad = SurrogateGradient(program, ste=shape).grad_at(zs, y)
    rng = np.random.default_rng(2)
    for _ in range(3):
        v = rng.normal(size=grad.shape)
        h = 1e-6
        fd = (loss(h * v) - loss(-h * v)) / (2 * h)
        np.testing.assert_allclose(np.sum(grad * v, axis=1), fd, rtol=1e-5, atol=1e-8)


def test_the_default_gives_the_old_gradient_bit_for_bit():
    for act in ("step", "sign", "relu", "sigmoid"):
        net, program, c, y = problem(act, hidden=(7, 5))
        zs = program.trace(c)
        old = SurrogateGradient(program)
        assert old.acts == [layer.activation for layer in net.layers] and old.name == "surrogate"
        for spelled in (None, "fast-sigmoid", "fast-sigmoid:1", "fast-sigmoid:1.0"):
            new = SurrogateGradient(program, ste=spelled)
            assert new.ste is None and new.name == "surrogate"
            for sign_only in (False, True):
                a, b = old.grad_at(zs, y, sign_only), new.grad_at(zs, y, sign_only)
                assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        # the old derivative itself: the activations' own table
        expected = hand_gradient(net, zs, y, lambda z, a=act: activations.derivative(a, z), 1.0)
        np.testing.assert_allclose(old.grad_at(zs, y)[1], expected, rtol=1e-12)


def test_shapes_leave_relu_and_sigmoid_alone_and_keep_forward():
    for act in ("relu", "sigmoid"):
        net, program, c, y = problem(act)
        zs = program.trace(c)
        assert np.array_equal(SurrogateGradient(program).grad_at(zs, y)[1],
                              SurrogateGradient(program, ste="identity").grad_at(zs, y)[1])
        assert not has_binary(SurrogateGradient(program).acts)
    net, program, c, y = problem("step")
    shaped = SurrogateGradient(program, ste="box:0.1").acts[0]
    z = np.linspace(-1, 1, 9)
    assert np.array_equal(shaped.forward(z), activations.STEP.forward(z)) and shaped.binary
    assert shaped.code_range(1, None, 0) == (0, 1)


def test_names_temperature_and_transfer_sources_keep_the_shape():
    net, program, c, y = problem("step")
    g = gradient_source("surrogate", program, ste="box:0.10")
    assert g.name == "surrogate ste=box:0.1" and g.ste == "box:0.1"
    both = g.with_temperature(0.25)
    assert both.name == "surrogate T=0.25 ste=box:0.1" and both.ste == "box:0.1"
    assert both.with_ste(None).name == "surrogate T=0.25"
    other = gradient_source("target:sim", hwq.compile(net), ste="identity", temperature="auto")
    assert other.name == "target:sim T=auto ste=identity"
    assert other.with_ste("sigmoid:4").name == "target:sim T=auto ste=sigmoid:4"
    assert other.with_temperature(None).name == "target:sim ste=identity"


@pytest.mark.parametrize("bad", ["box", "box:0", "box:-1", "sigmoid:nan", "identity:2", "hardtanh", "box:inf"])
def test_bad_shapes_are_refused(bad):
    net, program, c, y = problem("step")
    with pytest.raises(UsageError, match="--ste"):
        gradient_source("surrogate", program, ste=bad)
    with pytest.raises(UsageError, match="--ste"):
        check_ste(bad)


def step_float_model(seed=3):
    """A float step MLP (digits-sized inputs) and its 8-bit integer network."""
    from builders import torch_style_mlp

    from hwq.onnx.importer import graph_from_model

    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(16, 12))
    model = torch_style_mlp(w1, -0.5 * w1.sum(axis=1), rng.normal(size=(4, 16)), np.zeros(4), act="step")
    x = rng.uniform(0, 1, (80, 12))
    net = hwq.quantize(graph_from_model(model), 8, calibration=x, bounds=(0, 1))
    return net, x


def test_the_float_gradient_takes_the_shape_too():
    net, x = step_float_model()
    y = np.zeros(len(x), int)
    plain, box = FloatGradient(net.float_graph), FloatGradient(net.float_graph, ste="box:0.5")
    assert box.name == "float ste=box:0.5"
    assert not np.allclose(plain.value_and_grad(x, y)[1], box.value_and_grad(x, y)[1])
    zs = box.forward(x)
    s = (np.abs(zs[0]) <= 0.5) * 1.0
    _, grad = box.value_and_grad(x, y)
    w1, w2 = box.chain[0].back, box.chain[1].back
    z = zs[-1]
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    expected = box.chain[0].back_gain * ((box.chain[1].back_gain * ((p - np.eye(4)[y]) @ w2)) * s) @ w1
    np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-14)


def test_the_diagnostics_try_the_shapes_on_binary_networks_only():
    net, x = step_float_model()
    program = hwq.compile(net)
    from hwq.quant import reference

    y = reference.predict(net, x)
    r = hwq.attack(program, x, y, [0.0, 0.1, 0.3], method=FGSM(), bounds=(0, 1))
    rem = r.diagnostics["remedies"]
    tried = set(rem["by_attack"]["fgsm"])
    assert {f"ste={s}" for s in STE_REMEDIES} <= tried and "T=auto" in tried
    for label in rem["changed"]:
        assert f"remedy_changed:{label}" in r.diagnostics["flags"]
    own = gradient_source("surrogate", program, ste="identity")
    r2 = hwq.attack(program, x, y, [0.0, 0.1, 0.3], method=FGSM(), bounds=(0, 1), gradient=own)
    tried = set(r2.diagnostics["remedies"]["by_attack"]["fgsm"])
    assert "ste=identity" not in tried and "ste=box:1" in tried and r2.gradient == "surrogate ste=identity"
    # sweeps try the temperatures only (their cells keep the flags they had)
    r3 = hwq.attack(program, x, y, [0.0, 0.1, 0.3], method=FGSM(), bounds=(0, 1), remedy_kinds=("temperature",))
    assert set(r3.diagnostics["remedies"]["by_attack"]["fgsm"]) == {"T=0.25", "T=4.0", "T=auto"}
    # a ReLU network: the shapes would change nothing and are not tried
    relu, _, c, yr = problem("relu")
    rr = hwq.attack(hwq.compile(relu), c * relu.input.scale, yr, [0.0, 0.05], method=FGSM())
    assert not any(k.startswith("ste=") for k in rr.diagnostics["remedies"]["by_attack"]["fgsm"])


def test_a_shape_that_unmasks_is_flagged():
    """A step network whose default surrogate follows the wrong units: a few units sit right at
    their threshold (the fast sigmoid gives them almost all the weight) but barely matter to the
    output, while the units that decide sit far from theirs. The plain STE weighs all alike and
    breaks the inputs; the diagnostics flag ``remedy_changed:ste=identity``."""
    from builders import torch_style_mlp

    from hwq.onnx.importer import graph_from_model
    from hwq.quant import reference

    rng = np.random.default_rng(5)
    n_in, near, far = 8, 6, 6
    w1 = np.vstack([rng.normal(size=(near, n_in)), rng.normal(size=(far, n_in))])
    x = rng.uniform(0.4, 0.6, (120, n_in))
    b1 = -(w1 @ np.full(n_in, 0.5))
    b1[near:] += np.where(rng.random(far) < 0.5, 0.6, -0.6)  # the deciding units: 0.6 from threshold
    w2 = np.zeros((2, near + far))
    w2[0, :near] = 1e-3 * rng.choice([-1, 1], near)  # near-threshold units: tiny, but not zero
    w2[1, near:] = np.where(b1[near:] > 0, -1.0, 1.0)  # class 1 wins when the far units flip
    model = torch_style_mlp(w1, b1, w2, np.array([0.5 * far / 2, 0.0]), act="step")
    net = hwq.quantize(graph_from_model(model), 8, calibration=x, bounds=(0, 1))
    program = hwq.compile(net)
    y = reference.predict(net, x)
    r = hwq.attack(program, x, y, [0.0, 0.2, 0.4], method=FGSM(), bounds=(0, 1))
    d = r.diagnostics["remedies"]["by_attack"]["fgsm"]["ste=identity"]
    assert "remedy_changed:ste=identity" in r.diagnostics["flags"], r.diagnostics["remedies"]
    assert min(d["accuracy"]) < min(d["without"]) - 0.1


def test_cli_ste(tmp_path, capsys):
    net, x = step_float_model()
    from hwq.files.program import save_program
    from hwq.quant import reference

    model = tmp_path / "m.hwq"
    save_program(model, hwq.compile(net))
    np.savez(tmp_path / "d.npz", x=x, y=reference.predict(net, x))
    code, out, err = run_cli("attack", model, "--data", tmp_path / "d.npz", "--eps", "0,0.1", "--ste", "box:0.5",
                             "--json", capsys=capsys)
    assert code == 0, err
    assert json.loads(out)["gradient"] == "surrogate ste=box:0.5"
    code, _, err = run_cli("attack", model, "--data", tmp_path / "d.npz", "--ste", "hardtanh", capsys=capsys)
    assert code != 0 and "--ste" in err and "Traceback" not in err and err.count("\n") == 1


def test_sweep_spec_records_the_shape_and_leaves_it_out_unset(tmp_path, monkeypatch, capsys):
    import hwq.cli.study as study
    from hwq.sweep.spec import AttackSettings, SweepSpec

    plain = SweepSpec(data=("spiral",))
    assert "ste" not in json.loads(plain.to_json())["attack"]
    spec = SweepSpec(data=("spiral",), attack=AttackSettings(ste="sigmoid:4.0"))
    assert json.loads(spec.to_json())["attack"]["ste"] == "sigmoid:4"
    assert SweepSpec.from_json(spec.to_json()).attack.gradient_options() == {"temperature": None, "ste": "sigmoid:4"}
    assert SweepSpec(data=("spiral",), attack=AttackSettings(ste="fast-sigmoid")).attack.ste is None
    with pytest.raises(UsageError, match="--ste"):
        SweepSpec(data=("spiral",), attack=AttackSettings(ste="box:-2"))
    seen = {}

    def capture(spec, output, **kwargs):
        seen["spec"] = spec
        raise UsageError("captured")

    monkeypatch.setattr(study, "run_spec", capture)
    code, _, err = run_cli("sweep", "--data", "spiral", "--ste", "identity", "--temperature", "4",
                           "-o", tmp_path / "s.h5", capsys=capsys)
    assert "captured" in err, err
    assert seen["spec"].attack.ste == "identity" and seen["spec"].attack.temperature == 4.0
