"""The one walker over an integer network: which shape and which code range ``[lo, hi]`` every
node receives. Each node says what it passes on (``out_shape``, ``out_range(lo, hi)``, from its
activation kind's ``code_range``); bounds, the reference, the targets and the exporters all walk
with this rule instead of keeping their own."""

from __future__ import annotations


def walk_layers(layers, in_shape: tuple[int, ...], lo: int, hi: int):
    """Yield ``(index, node, input shape, (lo, hi))`` for every node of ``layers`` in order, the first
    receiving codes in ``[lo, hi]`` of shape ``in_shape``, each next one the previous node's
    ``out_shape`` and ``out_range``. The one rule for "node i receives codes in [lo, hi]"."""
    lo, hi, in_shape = int(lo), int(hi), tuple(in_shape)
    for i, layer in enumerate(layers):
        if i:  # the previous node's range, computed only where a node receives it
            prev = layers[i - 1]
            (lo, hi), in_shape = prev.out_range(lo, hi), prev.out_shape
        yield i, layer, in_shape, (lo, hi)


def walk(net, lo: int | None = None, hi: int | None = None):
    """``walk_layers`` over a ``QuantizedNetwork``, from its input shape and its input format's
    code range (``lo``/``hi`` given: that range instead, e.g. widened to codes outside the format)."""
    return walk_layers(net.layers, net.input_shape, net.input.qmin if lo is None else lo,
                       net.input.qmax if hi is None else hi)
