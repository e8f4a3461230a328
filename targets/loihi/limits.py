"""The Loihi limits the mapping checks, in one table.

Register widths follow Lava 0.10.0's bit-accurate CPU models (their declared precisions and
docstrings: ``PyLifResetModelBitAcc``, ``PySigmaDeltaModelFixed``, ``PyDenseModelBitAcc``),
which follow Loihi's neuro-core; the same LIF numbers appear in nengo-loihi's discretizer
(bias mantissa 4095, bias exponent 7, threshold mantissa 131071). Core sizes are Loihi 1's as
nengo-loihi states them (``nengo_loihi/hardware/nxsdk_objects.py`` / ``block.py``: 1024
compartments, 4096 input and 4096 output axons, 1 Mbit of synapse memory per core; 128
neuro-cores per chip); Loihi 2 allows more per core, so these are conservative there. ``chips``
is how many chips a network may use. Lava's CPU models enforce none of these; compile
does. Pass ``limits=Limits(...)`` to ``LoihiTarget.compile`` to map for other figures.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Loihi's registers as Lava's bit-accurate models hard-code them (one definition each; the
# mapping, the emulator's kernels, the step-by-step spec and the netx export all read these).
STATE_BITS = 24  # LIF u, v and SigmaDelta sigma, act
STATE_WRAP = 2 ** (STATE_BITS - 1)  # the LIF current u wraps into (-2^23, 2^23]
STATE_MAX = 2 ** (STATE_BITS - 1) - 1  # the LIF voltage v saturates at +-(2^23 - 1)
ACT_SHIFT = 6  # LIF: synaptic input enters u as a * 2^6; the threshold is vth * 2^6 (Lava's act_shift, vth_shift)


@dataclass(frozen=True)
class Limits:
    weight_bits: int = 8  # mixed sign: even values in [-256, 254]; one sign: |w| <= 255
    weight_exp: tuple[int, int] = (-8, 7)  # per synapse group (Dense process)
    state_bits: int = STATE_BITS  # the state budget the mapping keeps sums inside (at most STATE_BITS)
    act_shift: int = ACT_SHIFT  # fixed: Lava's LIF hard-codes it (refused otherwise)
    lif_bias_mant_bits: int = 13  # signed
    lif_bias_exp: tuple[int, int] = (0, 7)
    lif_vth_bits: int = 17  # unsigned
    sd_bias_bits: int = 16  # SigmaDelta bias mantissa, signed
    sd_bias_exp: tuple[int, int] = (0, 7)  # realised with spike_exp
    message_bits: int = 24  # graded spike payload
    neurons_per_core: int = 1024  # compartments (Loihi 1; Loihi 2: up to 8192)
    synapse_bits_per_core: int = 128 * 1024 * 8  # 1 Mbit of synaptic memory
    input_axons_per_core: int = 4096
    output_axons_per_core: int = 4096
    cores_per_chip: int = 128
    chips: int = 1  # the chips the network may use (compile refuses more)

    def __post_init__(self):
        from hwq.errors import UsageError

        if self.act_shift != ACT_SHIFT:  # Lava's LIF shifts by 6 whatever the table says
            raise UsageError(f"loihi limits: act_shift={self.act_shift} is not supported",
                             hint=f"Loihi's LIF (and Lava's bit-accurate model) shifts its input by {ACT_SHIFT}")
        if self.weight_bits != 8:  # the digit split (synapses.py) and Lava's Dense are 8-bit
            raise UsageError(f"loihi limits: weight_bits={self.weight_bits} is not supported",
                             hint="Loihi's synapses are 8-bit (the mapping splits wider codes into 8-bit digit groups)")

    @property
    def state_max(self) -> int:
        """Largest magnitude a ``state_bits`` state holds without wrapping or saturating."""
        return 2 ** (self.state_bits - 1) - 1

    @property
    def lif_input_max(self) -> int:
        """Largest |a| whose ``a * 2^act_shift`` fits the LIF current u without wrapping."""
        return 2 ** (self.state_bits - 1 - self.act_shift) - 1

    def looser_than(self, hardware: Limits) -> list[str]:
        """The register limits of this table that ``hardware`` cannot honour (a range reaching
        beyond it, more bits than it has, another ``act_shift``) and capacities that are not
        positive; empty when a mapping made for this table runs on ``hardware`` as computed.
        Stored mappings are checked with it on load (``artifacts.from_artifacts``)."""
        out = []
        for key in ("weight_exp", "lif_bias_exp", "sd_bias_exp"):
            lo, hi = getattr(self, key)
            if not getattr(hardware, key)[0] <= lo <= hi <= getattr(hardware, key)[1]:
                out.append(f"{key}={lo}..{hi}")
        for key in ("state_bits", "lif_bias_mant_bits", "lif_vth_bits", "sd_bias_bits", "message_bits"):
            if not 1 <= getattr(self, key) <= getattr(hardware, key):
                out.append(f"{key}={getattr(self, key)}")
        if self.act_shift != hardware.act_shift:
            out.append(f"act_shift={self.act_shift}")
        for key in CAPACITIES:
            if getattr(self, key) < 1:
                out.append(f"{key}={getattr(self, key)}")
        return out

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


LOIHI = Limits()
CAPACITIES = ("neurons_per_core", "synapse_bits_per_core", "input_axons_per_core", "output_axons_per_core",
              "cores_per_chip", "chips")
ADDED = {"input_axons_per_core", "output_axons_per_core", "chips"}  # fields files from before CNNs lack

# Lava's CPU models compute in int32 without checks: the mapping keeps every value below these.
INT32_SAFE_LIF = 2 ** (30 - ACT_SHIFT)  # |a| = 2^24: a << 6 and u + b stay exact
INT32_SAFE_SD = 2**30  # |a|, |a + B| and the Dense sums: a_t - a_(t-1) stays exact
