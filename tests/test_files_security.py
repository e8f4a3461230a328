"""Files hwq reads and writes: ONNX external data may not leave the model's folder, and
temporary files are created exclusively under unpredictable names, never through a symlink."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwq.errors import HwqError, ModelFormatError
from hwq.files import atomic
from hwq.onnx.importer import read_model


def external_model(folder: Path, location: str) -> Path:
    """A one-Gemm model whose weight is stored as external data at ``location``."""
    w = numpy_helper.from_array(np.ones((2, 3), np.float32), "W")
    w.data_location = TensorProto.EXTERNAL
    w.ClearField("raw_data")
    for key, value in (("location", location), ("offset", "0"), ("length", "24")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    node = helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("where", ["../secret.bin", "sub/../../secret.bin", "ABS"])
def test_external_data_outside_the_model_folder_is_refused(tmp_path, where):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.ones(6, np.float32).tobytes())
    folder = tmp_path / "models"
    folder.mkdir()
    path = external_model(folder, str(secret) if where == "ABS" else where)
    with pytest.raises(ModelFormatError, match="outside the model's folder"):
        read_model(path)


def test_external_data_through_a_symlink_out_of_the_folder_is_refused(tmp_path):
    (tmp_path / "secret.bin").write_bytes(np.ones(6, np.float32).tobytes())
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "w.bin").symlink_to(tmp_path / "secret.bin")
    with pytest.raises(ModelFormatError, match="outside"):
        read_model(external_model(folder, "w.bin"))


def test_external_data_beside_the_model_loads(tmp_path):
    (tmp_path / "w.bin").write_bytes(np.arange(6, dtype=np.float32).tobytes())
    model = read_model(external_model(tmp_path, "w.bin"))
    np.testing.assert_array_equal(numpy_helper.to_array(model.graph.initializer[0]),
                                  np.arange(6, dtype=np.float32).reshape(2, 3))


def test_onnx_itself_has_the_cve_2024_27318_fix():
    major, minor = (int(p) for p in onnx.__version__.split(".")[:2])
    assert (major, minor) >= (1, 16)


# ------------------------------------------------------------------ temporary files

def test_a_symlink_planted_at_the_old_predictable_name_is_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    target = tmp_path / "out.bin"
    planted = tmp_path / f".out.bin.tmp-{os.getpid()}"  # the name hwq used to use
    planted.symlink_to(victim)
    atomic.atomic_write_bytes(target, b"data")
    assert victim.read_text() == "keep" and target.read_bytes() == b"data"
    assert planted.is_symlink()  # left alone


def test_temporary_files_are_exclusive_unpredictable_and_beside_the_target(tmp_path):
    target = tmp_path / "out.bin"
    seen = []
    for _ in range(3):
        with atomic.atomic_path(target) as tmp:
            st = os.lstat(tmp)
            assert stat.S_ISREG(st.st_mode) and tmp.parent == tmp_path
            assert tmp.name.startswith(".out.bin.") and tmp.name.endswith(".tmp")
            seen.append(tmp.name)
            tmp.write_bytes(b"x")
    assert len(set(seen)) == 3
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o666 & ~mask


def test_exclusive_creation_refuses_an_existing_name(tmp_path, monkeypatch):
    """mkstemp opens with O_CREAT | O_EXCL: a planted entry under the drawn name is skipped."""
    victim = tmp_path / "victim"
    victim.write_text("keep")
    names = iter(["planted", "fresh"])
    import tempfile

    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: names)
    (tmp_path / ".out.bin.planted.tmp").symlink_to(victim)
    atomic.atomic_write_bytes(tmp_path / "out.bin", b"data")
    assert victim.read_text() == "keep" and (tmp_path / "out.bin").read_bytes() == b"data"


def test_a_temporary_file_swapped_for_a_symlink_is_not_renamed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    target = tmp_path / "out.bin"
    with pytest.raises(HwqError, match="replaced"):
        with atomic.atomic_path(target) as tmp:
            tmp.unlink()
            tmp.symlink_to(victim)
    assert not target.exists() and victim.read_text() == "keep"


def test_failed_writes_leave_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(tmp_path / "out.bin"):
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
