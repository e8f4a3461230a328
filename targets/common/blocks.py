"""The threaded block driver every exact-product kernel shares (VNNI, AVX2, sim's and the loihi
emulator's fused layers): rows are cut into blocks of ``BLOCK`` rows, and ``run_blocks`` runs a
Numba block worker on ``numba.get_num_threads()`` threads (the caller's among them) that
``claim`` block indices from one atomic counter, so a thread the OS schedules late simply takes
fewer blocks (no thread waits for the slowest one). Nothing here uses a vector instruction set.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numba as nb
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.core.extending import intrinsic

BLOCK = 48  # input rows per block; a multiple of every kernel's rows per register tile

_I64 = ir.IntType(64)


@intrinsic
def _claim(typingctx, counter):
    """``counter[0] += 1`` atomically; returns the old value (a block index to work on)."""
    sig = types.int64(counter)

    def codegen(context, builder, signature, args):
        ptr = builder.bitcast(context.make_array(signature.args[0])(context, builder, args[0]).data,
                              _I64.as_pointer())
        return builder.atomic_rmw("add", ptr, ir.Constant(_I64, 1), "monotonic")

    return sig, codegen


claim = _claim  # the public name block workers call


def run_blocks(worker, n: int, *args) -> int:
    """Run the Numba block worker ``worker(counter, *args)`` over ``n`` rows on
    ``numba.get_num_threads()`` threads (the caller's among them), which claim blocks of
    BLOCK rows from one atomic counter (``claim``), so a thread that the OS schedules late
    simply takes fewer blocks. Returns the sum of the workers' results (out-of-range counts).

    This is the driver of every exact-product kernel: sim's fused layer (``kernels.vnni_layer``), the
    plain products (``vnni.matmul``, ``avx2.matmul``) and the loihi emulator's
    (``hwq_targets.loihi.kernels.vnni_blocks``). A
    worker packs its rows with ``pack_rows``, multiplies with ``product`` and applies its own
    epilogue to the int32 block."""
    counter = np.zeros(1, np.int64)
    helpers = min(nb.get_num_threads(), -(-n // BLOCK)) - 1
    if helpers <= 0:
        return int(worker(counter, *args))
    futures = [_pool().submit(worker, counter, *args) for _ in range(helpers)]
    bad = worker(counter, *args)
    # the caller has claimed every block left: a helper the OS has not started yet (a busy
    # machine) is cancelled rather than waited for; one that started is finishing its last block
    return int(bad + sum(f.result() for f in futures if not f.cancel()))


_POOL: tuple[int, int, ThreadPoolExecutor] | None = None


def _pool() -> ThreadPoolExecutor:
    """The helper threads (made again after a fork or a change of ``numba.set_num_threads``)."""
    global _POOL
    key = (os.getpid(), nb.get_num_threads())
    if _POOL is None or _POOL[:2] != key:
        if _POOL is not None and _POOL[0] == key[0]:
            _POOL[2].shutdown(wait=False)
        _POOL = (*key, ThreadPoolExecutor(max(1, key[1] - 1), thread_name_prefix="hwq-sim"))
    return _POOL[2]


