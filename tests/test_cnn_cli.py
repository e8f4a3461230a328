"""CNN programs through the command line (issue 19): ``hwq info`` (layer table with shapes,
parameters and MACs, counted here independently), ``hwq run -o``, ``hwq attack`` (FGSM and
Square) and ``hwq compare`` on a compiled CNN; a data set whose samples do not fit the model's
input shape is refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_runner import run_cli
from factories import random_cnn

import hwq
from hwq.files.program import save_program


@pytest.fixture(scope="module")
def cnn_model(tmp_path_factory):
    """conv 3x3 (1 -> 4) relu, max 2x2, conv 3x3 (4 -> 6) relu, dense 96 -> 10, on 8x8 digits."""
    net = random_cnn(np.random.default_rng(0), (1, 8, 8), "relu", "max", channels=(4, 6), out=10)
    path = tmp_path_factory.mktemp("cnn") / "cnn.hwq"
    save_program(path, hwq.compile(net, "sim"))
    return path, net


def test_info_lists_every_node_with_shapes_params_and_macs(cnn_model, capsys):
    path, net = cnn_model
    code, out, err = run_cli("info", path, "--json", capsys=capsys)
    assert code == 0, err
    rows = json.loads(out)["layers"]
    assert [r["kind"].split()[0] for r in rows] == ["conv", "maxpool", "conv", "dense"]
    assert [r["out_shape"] for r in rows] == [[4, 8, 8], [4, 4, 4], [6, 4, 4], [10]]
    # counted by hand: C_out C_in kh kw Ho Wo multiply-accumulates; weights plus biases
    assert [r["macs"] for r in rows] == [4 * 1 * 9 * 64, 0, 6 * 4 * 9 * 16, 10 * 96]
    assert [r["params"] for r in rows] == [4 * 9 + 4, 0, 6 * 36 + 6, 10 * 96 + 10]
    code, out, _ = run_cli("info", path, capsys=capsys)
    assert code == 0 and "MACs/sample" in out and "maxpool 2x2" in out and "1x8x8" in out


def test_run_attack_and_compare_on_a_cnn(cnn_model, tmp_path, capsys):
    path, net = cnn_model
    code, out, err = run_cli("run", path, "--data", "digits", "--limit", "60", "-o", tmp_path / "run.h5",
                             "--json", capsys=capsys)
    assert code == 0, err
    assert (tmp_path / "run.h5").is_file()
    for attack in ("fgsm", "square"):
        code, out, err = run_cli("attack", path, "--data", "digits", "--eps", "0:0.2:0.1", "--limit", "40",
                                 "--attack", attack, "--json", capsys=capsys)
        assert code == 0, err
        acc = json.loads(out)["accuracy"]
        assert len(acc) == 3 and acc[-1] <= acc[0]
    code, out, err = run_cli("compare", path, "--data", "digits", "--targets", "sim,truenorth", "--limit", "20",
                             capsys=capsys)
    assert code == 0 or (err.count("\n") == 1 and "Traceback" not in err), err


def test_data_that_does_not_fit_the_input_shape_is_one_line(tmp_path, capsys):
    net = random_cnn(np.random.default_rng(1), (1, 12, 12), "relu", "max", channels=(2, 2), out=10)
    path = tmp_path / "cnn12.hwq"
    save_program(path, hwq.compile(net, "sim"))
    code, out, err = run_cli("run", path, "--data", "digits", "--limit", "10", capsys=capsys)
    assert code != 0 and err.count("\n") == 1 and "Traceback" not in err
    assert "144" in err and "64" in err, err


def test_a_device_serves_a_cnn_and_states_its_input_shape(cnn_model):
    """``hwq serve``'s server carries a CNN program: IDENTITY states the input shape (C, H, W), and
    the scores over the wire equal the program's; a device stating a shape that does not multiply to
    its n_features is refused in one line."""
    import threading

    from hwq.devices import DeviceError, LocalDevice, Server, SocketDevice, model_hash
    from hwq.devices.client import read_identity
    from hwq.files.program import load_program

    path, net = cnn_model
    program = load_program(path)
    server = Server(LocalDevice.from_program(program), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    codes = np.random.default_rng(2).integers(0, 256, (30, net.n_features))
    with SocketDevice(server.address, model_hash=model_hash(program)) as dev:
        assert dev.info["input_shape"] == [1, 8, 8] and dev.info["n_features"] == 64 and dev.info["n_outputs"] == 10
        np.testing.assert_array_equal(dev.infer(codes), program.forward(codes))
    good = {"identity": "x", "protocol": 1, "n_features": 64, "input_shape": [1, 8, 8]}
    assert read_identity(good, "dev")["input_shape"] == [1, 8, 8]
    for bad in ([1, 8, 9], [0, 8, 8], "1x8x8", [1, 1, 8, 8]):
        with pytest.raises(DeviceError, match="input_shape") as err:
            read_identity({**good, "input_shape": bad}, "dev")
        assert "\n" not in str(err.value)
