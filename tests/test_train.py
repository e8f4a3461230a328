"""The QAT trainer: grid exactness, determinism, accuracy, the stall pitfall, ONNX export."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwq import train
from hwq.data import load_dataset
from hwq.errors import DataError, UsageError
from hwq.quant.schemes import SCHEMES, get_scheme
from hwq.train import (
    TrainConfig,
    TrainedMLP,
    _affine64,
    logits_float,
    mlp_to_onnx,
    predict_float,
    train_mlp,
)

SPIRAL = dict(gain=10.0, batch_size=32, epochs=1000, patience=1000)  # ~0.6 s per run


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def spiral():
    return load_dataset("spiral")


def accuracy(mlp, data):
    return float(np.mean(predict_float(mlp, data.x_test) == data.y_test))


# ------------------------------------------------------------------ quantizer kernel vs scheme


def _kernel_quantize(w32: np.ndarray, scheme: str, bits: int | None) -> np.ndarray:
    out = np.empty_like(w32)
    train.quantize_into(w32, out, *train.quantizer_args(get_scheme(scheme), bits))
    return out


@given(
    scheme=st.sampled_from(sorted(SCHEMES)),
    bits=st.integers(1, 16),
    codes=st.lists(st.integers(-70000, 70000), min_size=1, max_size=40),
    noise=st.lists(st.floats(-1.5, 1.5, width=32), min_size=1, max_size=40),
)
@settings(max_examples=300, deadline=None)
def test_kernel_matches_scheme_fake_quantize_bit_for_bit(scheme, bits, codes, noise):
    """Ties included: half-integers of the grid step are where rounding rules differ."""
    s = get_scheme(scheme).unit_scale(bits)
    ties = (np.array(codes, np.float64) / 2 * s).astype(np.float32)
    w = np.clip(np.concatenate([ties, np.array(noise, np.float32), [0, -0.0, 1, -1]]), -1.5, 1.5)
    w = w.astype(np.float32)
    expected = get_scheme(scheme).fake_quantize(w, bits).astype(np.float32)
    np.testing.assert_array_equal(_kernel_quantize(w, scheme, bits), expected)


def test_kernel_is_identity_for_float_training():
    w = np.random.default_rng(0).uniform(-1, 1, 100).astype(np.float32)
    np.testing.assert_array_equal(_kernel_quantize(w, "uniform", None), w)


# ----------------------------------------------------------------------- gradients (backprop)


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
@pytest.mark.parametrize("n_out", [1, 3])
def test_backprop_matches_finite_differences(activation, n_out):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 4)).astype(np.float32)
    y = rng.integers(0, max(n_out, 2), 5)
    flat = train._FlatParams({"w1": (6, 4), "b1": (6,), "w2": (n_out, 6), "b2": (n_out,)})
    flat.quant[:] = rng.uniform(-1, 1, flat.quant.size)
    q, g = flat.views(flat.quant), flat.views(flat.grad)
    train._backprop(x, y, q, g, activation, 3.0)

    def loss():
        z = train._hidden_pre(x, q["w1"], q["b1"], 3.0)
        h = train.activations.forward(activation, z)
        return train._loss_grad_logits(h @ q["w2"].T + q["b2"], y)[0]

    numeric = np.zeros(flat.quant.size)
    for i in range(flat.quant.size):
        old = flat.quant[i]
        flat.quant[i] = old + 1e-2
        up = loss()
        flat.quant[i] = old - 1e-2
        numeric[i] = (up - loss()) / 2e-2
        flat.quant[i] = old
    np.testing.assert_allclose(flat.grad, numeric, atol=3e-4)


# ---------------------------------------------------------------------------- QAT on grid


@pytest.mark.parametrize("scheme", ["uniform", "narrow"])
@pytest.mark.parametrize("bits", [1, 2, 4])
def test_qat_weights_are_exactly_on_the_grid(digits, scheme, bits):
    config = TrainConfig(bits=bits, scheme=scheme, epochs=3, activation="relu")
    mlp = train_mlp(digits.x_train, digits.y_train, 10, config)
    sch = get_scheme(scheme)
    levels = set(sch.levels(bits).tolist())
    for name in ("w1", "b1", "w2", "b2"):
        a = getattr(mlp, name)
        codes = np.rint(a / sch.unit_scale(bits))
        np.testing.assert_array_equal(a, codes * sch.unit_scale(bits))
        assert set(np.unique(codes).astype(int).tolist()) <= levels
        assert np.abs(a).max() <= 1 and a.dtype == np.float64 and not a.flags.writeable
    assert mlp.w1.shape == (100, 64) and mlp.w2.shape == (10, 100)


def test_float_training_keeps_weights_in_the_clip_range(spiral):
    mlp = train_mlp(spiral.x_train, spiral.y_train, 2, TrainConfig(gain=10, epochs=30))
    assert max(np.abs(getattr(mlp, k)).max() for k in ("w1", "b1", "w2", "b2")) <= 1
    assert mlp.w2.shape == (1, 100) and mlp.n_classes == 2 and mlp.n_in == 2


def test_training_is_deterministic_per_seed(digits):
    def run(seed):
        return train_mlp(digits.x_train, digits.y_train, 10, TrainConfig(bits=3, epochs=4, seed=seed))

    a, b, c = run(0), run(0), run(1)
    for k in ("w1", "b1", "w2", "b2"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    np.testing.assert_array_equal(a.history["loss"], b.history["loss"])
    assert not np.array_equal(a.w1, c.w1)


def test_progress_history_and_early_stopping(digits):
    calls = []
    config = TrainConfig(epochs=200, patience=3)
    mlp = train_mlp(
        digits.x_train,
        digits.y_train,
        10,
        config,
        progress=lambda e, n, info: calls.append((e, n, info["val_accuracy"])),
    )
    n_run = len(mlp.history["loss"])
    assert n_run < 200 and n_run == mlp.best_epoch + 3 == len(calls)
    assert calls[-1][:2] == (n_run, 200)
    assert mlp.val_accuracy == max(mlp.history["val_accuracy"])
    assert mlp.history["val_accuracy"][mlp.best_epoch - 1] == mlp.val_accuracy


# ------------------------------------------------------------------------------- accuracy


def test_float_relu_learns_the_spiral(spiral):
    mlp = train_mlp(spiral.x_train, spiral.y_train, 2, TrainConfig(activation="relu", **SPIRAL))
    assert accuracy(mlp, spiral) >= 0.90 and not mlp.stalled


def test_four_bit_relu_learns_digits(digits):
    mlp = train_mlp(digits.x_train, digits.y_train, 10, TrainConfig(bits=4, epochs=40))
    assert accuracy(mlp, digits) > 0.85 and mlp.train_accuracy > 0.85


def test_narrow_grid_with_default_init_stalls_at_two_bits(digits):
    """The README pitfall: |w| < 1/sqrt(64) all round to 0 on {-1, 0, 1}; no gradient flows
    through a constant forward pass. The zero-free uniform grid trains from the same init."""

    def run(scheme):
        config = TrainConfig(bits=2, scheme=scheme, init="default", epochs=30)
        return train_mlp(digits.x_train, digits.y_train, 10, config)

    narrow, uniform = run("narrow"), run("uniform")
    assert narrow.stalled and narrow.val_accuracy < 0.2
    assert not uniform.stalled and accuracy(uniform, digits) > 0.85


# --------------------------------------------------------------------------------- ties


def _hand_mlp(w2, b2):
    """A 1-3-k step network on the narrow 3-bit grid {k / 3}."""
    w1 = np.array([[1.0], [1.0], [-1 / 3]])
    return TrainedMLP(
        w1,
        np.array([0.0, -1 / 3, 1 / 3]),
        np.array(w2),
        np.array(b2),
        TrainConfig(activation="step", bits=3, scheme="narrow"),
        best_epoch=1,
        val_accuracy=1.0,
        train_accuracy=1.0,
        stalled=False,
    )


def test_exact_ties_stay_exact():
    """h = [x > 0, x > 1/3, x < 1]; logit = (h1 + h2 - h3 - 1) / 3 is exactly 0 at x = 0.5,
    and a tie decides like the integer semantics: class 0, or the lowest index."""
    mlp = _hand_mlp([[1 / 3, 1 / 3, -1 / 3]], [-1 / 3])
    x = np.array([[0.5], [2.0], [-1.0]], np.float32)
    np.testing.assert_array_equal(logits_float(mlp, x)[:, 0], [0.0, 1 / 3, -2 / 3])
    np.testing.assert_array_equal(predict_float(mlp, x), [0, 1, 0])  # a tie is class 0
    multi = _hand_mlp([[1 / 3, 1 / 3, -1 / 3], [1 / 3, 1 / 3, -1 / 3]], [0.0, 0.0])
    np.testing.assert_array_equal(predict_float(multi, x), [0, 0, 0])  # lowest index wins


# ---------------------------------------------------------------------------------- ONNX


def _run_onnx(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


@pytest.mark.parametrize(
    "data_name, activation, bits",
    [
        ("spiral", "relu", None),
        ("spiral", "sigmoid", 4),
        ("spiral", "step", 6),
        ("digits", "relu", 2),
        ("digits", "sigmoid", None),
        ("digits", "step", 8),
    ],
)
def test_onnx_export_matches_predict_float(data_name, activation, bits, spiral, digits):
    data = spiral if data_name == "spiral" else digits
    gain = 10.0 if data_name == "spiral" else 1.0
    config = TrainConfig(activation=activation, bits=bits, gain=gain, epochs=20)
    mlp = train_mlp(data.x_train, data.y_train, data.n_classes, config)
    model = mlp_to_onnx(
        mlp, n_in=data.n_features, n_classes=data.n_classes, metadata={"dataset": data_name, "hwq.sweep": "x"}
    )
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 8 and model.opset_import[0].version == 17

    scores = _run_onnx(model, data.x_test)
    logits = logits_float(mlp, data.x_test)
    if data.n_classes == 2:
        assert scores.shape == (len(data.x_test), 1)
        onnx_pred = (scores[:, 0] > 0.5).astype(np.int64)
        margin = np.abs(logits[:, 0])
    else:
        np.testing.assert_allclose(scores.sum(axis=1), 1, rtol=1e-5)
        onnx_pred = scores.argmax(axis=1)
        top2 = np.sort(logits, axis=1)[:, -2:]
        margin = top2[:, 1] - top2[:, 0]
    # Exact ties (possible on a grid with dyadic inputs) fall to float32 rounding in ONNX;
    # everywhere else the class must agree exactly. A step unit whose pre-activation is within
    # float32 rounding of 0 is such a tie too: the float32 graph's sign there depends on the
    # CPU's summation order (an AVX2 machine and an AVX-512 one differ), so it is not asserted.
    clear = margin > 1e-4
    if activation == "step":
        x64 = data.x_test.reshape(len(data.x_test), -1).astype(np.float64)
        pre = gain * _affine64(x64, mlp.w1, mlp.b1, mlp.config)
        clear &= np.abs(pre).min(axis=1) > 1e-4
    assert clear.mean() > 0.95 and (bits is not None or clear.all())
    np.testing.assert_array_equal(onnx_pred[clear], predict_float(mlp, data.x_test)[clear])

    props = {p.key: p.value for p in model.metadata_props}
    assert props["hwq.activation"] == activation and props["hwq.dataset"] == data_name
    assert props["hwq.sweep"] == "x" and float(props["hwq.gain"]) == gain
    assert props.get("hwq.bits") == (None if bits is None else str(bits))
    ops = [n.op_type for n in model.graph.node]
    assert ops[0] == "Gemm" and ops[-2:] == ["Gemm", "Sigmoid" if data.n_classes == 2 else "Softmax"]
    assert ("Mul" in ops) == (gain != 1) and ("Greater" in ops) == (activation == "step")


def test_onnx_export_checks_the_shape_it_is_asked_for(spiral):
    mlp = train_mlp(spiral.x_train, spiral.y_train, 2, TrainConfig(epochs=1))
    with pytest.raises(UsageError):
        mlp_to_onnx(mlp, n_in=3, n_classes=2)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(activation="tanh"),
        dict(bits=0),
        dict(bits=17),
        dict(scheme="ternary"),
        dict(init="xavier"),
        dict(hidden=0),
        dict(val_fraction=1.0),
        dict(gain=0),
    ],
)
def test_bad_config_is_a_usage_error(kwargs):
    with pytest.raises(UsageError):
        TrainConfig(**kwargs)


def test_bad_data_is_a_data_error():
    x = np.zeros((20, 3), np.float32)
    with pytest.raises(DataError, match="labels"):
        train_mlp(x, np.full(20, 5), 2, TrainConfig(epochs=1))
    with pytest.raises(DataError):
        train_mlp(x, np.zeros(19, int), 2, TrainConfig(epochs=1))
    with pytest.raises(DataError, match="features"):
        mlp = train_mlp(x, np.arange(20) % 2, 2, TrainConfig(epochs=1))
        predict_float(mlp, np.zeros((2, 4)))
