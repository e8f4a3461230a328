"""The machine a sweep's cells ran on: the CPU and the BLAS numpy uses.

Float training runs on the CPU's BLAS, whose kernels (chosen per CPU: AVX2, AVX-512...) sum
in different orders, so the same grid trains to slightly different float weights on different
CPUs and its content digest differs (docs/reproduction.md). Every sweep file records the
machines that ran its cells (root attribute ``machine``, a list; left out of the content
digest), and ``hwq report`` shows them in its settings.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

# CPU features that decide which BLAS and integer kernels run
FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "neon", "asimd")


def _cpu() -> tuple[str, list[str]]:
    model, flags = "", set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "Hardware") and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model or platform.processor() or platform.machine(), [f for f in FLAGS if f in flags]


def _blas() -> list[dict]:
    """numpy's BLAS as threadpoolctl sees it (library, version, the kernel it chose), or
    numpy's build configuration where threadpoolctl is missing."""
    import numpy as np

    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        threadpool_info = None
    if threadpool_info is not None:
        found = [{k: str(v) for k, v in info.items() if k in ("internal_api", "version", "architecture",
                                                             "threading_layer")}
                 for info in threadpool_info() if info.get("user_api") == "blas"]
        if found:
            return found
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return [{"internal_api": str(blas.get("name")), "version": str(blas.get("version"))}]
    except Exception:  # noqa: BLE001  (an older numpy: say nothing rather than fail a sweep)
        return []


@functools.lru_cache(maxsize=1)
def machine_info() -> dict:
    """This machine: CPU model, the relevant CPU flags, architecture, BLAS, numpy version."""
    import numpy as np

    model, flags = _cpu()
    return {"cpu": model, "cpu_flags": flags, "arch": platform.machine(), "blas": _blas(),
            "numpy": np.__version__}


def describe(machine: dict) -> str:
    """One line for a report: ``AMD EPYC (x86_64; avx2, avx512_vnni); BLAS openblas 0.3.27 Haswell``."""
    blas = ", ".join(" ".join(filter(None, (b.get("internal_api"), b.get("version"), b.get("architecture"))))
                     for b in machine.get("blas", [])) or "unknown"
    flags = ", ".join(machine.get("cpu_flags", [])) or "none of " + "/".join(FLAGS[:3])
    return (f"{machine.get('cpu', '?')} ({machine.get('arch', '?')}; {flags}); BLAS {blas}; "
            f"numpy {machine.get('numpy', '?')}")


def with_machine(fn, item):
    """``fn(item)`` and the machine it ran on (what a remote executor's workers return)."""
    return machine_info(), fn(item)


def report_lines(attrs: dict) -> list[str]:
    """The settings lines of ``hwq report``: the machines that ran the sweep's cells."""
    machines = attrs.get("machine")
    if not isinstance(machines, list) or not machines:
        return ["- machine: not recorded (a sweep file of an older hwq)"]
    return [f"- machine{'s' if len(machines) > 1 else ''} (float training runs on its BLAS, so other CPUs "
            "give other content digests; docs/reproduction.md): "
            + "; ".join(describe(m) if isinstance(m, dict) else str(m) for m in machines)]
