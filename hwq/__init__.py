"""hwq: quantize neural networks for neuromorphic hardware models and measure their
adversarial robustness as the chip computes it.

The pipeline, in order: ``load_onnx`` -> ``quantize`` -> ``compile`` -> ``attack``/``evaluate``
-> results file -> figures. See ``hwq.api`` for the public functions.
"""

from hwq.api import (
    FGSM,
    PGD,
    AttackResult,
    QuantSettings,
    Square,
    Suite,
    attack,
    compile,
    evaluate,
    load_dataset,
    load_onnx,
    load_program,
    make_suite,
    quantize,
    save_program,
)
from hwq.version import __version__

__all__ = [
    "FGSM", "PGD", "AttackResult", "QuantSettings", "Square", "Suite", "attack", "compile", "evaluate",
    "load_dataset", "load_onnx", "load_program", "make_suite", "quantize", "save_program", "__version__",
]
