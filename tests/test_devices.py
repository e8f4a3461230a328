"""Devices over the wire: real servers on loopback, in separate processes.

Run as a script, this file is the faulty device server the tests start:
``python tests/test_devices.py MODEL.hwq [--delay S] [--die-after K] [--drop-every K]
[--compute OTHER.hwq] [--limit BYTES] [--idle-timeout S] [--frame-timeout S] [--max-clients K]``;
it prints ``listening tcp://...`` first.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from builders import random_mlp

import hwq
from hwq.devices import DeviceError, DeviceMismatch, DeviceTimeout, LocalDevice, Server, SocketDevice, model_hash
from hwq.devices import protocol as p
from hwq.devices.program import DeviceProgram
from hwq.onnx.importer import graph_from_model
from hwq.quant.reference import quantize_input

HERE = Path(__file__).resolve().parent


# -- the server side (a separate process) ------------------------------------------------------
def serve_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--die-after", type=int, default=0)
    ap.add_argument("--drop-every", type=int, default=0)
    ap.add_argument("--compute", default=None, help="compute another model, claim this one")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--idle-timeout", type=float, default=None)
    ap.add_argument("--frame-timeout", type=float, default=None)
    ap.add_argument("--max-clients", type=int, default=None)
    args = ap.parse_args(argv)
    program = hwq.load_program(args.model)
    compute = hwq.load_program(args.compute) if args.compute else program
    calls = [0]

    def infer(codes):
        calls[0] += 1
        if args.die_after and calls[0] > args.die_after:
            os._exit(3)
        time.sleep(args.delay)
        return compute.forward(codes)

    device = LocalDevice.from_program(program, identity="test device")
    device.fn = infer

    class Dropping(Server):
        replies = 0

        def reply(self, conn, peer, frame):
            ok = super().reply(conn, peer, frame)
            self.replies += 1
            return ok and not (args.drop_every and self.replies % args.drop_every == 0)

    options = {name: value for name, value in (("limit", args.limit), ("idle_timeout", args.idle_timeout),
                                               ("frame_timeout", args.frame_timeout),
                                               ("max_clients", args.max_clients)) if value}
    server = Dropping(device, "127.0.0.1", args.port, **options)
    print(f"listening {server.address}", flush=True)
    server.serve_forever()


# -- the tests --------------------------------------------------------------------------------


def build(seed: int, n_in=16, hidden=12, n_out=4):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (200, n_in))
    net = hwq.quantize(graph_from_model(random_mlp(rng, n_in, hidden, n_out)), 4, calibration=x,
                       bounds=(0.0, 1.0))
    y = hwq.compile(net, "sim").decide(hwq.compile(net, "sim").forward(quantize_input(net.input, x)))
    return hwq.compile(net, "sim"), x, y


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("devices")
    out = {}
    for name, seed in (("a", 1), ("b", 2)):
        program, x, y = build(seed)
        path = d / f"{name}.hwq"
        hwq.save_program(path, program)
        out[name] = (str(path), hwq.load_program(path), x, y)
    return out


class Served:
    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, str(HERE / "test_devices.py"), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("listening "), self.proc.stderr.read()
        self.address = line.split()[1]

    def stop(self) -> str:
        if self.proc.stderr.closed:
            return ""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        err = self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return err


@pytest.fixture
def serve():
    started = []

    def start(*args):
        started.append(Served(*args))
        return started[-1]

    yield start
    for s in started:
        s.stop()


def codes_of(program, x):
    return quantize_input(program.net.input, x)


def test_device_scores_equal_the_local_target(models, serve):
    path, program, x, _ = models["a"]
    server = serve(path)
    with SocketDevice(server.address, model_hash=model_hash(program)) as dev:
        assert dev.identity == "test device" and dev.model_hash == model_hash(program)
        for dtype in (np.int64, np.uint8, np.float32):
            xq = codes_of(program, x).astype(dtype)
            assert np.array_equal(dev.infer(xq), program.forward(xq))
        assert dev.infer(codes_of(program, x[:0])).shape == (0, 4)


def test_device_program_passes_the_golden_gate(models, serve):
    path, program, x, _ = models["a"]
    server = serve(path)
    dev = SocketDevice(server.address, model_hash=model_hash(program))
    with DeviceProgram(dev, program, check_every=2) as dp:
        xq = codes_of(program, x)
        for _ in range(5):
            assert np.array_equal(dp.decide(dp.forward(xq)), program.decide(program.forward(xq)))
        assert dp.session.checks == 3  # at connect, after 2 and after 4 batches
        assert dp.report["identity"] == "test device"


def test_another_model_is_refused_by_its_hash(models, serve):
    path_b = models["b"][0]
    program_a = models["a"][1]
    server = serve(path_b)
    with pytest.raises(DeviceMismatch, match="serves model .* expected"):
        SocketDevice(server.address, model_hash=model_hash(program_a)).open()


def test_golden_gate_stops_a_device_computing_another_model(models, serve):
    path_a, program_a, x, _ = models["a"]
    server = serve(path_a, "--compute", models["b"][0])  # claims model a, computes model b
    dp = DeviceProgram(SocketDevice(server.address, model_hash=model_hash(program_a)), program_a)
    with pytest.raises(DeviceMismatch, match=r"golden check at connect: \d+ of 8 inputs differ "
                                             r"\(input \d+: expected \[.*\], got \[.*\]"):
        dp.open()


def test_killed_device_gives_a_clear_error(models, serve):
    path, program, x, _ = models["a"]
    server = serve(path, "--die-after", "2")
    dev = SocketDevice(server.address, model_hash=model_hash(program), reconnects=2)
    dev.reconnect_window = 0.3
    xq = codes_of(program, x)
    dev.infer(xq)
    dev.infer(xq)
    with pytest.raises(DeviceError, match=r"dropped the connection during request 4 and did not "
                                          r"come back after 2 reconnects.*last acknowledged request: 3"):
        dev.infer(xq)


def test_slow_device_hits_the_progress_timeout(models, serve):
    path, program, x, _ = models["a"]
    server = serve(path, "--delay", "3")
    dev = SocketDevice(server.address, model_hash=model_hash(program), timeout=0.5, per_row=1e-3)
    t0 = time.monotonic()
    with pytest.raises(DeviceTimeout, match=r"did not answer request 2 \(200 rows\) within 0.7 s; "
                                            r"last acknowledged request: 1"):
        dev.infer(codes_of(program, x))
    assert time.monotonic() - t0 < 2.5


def test_dropped_connections_are_reconnected_and_regated(models, serve):
    path, program, x, _ = models["a"]
    server = serve(path, "--drop-every", "2")
    dp = DeviceProgram(SocketDevice(server.address, model_hash=model_hash(program)), program,
                       check_every=0)
    xq = codes_of(program, x)
    with dp:
        for _ in range(4):
            assert np.array_equal(dp.forward(xq), program.forward(xq))
    assert dp.device.connections >= 2 and dp.session.checks >= 2


def raw_exchange(address: str, data: bytes, read: bool = True) -> bytes:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while read and (chunk := s.recv(65536)):
            chunks.append(chunk)
    return b"".join(chunks)


def test_server_survives_garbage_oversize_truncation_and_drops(models, serve):
    path, program, x, _ = models["a"]
    server = serve(path, "--limit", "100000")
    h = model_hash(program)
    reply = p.from_bytes(raw_exchange(server.address, b"GET / HTTP/1.1\r\n\r\n" + bytes(100)))
    assert reply.kind == p.Kind.ERROR and "not an hwq device frame" in reply.data["error"]
    big = np.zeros((200, 1000), np.uint8)  # 200 kB > the 100 kB limit
    reply = p.from_bytes(raw_exchange(server.address, p.to_bytes(p.array_frame(p.Kind.INFER, 5, h, big))))
    assert reply.kind == p.Kind.ERROR and "exceeds the limit" in reply.data["error"]
    frame = p.to_bytes(p.array_frame(p.Kind.INFER, 6, h, codes_of(program, x).astype(np.uint8)))
    assert raw_exchange(server.address, frame[: len(frame) // 2]) == b""  # truncated: dropped
    raw_exchange(server.address, b"", read=False)  # connect and hang up
    wrong = p.from_bytes(raw_exchange(server.address, p.to_bytes(
        p.array_frame(p.Kind.INFER, 7, b"x" * 32, codes_of(program, x[:3]).astype(np.uint8)))))
    assert wrong.kind == p.Kind.ERROR and wrong.request_id == 7 and "this device serves" in wrong.data["error"]
    shape = p.from_bytes(raw_exchange(server.address, p.to_bytes(
        p.array_frame(p.Kind.INFER, 8, h, np.zeros((2, 3), np.uint8)))))
    assert shape.kind == p.Kind.ERROR and "shape" in shape.data["error"]
    ok = p.from_bytes(raw_exchange(server.address, frame))  # and it still serves
    assert ok.kind == p.Kind.SCORES and ok.request_id == 6 and ok.model_hash == h
    assert np.array_equal(ok.data, program.forward(codes_of(program, x)))
    assert server.proc.poll() is None
    log = server.stop()
    assert "bad frame" in log and "truncated frame" in log


def test_device_errors_are_one_line_hwq_errors(models, serve):
    path, program, x, _ = models["a"]
    server = serve(path)
    with SocketDevice(server.address, model_hash=model_hash(program)) as dev:
        with pytest.raises(DeviceError, match="refused request .*inputs must have shape"):
            dev.infer(np.zeros((2, 3), np.int64))
        assert np.array_equal(dev.infer(codes_of(program, x)), program.forward(codes_of(program, x)))
    with pytest.raises(DeviceError, match="cannot reach the device at tcp://127.0.0.1:1 "):
        SocketDevice("tcp://127.0.0.1:1", connect_timeout=0.2).open()


if __name__ == "__main__":
    serve_main(sys.argv[1:])
