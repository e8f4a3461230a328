"""hwq: quantize neural networks for neuromorphic hardware models and measure their
adversarial robustness as the chip computes it.

The pipeline, in order: ``load_onnx`` -> ``quantize`` -> ``compile`` -> ``attack``/``evaluate``
-> results file -> figures. See ``hwq.api`` for the public functions.
"""

from hwq import numba_cache

numba_cache.configure()  # before any kernel compiles (see hwq/numba_cache.py)

from hwq.api import (  # noqa: E402
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
from hwq.version import __version__  # noqa: E402

__all__ = [
    "FGSM", "PGD", "AttackResult", "QuantSettings", "Square", "Suite", "attack", "compile", "evaluate",
    "load_dataset", "load_onnx", "load_program", "make_suite", "quantize", "save_program", "__version__",
]
