"""A sweep on a Dask cluster: here a local one on loopback; on a real cluster pass the
scheduler's address (every worker needs hwq installed and the data at the same paths).

    python examples/sweep_dask.py [OUT_DIR] [--quick] [--scheduler tcp://HOST:PORT]

On the command line: ``hwq sweep --data spiral --scheduler tcp://HOST:PORT -o s.h5`` (or
``--scheduler local``). The numbers equal those of a local run with the same arguments.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hwq.sweep.executors import DaskExecutor
from hwq.sweep.run import run_sweep
from hwq.sweep.spec import AttackSettings, SweepSpec, TrainSettings
from hwq.sweep.store import read_sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="sweep-dask", type=Path)
    parser.add_argument("--quick", action="store_true", help="tiny grid (used by the tests)")
    parser.add_argument("--scheduler", default=None, help="tcp://HOST:PORT (default: a local cluster)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    spec = SweepSpec(
        data=("spiral",),
        bits=(1, 4) if args.quick else tuple(range(1, 11)),
        seeds=(0,) if args.quick else tuple(range(5)),
        train=TrainSettings(epochs=50 if args.quick else None),
        attack=AttackSettings(epsilons=(0.0, 0.05, 0.125, 0.25)),
    )
    if args.scheduler:
        executor = DaskExecutor(args.scheduler)
    else:
        executor = DaskExecutor("local", workers=2)
    with executor:
        summary = run_sweep(spec, args.out / "sweep.h5", executor, command="examples/sweep_dask.py")
    sw = read_sweep(args.out / "sweep.h5")
    print(f"{summary['cells']} cells on {summary['executor']} -> {args.out / 'sweep.h5'}")
    for cell in sw.cells:
        print(f"{cell.key}: clean {cell.attrs['clean_accuracy']:.3f}, "
              f"eps=0.125: {cell.accuracy[2]:.3f}")


if __name__ == "__main__":
    main()
