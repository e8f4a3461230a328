"""The window geometry of a convolution or a pooling: which inputs each output reads.

A convolution is a dense product over patches: the weight stays a 2-D matrix (out channels x
patch length) and a :class:`Window` says where each patch comes from. Float IR nodes
(``Conv2d``, the pools) and integer nodes (``QLayer.window``, ``QPool``) share it, so the
geometry is written once. Formulas (docs/integer-semantics.md, section 8):

* input ``(C, H, W)``, kernel ``(kh, kw)``, stride ``(sh, sw)``, pads ``(top, left, bottom,
  right)``, dilation ``(dh, dw)``, ``groups`` g (C divisible by g; ``cg = C / g`` channels per group);
* ``Ho = floor((H + top + bottom - dh (kh - 1) - 1) / sh) + 1`` (likewise ``Wo``), at least 1;
* output position ``(y, x)`` of group ``gi`` reads, for ``c in 0..cg-1, i in 0..kh-1, j in 0..kw-1``
  (patch index ``k = (c kh + i) kw + j``, PyTorch's ``weight.reshape(C_out, -1)`` order), the
  input ``(gi cg + c, y sh - top + i dh, x sw - left + j dw)``, or padding where that lies
  outside the ``H x W`` image;
* samples cross program boundaries flattened in C-order: ``(c, y, x) -> (c H + y) W + x``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from hwq.errors import InvalidModelError


def _ints(name: str, value, n: int, least: int) -> None:
    if (not isinstance(value, tuple) or len(value) != n
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
            or any(int(v) < least for v in value)):
        raise InvalidModelError(f"window {name} must be {n} integers >= {least}, got {value!r}")


@dataclass(frozen=True)
class Window:
    """Where each output of a convolution or pooling reads its patch (module docstring)."""

    in_shape: tuple[int, int, int]  # (C, H, W)
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    def __post_init__(self):
        for name in ("in_shape", "kernel", "stride", "pads", "dilation"):
            value = getattr(self, name)
            if isinstance(value, (list, np.ndarray)):
                object.__setattr__(self, name, tuple(int(v) for v in value))
        if isinstance(self.groups, np.integer):
            object.__setattr__(self, "groups", int(self.groups))

    def validate(self) -> None:
        """Positive sizes, non-negative pads, groups dividing the channels, an output of at least
        one position, and every window touching the image (a window of padding only reads nothing).
        Raises ``InvalidModelError`` in one line."""
        _ints("input shape (C, H, W)", self.in_shape, 3, 1)
        _ints("kernel", self.kernel, 2, 1)
        _ints("stride", self.stride, 2, 1)
        _ints("pads (top, left, bottom, right)", self.pads, 4, 0)
        _ints("dilation", self.dilation, 2, 1)
        if isinstance(self.groups, bool) or not isinstance(self.groups, int) or self.groups < 1:
            raise InvalidModelError(f"window groups must be an integer >= 1, got {self.groups!r}")
        c, h, w = self.in_shape
        if c % self.groups:
            raise InvalidModelError(f"{c} input channels do not divide into {self.groups} groups")
        for axis, size, k, d, lo, hi in (("height", h, self.kernel[0], self.dilation[0], self.pads[0], self.pads[2]),
                                         ("width", w, self.kernel[1], self.dilation[1], self.pads[1], self.pads[3])):
            reach = d * (k - 1) + 1
            if size + lo + hi < reach:
                raise InvalidModelError(f"a kernel spanning {reach} does not fit the input {axis} {size} "
                                        f"(padded {lo}+{hi})")
            if lo >= reach or hi >= reach:
                raise InvalidModelError(f"padding {max(lo, hi)} on the {axis} is not smaller than the "
                                        f"kernel's span {reach}: some windows would read padding only")

    @property
    def channels(self) -> int:
        return int(self.in_shape[0])

    @property
    def group_channels(self) -> int:
        """Input channels per group (``cg``)."""
        return self.channels // self.groups

    @property
    def size(self) -> int:
        """Kernel positions ``kh kw`` (a pooling window's element count)."""
        return int(self.kernel[0] * self.kernel[1])

    @property
    def patch_len(self) -> int:
        """Inputs per patch: ``cg kh kw`` (the weight matrix's column count)."""
        return self.group_channels * self.size

    @property
    def out_hw(self) -> tuple[int, int]:
        _, h, w = self.in_shape
        (kh, kw), (sh, sw), (dh, dw), (top, left, bottom, right) = self.kernel, self.stride, self.dilation, self.pads
        return (int((h + top + bottom - dh * (kh - 1) - 1) // sh + 1),
                int((w + left + right - dw * (kw - 1) - 1) // sw + 1))

    @property
    def positions(self) -> int:
        """Output positions ``Ho Wo``."""
        ho, wo = self.out_hw
        return ho * wo

    @property
    def n_in(self) -> int:
        return int(np.prod(self.in_shape))

    @property
    def padded(self) -> bool:
        return any(self.pads)

    @cached_property
    def gather_index(self) -> np.ndarray:
        """``idx[g, p, k]``: the C-order flat input index that patch element ``k`` of output
        position ``p = y Wo + x`` in group ``g`` reads, or ``-1`` for padding (int64, shape
        ``(groups, Ho Wo, cg kh kw)``, read-only). The one statement of the geometry; every
        kernel that gathers patches is tested against it."""
        c, h, w = self.in_shape
        kh, kw = self.kernel
        ho, wo = self.out_hw
        cg = self.group_channels
        ys = (np.arange(ho)[:, None] * self.stride[0] - self.pads[0]
              + np.arange(kh)[None, :] * self.dilation[0])  # (ho, kh)
        xs = (np.arange(wo)[:, None] * self.stride[1] - self.pads[1]
              + np.arange(kw)[None, :] * self.dilation[1])  # (wo, kw)
        chan = np.arange(self.groups)[:, None] * cg + np.arange(cg)[None, :]  # (g, cg)
        y = ys[None, :, None, None, :, None]  # g, ho, wo, cg, kh, kw
        x = xs[None, None, :, None, None, :]
        ch = chan[:, None, None, :, None, None]
        inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
        flat = (ch * h + y) * w + x
        idx = np.where(inside, flat, -1).astype(np.int64)
        idx = np.broadcast_to(idx, (self.groups, ho, wo, cg, kh, kw)).reshape(self.groups, ho * wo, cg * kh * kw)
        idx = np.ascontiguousarray(idx)
        idx.setflags(write=False)
        return idx

    def describe(self, groups: bool = True) -> str:
        """``3x3 stride 2,2 pads 1,1,1,1 groups 2``; ``groups=False`` leaves the groups out (a
        pooling's window: one group per channel goes without saying)."""
        parts = [f"{self.kernel[0]}x{self.kernel[1]}"]
        if self.stride != (1, 1):
            parts.append(f"stride {self.stride[0]},{self.stride[1]}")
        if self.padded:
            parts.append("pads " + ",".join(str(p) for p in self.pads))
        if self.dilation != (1, 1):
            parts.append(f"dilation {self.dilation[0]},{self.dilation[1]}")
        if groups and self.groups != 1:
            parts.append(f"groups {self.groups}")
        return " ".join(parts)
