"""Where sweep tasks run: in this process, in a local process pool, or on a Dask cluster.

Every executor has one method, ``imap(fn, items)``, which yields ``fn(item)`` as tasks finish
(any order), and is a context manager that releases its workers. Results travel back to the
parent, which is the only writer of the sweep file. Per-task seeds and single-threaded BLAS
make the results independent of the executor (hwq.sweep_cell).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

from hwq.errors import HwqError, UsageError


class SerialExecutor:
    """Runs tasks one after the other in this process (``--workers 1``)."""

    name = "serial"
    workers = 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def imap(self, fn: Callable, items: Iterable) -> Iterator:
        for item in items:
            yield fn(item)


def _watch_parent(parent: int) -> None:
    """Exit this worker when the parent dies (kill -9 leaves no one to send results to)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(1)


def _init_worker(parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


class PoolExecutor:
    """A local pool of ``workers`` processes (spawned: no forked numba or BLAS state)."""

    name = "local"

    def __init__(self, workers: int):
        if workers < 1:
            raise UsageError(f"--workers must be at least 1, got {workers}")
        self.workers = workers
        self.pool = None

    def __enter__(self):
        ctx = multiprocessing.get_context("spawn")
        self.pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                                        initargs=(os.getpid(),))
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is not None:  # interrupted or failed: do not wait for running tasks
            for proc in list(getattr(self.pool, "_processes", {}).values()):
                proc.terminate()
        self.pool.shutdown(wait=exc_type is None, cancel_futures=True)
        return False

    def imap(self, fn: Callable, items: Iterable) -> Iterator:
        pending = {self.pool.submit(fn, item) for item in items}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                yield future.result()


class DaskExecutor:
    """Tasks on a Dask distributed cluster: ``tcp://HOST:PORT`` of a running scheduler, or
    ``local`` for a LocalCluster of ``workers`` single-threaded processes on this machine.
    Workers need hwq installed and the data at the same paths."""

    name = "dask"

    def __init__(self, address: str, workers: int = 2, *, timeout: str = "15s"):
        self.address, self.workers, self.timeout = address, workers, timeout
        self.client = self.cluster = None

    def __enter__(self):
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise HwqError("the Dask executor needs the 'distributed' package",
                           hint="pip install 'dask[distributed]'") from None
        try:
            if self.address == "local":
                self.cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1,
                                            processes=True, host="127.0.0.1",
                                            dashboard_address=None)
                self.client = Client(self.cluster)
            else:
                self.client = Client(self.address, timeout=self.timeout)
                self.workers = len(self.client.scheduler_info().get("workers", {}))
        except (OSError, TimeoutError) as exc:
            self.__exit__(None)
            raise HwqError(f"cannot reach the Dask scheduler at {self.address} ({exc})",
                           hint="start one with `dask scheduler` and `dask worker ADDRESS`, "
                                "or use --scheduler local") from None
        return self

    def __exit__(self, *exc):
        for obj in (self.client, self.cluster):
            if obj is not None:
                obj.close()
        return False

    def imap(self, fn: Callable, items: Iterable) -> Iterator:
        from distributed import as_completed

        futures = self.client.map(fn, list(items), pure=False)
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            self.client.cancel([f for f in futures if not f.done()])


def make_executor(workers: int | None = None, scheduler: str | None = None):
    """``scheduler`` given: Dask; else ``workers`` processes (1: this process)."""
    workers = workers if workers is not None else (os.cpu_count() or 1)
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    if scheduler:
        if scheduler != "local" and "://" not in scheduler:
            raise UsageError(f"--scheduler '{scheduler}' is not an address",
                             hint="use tcp://HOST:PORT or local")
        return DaskExecutor(scheduler, workers)
    return SerialExecutor() if workers == 1 else PoolExecutor(workers)
