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
from pathlib import Path

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


LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
INSECURE = "insecure"


def scheduler_host(address: str) -> str:
    rest = address.split("://", 1)[-1]
    return rest.rsplit(":", 1)[0] if rest.count(":") <= 1 or rest.startswith("[") else rest


def load_security(security):
    """A ``distributed.Security`` from ``security``: None (plain, loopback only), the word
    ``insecure``, a ``Security`` object, or a Dask config file (YAML or JSON) holding the
    usual TLS keys, e.g.::

        distributed:
          comm:
            require-encryption: true
            tls:
              ca-file: /etc/hwq/ca.pem
              client: {cert: /etc/hwq/client.pem, key: /etc/hwq/client-key.pem}

    Relative paths in the file are taken from the file's folder."""
    if security is None or security == INSECURE:
        return None
    from distributed import Security

    if isinstance(security, Security):
        return security
    import yaml

    path = Path(security)
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"cannot read the Dask security file {path} ({exc})") from None
    comm = ((config or {}).get("distributed") or {}).get("comm") or {}
    tls = comm.get("tls") or {}
    if not isinstance(tls, dict) or not tls.get("ca-file"):
        raise UsageError(f"{path} names no distributed.comm.tls.ca-file",
                         hint="see docs/sweeps.md (Dask over TLS)")
    client = tls.get("client") or {}

    def absolute(value):
        return str((path.parent / value).resolve()) if isinstance(value, str) else None

    return Security(tls_ca_file=absolute(tls["ca-file"]), tls_client_cert=absolute(client.get("cert")),
                    tls_client_key=absolute(client.get("key")),
                    require_encryption=bool(comm.get("require-encryption", True)))


class DaskExecutor:
    """Tasks on a Dask distributed cluster: ``tcp://HOST:PORT`` or ``tls://HOST:PORT`` of a
    running scheduler, or ``local`` for a LocalCluster of ``workers`` single-threaded
    processes on this machine. Workers need hwq installed and the data at the same paths.

    **A scheduler address runs code.** Whoever controls the scheduler (or can talk to it)
    can run anything on the workers and send anything back to this process, which unpickles
    the results. So plain ``tcp://`` is accepted only on loopback; any other host needs
    ``security`` (TLS with certificates: a Dask config file or a ``distributed.Security``,
    ``--scheduler-security FILE``), or ``security="insecure"`` for a network you trust."""

    name = "dask"

    def __init__(self, address: str, workers: int = 2, *, timeout: str = "15s", security=None):
        self.address, self.workers, self.timeout = address, workers, timeout
        self.security = load_security(security)
        if (address != "local" and self.security is None and security != INSECURE
                and scheduler_host(address) not in LOOPBACK):
            raise UsageError(f"--scheduler {address}: a Dask scheduler runs code on its workers "
                             "and sends results this process unpickles; plain TCP beyond this "
                             "machine is refused",
                             hint="use tls://HOST:PORT with --scheduler-security FILE (see "
                                  "docs/sweeps.md), or --scheduler-security insecure on a "
                                  "network you trust")
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
                self.client = Client(self.address, timeout=self.timeout,
                                     security=self.security)
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


def make_executor(workers: int | None = None, scheduler: str | None = None, security=None):
    """``scheduler`` given: Dask (``security``: see ``DaskExecutor``); else ``workers``
    processes (1: this process)."""
    workers = workers if workers is not None else (os.cpu_count() or 1)
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    if scheduler:
        if scheduler != "local" and "://" not in scheduler:
            raise UsageError(f"--scheduler '{scheduler}' is not an address",
                             hint="use tcp://HOST:PORT, tls://HOST:PORT or local")
        return DaskExecutor(scheduler, workers, security=security)
    if security is not None:
        raise UsageError("--scheduler-security needs --scheduler")
    return SerialExecutor() if workers == 1 else PoolExecutor(workers)
