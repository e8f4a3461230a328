"""``hwq serve`` and ``hwq attack --device``: identical results to the local target, the device
recorded in the results file, a killed device, and a resumed run equal to an uninterrupted one."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from builders import random_mlp

import hwq
from hwq.devices import model_hash
from hwq.onnx.importer import graph_from_model

HERE = Path(__file__).resolve().parent
ATTACK = ["--data", "digits", "--limit", "300", "--eps", "0:0.2:0.05", "--no-diagnostics"]


def hwq_cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "hwq", *map(str, args)], capture_output=True, text=True)
    if check and proc.returncode:
        raise AssertionError(proc.stderr)
    return proc


def start(cmd):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("listening "), proc.stderr.read()
    return proc, line.split()[1]


def stop(proc):
    proc.kill()
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    rng = np.random.default_rng(3)
    data = hwq.load_dataset("digits")
    net = hwq.quantize(graph_from_model(random_mlp(rng, 64, 16, 10)), 4, calibration=data.x_train,
                       bounds=data.bounds)
    path = tmp_path_factory.mktemp("cli") / "m.hwq"
    hwq.save_program(path, hwq.compile(net, "sim"))
    return path


def arrays(path):
    with h5py.File(path) as f:
        return {k: f[k][()] for k in ("epsilons", "correct", "predictions", "clean_correct", "zero_gradient",
                                      "labels")}, dict(f.attrs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_attack_on_a_served_device_equals_the_local_attack(model, tmp_path):
    proc, address = start([sys.executable, "-m", "hwq", "serve", str(model), "--listen", "127.0.0.1:0"])
    try:
        hwq_cli("attack", model, *ATTACK, "--device", address, "-o", tmp_path / "dev.h5")
    finally:
        stop(proc)
    hwq_cli("attack", model, *ATTACK, "-o", tmp_path / "local.h5")
    dev, attrs = arrays(tmp_path / "dev.h5")
    local, _ = arrays(tmp_path / "local.h5")
    assert all(np.array_equal(dev[k], local[k]) for k in dev)
    assert attrs["device"] == address and "hwq serve m.hwq (sim)" == attrs["device_identity"]
    assert attrs["model_hash"] == model_hash(hwq.load_program(model)).hex()
    assert "[0.0, 0.0, 0.0, 0.0, 0.0]" == attrs["device_disagreement"]
    assert not (tmp_path / "dev.h5.parts").exists()


def test_killed_device_then_resumed_run_equals_an_uninterrupted_one(model, tmp_path):
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    out = tmp_path / "resumed.h5"
    helper = [sys.executable, str(HERE / "test_devices.py"), str(model), "--port", str(port)]
    proc, _ = start(helper + ["--die-after", "3"])  # golden + the first batch's two requests
    try:
        failed = hwq_cli("attack", model, *ATTACK, "--device", address, "-o", out, check=False)
    finally:
        stop(proc)
    assert failed.returncode == 1 and not out.exists()
    err = failed.stderr.strip().splitlines()[-1]
    assert err.startswith("hwq: error: the device at") and "dropped the connection" in err
    assert (tmp_path / "resumed.h5.parts" / "part-0.npz").exists()
    proc, _ = start(helper)
    try:
        again = hwq_cli("attack", model, *ATTACK, "--device", address, "-o", out)
    finally:
        stop(proc)
    assert "resumed: 1 finished batches" in again.stderr
    hwq_cli("attack", model, *ATTACK, "-o", tmp_path / "local.h5")
    resumed, _ = arrays(out)
    local, _ = arrays(tmp_path / "local.h5")
    assert all(np.array_equal(resumed[k], local[k]) for k in local)
    assert not (tmp_path / "resumed.h5.parts").exists()


def test_serve_refuses_a_bad_listen_address(model):
    proc = hwq_cli("serve", model, "--listen", "127.0.0.1:http", check=False)
    assert proc.returncode == 2 and "bad device address" in proc.stderr
