"""``hwq sweep --device``: every cell judged on a device over the wire protocol gives the same
numbers as the local target (and records the device and its disagreement); a device that
serves another model stops the sweep in one line; a malformed --device is refused."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest
from cli_runner import run_cli

GRID = ["sweep", "--data", "digits", "--activations", "step", "--bits", "2", "--seeds", "1", "--epochs", "3",
        "--eps", "0,0.1", "--limit", "40", "--input-bits", "8", "--workers", "1", "--no-diagnostics"]


def cells(path):
    with h5py.File(path, "r") as f:
        return {k: ({a: f["cells"][k].attrs[a] for a in f["cells"][k].attrs},
                    {n: f["cells"][k][n][()] for n in ("accuracy", "correct") if n in f["cells"][k]},
                    f["cells"][k]["device_disagreement"][()] if "device_disagreement" in f["cells"][k] else None)
                for k in f["cells"]}


def test_a_sweep_judged_on_devices_equals_the_local_sweep(tmp_path, capsys):
    code, _, err = run_cli(*GRID, "-o", tmp_path / "local.h5", capsys=capsys)
    assert code == 0, err
    code, _, err = run_cli(*GRID, "--device", "exec:hwq serve {model}", "-o", tmp_path / "dev.h5", capsys=capsys)
    assert code == 0, err
    local, dev = cells(tmp_path / "local.h5"), cells(tmp_path / "dev.h5")
    assert local.keys() == dev.keys()
    for key in local:
        assert np.array_equal(local[key][1]["accuracy"], dev[key][1]["accuracy"])
        assert np.array_equal(local[key][1]["correct"], dev[key][1]["correct"])
        attrs, _, disagreement = dev[key]
        assert disagreement.tolist() == [0.0, 0.0]
        assert "hwq serve" in attrs["device_identity"] and len(attrs["model_hash"]) == 64
    # A rerun resumes: nothing left to do, the file is unchanged.
    code, out, err = run_cli(*GRID, "--device", "exec:hwq serve {model}", "-o", tmp_path / "dev.h5", "--json",
                             capsys=capsys)
    assert code == 0 and '"ran": 0' in out, err


def test_a_device_serving_another_model_stops_the_sweep(tmp_path, capsys):
    other = tmp_path / "other.hwq"
    code, _, err = run_cli("train", "--data", "digits", "--activation", "step", "--bits", "2", "--epochs", "2",
                           "--seed", "9", "-o", tmp_path / "o.onnx", capsys=capsys)
    assert code == 0, err
    code, _, err = run_cli("compile", tmp_path / "o.onnx", "-o", other, capsys=capsys)
    assert code == 0, err
    server = subprocess.Popen([sys.executable, "-m", "hwq", "serve", str(other), "--listen", "127.0.0.1:0"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        address = server.stdout.readline().split()[1]
        code, _, err = run_cli(*GRID, "--device", address, "-o", tmp_path / "s.h5", capsys=capsys)
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert code != 0 and err.count("\n") == 1 and "Traceback" not in err
    assert "model" in err


@pytest.mark.parametrize("device", ["udp://x:1", "exec:hwq serve"])
def test_a_malformed_device_is_one_line(tmp_path, capsys, device):
    code, _, err = run_cli(*GRID, "--device", device, "-o", tmp_path / "s.h5", capsys=capsys)
    assert code == 2 and "malformed --device" in err and not (tmp_path / "s.h5").exists()
