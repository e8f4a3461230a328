"""The sweeps ``hwq reproduce`` runs (named presets of the paper's protocol; not to be confused
with quantization grids, ``hwq.ir.Grid``): a quick one for built-in data and the paper's full one.

=======  ============================  ===========  =====  ==================================
preset   data (default)                bits         seeds  strengths
=======  ============================  ===========  =====  ==================================
quick    spiral, digits                1, 2, 4, 8   2      0 to 0.5 step 0.01 (51)
full     (mnist:DIR, fashion-mnist)    1..10        5      0 to 0.5 step 0.005 (101, paper's)
=======  ============================  ===========  =====  ==================================

Both: hidden activations step, sigmoid, ReLU; 100 hidden units; QAT on the ``uniform`` grid
(2^q levels over [-1, 1], no zero); 16-bit activations and inputs (weights-only, like the
paper); the ``sim`` target; surrogate-gradient FGSM (l-inf). Training: Adam lr 1e-3, batch
64, 10 % validation, early stopping on validation accuracy with at most 500 epochs and
patience 100 below 10,000 training samples (spirals, digits), else 50 and 10 (MNIST-size:
~0.45 s per epoch per core, so the full grid fits in about 30 minutes on 2 cores).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwq.ranges import parse_names
from hwq.sweep.spec import AttackSettings, SweepSpec, data_label

QUICK_DATA = "spiral,digits"
FULL_DATA_PREFIXES = ("mnist:", "fashion-mnist")
GRIDS = {
    "quick": {"bits": (1, 2, 4, 8), "seeds": (0, 1), "eps_step": 0.01},
    "full": {"bits": tuple(range(1, 11)), "seeds": tuple(range(5)), "eps_step": 0.005},
}


@dataclass(frozen=True)
class Protocol:
    name: str
    spec: SweepSpec

    @property
    def file_name(self) -> str:
        labels = "-".join(data_label(d) for d in self.spec.data)
        limit = f"-limit{self.spec.attack.limit}" if self.spec.attack.limit else ""
        return f"sweep-{self.name}-{labels}{limit}.h5"

    def describe(self) -> str:
        s, eps = self.spec, self.spec.epsilons
        step = eps[1] - eps[0] if eps.size > 1 else 0.0
        return (f"data {','.join(s.data)}; activations {','.join(s.activations)}; bits "
                f"{','.join(map(str, s.bits))}; {len(s.seeds)} seeds; {eps.size} strengths "
                f"{eps[0]:g}..{eps[-1]:g} step {step:g}; training: Adam, batch 64, early "
                "stopping (max 500 epochs / patience 100 below 10k samples, else 50 / 10); "
                f"scheme {s.quant.scheme}, act/input bits {s.quant.act_bits}/"
                f"{s.quant.input_bits}; target {','.join(s.targets)}")


def protocol(data: str | None = None, full: bool | None = None, *,
             limit: int | None = None) -> Protocol:
    """The grid for ``data`` (default: spiral and digits); ``full`` None: full for MNIST-like
    data, quick otherwise."""
    specs = parse_names(data or QUICK_DATA)
    if full is None:
        full = any(d.startswith(FULL_DATA_PREFIXES) for d in specs)
    name = "full" if full else "quick"
    grid = GRIDS[name]
    eps = np.round(np.arange(int(round(0.5 / grid["eps_step"])) + 1) * grid["eps_step"], 12)
    spec = SweepSpec(data=specs, bits=grid["bits"], seeds=grid["seeds"],
                     attack=AttackSettings(epsilons=tuple(eps.tolist()), limit=limit))
    return Protocol(name, spec)
