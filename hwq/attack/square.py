"""Square attack (Andriushchenko et al., ECCV 2020): score-based and gradient-free, it only
queries the judged program, so it runs on every target, remote devices included.

Each query is a point ``clip(x', bounds)`` put on the device's input grid (``Judge.codes``)
and answered by the program itself; the search minimises the margin of the integer scores
(``base.margin``: > 0 exactly where the model is right) and accepts a proposal only when the
margin drops. A pair (input, epsilon) stops at its first wrong decision or when its budget
(``queries``, the clean query and the start included) is spent. Queries are counted per pair
(``result.queries``).

The input is viewed as ``C x H x W`` maps: the network's input shape (``net.input_shape``,
``image_dims``) where it states one (a CNN's ``(C, H, W)``), or ``(H, W, C)`` where the program's
codes are channel-last (a Keras model through tf2onnx: ``image_view`` reads the layout from the
network, the windows then stay squares over height and width); a flat input of ``d`` features as
one channel of ``h = w = sqrt(d)`` when ``d`` is a square (8x8 digits, 28x28 images), else a
``1 x d`` row, the windows then being segments. Windows are squares over height and width,
the same position in every channel, with a sign (linf) or a pseudo-Gaussian's sign (l2) per
channel, as in the paper's reference implementation (``square_attack_linf``/``_l2``, images
``(n, c, h, w)``); with one channel this is what hwq always did (same numbers).
Following the reference implementation (one window position per iteration for the whole
batch, the ``p`` schedule halving at 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of 10,000
iterations, rescaled to the budget):

* ``linf``: start at vertical stripes ``x + eps * (+-1 per channel and column)``; each
  iteration sets one window of side ``round(sqrt(p H W))`` (at most ``min(H, W) - 1``) to
  ``x + eps * (+-1 per channel)`` (every channel's sign flipped where that would change nothing
  in the window; the reference resamples).
* ``l2``: start at a grid of pseudo-Gaussian blocks (side ``min(H, W) // 5``, a sign per block
  and channel) scaled to norm ``eps``; each iteration moves, per channel, the perturbation's
  mass from a second window into a pseudo-Gaussian update of the first (windows of odd side
  >= 3), the ball's remaining mass shared equally by the channels, keeping ``|delta|_2 = eps``
  before clipping.

Randomness: the window positions (one per iteration for the whole batch, as in the
reference) come from ``default_rng(seed)`` alone and are the same for every chunk and strength;
everything drawn per input (the start's stripes and blocks, the sign of each window) comes from
``(seed, eps, iteration, input index)`` (``hwq.attack.noise``). So a strength's result does not
depend on the other strengths in the list, nor on the chunking.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np

from hwq.attack.base import Attack, ChunkOutcome, code_dtype
from hwq.attack.pgd import _positive, _positive_int
from hwq.errors import UsageError
from hwq.params import declared_values, param
from hwq.ranges import check_norm

SQUARE_CHUNK_ELEMENTS = 2**22
ITERATION_TAG = 2**20  # stream tags: 0 the l-inf start, 1.. the l2 start's blocks, this + it the iterations


def p_schedule(p_init: float, it: int, n_iters: int) -> float:
    """The reference implementation's ``p_selection``: the share of the input one window covers."""
    it = int(it / max(n_iters, 1) * 10000)
    for stop, div in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64),
                      (6000, 128), (8000, 256), (10000, 512)):
        if it <= stop:
            return p_init / div
    return p_init


def image_shape(d: int) -> tuple[int, int]:
    """The ``h x w`` view of a flat input of ``d`` features (the network states no image shape):
    a square where ``d`` is one, else a ``1 x d`` row."""
    s = int(round(np.sqrt(d)))
    return (s, s) if s * s == d and s > 1 else (1, d)


def image_dims(shape) -> tuple[int, int, int]:
    """``(channels, height, width)`` that Square's windows move over, from the network's input
    shape: ``(C, H, W)`` as given (a map one pixel high or wide as a ``C x 1 x HW`` row of
    segments), ``(H, W)`` as one channel, a flat ``(d,)`` as ``image_shape(d)`` with one channel."""
    shape = tuple(int(v) for v in shape)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3:
        return (1, *image_shape(int(np.prod(shape))))
    c, h, w = shape
    return (c, h, w) if h > 1 and w > 1 else (c, 1, h * w)


def image_view(net, d: int) -> tuple[int, int, int, bool]:
    """``(channels, height, width, channel_last)``: the maps Square's windows move over, and
    whether the program's codes hold them channel-last (flat in ``(H, W, C)`` order).

    The importer reads an NHWC input (tf2onnx's ``Transpose [0, 3, 1, 2]`` on a Keras model's
    input, channels > 1) into its first convolution as one ``H x (W C)`` image
    (``hwq.onnx.conv_ops.nhwc_conv``), keeping the declared ``(H, W, C)`` as the network's input
    shape; that pair -- input shape ``(H, W, C)``, first layer a convolution over
    ``(1, H, W C)`` -- is how a network states a channel-last input (an NCHW network's first
    convolution reads its input shape itself). Everything else: ``image_dims`` of the input shape
    (``(d,)`` when the network states none), channel-first."""
    shape = tuple(int(v) for v in (getattr(net, "input_shape", None) or (d,)))
    layers = getattr(net, "layers", ())
    first = getattr(layers[0], "window", None) if layers else None
    if len(shape) == 3 and shape[2] > 1 and first is not None:
        h, w, c = shape
        if tuple(int(v) for v in first.in_shape) == (1, h, w * c):
            return (c, h, w, True) if h > 1 and w > 1 else (c, 1, h * w, True)
    return (*image_dims(shape), False)


def _pseudo_gaussian_rect(h: int, w: int) -> np.ndarray:
    delta = np.zeros((h, w))
    xc, yc = h // 2 + 1, w // 2 + 1
    c0, c1 = xc - 1, yc - 1
    for counter in range(max(xc, yc)):
        delta[max(c0, 0):min(c0 + 2 * counter + 1, h), max(0, c1):min(c1 + 2 * counter + 1, w)] += \
            1.0 / (counter + 1) ** 2
        c0 -= 1
        c1 -= 1
    return delta / np.sqrt(np.sum(delta**2))


def meta_pseudo_gaussian(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Two pseudo-Gaussian halves of opposite sign, unit l2 norm (randomly transposed if square)."""
    delta = np.zeros((h, w))
    if h >= 2:
        delta[:h // 2] = _pseudo_gaussian_rect(h // 2, w)
        delta[h // 2:] = -_pseudo_gaussian_rect(h - h // 2, w)
    elif w >= 2:
        delta[:, :w // 2] = _pseudo_gaussian_rect(h, w // 2)
        delta[:, w // 2:] = -_pseudo_gaussian_rect(h, w - w // 2)
    else:
        delta[:] = 1.0
    delta /= np.sqrt(np.sum(delta**2))
    if h == w and rng.random() > 0.5:
        delta = delta.T
    return delta


def _norm(v: np.ndarray) -> np.ndarray:
    """Per row, the l2 norm over channels, height and width: (rows, 1, 1, 1)."""
    return np.sqrt(np.sum(v**2, axis=(1, 2, 3), keepdims=True))


def _channel_norm(v: np.ndarray) -> np.ndarray:
    """Per row and channel, the l2 norm over height and width: (rows, c, 1, 1)."""
    return np.sqrt(np.sum(v**2, axis=(2, 3), keepdims=True))


@dataclass(frozen=True)
class Square(Attack):
    norm: str = param("linf", help="Norm: linf (the paper's) | l2.")
    queries: int = param(1000, help="Query budget per input and strength.")
    p_init: float = param(0.3, help="Initial window share, in (0, 1].")
    seed: int = param(0, help="Seed of random starts and Square's windows.", flags=("--attack-seed",))
    name = "square"
    needs_gradient = False

    def __post_init__(self):
        check_norm(self.norm)
        _positive_int("queries", self.queries)
        _positive("p_init", self.p_init)
        if self.p_init > 1:
            raise UsageError(f"--p-init must be in (0, 1], got {self.p_init}")

    def params(self):
        return declared_values(self)

    def chunk_size(self, n_eps, d, batch_size):
        return max(1, min(batch_size, SQUARE_CHUNK_ELEMENTS // max(1, n_eps * d)))

    def _window(self, it: int, n_iters: int, h: int, w: int) -> tuple[int, int]:
        """The window's (height, width) at iteration ``it``: a square of side about
        ``sqrt(p h w)`` (``p`` the share of one channel's pixels it covers) that fits the image;
        on a ``1 x w`` row a segment of about ``p w``."""
        p = p_schedule(self.p_init, it, n_iters)
        if h == 1:
            return 1, int(min(max(round(p * w), 1), w))
        side = min(h, w)
        s = int(round(np.sqrt(p * h * w)))
        if self.norm == "linf":
            return (s2 := min(max(s, 1), side - 1)), s2
        s = max(s, 3)
        s += 1 - s % 2
        s = min(s, side if side % 2 else side - 1)
        return s, s

    def run_chunk(self, judge, x, y, eps, gradient) -> ChunkOutcome:
        k_eps, (n, d) = len(eps), x.shape
        c, h, w, channel_last = image_view(judge.program.net, d)

        def maps(rows_: np.ndarray) -> np.ndarray:  # program rows -> (rows, c, h, w)
            if channel_last:
                return np.ascontiguousarray(rows_.reshape(len(rows_), h, w, c).transpose(0, 3, 1, 2))
            return rows_.reshape(len(rows_), c, h, w)

        def flat(points: np.ndarray) -> np.ndarray:  # (rows, c, h, w) -> program rows
            if channel_last:
                points = points.transpose(0, 2, 3, 1)
            return points.reshape(len(points), d)
        rng = np.random.default_rng(self.seed)  # window positions: the same for every chunk and eps
        index = judge.offset + np.tile(np.arange(n), k_eps)  # row -> the input's index in the data set

        def row_signs(rows_, tag, width=1):
            """+-1 per row of ``rows_`` (and ``width`` per row) from (seed, its eps, tag, its input)."""
            return stream_signs(self.seed, eps, tag, rows_ // n, index[rows_], width)

        clean_codes = judge.codes(x)
        clean_pred, _ = judge.judge(clean_codes, y)
        rows = k_eps * n
        x0 = maps(np.tile(x, (k_eps, 1)))
        labels = np.tile(y, k_eps)
        e = np.repeat(np.asarray(eps, np.float64), n)
        pred = np.tile(clean_pred, k_eps)
        best_codes = np.tile(clean_codes, (k_eps, 1))
        used = np.zeros(rows, np.int64)
        lo, hi, fmt = judge.lo, judge.hi, judge.fmt
        idx = np.flatnonzero((pred == labels) & (e > 0)) if self.queries > 1 else np.zeros(0, np.int64)
        xs, es = x0[idx], e[idx, None, None, None]
        if self.norm == "linf":  # vertical stripes, a sign per channel and column
            cur = np.clip(xs + es * row_signs(idx, 0, c * w).reshape(-1, c, 1, w), lo, hi)
        else:
            cur = np.clip(xs + self._l2_init(rng, idx, row_signs, c, h, w) * es, lo, hi)

        def query(sub, points):
            codes = judge.codes(flat(points))
            p, m = judge.judge(codes, labels[sub])
            used[sub] += 1
            return codes, p, m

        codes, p, best_margin = query(idx, cur)
        best_codes[idx], pred[idx] = codes, p
        n_iters = self.queries - 2  # the clean query and the start count against the budget
        for it in range(n_iters):
            alive = pred[idx] == labels[idx]
            if not alive.all():
                idx, cur, best_margin, xs = idx[alive], cur[alive], best_margin[alive], xs[alive]
            if idx.size == 0:
                break
            es = e[idx, None, None, None]
            sh, sw = self._window(it, n_iters, h, w)
            r0, c0 = rng.integers(0, h - sh + 1), rng.integers(0, w - sw + 1)
            sign = row_signs(idx, ITERATION_TAG + it, c)[:, :, None, None]  # one per channel
            if self.norm == "linf":  # the step and the device's codes in one pass (linf_window)
                new, grid = np.empty_like(cur), np.empty(cur.shape, code_dtype(fmt))
                linf_window(xs, cur, es.reshape(-1), sign.reshape(len(idx), c), r0, c0, sh, sw, lo, hi,
                            fmt.inv_scale, fmt.qmin, fmt.qmax, new, grid)
                codes = flat(grid)
                p, m = judge.judge(codes, labels[idx])
                used[idx] += 1
            else:
                new = self._l2_step(rng, sign, xs, cur, es, r0, c0, sh, sw, lo, hi)
                codes, p, m = query(idx, new)
            better = m < best_margin
            cur[better], best_margin[better] = new[better], m[better]
            best_codes[idx[better]], pred[idx[better]] = codes[better], p[better]
        return ChunkOutcome(pred.reshape(k_eps, n), np.zeros(n, bool),
                            codes=best_codes.reshape(k_eps, n, d), queries=used.reshape(k_eps, n) + 1,
                            clean=clean_pred)

    @staticmethod
    def _linf_step(sign, xs, cur, es, r0, c0, sh, sw, lo, hi):  # the numpy form of linf_window (tests)
        """Rows (rows, c, h, w): the window set to ``x + eps * sign`` (a sign per channel); where
        that would change nothing in any channel, every channel's sign flipped (the reference
        resamples until something changes)."""
        win = (slice(None), slice(None), slice(r0, r0 + sh), slice(c0, c0 + sw))
        sign = sign.copy()
        proposal = np.clip(xs[win] + es * sign, lo, hi)
        same = np.all(np.abs(proposal - cur[win]) < 1e-7, axis=(1, 2, 3))
        if same.any():
            sign[same] *= -1
            proposal = np.clip(xs[win] + es * sign, lo, hi)
        new = cur.copy()
        new[win] = proposal
        return new

    @staticmethod
    def _l2_init(rng, idx, row_signs, c, h, w):
        """A grid of pseudo-Gaussian blocks of side ``min(h, w) // 5``, a sign per block and channel,
        scaled to unit norm per row."""
        delta = np.zeros((len(idx), c, h, w))
        block = 1  # the stream tag of each block's signs
        if h == 1:
            s = max(w // 5, 1)
            for col in range(0, w - s + 1, s):
                delta[..., col:col + s] += meta_pseudo_gaussian(rng, 1, s) * row_signs(idx, block, c)[:, :, None, None]
                block += 1
        else:
            s = max(min(h, w) // 5, 1)
            r_start, c_start = max((h - s * 5) // 2, 0), max((w - s * 5) // 2, 0)
            for r in range(r_start, h - s + 1, s):
                for col in range(c_start, w - s + 1, s):
                    delta[:, :, r:r + s, col:col + s] += (meta_pseudo_gaussian(rng, s, s)
                                                          * row_signs(idx, block, c)[:, :, None, None])
                    block += 1
        return delta / np.maximum(_norm(delta), 1e-12)

    @staticmethod
    def _l2_step(rng, sign, xs, cur, es, r0, c0, sh, sw, lo, hi):
        """The reference's l2 iteration with channels: per channel, window 1 gets a pseudo-Gaussian
        update (its sign per channel) plus its old content, sized to hold window 2's mass and an
        equal share (``/ c``) of what the ball has left; window 2 is emptied; the whole
        perturbation is rescaled to norm ``eps``."""
        c = xs.shape[1]
        delta = cur - xs
        r2, c2 = rng.integers(0, xs.shape[2] - sh + 1), rng.integers(0, xs.shape[3] - sw + 1)
        w1 = (slice(None), slice(None), slice(r0, r0 + sh), slice(c0, c0 + sw))
        w2 = (slice(None), slice(None), slice(r2, r2 + sh), slice(c2, c2 + sw))
        mask = np.zeros(xs.shape[2:])
        mask[w1[2:]] = 1
        mask[w2[2:]] = 1
        norm_window = _channel_norm(delta[w1])
        norm_image = _norm(delta)
        norm_windows = _channel_norm(delta * mask)
        update = meta_pseudo_gaussian(rng, sh, sw)[None, None] * sign
        update = update + delta[w1] / (1e-10 + norm_window)
        update = update / np.maximum(_channel_norm(update), 1e-12) * np.sqrt(
            np.maximum(es**2 - norm_image**2, 0) / c + norm_windows**2)
        delta = delta.copy()
        delta[w2] = 0.0
        delta[w1] = update
        return np.clip(xs + delta / np.maximum(_norm(delta), 1e-12) * es, lo, hi)


@nb.njit(cache=True)
def linf_window(xs, cur, es, sign, r0, c0, sh, sw, lo, hi, inv_scale, qmin, qmax, new, codes):
    """One l-inf iteration of every row, fused (``Square._linf_step`` then ``Judge.codes``):
    ``new`` = ``cur`` with the window ``[r0, r0 + sh) x [c0, c0 + sw)`` of every channel set to
    ``clip(xs + es_r * sign_rc, lo, hi)``, every sign of a row flipped first where that would
    change nothing in its window (all ``|proposal - cur| < 1e-7``); ``codes`` = the device's
    codes of ``new``: ``clip(floor(clip(new, lo, hi) * inv_scale + 1/2), qmin, qmax)``.
    Rows (rows, c, h, w) are float64; the float operations are numpy's, in numpy's order."""
    rows, c, h, w = xs.shape
    for r in range(rows):
        e = es[r]
        same = True
        for ch in range(c):
            step = e * sign[r, ch]
            for i in range(r0, r0 + sh):
                for j in range(c0, c0 + sw):
                    p = min(max(xs[r, ch, i, j] + step, lo), hi)
                    if not abs(p - cur[r, ch, i, j]) < 1e-7:
                        same = False
        flip = -1.0 if same else 1.0
        for ch in range(c):
            step = e * (sign[r, ch] * flip)
            for i in range(h):
                inside = r0 <= i < r0 + sh
                for j in range(w):
                    if inside and c0 <= j < c0 + sw:
                        v = min(max(xs[r, ch, i, j] + step, lo), hi)
                    else:
                        v = cur[r, ch, i, j]
                    new[r, ch, i, j] = v
                    q = np.floor(min(max(v, lo), hi) * inv_scale + 0.5)
                    codes[r, ch, i, j] = min(max(q, qmin), qmax)


@nb.njit(cache=True, inline="always")
def _mix1(z):
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@nb.njit(cache=True)
def _row_signs(seed, eps_bits, tag, which, index, width, out):
    golden = np.uint64(0x9E3779B97F4A7C15)
    keys = np.empty(eps_bits.shape[0], np.uint64)
    s = _mix1(seed + golden)
    for k in range(eps_bits.shape[0]):
        keys[k] = _mix1(_mix1(s ^ eps_bits[k]) + tag)
    for r in range(which.shape[0]):
        key = keys[which[r]]
        base = index[r] * np.uint64(width) + np.uint64(1)
        for j in range(width):
            word = _mix1(key + golden * (base + np.uint64(j)))
            out[r, j] = 1.0 if (word >> np.uint64(63)) != np.uint64(0) else -1.0


def stream_signs(seed: int, eps, tag: int, which: np.ndarray, index: np.ndarray, width: int) -> np.ndarray:
    """``noise.signs(noise.keys(seed, eps, tag)[which], index, width)`` in one compiled pass (Square
    draws a sign per row and channel every iteration): row ``r`` takes the stream of strength
    ``eps[which[r]]``; the same numbers, bit for bit (tests/test_noise.py). Here, not in
    ``noise`` (pure numpy: the spec of the streams, loaded alone by the torch baselines)."""
    bits = np.ascontiguousarray(np.asarray(eps, np.float64).reshape(-1)).view(np.uint64)
    out = np.empty((len(which), int(width)), np.float64)
    _row_signs(np.uint64(int(seed) % 2**64), bits, np.uint64(int(tag) % 2**64),
               np.asarray(which, np.int64), np.asarray(index, np.uint64), int(width), out)
    return out
