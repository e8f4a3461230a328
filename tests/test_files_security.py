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


# ------------------------------------------------------------------ compiled models (.hwq)
# Issue 17: H5 (short sigmoid table), H6 (unchecked fields), H7 (undetected damage), M13 (crafted
# fields as tracebacks) and M15 (links and storage outside the file). A "crafted" file is edited
# with h5py and given a fresh digest, as an attacker would: what refuses it is the field check,
# not the digest. A "damaged" one keeps its old digest.

import json  # noqa: E402
import shutil  # noqa: E402

import h5py  # noqa: E402
from builders import random_mlp  # noqa: E402
from cli_runner import run_cli  # noqa: E402
from hwq_targets.loihi.limits import LOIHI  # noqa: E402

import hwq  # noqa: E402
from hwq.errors import FileFormatError  # noqa: E402
from hwq.files import h5io  # noqa: E402
from hwq.files import program as hwqfile  # noqa: E402
from hwq.onnx.importer import graph_from_model  # noqa: E402
from hwq.quant import reference  # noqa: E402

LIMIT = 40


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Small compiled digits models: sim (ReLU, sigmoid), loihi (ReLU), truenorth (step)."""
    d = tmp_path_factory.mktemp("models")
    data = hwq.load_dataset("digits")
    rng = np.random.default_rng(17)
    out = {}
    for name, act, target in (("relu", "Relu", "sim"), ("sigmoid", "Sigmoid", "sim"),
                              ("loihi", "Relu", "loihi"), ("truenorth", "step", "truenorth")):
        graph = graph_from_model(random_mlp(rng, 64, 6 if target == "truenorth" else 16, 10, act, scale=0.3))
        net = hwq.quantize(graph, 4, calibration=data.x_train, bounds=data.bounds)
        hwq.save_program(d / f"{name}.hwq", hwq.compile(net, target))
        out[name] = d / f"{name}.hwq"
    return out


def craft(src: Path, dst: Path, edit, digest: bool = True) -> Path:
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        edit(f)
    if digest:
        h5io.seal(dst)
    return dst


def refused(capsys, path: Path, match: str, commands=("run", "info", "export")) -> None:
    """Every command that reads ``path`` stops with one ``hwq: error:`` line naming ``match``
    and writes nothing."""
    for command in commands:
        out = path.with_name(f"out-{command}" + (".h5" if command == "run" else ".onnx"))
        args = {"run": ["run", path, "--data", "digits", "--limit", LIMIT, "-o", out],
                "info": ["info", path], "export": ["export", path, "-o", out]}[command]
        code, _, err = run_cli(*args, capsys=capsys)
        lines = err.strip().splitlines()
        assert code != 0 and len(lines) == 1 and lines[0].startswith("hwq: error:"), (command, err)
        assert "Traceback" not in err and match in lines[0], (command, lines[0])
        assert not out.exists() and not list(out.parent.glob(f".{out.name}.*tmp"))


def set_dataset(group, name, value):
    del group[name]
    group.create_dataset(name, data=value)


def test_intact_models_load_and_match_the_reference(models):
    x = hwq.load_dataset("digits").limit(LIMIT).x_test
    for name, path in models.items():
        program = hwqfile.load_program(path)
        x_q = reference.quantize_input(program.net.input, x.reshape(len(x), -1))
        if program.exact:
            want = reference.decide(reference.forward(program.net, x_q), program.net.output)
            assert np.array_equal(program.decide(program.forward(x_q)), want), name


def test_h5_a_short_sigmoid_table_is_refused(models, tmp_path, capsys):
    """The sim kernel indexed lut[z + 2048] into a 16-entry table: scores read from memory."""
    path = craft(models["sigmoid"], tmp_path / "lut.hwq",
                 lambda f: set_dataset(f["network/layers/0"], "lut", f["network/layers/0/lut"][:16]))
    with pytest.raises(FileFormatError, match="4096 entries"):
        hwqfile.read_stored(path)
    refused(capsys, path, "lookup table must have 4096 entries")


def _relu_without_requant(f):
    del f["network/layers/0/requant"]


def _float_codes(f):
    set_dataset(f["network/layers/0"], "weight", f["network/layers/0/weight"][()] + 0.4)


def _attr(where, name, value):
    def edit(f):
        f[where].attrs[name] = value
    return edit


H6_NETWORK = {
    "relu without requantization": ("relu", _relu_without_requant, "needs its requantization"),
    "activation bits -3": ("relu", _attr("network/layers/0", "act_bits", -3), "activation bits"),
    "input bits 0": ("relu", _attr("network/input", "bits", 0), "input bits"),
    "negative input scale": ("relu", _attr("network/input", "inv_scale", -255.0), "inv_scale"),
    "output argmin": ("relu", _attr("network", "output", "argmin"), "unknown output rule 'argmin'"),
    "float weight codes": ("relu", _float_codes, "integer codes expected"),
    "NaN gain": ("relu", _attr("network/layers/1", "gain", np.nan), "gain must be finite"),
    "sigmoid codes beyond act_bits": ("sigmoid", lambda f: set_dataset(
        f["network/layers/0"], "lut", f["network/layers/0/lut"][()] * 300), "sigmoid lookup codes"),
    "weight codes beyond the bits": ("relu", lambda f: set_dataset(
        f["network/layers/1"], "weight", f["network/layers/1/weight"][()] * 300), "beyond the 4-bit range"),
    "negative in_max": ("relu", _attr("network/layers/1", "in_max", -1), "in_max must be an integer"),
    "text where a number belongs": ("relu", _attr("network/layers/0", "gain", "big"), "not a valid float"),
    "an unknown field": ("relu", _attr("network/layers/0", "shortcut", 1), "unexpected field 'shortcut'"),
}


@pytest.mark.parametrize("case", sorted(H6_NETWORK))
def test_h6_network_fields_are_checked(models, tmp_path, capsys, case):
    model, edit, match = H6_NETWORK[case]
    path = craft(models[model], tmp_path / "m.hwq", edit)
    refused(capsys, path, match)


def _loihi_digits_times_300(f):
    d = f["artifacts/maps/1/sets/0/digits"][()]
    set_dataset(f["artifacts/maps/1/sets/0"], "digits", d * 300)


def _in_hi(value):
    def edit(f):
        f["artifacts/maps/1"].attrs["in_range"] = np.array([f["artifacts/maps/1"].attrs["in_range"][0], value])
    return edit


H6_LOIHI = {  # the typed layer records of version 2 (artifacts/maps/<layer>/sets/<group>)
    "digits x300": (_loihi_digits_times_300, "loihi artifacts"),
    "weight exponent 40": (_attr("artifacts/maps/0/sets/0", "exp", 40), "loihi artifacts, layer 0"),
    "limits wider than Loihi's": (_attr("artifacts", "limits_json", json.dumps(
        {**LOIHI.as_dict(), "weight_exp": [-8, 40]})),
        "wider than Loihi's registers: weight_exp=-8..40"),
    "a float where an integer belongs": (_attr("artifacts/maps/0", "shift", 5.5), "not a valid int"),
    "an input range that does not chain": (_in_hi(7), "input range"),
    "bias mantissa beyond its bits": (lambda f: set_dataset(
        f["artifacts/maps/1"], "bias_mant", np.full(10, 2**20, np.int64)), "bias mantissas"),
    "biases that are not the network's": (lambda f: set_dataset(
        f["artifacts/maps/1"], "bias_mant", -f["artifacts/maps/1/bias_mant"][()]), "not the ones the network's biases"),
    "a record of another type": (_attr("artifacts/maps/1", "type", "SynapseSet"), "unexpected field"),
    "a neuron model Loihi lacks": (_attr("artifacts/maps/1", "neuron", "izhikevich"), "must be one of"),
    "a missing synapse group": (lambda f: f["artifacts/maps/0/sets"].__delitem__("0"), "0 synapse groups"),
}


@pytest.mark.parametrize("case", sorted(H6_LOIHI))
def test_h6_loihi_artifacts_are_checked_against_loihis_limits(models, tmp_path, capsys, case):
    edit, match = H6_LOIHI[case]
    path = craft(models["loihi"], tmp_path / "m.hwq", edit)
    refused(capsys, path, match, commands=("run",))  # info and the onnx export read only the network


def test_h6_truenorth_artifacts_must_all_be_there(models, tmp_path, capsys):
    path = craft(models["truenorth"], tmp_path / "m.hwq", lambda f: f["artifacts"].attrs.__delitem__("digest"))
    refused(capsys, path, "truenorth artifacts do not match", commands=("run",))


def test_h7_damage_is_detected_by_the_digest(models, tmp_path, capsys):
    def flip(f):
        w = f["network/layers/0/weight"]
        w[0, 0] = w[0, 0] + 1
    path = craft(models["relu"], tmp_path / "m.hwq", flip, digest=False)
    refused(capsys, path, "damaged file: its bytes do not match the sha256 digest")
    data = bytearray(models["relu"].read_bytes())
    data[len(data) // 2] ^= 4  # a bit flip anywhere, checked before HDF5 parses the file
    (tmp_path / "flip.hwq").write_bytes(bytes(data))
    refused(capsys, tmp_path / "flip.hwq", "damaged file")
    data = bytearray(models["relu"].read_bytes())
    data[3] ^= 1  # in the digest itself
    (tmp_path / "seal.hwq").write_bytes(bytes(data))
    refused(capsys, tmp_path / "seal.hwq", "damaged file")


def test_h7_files_without_a_digest_are_refused(models, tmp_path, capsys):
    """A version-2 file (no user block, no digest), rebuilt from a current one."""
    old = tmp_path / "v2.hwq"
    with h5py.File(models["relu"], "r") as src, h5py.File(old, "w") as dst:
        for name in src:
            src.copy(src[name], dst, name=name)
        dst.attrs.update({k: v for k, v in src.attrs.items()})
        dst.attrs["version"] = 2
    refused(capsys, old, "no content digest, so damage to it cannot be detected (hwq-compiled files before "
                         "version 3 carried none)")


H13 = {
    "unknown target": (_attr("/", "target", "nope"), "nope"),
    "options a JSON list": (_attr("/", "options", "[1, 2]"), "options must be a JSON object"),
    "a group among the artifacts": (lambda f: f["artifacts"].create_group("sub"),
                                    "unknown object type None in /artifacts/sub"),
    "a layer that is a dataset": (lambda f: (f["network/layers"].__delitem__("1"),
                                             f["network/layers"].create_dataset("1", data=[1])), "should be a group"),
    "a missing layer": (lambda f: f["network/layers"].__delitem__("0"), "members must be named 0..0"),
    "an unknown object type": (_attr("network/settings", "type", "Pickle"), "unknown object type 'Pickle'"),
    "the format as a number": (_attr("/", "format", 7), "not an hwq hwq-compiled file"),
    "the version as text": (_attr("/", "version", "3"), "version '3' is not supported"),
}


@pytest.mark.parametrize("case", sorted(H13))
def test_m13_crafted_fields_are_one_line(models, tmp_path, capsys, case):
    edit, match = H13[case]
    path = craft(models["relu"], tmp_path / "m.hwq", edit)
    refused(capsys, path, match, commands=("run", "export"))


# ------------------------------------------------------------------ links and storage (M15)

def _external_storage(target):
    def edit(f):
        g = f["network/layers/1"]
        shape = g["weight"].shape
        del g["weight"]
        g.create_dataset("weight", shape=shape, dtype=np.int64, external=[(str(target), 0, h5py.h5f.UNLIMITED)])
    return edit


def _soft_link(f):
    g = f["network/layers/1"]
    del g["bias"]
    g["bias"] = h5py.SoftLink("/network/layers/0/bias")


def _soft_cycle(f):
    f["network/layers"]["2"] = h5py.SoftLink("/network/layers")


def _hard_cycle(f):
    f["network/layers/0"]["loop"] = f["network"]


def _external_link(target):
    def edit(f):
        g = f["network/layers/1"]
        del g["weight"]
        g["weight"] = h5py.ExternalLink(str(target), "/w")
    return edit


def _virtual(target):
    def edit(f):
        g = f["network/layers/1"]
        shape = g["weight"].shape
        del g["weight"]
        layout = h5py.VirtualLayout(shape=shape, dtype=np.int64)
        layout[:] = h5py.VirtualSource(str(target), "w", shape=shape)
        g.create_virtual_dataset("weight", layout)
    return edit


def test_m15_links_and_storage_outside_the_file_are_refused(models, tmp_path, capsys):
    secret = tmp_path / "secret.h5"
    with h5py.File(secret, "w") as s:
        s["w"] = np.ones((10, 16), np.int64)
    raw = tmp_path / "secret.bin"
    raw.write_bytes(np.ones(160, np.int64).tobytes())
    cases = {"external storage": (_external_storage(raw), "keeps its data in external files"),
             "/dev/urandom": (_external_storage("/dev/urandom"), "keeps its data in external files"),
             "external link": (_external_link(secret), "is an external link"),
             "virtual dataset": (_virtual(secret), "is a virtual dataset"),
             "soft link": (_soft_link, "is a soft link"),
             "soft-link cycle": (_soft_cycle, "is a soft link"),
             "hard-link cycle": (_hard_cycle, "a group already seen")}
    for i, (edit, match) in enumerate(cases.values()):
        path = craft(models["relu"], tmp_path / f"m{i}.hwq", edit)  # sealed: the link checks refuse it
        refused(capsys, path, match)
        with pytest.raises(FileFormatError, match=match):
            h5io.open_h5(path)


def test_m15_a_declared_size_beyond_the_stored_bytes_is_refused(tmp_path):
    path = tmp_path / "bomb.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", shape=(2**31,), dtype=np.int64, chunks=(2**16,), compression="gzip")
    with pytest.raises(FileFormatError, match="declares 17179869184 bytes of data but stores 0"):
        h5io.open_h5(path)


def test_m15_every_reader_of_hdf5_uses_the_safe_opener():
    """``h5py.File(..., "r")`` appears only in h5io.open_h5 (writers open with "w" or "a")."""
    import re

    root = Path(__file__).resolve().parents[1]
    found = []
    for folder in ("hwq", "targets"):
        for p in (root / folder).rglob("*.py"):
            for line in p.read_text().splitlines():
                if re.search(r"h5py\.File\(", line) and not re.search(r"""["'](w|a|r\+)["']""", line):
                    found.append(f"{p.relative_to(root)}: {line.strip()}")
    assert found == ["hwq/files/h5io.py: f = h5py.File(path, \"r\")"], found
