"""Tiling a convolution onto 256 x 256 cores (docs/truenorth.md, "Convolutional networks").

A convolution's output units (``o P + p`` in C-order: channel ``o``, position ``p = y Wo + x``)
are cut into *tiles*: a rectangle of output positions ``[y0, y1) x [x0, x1)`` times a run of
output channels (of one or several groups: a pooling has one group per channel). A tile becomes
one core: its axons carry the union of the rectangle's receptive fields (the inputs its patches
read, padding excluded), ``cost`` axons per input (the digit table's ``k`` copies, times 2 for
signed ``x+``/``x-`` columns), plus the layer's ``reserved`` bias axons; its neurons are the
units' copies (one per destination axon of the next layer: each TrueNorth neuron has one
destination). A tile fits when

    |union of the rectangle's patches| * cost + reserved <= 256   and   sum of its units' copies <= 256.

``plan_tiles`` tries every rectangle shape ``th x tw`` (the output grid cut into a regular grid
of them, edge rectangles smaller), packs each rectangle's channels greedily into runs whose
copies fit the neurons and whose input union fits the axons, and keeps the shape with the fewest
tiles (ties: the larger, then the wider rectangle). Heights from the tallest; a height stops
widening at the first width that does not fit (wider ones nearly always need more: a heuristic,
never a wrong plan), and shapes with more rectangles than the best plan has tiles are skipped.
Pure planning: no cores are built here (``building.build_eedn`` builds one core per tile).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwq.errors import LimitError
from hwq.ir.window import Window

from .core import AXONS, NEURONS


@dataclass(frozen=True)
class Tile:
    """One core's share of a convolution: output positions ``rows x cols`` (half-open ranges)
    of ``channels`` (of the window groups ``groups``), their ``units`` (C-order indices), the
    ``inputs`` their patches read (sorted flat input indices), and the axons and neurons it needs."""

    groups: tuple[int, ...]
    rows: tuple[int, int]
    cols: tuple[int, int]
    channels: tuple[int, ...]
    units: np.ndarray
    inputs: np.ndarray
    axons: int
    neurons: int


@dataclass(frozen=True)
class TilePlan:
    """Every tile of one convolution, and the rectangle shape chosen."""

    window: Window
    out_channels: int
    shape: tuple[int, int]
    tiles: tuple[Tile, ...]

    @property
    def blocks(self) -> list[list[int]]:
        """The units of each tile (what ``building.build_eedn`` puts on one core)."""
        return [[int(u) for u in t.units] for t in self.tiles]


def patch_axons(window: Window, cost: int, reserved: int = 0) -> int:
    """Axons of the largest single patch (one output position, one channel): the least any tile needs."""
    idx = window.gather_index
    real = int((idx >= 0).sum(axis=2).max())
    return real * cost + reserved


def rectangles(n: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def plan_tiles(window: Window, out_channels: int, cost: int, reserved: int = 0, copies=None,
               axons: int = AXONS, neurons: int = NEURONS, what: str = "a convolution") -> TilePlan:
    """Tiles for a convolution of ``out_channels`` over ``window`` (module docstring). ``copies``:
    neurons per output unit (C-order, default 1 each; 0 for a unit nobody reads). Raises
    ``LimitError`` (``what`` names the layer) where even one patch or one unit does not fit."""
    ho, wo = window.out_hw
    P = ho * wo
    groups = window.groups
    if out_channels % groups:
        raise LimitError(f"{what}: {out_channels} output channels do not divide into {groups} groups")
    per_group = out_channels // groups
    copies = np.ones(out_channels * P, np.int64) if copies is None else np.asarray(copies, np.int64)
    if copies.shape != (out_channels * P,):
        raise ValueError(f"copies must have one entry per output unit ({out_channels * P}), got {copies.shape}")
    need = patch_axons(window, cost, reserved)
    if need > axons:
        fan_in = window.patch_len
        raise LimitError(f"{what}: one patch ({window.describe()}, fan-in {fan_in}) needs {need} axons "
                         f"({cost} per input plus {reserved} bias), a core has {axons}",
                         hint="grouped convolutions, smaller kernels, fewer input channels or fewer weight bits")
    if int(copies.max(initial=0)) > neurons:
        raise LimitError(f"{what}: one unit needs {int(copies.max())} copies, a core has {neurons} neurons")
    idx = window.gather_index.reshape(groups, ho, wo, -1)
    grid = copies.reshape(out_channels, ho, wo)
    best = None
    for th in range(ho, 0, -1):
        for tw in range(1, wo + 1):
            if best is not None and -(-ho // th) * -(-wo // tw) > best[0][0]:
                continue  # more rectangles than the best plan has tiles: cannot win
            tiles = cut(idx, grid, per_group, (th, tw), cost, reserved, axons, neurons)
            if tiles is None:
                break  # wider rectangles of this height: (nearly always) no better
            key = (len(tiles), -th * tw, -tw)  # fewest tiles, then the largest, then the widest rectangle
            if best is None or key < best[0]:
                best = (key, (th, tw), tiles)
    assert best is not None  # 1 x 1 rectangles of single channels always fit (checked above)
    return TilePlan(window, out_channels, best[1], tuple(best[2]))


def cut(idx: np.ndarray, grid: np.ndarray, per_group: int, shape: tuple[int, int], cost: int, reserved: int,
        axons: int, neurons: int) -> list[Tile] | None:
    """The tiles of one rectangle shape, or None where one channel over a rectangle does not fit
    one core. Per rectangle, channels in order join the current tile while its input union
    (channels of several groups read different inputs) and its copies fit."""
    groups, ho, wo, _ = idx.shape
    tiles = []
    for y0, y1 in rectangles(ho, shape[0]):
        for x0, x1 in rectangles(wo, shape[1]):
            reads = []
            for g in range(groups):
                ins = np.unique(idx[g, y0:y1, x0:x1].ravel())
                reads.append(ins[ins >= 0])
            pos = (np.arange(y0, y1)[:, None] * wo + np.arange(x0, x1)[None, :]).ravel()
            run, used, ins, members = [], 0, np.zeros(0, np.int64), set()
            for o in range(groups * per_group):
                g = o // per_group
                n = int(grid[o, y0:y1, x0:x1].sum())
                if len(reads[g]) * cost + reserved > axons or n > neurons:
                    return None
                more = ins if g in members else np.union1d(ins, reads[g])
                if run and (used + n > neurons or len(more) * cost + reserved > axons):
                    tiles.append(tile(run, per_group, (y0, y1), (x0, x1), pos, ho * wo, ins, cost, reserved, used))
                    run, used, members = [], 0, set()
                    more = reads[g]
                run.append(o)
                used += n
                ins = more
                members.add(g)
            if run:
                tiles.append(tile(run, per_group, (y0, y1), (x0, x1), pos, ho * wo, ins, cost, reserved, used))
    return tiles


def tile(channels, per_group, rows, cols, pos, positions, ins, cost, reserved, used) -> Tile:
    units = (np.asarray(channels)[:, None] * positions + pos[None, :]).ravel()
    groups = tuple(sorted({c // per_group for c in channels}))
    return Tile(groups, rows, cols, tuple(int(c) for c in channels), units, ins, int(len(ins) * cost + reserved),
                int(used))
