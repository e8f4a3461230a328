"""``sim``: the bit-accurate integer simulator (Numba + exact fast products).

Each layer's product ``h @ W.T`` takes the fastest path that a bound proves exact, from the
range ``[lo, hi]`` its input codes can take (the input format for layer 0, the previous
activation's output range after that) and ``S = max_row sum|W_row|``:

* ``vnni``: 8-bit codes and int8 weights with ``255 * S < 2^31`` on a CPU with AVX-512 VNNI
  (``targets/common/vnni.py``): u8 x s8 products summed in int32, fused with bias, requantization and the
  activation;
* ``vnni16``: codes of up to 16 bits with the same weights and bound: two byte planes
  ``x + offset = 256 x_hi + x_lo`` through the same int8 product, combined in int64;
* ``vnni/wD``, ``vnni16/wD``: weights beyond int8 as ``D`` signed byte digits
  (``W = sum_d 256^d D_d``), one product per digit and plane (at most 4), combined in int64;
* ``avx2``: where no VNNI product applies (a CPU without AVX-512 VNNI, or ``vnni=False``) on a
  CPU with AVX2 (``targets/common/avx2.py``): codes stored in int16 (``[0, 65535]`` as
  ``code - 32768``), weights in int16, ``vpmaddwd`` pairs summed in int32, exact when
  ``peak * S < 2^31`` for the largest stored code magnitude ``peak``; fused like ``vnni``.
  8-bit codes with weights whose pairs stay within int16 (``avx2.u8_groups``, about +-64)
  run the same path on ``vpmaddubsw`` instead (u8 codes, int8 weights, int16 partial sums
  over a few groups of four, widened into int32): twice the products per instruction;
* ``float32`` BLAS when ``S * max(|lo|, |hi|) < 2^24``, ``float64`` BLAS below ``2^53`` (every
  partial sum is then an integer the float type represents exactly, in any summation order);
* an int64 Numba loop otherwise.

Bias, requantization and activations run in one Numba kernel (``kernels.py``). Layer 0 checks
the codes it receives: codes outside the input format fall back to a path proven for the codes
actually seen, so the result stays exact. Outputs equal ``hwq.quant.reference`` bit for bit
(tests/test_sim.py). Input codes must be integers (a float dtype must hold integer values).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hwq.errors import TargetError
from hwq.quant.bounds import check_layer, check_pool, check_shift_range, rounding_half, row_sum_bound
from hwq.quant.qnet import SIGMOID_LUT_HALF, QLayer, QPool, QuantizedNetwork, walk
from hwq.quant.reference import decide
from hwq.target.protocol import Option, check_options, parse_bool_or_auto

from ..common import avx2, products, vnni
from ..common.plans import FallbackPlans, as_codes, owned, seen_range
from ..common.products import DTYPES
from . import kernels
from .conv import CompiledConv, CompiledPool

NAME = "sim"
EMPTY = np.zeros((0, 0), np.int64)
CHUNK_BYTES = 128 * 2**20  # a convolutional network runs the batch in chunks of about this much working memory


def vnni_path(layer: QLayer, lo: int, hi: int) -> tuple[str, int, list[np.ndarray]] | None:
    """``(name, planes, digits)`` of the VNNI product for this layer, or None: ``vnni``
    (8-bit codes, int8 weights), ``vnni16`` (16-bit codes as two byte planes), with ``/wD``
    when the weights run as ``D`` signed byte digits (``vnni.digit_plan``)."""
    if vnni.fits(layer.weight, lo, hi):
        return "vnni", 0, [layer.weight]
    plan = vnni.digit_plan(layer.weight, lo, hi)
    if plan is None:
        return None
    planes, digits = plan
    name = ("vnni" if planes == 1 else "vnni16") + (f"/w{len(digits)}" if len(digits) > 1 else "")
    return name, planes, digits


def offset_of(planes: int, lo: int, hi: int) -> int:
    """What the VNNI path adds to codes in ``[lo, hi]`` to store them unsigned."""
    return vnni.plane_offset(lo, hi) if planes == 2 else vnni.input_offset(lo, hi)


def product_path(layer: QLayer, lo: int, hi: int, use_vnni: bool, use_avx2: bool = False) -> str:
    found = vnni_path(layer, lo, hi) if use_vnni else None
    if found is not None:
        return found[0]
    if use_avx2 and avx2.fits(layer.weight, lo, hi):
        return "avx2"
    return products.product_path(row_sum_bound(layer.weight), max(abs(lo), abs(hi)))


@dataclass
class CompiledLayer:
    layer: QLayer
    path: str  # "vnni", "vnni16" (/wD), "avx2", "float32", "float64" or "int64"
    lo: int  # the input codes this path is proven for
    hi: int
    weights: np.ndarray  # packed int8 (vnni), packed int16 (avx2), W.T in the product dtype (BLAS), W.T int64
    base: np.ndarray  # bias, minus offset * sum_i W[:, i] when vnni/avx2 store codes + offset
    mode: int
    act_max: int
    mult: np.ndarray
    half: np.ndarray  # 2^(shift-1), 0 where shift == 0
    shift: np.ndarray
    lut: np.ndarray
    planes: int = 0  # VNNI: 0 (8-bit codes, int8 weights), else byte planes of the codes
    groups: int = 0  # avx2 on 8-bit codes: groups of four summed in int16 (vpmaddubsw); 0: vpmaddwd

    @classmethod
    def build(cls, layer: QLayer, lo: int, hi: int, use_vnni: bool, use_avx2: bool = False) -> CompiledLayer:
        m = layer.weight.shape[0]
        path = product_path(layer, lo, hi, use_vnni, use_avx2)
        base, planes, groups = layer.bias, 0, 0
        if path.startswith("vnni"):
            _, planes, digits = vnni_path(layer, lo, hi)
            packed = [vnni.pack_weights(d) for d in digits]
            weights = packed[0] if planes == 0 else np.stack(packed)
            base = base - offset_of(planes, lo, hi) * layer.weight.sum(axis=1)
        elif path == "avx2" and avx2.u8_groups(layer.weight, lo, hi):
            groups = avx2.u8_groups(layer.weight, lo, hi)
            weights = avx2.pack_weights8(layer.weight)
            base = base - avx2.u8_offset(lo, hi) * layer.weight.sum(axis=1)
        elif path == "avx2":
            weights = avx2.pack_weights(layer.weight)
            base = base - avx2.input_offset(lo, hi) * layer.weight.sum(axis=1)
        else:
            weights = np.ascontiguousarray(layer.weight.T, dtype=DTYPES[path])
        rq = layer.requant
        shift = owned(rq.shift if rq else 0, shape=(m,))
        check_shift_range(shift)
        half = rounding_half(shift)
        mode, act_max, lut = kernels.epilogue(layer)
        return cls(layer, path, lo, hi, owned(weights, weights.dtype), owned(base),
                   mode, act_max, owned(rq.multiplier if rq else 0, shape=(m,)),
                   owned(half), shift, owned(lut), planes, groups)

    @property
    def in_dtype(self):
        """The container the previous layer writes this layer's input codes in."""
        if self.path.startswith("vnni16"):
            return np.uint16 if self.lo >= 0 else np.int16
        if self.path.startswith("vnni"):
            return np.uint8 if self.lo >= 0 else np.int8
        if self.path == "avx2":
            return avx2.container(self.lo, self.hi)
        return DTYPES[self.path]

    @property
    def checks_codes(self) -> bool:
        """Whether ``run`` itself counts codes outside ``[lo, hi]`` (the packing products do)."""
        return self.path.startswith("vnni") or self.path == "avx2"

    def patch_bytes(self) -> int:
        return 0

    def run(self, h: np.ndarray, out_dtype, want_acc: bool, want_out: bool):
        """``(acc, codes)``: the int64 accumulator and the activated codes (``out_dtype``), each
        None unless asked for. Returns None when codes fall outside ``[lo, hi]``."""
        n, m = h.shape[0], self.layer.weight.shape[0]
        acc = np.empty((n, m), np.int64) if want_acc else EMPTY
        out = np.empty((n, m), out_dtype) if want_out else EMPTY.astype(out_dtype)
        args = (self.base, self.mult, self.half, self.shift, self.mode, self.act_max, self.lut,
                SIGMOID_LUT_HALF, acc, out)
        if self.path.startswith("vnni"):
            offset = offset_of(self.planes, self.lo, self.hi)
            if kernels.vnni_layer(h, self.lo, self.hi, offset, self.weights, *args, planes=self.planes):
                return None
        elif self.groups:
            if kernels.avx2_u8_layer(h, self.lo, self.hi, self.weights, self.groups, *args):
                return None
        elif self.path == "avx2":
            if kernels.avx2_layer(h, self.lo, self.hi, avx2.input_offset(self.lo, self.hi), self.weights, *args):
                return None
        else:
            if self.path == "int64":
                product = products.int_matmul(np.ascontiguousarray(h), self.weights)
            else:
                product = np.asarray(h, dtype=self.weights.dtype) @ self.weights
            kernels.finish_layer(product, *args)
        return (acc if want_acc else None), (out if want_out else None)


@dataclass
class SimProgram:
    net: QuantizedNetwork
    target: str = NAME
    artifacts: dict[str, Any] = field(default_factory=dict)
    use_vnni: bool | None = None  # None: wherever the CPU has AVX-512 VNNI
    use_avx2: bool | None = None  # None: wherever the CPU has AVX2 (for layers VNNI does not run)
    layers: list[CompiledLayer | CompiledConv | CompiledPool] = field(init=False)
    exact = True

    def __post_init__(self):
        if self.use_vnni and not vnni.available():
            raise TargetError("sim: vnni=True needs a CPU with AVX-512 VNNI",
                              hint="compile with vnni=None (auto) or vnni=False")
        if self.use_avx2 and not avx2.available():
            raise TargetError("sim: avx2=True needs a CPU with AVX2",
                              hint="compile with avx2=None (auto) or avx2=False")
        fmt = self.net.input
        self.options = {name: value for name, value in (("vnni", self.use_vnni), ("avx2", self.use_avx2))
                        if value is not None}
        self.use_vnni = vnni.available() if self.use_vnni is None else bool(self.use_vnni)
        self.use_avx2 = avx2.available() if self.use_avx2 is None else bool(self.use_avx2)
        self.layers = self.plan(fmt.qmin, fmt.qmax)
        self._fallbacks = FallbackPlans(self.plan)
        self.chunk = None if self.net.dense else self.chunk_size(self.layers)

    def plan(self, lo: int, hi: int) -> list[CompiledLayer | CompiledConv | CompiledPool]:
        """Each node's product (or pooling) for inputs in ``[lo, hi]``, after proving that no int64
        intermediate can wrap (``hwq.quant.bounds.check_layer``/``check_pool``; refused otherwise)."""
        layers = []
        for i, layer, _, (a, b) in walk(self.net, lo, hi):
            if isinstance(layer, QPool):
                check_pool(layer, i, a, b)
                layers.append(CompiledPool(layer, a, b))
                continue
            check_layer(layer, i, a, b)
            build = CompiledLayer.build if layer.window is None else CompiledConv.build
            layers.append(build(layer, a, b, self.use_vnni, self.use_avx2))
        return layers

    def chunk_size(self, layers) -> int:
        """Samples per chunk for a convolutional network: the largest node's inputs, outputs,
        accumulators and BLAS patch matrix (8 bytes a value) within ``CHUNK_BYTES``."""
        shape_in = int(np.prod(self.net.input_shape))
        per_sample = 1
        for c in layers:
            n_out = c.layer.n_out
            per_sample = max(per_sample, 8 * (shape_in + 3 * n_out) + 2 * c.patch_bytes())
            shape_in = n_out
        return max(1, CHUNK_BYTES // per_sample)

    @property
    def report(self) -> dict[str, Any]:
        return {"products": [c.path for c in self.layers]}

    def _run(self, x_q: np.ndarray, want_accs: bool) -> list[np.ndarray]:
        x_q = as_codes(x_q, self.net.n_features, NAME)
        result = self._run_chunks(self.layers, x_q, want_accs)
        if result is None:  # codes outside the input format: a plan proven for what we got
            x_q = x_q.astype(np.int64)  # the reference's reading of the codes
            fmt = self.net.input
            plan = self._fallbacks.for_range(*seen_range(x_q, fmt.qmin, fmt.qmax))
            result = self._run_chunks(plan, x_q, want_accs)
        return result

    def _run_chunks(self, layers, x_q: np.ndarray, want_accs: bool):
        """``_run_plan`` over the batch, in chunks of ``self.chunk`` samples for a convolutional
        network (bounded memory: the feature maps and patch matrices of one chunk at a time)."""
        n = x_q.shape[0]
        if self.chunk is None or n <= self.chunk:
            return self._run_plan(layers, x_q, want_accs)
        outs = None
        for i0 in range(0, n, self.chunk):
            part = self._run_plan(layers, x_q[i0:i0 + self.chunk], want_accs)
            if part is None:
                return None
            if outs is None:
                outs = [None if a is None else np.empty((n, *a.shape[1:]), a.dtype) for a in part]
            for whole, a in zip(outs, part):
                if a is not None:
                    whole[i0:i0 + a.shape[0]] = a
        return outs

    @staticmethod
    def _run_plan(layers: list[CompiledLayer | CompiledConv | CompiledPool], h: np.ndarray, want_accs: bool):
        accs = []
        for i, c in enumerate(layers):
            last = i + 1 == len(layers)
            out_dtype = np.int64 if last else layers[i + 1].in_dtype
            if not c.checks_codes and i == 0 and h.size:
                lo, hi = products.code_range(h)
                if lo < c.lo or hi > c.hi:
                    return None
            ran = c.run(h, out_dtype, want_acc=want_accs or last, want_out=not last)
            if ran is None:
                return None
            acc, h = ran
            accs.append(acc)
        return accs

    def accumulators(self, x_q: np.ndarray) -> list[np.ndarray]:
        """The int64 accumulator of every layer (``hwq.quant.reference.trace``)."""
        return self._run(x_q, want_accs=True)

    def forward(self, x_q: np.ndarray) -> np.ndarray:
        """Integer scores (N, n_out): the last layer's accumulator, for integer input codes
        ``x_q`` (N, n_features) of any numeric dtype."""
        return self._run(x_q, want_accs=False)[-1]

    def trace(self, x_q: np.ndarray) -> list[np.ndarray]:
        """Real values of every node: pre-activations ``z = acc * unit_scale`` (``acc_scale`` per
        output channel, repeated over a convolution's positions); a pooling's output codes times its scale."""
        return [acc * c.layer.unit_scale for acc, c in zip(self.accumulators(x_q), self.layers)]

    def decide(self, scores: np.ndarray) -> np.ndarray:
        return decide(scores, self.net.output)


class SimTarget:
    """``compile(net, vnni=None, avx2=None)``: ``vnni`` None uses AVX-512 VNNI products where the
    CPU has them, False never, True requires them; ``avx2`` likewise for the AVX2 int16 product
    (layers no VNNI product runs). Both False: float BLAS / int64 only."""

    name = NAME
    options = (Option("vnni", "AVX-512 VNNI int8 products: auto (where the CPU has them) | true | false",
                      None, parse_bool_or_auto, ("auto", "true", "false")),
               Option("avx2", "AVX2 int16 products where VNNI does not run: auto | true | false",
                      None, parse_bool_or_auto, ("auto", "true", "false")))

    def compile(self, net: QuantizedNetwork, *, vnni: bool | None = None, avx2: bool | None = None,
                **options: Any) -> SimProgram:
        check_options(NAME, self.options, options)
        return SimProgram(net, use_vnni=vnni, use_avx2=avx2)

    def load(self, net: QuantizedNetwork, artifacts: dict[str, Any], *, vnni: bool | None = None,
             avx2: bool | None = None, **options: Any) -> SimProgram:
        check_options(NAME, self.options, options)
        return SimProgram(net, artifacts=dict(artifacts), use_vnni=vnni, use_avx2=avx2)
