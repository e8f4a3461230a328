"""Where sweep tasks run: in this process, in a local process pool, or on a Dask cluster.

Every executor has one method, ``imap(fn, items)``, which yields ``fn(item)`` as tasks finish
(any order), and is a context manager that releases its workers. Results travel back to the
parent, which is the only writer of the sweep file. Per-task seeds and single-threaded BLAS
make the results independent of the executor (hwq.sweep.cell).
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from hwq.errors import HwqError, UsageError
from hwq.sweep.machine import machine_info, with_machine


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

    def machines(self) -> list[dict]:
        """The machines that ran the tasks (``hwq.sweep.machine``): this one."""
        return [machine_info()]


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

    def machines(self) -> list[dict]:
        return [machine_info()]  # spawned processes of this machine, the same numpy


LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
INSECURE = "insecure"
ADDRESS = re.compile(r"(tcp|tls)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):(\d{1,5})")
ADDRESS_HINT = "use tcp://HOST:PORT, tls://HOST:PORT or local"


def parse_scheduler(address: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of a scheduler address ``tcp://HOST:PORT`` or ``tls://HOST:PORT``
    (HOST a name, an IPv4 address or ``[IPv6]``); anything else (user info, paths, a second
    address after ``@``...) is refused: the loopback check must see the host Dask connects to."""
    m = ADDRESS.fullmatch(address)
    if m is None or not 0 < int(m.group(3)) < 65536:
        raise UsageError(f"--scheduler '{address}' is not an address", hint=ADDRESS_HINT)
    return m.group(1), m.group(2), int(m.group(3))


def scheduler_host(address: str) -> str:
    return parse_scheduler(address)[1]


def _mapping(value, where: str, path: Path) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UsageError(f"{path}: {where} must be a mapping, found {type(value).__name__}",
                         hint="see docs/sweeps.md (Dask over TLS)")
    return value


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
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UsageError(f"cannot read the Dask security file {path} ({exc})") from None
    comm = _mapping(_mapping(_mapping(config, "the file", path).get("distributed"), "distributed", path)
                    .get("comm"), "distributed.comm", path)
    tls = _mapping(comm.get("tls"), "distributed.comm.tls", path)
    client = _mapping(tls.get("client"), "distributed.comm.tls.client", path)
    if not tls.get("ca-file"):
        raise UsageError(f"{path} names no distributed.comm.tls.ca-file",
                         hint="see docs/sweeps.md (Dask over TLS)")
    for where, value in (("tls.ca-file", tls.get("ca-file")), ("tls.client.cert", client.get("cert")),
                         ("tls.client.key", client.get("key"))):
        if value is not None and not isinstance(value, str):
            raise UsageError(f"{path}: distributed.comm.{where} must be a file name, found {value!r}")
    encryption = comm.get("require-encryption", True)
    if not isinstance(encryption, bool):
        raise UsageError(f"{path}: distributed.comm.require-encryption must be true or false, found {encryption!r}")

    def absolute(value):
        return str((path.parent / value).resolve()) if isinstance(value, str) else None

    # require-encryption: false is kept for Dask, but it lifts nothing here: beyond loopback
    # the executor needs tls:// with this file, or --scheduler-security insecure.
    return Security(tls_ca_file=absolute(tls["ca-file"]), tls_client_cert=absolute(client.get("cert")),
                    tls_client_key=absolute(client.get("key")), require_encryption=encryption)


class DaskExecutor:
    """Tasks on a Dask distributed cluster: ``tcp://HOST:PORT`` or ``tls://HOST:PORT`` of a
    running scheduler, or ``local`` for a LocalCluster of ``workers`` single-threaded
    processes on this machine. Workers need hwq installed and the data at the same paths.

    **A scheduler address runs code.** Whoever controls the scheduler (or can talk to it)
    can run anything on the workers and send anything back to this process, which unpickles
    the results. So plain ``tcp://`` is accepted only on loopback; any other host needs
    ``security`` (TLS with certificates: a Dask config file or a ``distributed.Security``,
    ``--scheduler-security FILE``), or ``security="insecure"`` for a network you trust.
    A security file goes with ``tls://`` only (with ``tcp://`` it would secure nothing), and
    ``tls://`` needs one; its ``require-encryption`` never lifts the loopback rule."""

    name = "dask"

    def __init__(self, address: str, workers: int = 2, *, timeout: str = "15s", security=None):
        self.address, self.workers, self.timeout = address, workers, timeout
        self.security = load_security(security)
        self.seen: list[dict] = []
        self.client = self.cluster = None
        if address == "local":
            return
        scheme, host, _ = parse_scheduler(address)
        if scheme == "tls" and self.security is None:
            raise UsageError(f"--scheduler {address}: TLS needs the CA and this client's certificate",
                             hint="pass --scheduler-security FILE (a Dask security file, see docs/sweeps.md)")
        if scheme == "tcp" and self.security is not None:
            raise UsageError(f"--scheduler {address}: a security file secures tls:// connections only; "
                             "over tcp:// it would send everything in the clear",
                             hint=f"use {address.replace('tcp://', 'tls://', 1)}")
        if scheme == "tcp" and security != INSECURE and host not in LOOPBACK:
            raise UsageError(f"--scheduler {address}: a Dask scheduler runs code on its workers "
                             "and sends results this process unpickles; plain TCP beyond this "
                             "machine is refused",
                             hint="use tls://HOST:PORT with --scheduler-security FILE (see "
                                  "docs/sweeps.md), or --scheduler-security insecure on a "
                                  "network you trust")

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

        futures = self.client.map(functools.partial(with_machine, fn), list(items), pure=False)
        try:
            for future in as_completed(futures):
                machine, result = future.result()
                if machine not in self.seen:
                    self.seen.append(machine)
                yield result
        finally:
            self.client.cancel([f for f in futures if not f.done()])

    def machines(self) -> list[dict]:
        """The machines of the workers that returned results (each one once)."""
        return list(self.seen)


def make_executor(workers: int | None = None, scheduler: str | None = None, security=None):
    """``scheduler`` given: Dask (``security``: see ``DaskExecutor``); else ``workers``
    processes (1: this process)."""
    workers = workers if workers is not None else (os.cpu_count() or 1)
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    if scheduler:
        if scheduler != "local":
            parse_scheduler(scheduler)
        return DaskExecutor(scheduler, workers, security=security)
    if security is not None:
        raise UsageError("--scheduler-security needs --scheduler")
    return SerialExecutor() if workers == 1 else PoolExecutor(workers)
