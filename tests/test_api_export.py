"""``hwq.api.export``: the export policy lives in the API (the CLI calls it); a network, a
program or a ``.hwq`` path export the same integer-exact ONNX, and bad formats are one line."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from factories import codes, onnx_net
from test_export import NUMPY

import hwq
from hwq import api
from hwq.errors import UsageError
from hwq.quant import reference


def ort_scores(path, x_q):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    dtype = NUMPY[sess.get_inputs()[0].type]
    return sess.run(["scores"], {sess.get_inputs()[0].name: x_q.astype(dtype)})[0]


def test_network_program_and_file_export_the_same_graph(tmp_path):
    rng = np.random.default_rng(2)
    net, _ = onnx_net(rng, "Relu", 4)
    program = hwq.compile(net, "loihi")
    hwq.save_program(tmp_path / "m.hwq", program)
    x_q = codes(rng, net, 40)
    want = reference.forward(net, x_q)
    for source, name in ((net, "net.onnx"), (program, "program.onnx"), (tmp_path / "m.hwq", "file.onnx")):
        assert api.export(source, tmp_path / name) == "onnx"
        np.testing.assert_array_equal(np.asarray(ort_scores(tmp_path / name, x_q), np.int64), want)


def test_a_target_format_needs_the_program_and_unknown_formats_are_one_line(tmp_path):
    rng = np.random.default_rng(3)
    net, _ = onnx_net(rng, "step", 2)
    program = hwq.compile(net, "loihi")
    assert api.export(program, tmp_path / "m.net") == "netx"
    assert (tmp_path / "m.net").stat().st_size > 0
    with pytest.raises(UsageError, match="unknown export format 'netx' for a network"):
        api.export(net, tmp_path / "x.net", "netx")
    with pytest.raises(UsageError, match="cannot tell the format from '.xyz'"):
        api.export(net, tmp_path / "x.xyz")
    assert not (tmp_path / "x.net").exists() and not (tmp_path / "x.xyz").exists()
