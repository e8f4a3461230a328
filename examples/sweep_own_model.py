"""Run the paper's study on your own ONNX model: quantize it to 1..8 bits, attack every
version, and write the figures and report.

    python examples/sweep_own_model.py [OUT_DIR] [--quick]

Here "your models" are two float MLPs trained on the 8x8 digits with hwq.train and saved as
ONNX; replace them by your own files: MLPs or CNNs of any depth (PyTorch, Brevitas, Keras
exports). Each file is a coordinate of the sweep's cells, named from its file stem; a float
file is quantized post-training at each bit width, a QAT file (every weight on its grids,
e.g. a Brevitas export) keeps its grids' bits. The same study on the command line
(docs/sweeps.md, "Given models"):

    hwq sweep --data digits --model a.onnx --model b.onnx --bits 1:8 --scheme narrow -o s.h5
    hwq report s.h5 -o figures/
"""

from __future__ import annotations

import argparse
from pathlib import Path

import hwq
from hwq.study.report import write_report
from hwq.sweep.executors import make_executor
from hwq.sweep.run import model_refs, run_sweep
from hwq.sweep.spec import AttackSettings, QuantOptions, SweepSpec
from hwq.train import TrainConfig, mlp_to_onnx, train_mlp


def float_models(folder: Path, count: int, epochs: int) -> list[Path]:
    """Stand-ins for your own models: float MLPs (no QAT) on the digits, saved as ONNX."""
    data = hwq.load_dataset("digits")
    paths = []
    for seed in range(count):
        mlp = train_mlp(data.x_train, data.y_train, data.n_classes,
                        TrainConfig(activation="relu", epochs=epochs, seed=seed))
        path = folder / f"model{seed}.onnx"
        model = mlp_to_onnx(mlp, n_in=data.n_features, n_classes=data.n_classes)
        path.write_bytes(model.SerializeToString())
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="sweep-example", type=Path)
    parser.add_argument("--quick", action="store_true", help="tiny grid (used by the tests)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    models = float_models(args.out, 2, 20 if args.quick else 200)
    spec = SweepSpec(
        data=("digits",),
        bits=(1, 2, 4) if args.quick else tuple(range(1, 9)),
        models=model_refs(models),  # float files: post-training quantization at each width
        quant=QuantOptions(scheme="narrow"),  # PTQ onto the zero-including grid
        attack=AttackSettings(epsilons=(0.0, 0.01, 0.05, 0.1, 0.2), limit=100 if args.quick
                              else None),
    )
    with make_executor(workers=1 if args.quick else None) as executor:
        summary = run_sweep(spec, args.out / "sweep.h5", executor, command="examples/sweep_own_model.py")
    out = write_report(args.out / "sweep.h5", args.out, fig2=False)
    print(f"{summary['cells']} cells -> {args.out / 'sweep.h5'}; report: {out['report']}")
    for model, by_def in out["critical"]["digits"]["sim"].items():
        c = by_def["min-variance"]
        print(f"critical strength ({model}, min-variance):", c and c["eps_linf"])
    for row in out["models"]:
        print(f"{row['model']} q{row['bits']}: clean {row['clean']}, under attack {row['accuracy']}")


if __name__ == "__main__":
    main()
