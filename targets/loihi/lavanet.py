"""Build a mapping as Lava processes and run it with Lava's CPU fixed-point models.

Per layer: one ``Dense`` per synapse group; then either a ``LIFReset`` (step, reset every
step so each sample starts from rest), or a ``SigmaDelta`` (ReLU / UNIT, vth 0) fed the
Dense sums plus, one step later, their negation through a memoryless relay (``GradedVec``,
vth 0) and an inhibitory identity ``Dense``, so its sigma equals this step's sum. A hidden SigmaDelta
feeds a ``Sigma`` that turns its deltas back into activations. Samples are presented back to
back from a ``RingBuffer``, one per step; a ``Monitor`` reads the output layer's ``act``.
The layer latency is one step per Dense, so sample k's scores are read at step k + 1 + L.

Lava is imported here only, and only in the Lava environment (Python 3.10, numpy < 2):
``run_lava`` sends the samples to a Lava device (``lava_device.py``) running ``run_lava_here``
there; hwq itself runs on current Python. To run on Loihi 2, pass ``run_cfg=Loihi2HwCfg()``
to ``run_lava_here`` (docs/loihi.md; untested).
"""

from __future__ import annotations

import multiprocessing as mp
import sys

import numpy as np

from hwq.errors import TargetError

from .conv import dense_view
from .limits import LOIHI
from .mapping import LayerMap, Mapping

RUNTIME = "lava.magma.runtime.message_infrastructure.multiprocessing"


def release_start_method():
    """Lava's runtime calls ``multiprocessing.set_start_method('fork')`` when first imported,
    which fails once anything (Numba's parallel kernels, for one) has fixed the start method.
    Unfix it so the import succeeds; Lava needs fork and sets it itself."""
    if RUNTIME not in sys.modules and mp.get_start_method(allow_none=True) is not None:
        mp.set_start_method(None, force=True)


def lava():
    release_start_method()
    try:
        from lava.magma.core.run_conditions import RunSteps
        from lava.magma.core.run_configs import Loihi2SimCfg
        from lava.proc.dense.process import Dense
        from lava.proc.graded.process import GradedVec
        from lava.proc.io.source import RingBuffer
        from lava.proc.lif.process import LIFReset
        from lava.proc.monitor.process import Monitor
        from lava.proc.sdn.process import ActivationMode, Sigma, SigmaDelta
        from lava.proc.sparse.process import Sparse
        from lava.utils.weightutils import SignMode
    except ImportError as exc:
        raise TargetError(f"the lava backend needs lava-nc in this Python: {exc}",
                          hint="run Lava through run_lava (its own Python 3.10 environment)"
                          ) from None
    return dict(RunSteps=RunSteps, Loihi2SimCfg=Loihi2SimCfg, Dense=Dense, LIFReset=LIFReset,
                SigmaDelta=SigmaDelta, Sigma=Sigma, Mode=ActivationMode, RingBuffer=RingBuffer,
                Monitor=Monitor, SignMode=SignMode, GradedVec=GradedVec, Sparse=Sparse)


def run_config():
    """CPU fixed-point models; without the tag Lava picks the floating-point LIF."""
    return lava()["Loihi2SimCfg"](select_tag="fixed_pt")


def dense_groups(L, lm: LayerMap, source, sparse: bool = False) -> list:
    """One connection process per synapse group: ``Dense``, or ``Sparse`` (a convolution's or
    pooling's unrolled matrix, conv.py) holding only the window's synapses."""
    groups = []
    for s in lm.sets:
        weights = s.lava_weights.astype(np.int32)
        if sparse:
            from scipy.sparse import csr_matrix

            weights = csr_matrix(weights)
        d = L["Sparse" if sparse else "Dense"](weights=weights, weight_exp=s.lava_weight_exp,
                                               num_weight_bits=8, sign_mode=L["SignMode"][s.mode.upper()],
                                               num_message_bits=lm.in_bits)
        source.connect(d.s_in)
        groups.append(d)
    return groups


def lif_layer(L, lm: LayerMap, groups):
    neuron = L["LIFReset"](shape=(lm.n_out,), du=4095, dv=0, bias_mant=lm.bias_mant,
                           bias_exp=lm.bias_exp, vth=int(lm.vth), reset_interval=1,
                           reset_offset=0)
    for d in groups:
        d.a_out.connect(neuron.a_in)
    return neuron, neuron.s_out


def sigma_delta_layer(L, lm: LayerMap, groups, hidden: bool):
    n = (lm.n_out,)
    mode = L["Mode"].RELU if lm.neuron == "relu" else L["Mode"].UNIT
    neuron = L["SigmaDelta"](shape=n, vth=0, bias=lm.bias_mant, spike_exp=int(lm.bias_exp[0]),
                             act_mode=mode)
    relay = L["GradedVec"](shape=n, vth=0)
    cancel = L["Dense"](weights=-np.eye(lm.n_out, dtype=np.int32), num_message_bits=LOIHI.message_bits,
                        sign_mode=L["SignMode"].INHIBITORY)
    for d in groups:
        d.a_out.connect([neuron.a_in, relay.a_in])
    relay.s_out.connect(cancel.s_in)
    cancel.a_out.connect(neuron.a_in)
    if not hidden:
        return neuron, neuron.s_out
    integral = L["Sigma"](shape=n)
    neuron.s_out.connect(integral.a_in)
    return neuron, integral.s_out


def build(L, mapping: Mapping, source):
    """The processes of one mapped network fed by ``source``; returns its output SigmaDelta."""
    out, neuron = source, None
    for i, lm in enumerate(mapping.layers):
        sparse = lm.window is not None
        lm = dense_view(lm)
        groups = dense_groups(L, lm, out, sparse)
        if lm.neuron == "lif":
            neuron, out = lif_layer(L, lm, groups)
        else:
            neuron, out = sigma_delta_layer(L, lm, groups, i + 1 < len(mapping.layers))
    return neuron


def run_lava(mappings: list[Mapping], x_q: np.ndarray) -> list[np.ndarray]:
    """Scores of every mapping from Lava, run as a device in the Lava environment."""
    from .lava_device import run_on_device

    return run_on_device(mappings, x_q)


def run_lava_here(mappings: list[Mapping], x_q: np.ndarray, run_cfg=None) -> list[np.ndarray]:
    """Scores of every mapping (all fed the same samples from one RingBuffer, one Lava run),
    in this process. ``run_cfg`` defaults to the CPU fixed-point models (``run_config()``)."""
    L = lava()
    x = np.asarray(x_q, dtype=np.int64)
    if np.abs(x).max(initial=0) >= 2**31:
        raise TargetError("input codes do not fit Lava's int32 payloads")
    source = L["RingBuffer"](data=np.ascontiguousarray(x.T, dtype=np.int32))
    steps = len(x) + max(m.latency for m in mappings)
    outputs, monitors = [], []
    for m in mappings:
        neuron = build(L, m, source.s_out)
        monitors.append(L["Monitor"]())
        monitors[-1].probe(neuron.act, steps)
        outputs.append(neuron)
    try:
        source.run(condition=L["RunSteps"](num_steps=steps), run_cfg=run_cfg or run_config())
        data = [mon.get_data()[o.name]["act"] for mon, o in zip(monitors, outputs)]
    finally:
        source.stop()
    return [np.rint(d[m.latency:m.latency + len(x)]).astype(np.int64)
            for d, m in zip(data, mappings)]
