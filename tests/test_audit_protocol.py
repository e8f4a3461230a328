"""Hostile peers on both sides of the device protocol (issue 17, M1-M7; issue 16, the Lava Python).

Server side: a real ``hwq serve`` process on loopback is fed malformed frames from a seeded
generator (random bytes, truncations, byte flips, every header field, oversized lengths,
payloads of the wrong type, deep and bad JSON, wrong message kinds, wrong shapes, dtypes and
code ranges, pipelined frames). Every reply must be an ERROR frame, the IDENTITY for a valid
HELLO, or the scores the compiled model gives the exact codes sent; the server stays up and
answers a correct client correctly after each round. Client side: a hostile fake device (a
thread on loopback) answers with bad identities, deep JSON, garbage, trickles and silence;
the client must fail with one ``HwqError`` line in bounded time. The long fuzz runs are
``slow``.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from builders import random_mlp
from test_devices import Served

import hwq
from hwq.devices import DeviceError, DeviceTimeout, LocalDevice, Server, SocketDevice, model_hash
from hwq.devices import protocol as p
from hwq.errors import HwqError, TargetError
from hwq.onnx.importer import graph_from_model
from hwq.quant.reference import quantize_input

N_IN, N_OUT = 16, 4


# -- a real `hwq serve` -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model(tmp_path_factory):
    rng = np.random.default_rng(17)
    x = rng.uniform(0, 1, (200, N_IN))
    net = hwq.quantize(graph_from_model(random_mlp(rng, N_IN, 12, N_OUT)), 4, calibration=x, bounds=(0.0, 1.0))
    program = hwq.compile(net, "sim")
    path = tmp_path_factory.mktemp("audit") / "m.hwq"
    hwq.save_program(path, program)
    program = hwq.load_program(path)
    return path, program, quantize_input(program.net.input, x)


class HwqServe:
    """``hwq serve MODEL`` in its own process; its stderr is collected by a thread."""

    def __init__(self, path, *args):
        self.proc = subprocess.Popen([sys.executable, "-m", "hwq", "serve", str(path), *map(str, args)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("listening "), self.proc.stderr.read()
        self.address = line.split()[1]
        host, port = self.address.removeprefix("tcp://").rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.log: list[str] = []
        self.reader = threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True)
        self.reader.start()

    def memory(self, field: str) -> int:
        """``VmRSS`` (resident memory now) or ``VmHWM`` (its peak) of the server process, bytes."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {field}")

    def stop(self) -> str:
        self.proc.kill()
        self.proc.wait()
        self.reader.join(5)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return "".join(self.log)


@pytest.fixture(scope="module")
def served(model):
    server = HwqServe(model[0])
    still_correct(server, model[1], model[2], timeout=300)  # the first request may compile the model's kernels
    yield server
    server.stop()


def connect(server, timeout=10.0) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=timeout)


def recv_all(sock: socket.socket, seconds: float = 10.0) -> bytes:
    """Everything the peer sends until it closes (or ``seconds`` pass: then the test fails)."""
    sock.settimeout(seconds)
    chunks = []
    while chunk := sock.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def frames_in(data: bytes) -> list[p.Frame]:
    """The frames in ``data``, which must be whole and valid (replies of a server)."""
    out, pos = [], 0
    view = memoryview(data)

    def readinto(buf):
        nonlocal pos
        n = min(len(buf), len(data) - pos)
        buf[:n] = view[pos:pos + n]
        pos += n
        return n

    while pos < len(data):
        out.append(p.read_frame(readinto))
    return out


def exchange(server, data: bytes) -> list[p.Frame]:
    """Send ``data``, half-close, and read the replies until the server closes."""
    with connect(server) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may refuse (and close) before it has read everything
        try:
            return frames_in(recv_all(s))
        except ConnectionResetError:
            return []


def still_correct(server, program, codes, timeout=30) -> None:
    with SocketDevice(server.address, model_hash=model_hash(program), timeout=timeout) as dev:
        assert np.array_equal(dev.infer(codes), program.forward(codes))
    assert server.proc.poll() is None


def hello(rid=1, mhash=p.NO_HASH) -> bytes:
    return p.to_bytes(p.json_frame(p.Kind.HELLO, rid, mhash, {"client": "fuzz"}))


def infer(codes, rid=2, mhash=None, program=None, dtype=np.uint8) -> bytes:
    mhash = mhash if mhash is not None else model_hash(program)
    return p.to_bytes(p.array_frame(p.Kind.INFER, rid, mhash, np.asarray(codes).astype(dtype)))


def raw_frame(kind, dtype, payload: bytes, shape, rid=1, mhash=p.NO_HASH, bits=8) -> bytes:
    dims = tuple(shape) + (0,) * (4 - len(shape))
    return p.HEADER.pack(p.MAGIC, p.VERSION, kind, dtype, bits, rid, mhash, len(shape), bytes(7), *dims,
                         len(payload)) + payload + p.END


def json_raw(kind, text: bytes, rid=1) -> bytes:
    return raw_frame(kind, p.JSON, text, (len(text),), rid)


# -- M1, M2: deep JSON and JSON where an array belongs ------------------------------------------
def test_deep_json_hello_is_answered_with_an_error_and_the_connection_stays(served, model):
    _, program, codes = model
    deep = b"[" * 10000 + b"]" * 10000  # 20 KB, the audit's frame
    with connect(served) as s:
        s.sendall(json_raw(1, deep, rid=5))
        reply = p.read_frame(s.recv_into)
        assert reply.kind == p.Kind.ERROR and reply.request_id == 5 and "nested" in reply.data["error"]
        s.sendall(hello(6))  # same connection, still in step
        assert p.read_frame(s.recv_into).kind == p.Kind.IDENTITY
    deeper = b'{"a":' * 5000 + b"1" + b"}" * 5000
    assert [f.kind for f in exchange(served, json_raw(1, deeper))] == [p.Kind.ERROR]
    still_correct(served, program, codes)


def test_json_payload_in_an_infer_frame_is_an_error_not_a_crash(served, model):
    _, program, codes = model
    for kind in (p.Kind.INFER, p.Kind.SCORES):
        replies = exchange(served, json_raw(kind, b'{"a":1}', rid=9) + hello(10))
        assert [f.kind for f in replies] == [p.Kind.ERROR, p.Kind.IDENTITY]
        assert replies[0].request_id == 9 and "carry an integer array" in replies[0].data["error"]
    replies = exchange(served, raw_frame(1, 1, bytes(4), (2, 2)) + hello(3))  # an array in a HELLO
    assert [f.kind for f in replies] == [p.Kind.ERROR, p.Kind.IDENTITY]
    still_correct(served, program, codes)


def test_codes_outside_the_input_format_are_refused(served, model):
    _, program, codes = model
    fmt = program.net.input
    for bad in (fmt.qmax + 1, fmt.qmin - 1):
        wrong = codes[:3].astype(np.int64)
        wrong[1, 2] = bad
        reply = exchange(served, infer(wrong, program=program, dtype=np.int64))
        assert [f.kind for f in reply] == [p.Kind.ERROR] and "must lie in" in reply[0].data["error"]
    still_correct(served, program, codes)


# -- M3: idle, slow and many clients -----------------------------------------------------------
def test_an_idle_connection_does_not_block_other_clients(served, model):
    _, program, codes = model
    idle = [connect(served) for _ in range(3)]  # connected, never send a byte
    slow = connect(served)
    slow.sendall(hello()[:10])  # the start of a frame, then nothing
    try:
        dev = SocketDevice(served.address, model_hash=model_hash(program), timeout=5, connect_timeout=5)
        with dev:
            assert np.array_equal(dev.infer(codes), program.forward(codes))
    finally:
        for s in (*idle, slow):
            s.close()


def test_many_clients_at_once_are_all_served(served, model):
    _, program, codes = model
    assert concurrent_clients(served, program, codes, 24, timeout=20, connect_timeout=20) == [True] * 24


def concurrent_clients(server, program, codes, count: int, timeout: float, connect_timeout: float) -> list:
    """``count`` clients at once, each inferring ``codes``: True where a client got the program's
    scores, else its error line."""
    expected, outcomes = program.forward(codes), []

    def client():
        try:
            with SocketDevice(server.address, model_hash=model_hash(program), timeout=timeout,
                              connect_timeout=connect_timeout) as dev:
                outcomes.append(np.array_equal(dev.infer(codes), expected))
        except HwqError as exc:
            outcomes.append(exc.line())

    threads = [threading.Thread(target=client) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(2 * (timeout + connect_timeout))
    return outcomes


def script_server(path, *args) -> Served:
    """The test device server of tests/test_devices.py (a real ``Server`` in its own process)
    with options ``hwq serve`` does not expose."""
    s = Served(str(path), *map(str, args))
    s.host, port = s.address.removeprefix("tcp://").rsplit(":", 1)
    s.port = int(port)
    return s


@pytest.fixture
def strict(model):
    """A server that drops idle peers after 1 s and frames not in within 1 s + size / 1 MiB/s."""
    s = script_server(model[0], "--idle-timeout", "1", "--frame-timeout", "1")
    yield s
    s.stop()


def test_clients_beyond_the_limit_are_told_the_server_is_busy(model):
    """One client too many is told "busy" and retries within its connect window; 60 clients
    against a server that takes 4 at a time are all served (the audit saw 3 of 200 get in)."""
    path, program, codes = model
    server = script_server(path, "--max-clients", 4)
    try:
        idle = [connect(server) for _ in range(4)]
        time.sleep(0.2)
        t0 = time.monotonic()
        with pytest.raises(DeviceError, match="refused the connection: the device server is busy"):
            SocketDevice(server.address, model_hash=model_hash(program), timeout=5, connect_timeout=1).open()
        assert time.monotonic() - t0 < 4
        for s in idle:
            s.close()
        time.sleep(0.2)
        still_correct(server, program, codes)
        assert concurrent_clients(server, program, codes, 60, timeout=30, connect_timeout=60) == [True] * 60
    finally:
        server.stop()


def test_idle_and_trickling_peers_are_timed_out(strict, model):
    _, program, codes = model
    t0 = time.monotonic()
    with connect(strict) as idle:
        assert recv_all(idle, 10) == b""  # closed by the server
    assert time.monotonic() - t0 < 5
    frame = infer(codes, program=program)
    with connect(strict) as slow:  # a byte every 0.3 s: moving, but far too slowly
        t0 = time.monotonic()
        with pytest.raises(OSError):
            for i in range(len(frame)):
                slow.sendall(frame[i:i + 1])
                time.sleep(0.3)
                if time.monotonic() - t0 > 15:
                    raise AssertionError("the trickling client was not cut off")
        assert time.monotonic() - t0 < 6
    still_correct(strict, program, codes)
    log = strict.stop()
    assert "idle for 1 s" in log and "too slowly" in log


# -- M4: size limits that agree, memory bounded by the frame -------------------------------------
def test_replies_never_exceed_the_limit_and_the_client_splits_batches(model):
    path, program, codes = model
    limit = 64_000  # 4 outputs x 8 bytes: at most 2000 rows per reply
    server = script_server(path, "--limit", limit)
    try:
        rows = np.resize(codes, (5000, N_IN))  # 80 kB of uint8 codes would fit; 160 kB of scores would not
        reply = exchange(server, infer(rows[:2500], program=program))
        assert [f.kind for f in reply] == [p.Kind.ERROR] and "send at most 2000 rows" in reply[0].data["error"]
        with SocketDevice(server.address, model_hash=model_hash(program), limit=limit) as dev:
            assert dev.info["max_rows"] == 2000
            first = dev.next_id
            assert np.array_equal(dev.infer(rows), program.forward(rows))
            assert dev.next_id - first == 3  # 2000 + 2000 + 1000 rows
        with SocketDevice(server.address, model_hash=model_hash(program), limit=16_000) as dev:  # a smaller client
            assert np.array_equal(dev.infer(rows), program.forward(rows))  # replies of at most 500 rows
    finally:
        server.stop()


def test_the_server_computes_big_batches_in_chunks(model, monkeypatch):
    """Memory: the device sees chunks of CHUNK_BYTES of int64 codes, the scores are the same."""
    from hwq.devices import server as server_module

    _, program, codes = model
    seen = []
    device = LocalDevice.from_program(program)
    forward = device.fn
    device.fn = lambda c: (seen.append(len(c)), forward(c))[1]
    monkeypatch.setattr(server_module, "CHUNK_BYTES", 8 * N_IN * 64)  # 64 rows per chunk
    server = Server(device, "127.0.0.1", 0)
    rows = np.resize(codes, (1000, N_IN))
    assert np.array_equal(server.compute(rows), program.forward(rows))
    assert max(seen) == 64 and sum(seen) == 1000
    server.close()


@pytest.mark.slow
def test_a_maximum_size_request_costs_a_small_multiple_of_the_frame(tmp_path):
    """M4: the largest request (64 MiB of codes for a 64-256-2 network, whose float32 hidden layer
    is 16 times the codes) raises the server's peak memory above its resting level by less
    than 3 frames (measured: 1.3; computed in one pass: 5.3)."""
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 1, (300, 64))
    net = hwq.quantize(graph_from_model(random_mlp(rng, 64, 256, 2)), 8, calibration=x, bounds=(0.0, 1.0))
    path = tmp_path / "wide.hwq"
    hwq.save_program(path, hwq.compile(net, "sim"))
    program = hwq.load_program(path)
    codes = quantize_input(program.net.input, x).astype(np.uint8)
    limit = 64 * 2**20
    server = HwqServe(path, "--limit-mb", limit // 2**20)
    try:
        with SocketDevice(server.address, model_hash=model_hash(program), limit=limit, timeout=300) as dev:
            dev.infer(codes)
            resting = server.memory("VmRSS")
            big = np.resize(codes, (limit // 64, 64))  # the largest request: 1M rows
            assert np.array_equal(dev.infer(big)[:len(codes)], program.forward(codes))
        grown = server.memory("VmHWM") - resting
        print(f"server memory: +{grown / 2**20:.0f} MiB for a {limit // 2**20} MiB request")
        assert grown < 3 * limit, f"the server grew by {grown / 2**20:.0f} MiB for a {limit // 2**20} MiB frame"
    finally:
        server.stop()


# -- the fuzzer, server side ---------------------------------------------------------------------
def valid_frames(program, codes, rng) -> list[bytes]:
    h = model_hash(program)
    n = int(rng.integers(0, 6))
    return [hello(int(rng.integers(0, 2**63)), h), infer(codes[:n], rid=int(rng.integers(0, 2**63)), mhash=h)]


def pick(rng, options: list):
    return options[int(rng.integers(0, len(options)))]


def header_field_mutation(frame: bytes, rng) -> bytes:
    raw = bytearray(frame)
    field = rng.choice(["magic", "version", "kind", "dtype", "bits", "ndim", "reserved", "dim", "length"])
    if field == "magic":
        raw[0:4] = rng.bytes(4)
    elif field in ("version", "kind", "dtype", "bits", "ndim"):
        raw[{"version": 4, "kind": 5, "dtype": 6, "bits": 7, "ndim": 48}[field]] = int(rng.integers(0, 256))
    elif field == "reserved":
        raw[49 + int(rng.integers(0, 7))] = int(rng.integers(1, 256))
    else:
        value = pick(rng, [0, 1, 2**31, 2**32 + 1, 2**63, 2**64 - 1, int(rng.integers(0, 2**40))])
        offset = 56 + 8 * int(rng.integers(0, 4)) if field == "dim" else 88
        struct.pack_into("<Q", raw, offset, value)
    return bytes(raw)


def deep_json(rng) -> bytes:
    depth = int(rng.choice([p.JSON_DEPTH + 1, 100, 1000, 10000, 30000]))
    if rng.random() < 0.5:
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"0" + b"}" * depth


BAD_JSON = [b"", b"[]", b"1", b'"x"', b"null", b"{", b"\xff\xfe{}", b'{"a":1e999999}', b'{"a":NaN}',
            b'{"a":' + b"9" * 5000 + b"}", b'{"a":"\\ud800"}', b"{}" * 3, b'{"identity":' + b"[" * 9 + b"]" * 9 + b"}"]


def malformed(program, codes, rng) -> bytes:
    """One malformed (or valid-but-wrong) byte string for the server, of a random kind."""
    frames = valid_frames(program, codes, rng)
    frame = frames[int(rng.integers(0, 2))]
    kind = int(rng.integers(0, 12))
    if kind == 0:  # random bytes
        return rng.bytes(int(rng.integers(1, 400)))
    if kind == 1:  # truncated anywhere
        return frame[:int(rng.integers(1, len(frame)))]
    if kind == 2:  # byte flips anywhere
        raw = bytearray(frame)
        for _ in range(int(rng.integers(1, 4))):
            raw[int(rng.integers(0, len(raw)))] ^= 1 << int(rng.integers(0, 8))
        return bytes(raw)
    if kind == 3:  # one header field set to an odd value
        return header_field_mutation(frame, rng)
    if kind == 4:  # a payload of the wrong type for the kind
        k = int(rng.integers(1, 6))
        if k in (1, 2, 5):
            return raw_frame(k, int(rng.integers(1, 7)), bytes(8), (2, 4))
        return json_raw(k, b'{"codes":[[1,2,3]]}')
    if kind == 5:  # deep JSON
        return json_raw(int(rng.choice([1, 2, 5])), deep_json(rng))
    if kind == 6:  # bad JSON
        return json_raw(1, BAD_JSON[int(rng.integers(0, len(BAD_JSON)))])
    if kind == 7:  # a kind the server does not take
        k = int(rng.choice([2, 4, 5]))
        return json_raw(k, b'{"error":"x"}') if k != 4 else raw_frame(4, 6, bytes(16), (2, 1))
    if kind == 8:  # wrong shapes
        shape = [(N_IN,), (1, N_IN + 1), (2, N_IN - 1), (1, 1, N_IN), (), (1, 0), (0, 3)][int(rng.integers(0, 7))]
        size = int(np.prod(shape, dtype=np.int64)) if shape else 1
        return raw_frame(3, 1, bytes(size), shape, mhash=model_hash(program))
    if kind == 9:  # other dtypes and code ranges
        dtype = np.dtype(rng.choice(["u1", "i1", "u2", "i2", "i4", "i8"]))
        info = np.iinfo(dtype)
        values = rng.integers(info.min, info.max, (3, N_IN), dtype=dtype, endpoint=True)
        if rng.random() < 0.5:
            values = np.clip(values, 0, 15).astype(dtype)  # within a 4-bit format: a valid request
        return p.to_bytes(p.array_frame(p.Kind.INFER, 4, model_hash(program), values))
    if kind == 10:  # oversized: a header that announces more than the limit, then little
        length = pick(rng, [p.DEFAULT_LIMIT + 1, 2**40, 2**64 - 1])
        rows = min(2**64 - 1, max(1, length // N_IN))
        head = p.HEADER.pack(p.MAGIC, 1, 3, 1, 8, 1, model_hash(program), 2, bytes(7), rows, N_IN, 0, 0, length)
        return head + rng.bytes(int(rng.integers(0, 200)))
    # pipelined: valid frames, then one of the above
    return b"".join(frames) + malformed(program, codes, rng)


def requests_in(data: bytes) -> list[p.Frame]:
    """The whole, valid frames at the start of ``data`` (what the server can have answered)."""
    out, pos = [], 0

    def readinto(buf):
        nonlocal pos
        n = min(len(buf), len(data) - pos)
        buf[:n] = data[pos:pos + n]
        pos += n
        return n

    while pos < len(data):
        try:
            out.append(p.read_frame(readinto))
        except HwqError as exc:
            if type(exc).__name__ != "BadMessage":
                break
    return out


def check_replies(sent: bytes, replies: list[p.Frame], program) -> None:
    """Every reply is an ERROR, the IDENTITY for a HELLO that was sent, or the model's scores
    for exactly the codes of an INFER that was sent: never another answer."""
    requests = requests_in(sent)
    assert len(replies) <= len(requests) + 1
    for reply in replies:
        assert reply.kind in (p.Kind.ERROR, p.Kind.IDENTITY, p.Kind.SCORES)
        if reply.kind == p.Kind.ERROR:
            assert isinstance(reply.data.get("error"), str) and "\n" not in reply.data["error"]
            continue
        asked = [r for r in requests if r.request_id == reply.request_id
                 and r.kind == (p.Kind.HELLO if reply.kind == p.Kind.IDENTITY else p.Kind.INFER)]
        assert asked, f"a {reply.kind.name} reply to no such request"
        if reply.kind == p.Kind.SCORES:
            assert any(isinstance(r.data, np.ndarray) and r.data.ndim == 2 and r.data.shape[1] == N_IN
                       and np.array_equal(reply.data, program.forward(r.data)) for r in asked)


def fuzz_server(server, program, codes, cases: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    counts = {"cases": 0, "errors": 0, "closed": 0, "answered": 0}
    for i in range(cases):
        data = malformed(program, codes, rng)
        replies = exchange(server, data)
        check_replies(data, replies, program)
        counts["cases"] += 1
        counts["closed" if not replies else "errors" if replies[-1].kind == p.Kind.ERROR else "answered"] += 1
        if i % 50 == 49:
            still_correct(server, program, codes)
    still_correct(server, program, codes)
    return counts


def test_fuzzed_frames_get_an_error_or_a_correct_answer_and_the_server_stays_up(served, model):
    _, program, codes = model
    counts = fuzz_server(served, program, codes, 150, seed=1)
    print("server fuzz:", counts)
    assert counts["errors"] > 50 and counts["closed"] > 10  # the generator reaches both kinds of refusal
    log = "".join(served.log)
    assert "Traceback" not in log and "after an unexpected" not in log  # every refusal was a foreseen one


@pytest.mark.slow
def test_fuzzed_frames_long_run(served, model):
    _, program, codes = model
    counts = fuzz_server(served, program, codes, 2000, seed=2)
    print("server fuzz (slow):", counts)
    log = "".join(served.log)
    assert "Traceback" not in log and "after an unexpected" not in log


# -- the fuzzer, client side: a hostile device ------------------------------------------------------
class FakeDevice:
    """A device server on loopback. HELLO is answered with ``identity(frame)`` (a dict for the
    IDENTITY's JSON, bytes to send, or a function of the connection that acts instead), INFER
    with ``scores(frame, good)`` (``good``: the correct SCORES frame's bytes; the same choices)."""

    def __init__(self, program, *, identity=None, scores=None):
        self.program, self.hash = program, model_hash(program)
        self.identity = identity or (lambda frame: self.good_identity())
        self.scores = scores or (lambda frame, good: good)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"tcp://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stopped = threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def good_identity(self) -> dict:
        return good_identity(self.program)

    def serve(self):
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.connection, args=(conn,), daemon=True).start()

    def connection(self, conn):
        with conn:
            try:
                while not self.stopped.is_set():
                    frame = p.read_frame(conn.recv_into)
                    if frame.kind == p.Kind.HELLO:
                        answer = self.identity(frame)
                        if isinstance(answer, dict):
                            answer = p.to_bytes(p.json_frame(p.Kind.IDENTITY, frame.request_id, self.hash, answer))
                    else:
                        good = p.to_bytes(p.array_frame(p.Kind.SCORES, frame.request_id, self.hash,
                                                        self.program.forward(frame.data), 64))
                        answer = self.scores(frame, good)
                    if callable(answer):
                        answer(conn)
                    else:
                        conn.sendall(answer)
            except (OSError, HwqError):
                return

    def close(self):
        self.stopped.set()
        self.sock.close()


def good_identity(program) -> dict:
    net = program.net
    return {"identity": "fake", "model_hash": model_hash(program).hex(), "protocol": 1, "limit": p.DEFAULT_LIMIT,
            "max_rows": None, "n_features": net.n_features, "n_outputs": N_OUT, "input_bits": net.input.bits}


def trickle(data: bytes, every: float):
    def act(conn):
        for i in range(len(data)):
            conn.sendall(data[i:i + 1])
            time.sleep(every)
    return act


def with_fields(program, **fields):
    return lambda frame: {**good_identity(program), **fields}


def shut(conn):
    conn.shutdown(socket.SHUT_RDWR)


def hostile(name: str, program) -> dict:
    """FakeDevice arguments for one way a device can answer wrongly (``HOSTILE`` names them)."""
    h = model_hash(program)
    if name in BAD_FIELDS:
        field, value = BAD_FIELDS[name]
        return dict(identity=with_fields(program, **{field: value}))
    rid = lambda f: f.request_id  # noqa: E731
    scores = lambda make: dict(scores=make)  # noqa: E731
    return {
        "deep JSON identity": dict(identity=lambda f: json_raw(2, b'{"identity":' + b"[" * 10000 + b"]" * 10000 + b"}",
                                                               rid(f))),
        "deep JSON error": dict(identity=lambda f: json_raw(5, b'{"error":' + b"[" * 10000 + b"]" * 10000 + b"}",
                                                            rid(f))),
        "array identity": dict(identity=lambda f: raw_frame(2, 1, bytes(4), (4,), rid(f), h)),
        "identity not an object": dict(identity=lambda f: json_raw(2, b"[1]", rid(f))),
        "identity not UTF-8": dict(identity=lambda f: json_raw(2, b"\xff\xff", rid(f))),
        "garbage": dict(identity=lambda f: b"HTTP/1.1 200 OK\r\n\r\n" + bytes(200)),
        "closes at once": dict(identity=lambda f: shut),
        "half an identity": dict(identity=lambda f: lambda conn: (
            conn.sendall(p.to_bytes(p.json_frame(p.Kind.IDENTITY, rid(f), h, {}))[:50]), shut(conn))),
        "silent": dict(identity=lambda f: lambda conn: time.sleep(30)),
        "trickles its identity": dict(identity=lambda f: trickle(p.to_bytes(p.json_frame(
            p.Kind.IDENTITY, rid(f), h, good_identity(program))), 0.25)),
        "huge length": dict(identity=lambda f: p.HEADER.pack(p.MAGIC, 1, 2, 6, 64, rid(f), h, 2, bytes(7),
                                                             2**40, 8, 0, 0, 2**43)),
        "foreign request id": dict(identity=lambda f: p.to_bytes(p.json_frame(p.Kind.IDENTITY, rid(f) + 7, h, {}))),
        "error with a list": dict(identity=lambda f: json_raw(5, b'{"error":[1,2]}', rid(f))),
        "error of many lines": dict(identity=lambda f: p.to_bytes(p.json_frame(p.Kind.ERROR, rid(f), h,
                                                                               {"error": "line\n" * 3000}))),
        "scores of the wrong shape": scores(lambda f, good: p.to_bytes(p.array_frame(
            p.Kind.SCORES, rid(f), h, np.zeros((len(f.data), N_OUT + 1), np.int64)))),
        "scores for fewer rows": scores(lambda f, good: p.to_bytes(p.array_frame(
            p.Kind.SCORES, rid(f), h, np.zeros((1, N_OUT), np.int64)))),
        "3-D scores": scores(lambda f, good: p.to_bytes(p.array_frame(
            p.Kind.SCORES, rid(f), h, np.zeros((len(f.data), N_OUT, 1), np.int64)))),
        "JSON scores": scores(lambda f, good: json_raw(4, b'{"scores":[]}', rid(f))),
        "an identity for scores": scores(lambda f, good: p.to_bytes(p.json_frame(p.Kind.IDENTITY, rid(f), h, {}))),
        "scores of another model": scores(lambda f, good: good[:16] + bytes(32) + good[48:]),
        "stale scores": scores(lambda f, good: p.to_bytes(p.array_frame(p.Kind.SCORES, rid(f) - 1, h,
                                                                        program.forward(f.data), 64))),
        "garbage scores": scores(lambda f, good: b"\x00" * 500),
        "error frame": scores(lambda f, good: json_raw(5, b'{"error":"on fire"}', rid(f))),
        "silent on scores": scores(lambda f, good: lambda conn: time.sleep(30)),
        "trickles its scores (M6)": scores(lambda f, good: trickle(good, 0.25)),
    }[name]


BAD_FIELDS = {f"{field}={value!r}": (field, value) for field, value in
              [("input_bits", v) for v in ("abc", -5, 0, 65, 1.5, True, [8], {"a": 1})]
              + [(field, v) for field in ("n_features", "n_outputs", "limit", "max_rows")
                 for v in ("x", -1, 0, 2.5, False)]
              + [("protocol", 2), ("protocol", "1")]}
HOSTILE = (list(BAD_FIELDS)
           + ["deep JSON identity", "deep JSON error", "array identity", "identity not an object",
              "identity not UTF-8", "garbage", "closes at once", "half an identity", "silent",
              "trickles its identity", "huge length", "foreign request id", "error with a list",
              "error of many lines", "scores of the wrong shape", "scores for fewer rows", "3-D scores",
              "JSON scores", "an identity for scores", "scores of another model", "stale scores",
              "garbage scores", "error frame", "silent on scores", "trickles its scores (M6)"])


def run_client(address, program, codes, timeout=1.0):
    dev = SocketDevice(address, model_hash=model_hash(program), timeout=timeout, connect_timeout=2, reconnects=0)
    try:
        with dev:
            return dev.infer(codes)
    finally:
        dev.close()


def one_line_error(exc: BaseException) -> str:
    assert isinstance(exc, HwqError), f"{type(exc).__name__}: {exc}"
    line = exc.line()
    assert "\n" not in line and "\r" not in line and len(line) < 1200, line
    return line


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_device_gives_one_line_errors_in_bounded_time(name, model):
    _, program, codes = model
    fake = FakeDevice(program, **hostile(name, program))
    t0 = time.monotonic()
    try:
        with pytest.raises(HwqError) as info:
            run_client(fake.address, program, codes[:5])
    finally:
        fake.close()
    line = one_line_error(info.value)
    assert time.monotonic() - t0 < 8, f"{name} took {time.monotonic() - t0:.1f} s"
    if name.startswith("trickles"):
        assert isinstance(info.value, DeviceTimeout) and "too slowly" in line


def test_a_long_identity_is_one_short_line(model):
    _, program, codes = model
    fake = FakeDevice(program, identity=with_fields(program, identity="evil\nline\r\n" * 500))
    try:
        with SocketDevice(fake.address, model_hash=model_hash(program)) as dev:
            assert np.array_equal(dev.infer(codes), program.forward(codes))
            assert "\n" not in dev.identity and len(dev.identity) <= 120
    finally:
        fake.close()


def mutate_reply(data: bytes, rng) -> bytes:
    raw = bytearray(data)
    how = int(rng.integers(0, 3))
    if how == 0:
        return bytes(raw[:int(rng.integers(0, len(raw)))])
    if how == 1:
        for _ in range(int(rng.integers(1, 4))):
            raw[int(rng.integers(0, len(raw)))] = int(rng.integers(0, 256))
        return bytes(raw)
    return header_field_mutation(data, rng)


def fuzz_client(program, codes, cases: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    counts = {"cases": 0, "errors": 0, "answers": 0}
    for _ in range(cases):
        side = "identity" if rng.random() < 0.5 else "scores"
        sub = np.random.default_rng(rng.integers(2**63))
        if side == "identity":
            fake = FakeDevice(program, identity=lambda f, sub=sub: mutate_reply(p.to_bytes(p.json_frame(
                p.Kind.IDENTITY, f.request_id, model_hash(program), good_identity(program))), sub))
        else:
            fake = FakeDevice(program, scores=lambda f, good, sub=sub: mutate_reply(good, sub))
        t0 = time.monotonic()
        try:
            scores = run_client(fake.address, program, codes[:3], timeout=0.5)
            assert scores.dtype == np.int64 and scores.shape == (3, N_OUT)
            counts["answers"] += 1
        except Exception as exc:  # noqa: BLE001  (the assertion is on its type)
            one_line_error(exc)
            counts["errors"] += 1
        finally:
            fake.close()
        assert time.monotonic() - t0 < 6
        counts["cases"] += 1
    return counts


def test_fuzzed_replies_give_one_line_errors(model):
    _, program, codes = model
    counts = fuzz_client(program, codes, 30, seed=3)
    print("client fuzz:", counts)
    assert counts["errors"] > 10


@pytest.mark.slow
def test_fuzzed_replies_long_run(model):
    _, program, codes = model
    print("client fuzz (slow):", fuzz_client(program, codes, 300, seed=4))


def test_attack_on_a_hostile_device_is_one_line(model):
    """M5 through the CLI: deep JSON and `input_bits: "abc"` end in `hwq: error:`, no traceback."""
    path, program, _ = model
    for name in ("deep JSON identity", "input_bits='abc'"):
        fake = FakeDevice(program, **hostile(name, program))
        try:
            proc = subprocess.run([sys.executable, "-m", "hwq", "attack", str(path), "--data", "digits", "--limit",
                                   "20", "--eps", "0:0.1:0.1", "--device", fake.address],
                                  capture_output=True, text=True, timeout=120)
        finally:
            fake.close()
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        assert lines and lines[-1].startswith("hwq: error:") and "the device at" in lines[-1], proc.stderr


# -- M7 and the Lava Python: device commands that never start ---------------------------------------
def test_a_device_command_that_never_prints_is_stopped_at_the_deadline(model, monkeypatch):
    from hwq.devices import launch
    from hwq.sweep.device import device_address

    _, program, _ = model
    monkeypatch.setattr(launch, "START_TIMEOUT", 1.0)
    outcome = []

    def start():
        try:
            with device_address(f"exec:{sys.executable} -c 'import time; time.sleep(60)' {{model}}", program):
                outcome.append("started")
        except HwqError as exc:
            outcome.append(exc.line())

    t0 = time.monotonic()
    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    thread.join(15)
    assert outcome and "did not print 'listening tcp://HOST:PORT' within 1 s" in outcome[0], outcome
    assert time.monotonic() - t0 < 15
    with pytest.raises(DeviceError, match=r"it printed 'hello'"):
        with device_address(f"exec:{sys.executable} -c 'print(\"hello\")' {{model}}", program):
            pass


def test_a_lava_python_without_lava_says_what_is_missing(model, tmp_path, monkeypatch):
    """Issue 16: HWQ_LAVA_PYTHON naming a Python without Lava gave an AttributeError traceback."""
    _, program, codes = model
    python = tmp_path / "python-without-lava"
    python.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")  # hwq is there, lava-nc is not
    python.chmod(0o755)
    monkeypatch.setenv("HWQ_LAVA_PYTHON", str(python))
    lava = hwq.compile(program.net, "loihi", backend="lava")
    with pytest.raises(TargetError) as info:
        lava.forward(codes[:2])
    line = one_line_error(info.value)
    assert "has no module 'lava'" in line and "lava-nc==0.10.0" in line and "bootstrap.sh" in line

