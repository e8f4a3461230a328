"""Quantization-aware training of one-hidden-layer MLPs, the paper's recipe, in numpy.

Network (weights in ONNX Gemm ``transB=1`` layout, ``w1`` is (hidden, n_in))::

    z = gain * (W1 x + b1)          h = f(z)  (f from hwq.ir.activations: step, sigmoid, relu)
    o = W2 h + b2                   2 classes: one logit, p = sigmoid(o), label 1 iff o > 0
                                    else:      softmax(o), label argmax(o)

Loss: binary cross-entropy (2 classes) or categorical cross-entropy, batch mean.

Training (paper Section 4): Adam (lr 1e-3, betas 0.9 / 0.999, eps 1e-8), a seeded 10 %
validation split, early stopping that keeps the weights of the best validation-accuracy epoch
(patience ``patience`` epochs). Float "shadow" parameters are clipped to [-1, 1] after every
step. With ``bits`` set, the forward pass uses ``Q(p) = scheme.fake_quantize(p, bits)`` for
every weight and bias and the backward pass goes straight through the rounding
(``dL/dp := dL/dQ(p)``); the step activation back-propagates its surrogate derivative.

Speed: inputs, parameters and matmuls are float32 (BLAS); the Adam update with clipping and
the re-quantization of all parameters are two SIMD numba loops over one flat buffer.
Validation accuracy and :func:`predict_float` use the exact float64 evaluation of
:func:`logits_float`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace

import numba
import numpy as np

from hwq.errors import DataError, UsageError
from hwq.ir import activations, float_ops
from hwq.params import param
from hwq.quant.schemes import Scheme, check_bits, get_scheme

SMALL_DATA = 10_000  # training sets below this size get the small-data budget
AUTO_TRAINING = {"small": (500, 100), "large": (50, 10)}  # (epochs, patience)


def training_budget(n_train: int) -> tuple[int, int]:
    """The default ``(epochs, patience)``: 500 / 100 below 10,000 samples, else 50 / 10."""
    return AUTO_TRAINING["small" if n_train < SMALL_DATA else "large"]

BETA1, BETA2, ADAM_EPS = 0.9, 0.999, 1e-8
STALL_MARGIN = 0.05  # a run whose best validation accuracy is within this of chance stalled
INITS = ("grid", "default")
MAX_HIDDEN = 65_536
MAX_PARAMETERS = 2**26  # weights and biases: five float32 copies of them are 1.3 GiB


@dataclass(frozen=True)
class TrainConfig:
    """The training parameters, declared once (``hwq.params``): ``hwq train``'s options, ``hwq
    sweep``'s (the fields with ``sweep``; activation, bits and seed are the sweep's axes, scheme
    its quantizer's) and the sweep spec's ``TrainSettings`` are generated from these fields."""

    hidden: int = param(100, help="Hidden units.")
    activation: str = param("relu", help="Hidden activation: step | sigmoid | relu.", sweep=False)
    bits: int | None = param(None, help="QAT weight bits 1..16 (omit for float training).", sweep=False)
    scheme: str = param("uniform", help="QAT weight levels: uniform | narrow | pow2.", sweep=False)
    gain: float = param(1.0, help="Hidden pre-activation gain.", auto="10 for spirals, 1 otherwise")
    epochs: int = param(100, help="Maximum epochs.", auto="500 below 10,000 training samples, else 50")
    batch_size: int = param(64, help="Mini-batch size.")
    learning_rate: float = param(1e-3, help="Adam learning rate.", flags=("--lr",))
    val_fraction: float = param(0.1, help="Share of the training split held out for validation (early stopping).")
    patience: int = param(10, help="Early-stopping patience in epochs.", auto="100 below 10,000 samples, else 10")
    init: str = param("grid", help="Weight init: grid (U(-1, 1), spans the quantization grid) | default "
                                   "(U(-1/sqrt(fan_in), 1/sqrt(fan_in))).")
    seed: int = param(0, help="Random seed (data split, init, batches).", sweep=False)

    def __post_init__(self):
        for f in fields(self):
            check_train_param(f.name, getattr(self, f.name))


def check_train_param(name: str, value):
    """Refuse a bad value of the training parameter ``name`` in one line (``TrainConfig`` and
    the sweep spec's ``TrainSettings`` both call this)."""
    if name == "activation" and value not in activations.HIDDEN_ACTIVATIONS:
        raise UsageError(f"unknown hidden activation '{value}'",
                         hint="use " + ", ".join(activations.HIDDEN_ACTIVATIONS))
    if name == "bits" and value is not None:
        check_bits(value)
    if name == "scheme":
        get_scheme(value)
    if name == "init" and value not in INITS:
        raise UsageError(f"unknown init '{value}'", hint="use grid or default")
    if name in ("hidden", "epochs", "batch_size", "patience"):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise UsageError(f"{name} must be a positive integer, got {value!r}")
        if name == "hidden" and value > MAX_HIDDEN:
            raise UsageError(f"hidden must be at most {MAX_HIDDEN} units, got {value}")
    if name == "seed" and (not isinstance(value, (int, np.integer)) or value < 0):
        raise UsageError(f"seed must be a non-negative integer, got {value!r}")
    if name == "val_fraction" and not (isinstance(value, (int, float, np.integer, np.floating))
                                       and 0 < value < 1):
        raise UsageError(f"val_fraction must lie in (0, 1), got {value}")
    if name in ("gain", "learning_rate"):
        if isinstance(value, bool) or not (isinstance(value, (int, float, np.integer, np.floating))
                                           and math.isfinite(value) and value > 0):
            raise UsageError(f"{name} must be finite and positive, got {value!r}")


def auto_training(data_name: str, n_train: int) -> dict:
    """The computed defaults (the ``auto`` fields of :class:`TrainConfig`) for a data set:
    epochs and patience by training-set size (:func:`training_budget`), gain 10 for spirals."""
    epochs, patience = training_budget(n_train)
    return {"epochs": epochs, "patience": patience, "gain": 10.0 if data_name.startswith("spiral") else 1.0}


@dataclass(frozen=True, eq=False)
class TrainedMLP:
    """Trained parameters (float64, read-only). With ``config.bits`` set they lie exactly on
    the grid: ``code * scheme.unit_scale(bits)``. ``stalled``: best validation accuracy within
    5 points of chance (the majority-class share of the validation labels)."""

    w1: np.ndarray  # (hidden, n_in)
    b1: np.ndarray  # (hidden,)
    w2: np.ndarray  # (n_out, hidden); n_out = 1 for 2 classes
    b2: np.ndarray  # (n_out,)
    config: TrainConfig
    best_epoch: int  # 1-based
    val_accuracy: float
    train_accuracy: float
    stalled: bool
    history: dict[str, np.ndarray] = field(default_factory=dict)  # loss, val_accuracy per epoch

    def __post_init__(self):
        for name in ("w1", "b1", "w2", "b2"):
            a = np.array(getattr(self, name), dtype=np.float64)
            a.setflags(write=False)
            object.__setattr__(self, name, a)

    @property
    def n_in(self) -> int:
        return self.w1.shape[1]

    @property
    def n_classes(self) -> int:
        return 2 if self.w2.shape[0] == 1 else self.w2.shape[0]


# ---------------------------------------------------------------- forward pass and prediction


def _hidden_pre(x: np.ndarray, w1, b1, gain: float) -> np.ndarray:
    return float_ops.dense(x, w1, b1, np.float32(gain) if gain != 1 else None)


def _decide(logits: np.ndarray) -> np.ndarray:
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).astype(np.int64)
    return np.argmax(logits, axis=1)


def _as_inputs(x: np.ndarray, n_in: int) -> np.ndarray:
    x = np.asarray(x)
    x = x.reshape(len(x), -1)
    if x.shape[1] != n_in:
        raise DataError(f"inputs have {x.shape[1]} features, the network expects {n_in}")
    return x


def _affine64(x: np.ndarray, w: np.ndarray, b: np.ndarray, config: TrainConfig) -> np.ndarray:
    """``x W^T + b`` in float64; on a grid as ``scale * (x codes^T + bias codes)``."""
    if config.bits is None:
        return float_ops.dense(x, w, b)
    s = get_scheme(config.scheme).unit_scale(config.bits)
    return float_ops.dense(x, np.rint(w / s), np.rint(b / s), s)


def _forward64(p: dict[str, np.ndarray], config: TrainConfig, x: np.ndarray, chunk: int = 8192) -> np.ndarray:
    out = np.empty((len(x), p["w2"].shape[0]))
    for i in range(0, len(x), chunk):
        xb = x[i : i + chunk].astype(np.float64)
        z = config.gain * _affine64(xb, p["w1"], p["b1"], config)
        out[i : i + chunk] = _affine64(activations.forward(config.activation, z), p["w2"], p["b2"], config)
    return out


def logits_float(mlp: TrainedMLP, x: np.ndarray) -> np.ndarray:
    """Output logits, float64 (N, n_out), of the stored network.

    A QAT layer is evaluated with its integer codes factored out, so sums of codes times
    dyadic inputs (digits, step outputs) are exact: a tie (a logit or a step pre-activation of
    exactly 0, frequent with step units at low bit widths) then stays exactly 0, as in the
    integer semantics, instead of taking the sign of float32 rounding noise.
    """
    p = {k: getattr(mlp, k) for k in ("w1", "b1", "w2", "b2")}
    return _forward64(p, mlp.config, _as_inputs(x, mlp.n_in))


def predict_float(mlp: TrainedMLP, x: np.ndarray) -> np.ndarray:
    """Class predictions (int64) from :func:`logits_float`: 2 classes: 1 iff the logit > 0;
    else argmax, the lowest index winning ties."""
    return _decide(logits_float(mlp, x))


# --------------------------------------------------- Adam, clip and quantization kernels

MODE_FLOAT, MODE_ODD, MODE_RINT = 0, 1, 2


def quantizer_args(scheme: Scheme, bits: int | None) -> tuple[int, float, float]:
    """(mode, scale, max_code) for :func:`quantize_into`, mirroring ``scheme.to_codes``."""
    if bits is None:
        return MODE_FLOAT, 1.0, 1.0
    mode = MODE_ODD if scheme.odd_codes or bits == 1 else MODE_RINT
    return mode, scheme.unit_scale(bits), float(scheme.max_code(bits))


# Parameters, moments and gradients are float32 (half the memory traffic of float64).
# error_model="numpy" drops numba's division-by-zero checks, which would block SIMD.


@numba.njit(cache=True, error_model="numpy")
def quantize_into(w, out, mode, scale, max_code):
    """``out[i] = Q(w[i])`` for float32 ``w``: bit for bit ``scheme.fake_quantize(w, bits)``,
    which divides float32 ``w`` by ``float32(scale)`` and multiplies the code by ``scale``."""
    s32 = np.float32(scale)
    if mode == MODE_ODD:  # nearest odd code, 0 -> +1
        for i in range(w.size):
            v = w[i] / s32
            c = min(2.0 * np.floor(abs(v) / np.float32(2.0)) + 1.0, max_code) * scale
            out[i] = c if v >= 0 else -c
    elif mode == MODE_RINT:  # nearest code, ties to even
        for i in range(w.size):
            c = np.float64(np.rint(w[i] / s32))
            out[i] = min(max(c, -max_code), max_code) * scale
    else:
        for i in range(w.size):
            out[i] = w[i]


@numba.njit(cache=True, error_model="numpy")
def _adam_clip(w, m, v, g, lr_t, eps_t):
    """One Adam step (bias correction folded into lr_t and eps_t), then clip to [-1, 1]."""
    b1, b2, one = np.float32(BETA1), np.float32(BETA2), np.float32(1.0)
    lr, eps = np.float32(lr_t), np.float32(eps_t)
    for i in range(w.size):
        mi = b1 * m[i] + (one - b1) * g[i]
        vi = b2 * v[i] + (one - b2) * g[i] * g[i]
        m[i], v[i] = mi, vi
        wi = w[i] - lr * mi / (np.sqrt(vi) + eps)
        wi = one if wi > one else wi
        w[i] = -one if wi < -one else wi


# ------------------------------------------------------------------------------ training


class _FlatParams:
    """All parameters in one flat buffer per role, with named views in Gemm layout."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]):
        sizes = [int(np.prod(s)) for s in shapes.values()]
        n, self.shapes = sum(sizes), shapes
        self.shadow, self.m, self.v, self.grad, self.quant = np.zeros((5, n), np.float32)
        self.offsets = np.cumsum([0] + sizes)

    def views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        o = self.offsets
        return {k: flat[o[i] : o[i + 1]].reshape(s) for i, (k, s) in enumerate(self.shapes.items())}


def _init(shapes: dict[str, tuple[int, ...]], init: str, rng: np.random.Generator) -> dict:
    """grid: U(-1, 1) for every weight and bias, so the start covers every level of any grid;
    default: PyTorch's Linear init U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (weights and biases)."""
    out = {}
    for layer in ("1", "2"):
        fan_in = shapes["w" + layer][1]
        bound = 1.0 if init == "grid" else 1.0 / np.sqrt(fan_in)
        for k in ("w" + layer, "b" + layer):
            out[k] = rng.uniform(-bound, bound, size=shapes[k])
    return out


def _split(x, y, val_fraction, rng):
    order = rng.permutation(len(x))
    n_val = max(1, int(round(val_fraction * len(x))))
    if n_val >= len(x):
        raise DataError(f"{len(x)} training samples are too few for a validation split")
    val, tr = order[:n_val], np.sort(order[n_val:])
    return x[tr], y[tr], x[val], y[val]


def _loss_grad_logits(o: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy and its gradient with respect to the logits."""
    if o.shape[1] == 1:
        t = y.astype(np.float32)[:, None]
        loss = float(np.mean(np.logaddexp(0, o) - t * o))
        return loss, (activations.sigmoid(o) - t) / len(y)
    e = np.exp(o - o.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    rows = np.arange(len(y))
    loss = float(-np.mean(np.log(np.maximum(p[rows, y], 1e-30))))
    p[rows, y] -= 1
    return loss, p / len(y)


def _backprop(xb, yb, q, g, activation, gain):
    """Forward with the quantized params ``q``; write straight-through gradients into ``g``."""
    z = _hidden_pre(xb, q["w1"], q["b1"], gain)
    h = activations.forward(activation, z)
    loss, do = _loss_grad_logits(float_ops.dense(h, q["w2"], q["b2"]), yb)
    np.dot(do.T, h, out=g["w2"])
    g["b2"][:] = do.sum(axis=0)
    dz = (do @ q["w2"]) * activations.derivative(activation, z)
    if gain != 1:
        dz *= np.float32(gain)
    np.dot(dz.T, xb, out=g["w1"])
    g["b1"][:] = dz.sum(axis=0)
    return loss


def _run_epoch(x, y, order, flat, q, g, config, quant, step):
    losses = []
    for start in range(0, len(order), config.batch_size):
        idx = order[start : start + config.batch_size]
        losses.append(_backprop(x[idx], y[idx], q, g, config.activation, config.gain) * len(idx))
        step += 1
        bc1, bc2 = 1 - BETA1**step, 1 - BETA2**step
        lr_t = config.learning_rate * math.sqrt(bc2) / bc1
        _adam_clip(flat.shadow, flat.m, flat.v, flat.grad, lr_t, ADAM_EPS * math.sqrt(bc2))
        quantize_into(flat.shadow, flat.quant, *quant)
    return sum(losses) / len(order), step


def _check_data(x, y, n_classes):
    if x.ndim != 2 or len(x) != len(y) or len(x) < 2:
        raise DataError(f"training inputs {x.shape} and labels {y.shape} do not fit")
    if not isinstance(n_classes, (int, np.integer)) or n_classes < 2:
        raise UsageError(f"n_classes must be an integer >= 2, got {n_classes!r}")
    if y.min() < 0 or y.max() >= n_classes:
        raise DataError(f"labels must lie in 0..{n_classes - 1}")
    if not np.all(np.isfinite(x)):
        raise DataError("training inputs contain NaN or Inf values")


def _one_blas_thread():
    """Batch-sized GEMMs run fastest on one BLAS thread: two threads measured 10-20 % slower
    on an idle 2-core machine and 3x slower on a busy one."""
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def _fit(xtr, ytr, xval, yval, flat, config, quant, rng, progress):
    """Epochs with early stopping; returns ((best val acc, epoch, shadow copy), losses, accs)."""
    q, g = flat.views(flat.quant), flat.views(flat.grad)
    best = (-1.0, 0, flat.shadow.copy())  # (val accuracy, epoch, shadow params)
    losses, val_accs, step = [], [], 0
    for epoch in range(1, config.epochs + 1):
        loss, step = _run_epoch(xtr, ytr, rng.permutation(len(xtr)), flat, q, g, config, quant, step)
        acc = float(np.mean(_decide(_forward64(q, config, xval)) == yval))
        losses.append(loss)
        val_accs.append(acc)
        if acc > best[0]:
            best = (acc, epoch, flat.shadow.copy())
        if progress is not None:
            progress(epoch, config.epochs, {"loss": loss, "val_accuracy": acc, "best_epoch": best[1]})
        if epoch - best[1] >= config.patience:
            break
    return best, losses, val_accs


def train_mlp(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    config: TrainConfig = TrainConfig(),
    *,
    progress: Callable[[int, int, dict], None] | None = None,
) -> TrainedMLP:
    """Train with the recipe in the module docstring; deterministic given ``config.seed``.

    ``progress(epoch, epochs, {"loss", "val_accuracy", "best_epoch"})`` is called per epoch.
    """
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(len(x), -1)
    y = np.asarray(y, dtype=np.int64)
    _check_data(x, y, n_classes)
    rng = np.random.default_rng(config.seed)
    xtr, ytr, xval, yval = _split(x, y, config.val_fraction, rng)
    n_out = 1 if n_classes == 2 else n_classes
    shapes = {"w1": (config.hidden, x.shape[1]), "b1": (config.hidden,), "w2": (n_out, config.hidden), "b2": (n_out,)}
    n_params = sum(math.prod(s) for s in shapes.values())
    if n_params > MAX_PARAMETERS:
        raise UsageError(f"a {x.shape[1]}-{config.hidden}-{n_out} network has {n_params} parameters; "
                         f"at most {MAX_PARAMETERS} (fewer hidden units)")
    flat = _FlatParams(shapes)
    for k, a in _init(shapes, config.init, rng).items():
        flat.views(flat.shadow)[k][...] = a
    scheme = get_scheme(config.scheme)
    quant = quantizer_args(scheme, config.bits)
    quantize_into(flat.shadow, flat.quant, *quant)

    with _one_blas_thread():
        best, losses, val_accs = _fit(xtr, ytr, xval, yval, flat, config, quant, rng, progress)

    params = flat.views(best[2])
    if config.bits is not None:
        params = {k: scheme.fake_quantize(a, config.bits) for k, a in params.items()}
    chance = np.bincount(yval, minlength=n_classes).max() / len(yval)
    mlp = TrainedMLP(
        **params,
        config=config,
        best_epoch=best[1],
        val_accuracy=best[0],
        train_accuracy=0.0,
        stalled=bool(best[0] <= chance + STALL_MARGIN),
        history={"loss": np.array(losses), "val_accuracy": np.array(val_accs)},
    )
    return replace(mlp, train_accuracy=float(np.mean(predict_float(mlp, xtr) == ytr)))


# ---------------------------------------------------------------------------- ONNX export

ONNX_OPSET, ONNX_IR_VERSION = 17, 8  # onnxruntime 1.23 refuses onnx 1.23's default IR 14


def _onnx_hidden_nodes(activation: str, gain: float) -> tuple[list, list]:
    """Nodes from ``pre`` (W1 x + b1) to ``h``, and the constants they need."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, consts, z = [], [], "pre"
    if gain != 1:
        consts.append(numpy_helper.from_array(np.array(gain, np.float32), "gain"))
        nodes.append(helper.make_node("Mul", ["pre", "gain"], ["z"], name="gain"))
        z = "z"
    if activations.kind(activation) is activations.STEP:
        consts.append(numpy_helper.from_array(np.array(0, np.float32), "zero"))
        nodes += [
            helper.make_node("Greater", [z, "zero"], ["spike"], name="step"),
            helper.make_node("Cast", ["spike"], ["h"], name="step_cast", to=TensorProto.FLOAT),
        ]
    else:
        op = {"relu": "Relu", "sigmoid": "Sigmoid"}[activation]
        nodes.append(helper.make_node(op, [z], ["h"], name=activation))
    return nodes, consts


def mlp_to_onnx(mlp: TrainedMLP, *, n_in: int, n_classes: int, metadata: dict[str, str] | None = None):
    """Export as an ONNX model (opset 17, IR 8): ``input`` float [N, n_in] -> Gemm(W1, b1,
    transB=1) -> [Mul(gain)] -> Relu | Sigmoid | Greater(0)+Cast -> Gemm(W2, b2) ->
    Softmax(axis=-1) | Sigmoid -> ``scores``. ``metadata_props`` hold ``hwq.activation``,
    ``hwq.gain``, ``hwq.scheme``, ``hwq.bits`` (absent for float training), ``hwq.hidden``,
    ``hwq.n_classes``, ``hwq.seed``, ``hwq.init``, ``hwq.best_epoch``, ``hwq.val_accuracy``, and
    every ``metadata`` entry (keys get an ``hwq.`` prefix unless they have one)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if (n_in, n_classes) != (mlp.n_in, mlp.n_classes):
        raise UsageError(
            f"network is {mlp.n_in} inputs / {mlp.n_classes} classes, export asked for {n_in} / {n_classes}"
        )
    c = mlp.config
    weights = [numpy_helper.from_array(getattr(mlp, k).astype(np.float32), k.upper()) for k in ("w1", "b1", "w2", "b2")]
    hidden_nodes, consts = _onnx_hidden_nodes(c.activation, c.gain)
    out_op = "Sigmoid" if n_classes == 2 else "Softmax"
    nodes = [
        helper.make_node("Gemm", ["input", "W1", "B1"], ["pre"], name="fc1", transB=1),
        *hidden_nodes,
        helper.make_node("Gemm", ["h", "W2", "B2"], ["logits"], name="fc2", transB=1),
        helper.make_node(
            out_op, ["logits"], ["scores"], name="output", **({"axis": -1} if out_op == "Softmax" else {})
        ),
    ]
    n_out = mlp.w2.shape[0]
    graph = helper.make_graph(
        nodes,
        "hwq_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", n_in])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", n_out])],
        initializer=weights + consts,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], producer_name="hwq")
    model.ir_version = ONNX_IR_VERSION
    props = {
        "activation": c.activation,
        "gain": repr(float(c.gain)),
        "scheme": c.scheme,
        "hidden": str(c.hidden),
        "n_classes": str(n_classes),
        "seed": str(c.seed),
        "init": c.init,
        "best_epoch": str(mlp.best_epoch),
        "val_accuracy": repr(mlp.val_accuracy),
    }
    if c.bits is not None:
        props["bits"] = str(c.bits)
    props.update(metadata or {})
    props = {k if k.startswith("hwq.") else "hwq." + k: str(v) for k, v in props.items()}
    helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    return model
