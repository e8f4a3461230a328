"""hwq: quantize neural networks for neuromorphic hardware models and measure their
adversarial robustness as the chip computes it.

The pipeline, in order: ``load_onnx`` -> ``quantize`` -> ``compile`` -> ``attack``/``evaluate``
-> results file -> figures. See ``hwq.api`` for the public functions.
"""

__version__ = "0.1.0"

from hwq.api import (  # noqa: E402
    FGSM,
    AttackResult,
    QuantSettings,
    attack,
    compile,
    evaluate,
    load_dataset,
    load_onnx,
    load_program,
    quantize,
    save_program,
)

__all__ = [
    "FGSM", "AttackResult", "QuantSettings", "attack", "compile", "evaluate", "load_dataset",
    "load_onnx", "load_program", "quantize", "save_program", "__version__",
]
