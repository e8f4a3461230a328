"""The sweep's model axis: given ONNX files (QAT files keep their grids, a float file is
quantized post-training at each --bits) crossed with targets, attacks, strengths and attack
seeds; cells keyed by (data, model, bits, seed, target, attack); the report per model and
across models; resume; bad input in one line (docs/sweeps.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from builders import random_mlp, save
from cli_runner import run_cli

from hwq import api
from hwq.errors import HwqError
from hwq.onnx.importer import graph_from_model, read_model
from hwq.quant import reference
from hwq.sweep.executors import SerialExecutor
from hwq.sweep.run import model_refs, run_sweep
from hwq.sweep.spec import AttackSettings, QuantOptions, SweepSpec
from hwq.sweep.store import content_digest, read_sweep

EXPORTERS = Path(__file__).resolve().parent / "data" / "exporters"
EPS = (0.0, 0.05, 0.1)
W2, W4, FLOAT = "brevitas_w2_weights_only_qcdq", "brevitas_w4a4_qcdq", "torch_relu_classic"
QUANT = QuantOptions(act_bits=8, input_bits=8)  # small formats: loihi maps the networks


def _digits():  # the sweep's loader: cached per process
    return api.load_dataset("digits", seed=0)


def sweep(spec, path):
    with SerialExecutor() as ex:
        return run_sweep(spec, path, ex, command="test")


def reference_accuracy(model_path: str, bits: int) -> float:
    """Clean accuracy of the model quantized at ``bits``, on hwq's integer reference: computed
    here without the sweep (the same calibration rows and formats)."""
    ds = _digits()
    graph = graph_from_model(read_model(model_path))
    net = api.quantize(graph, bits, calibration=api.calibration_rows(ds.x_train), bounds=ds.bounds,
                       scheme=QUANT.scheme, act_bits=QUANT.act_bits, input_bits=QUANT.input_bits)
    codes = reference.quantize_input(net.input, ds.x_test)
    return float(np.mean(reference.decide(reference.forward(net, codes), net.output) == ds.y_test))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Brevitas QAT exports at 2 and 4 weight bits (QCDQ) and a float PyTorch export, all
    trained on digits (tests/data/exporters/make_files.py), copied under their own names."""
    folder = tmp_path_factory.mktemp("models")
    out = {}
    for name, stem in (("qat2", "brevitas_w2_weights_only_qcdq"), ("qat4", "brevitas_w4a4_qcdq"),
                       ("float", "torch_relu_classic")):
        target = folder / f"{stem}.onnx"
        target.write_bytes((EXPORTERS / f"{stem}.onnx").read_bytes())
        out[name] = str(target)
    return out


@pytest.fixture(scope="module")
def qat_sweep(files, tmp_path_factory):
    """2 QAT files x (sim, loihi) x FGSM at 3 strengths on digits."""
    spec = SweepSpec(data=("digits",), models=model_refs([files["qat2"], files["qat4"]]), bits=(2, 4),
                     targets=("sim", "loihi"), quant=QUANT, attack=AttackSettings(EPS))
    path = tmp_path_factory.mktemp("qat") / "qat.h5"
    summary = sweep(spec, path)
    return spec, path, summary


@pytest.fixture(scope="module")
def ptq_sweep(files, tmp_path_factory):
    """One float file quantized post-training at 2 and 4 bits."""
    spec = SweepSpec(data=("digits",), models=model_refs([files["float"]]), bits=(2, 4), quant=QUANT,
                     attack=AttackSettings(EPS))
    path = tmp_path_factory.mktemp("ptq") / "ptq.h5"
    sweep(spec, path)
    return spec, path


def test_qat_files_keep_their_grids_and_key_cells_by_model(files, qat_sweep):
    spec, path, summary = qat_sweep
    sw = read_sweep(path)
    keys = [c.key for c in sw.cells]
    assert keys == sorted(f"digits__{m}__q{q:02d}__s0__{t}__fgsm" for m, q in ((W2, 2), (W4, 4))
                          for t in ("sim", "loihi"))
    assert summary["cells"] == 4 and sw.attrs["complete"]
    for c in sw.cells:
        a = c.attrs
        model = files["qat2"] if a["model"] == W2 else files["qat4"]
        assert a["model_path"] == str(Path(model).resolve()) and a["quantization"] == "qat"
        assert a["model_sha256"] == __import__("hashlib").sha256(Path(model).read_bytes()).hexdigest()
        assert a["input_shape"] == [64] and a["hidden_activations"] == ["relu"]
        assert a["bits"] == a["grid_bits"] == (2 if a["model"] == W2 else 4) and a["weights_on_grid"]
        assert a["attack_name"] == "fgsm" and a["target"] in ("sim", "loihi")
        if a["target"] == "sim":
            assert a["fidelity"] == 1.0
            assert a["clean_accuracy"] == pytest.approx(reference_accuracy(model, a["bits"]), abs=0)
            assert c.accuracy[0] == a["clean_accuracy"] and c.accuracy.shape == (3,)
    models = sw.attrs["models"]
    assert [m["name"] for m in models] == [W2, W4] and [m["grid_bits"] for m in models] == [2, 4]
    assert spec.all_bits == (2, 4)


def test_float_file_is_quantized_post_training_at_each_bits(files, ptq_sweep):
    spec, path = ptq_sweep
    sw = read_sweep(path)
    assert [c.key for c in sw.cells] == [f"digits__{FLOAT}__q{q:02d}__s0__sim__fgsm" for q in (2, 4)]
    for c in sw.cells:
        a = c.attrs
        assert a["model"] == FLOAT and a["quantization"] == "ptq" and "grid_bits" not in a
        assert "activation" not in a and a["hidden_activations"] == ["relu"]
        assert a["clean_accuracy"] == pytest.approx(reference_accuracy(files["float"], a["bits"]), abs=0)
    assert spec.model_bits(spec.models[0]) == (2, 4)


def test_report_per_model_and_models_compared(qat_sweep, ptq_sweep, tmp_path):
    from hwq.study.report import write_report

    _, path, _ = qat_sweep
    out = write_report(path, tmp_path / "qat", fig2=False)
    names = sorted(Path(p).name for p in out["figures"])
    for m in (W2, W4):  # the paper's figures per model and target
        for t in ("sim", "loihi"):
            assert f"fig4_digits_{t}_{m}_relative_accuracy.png" in names
    assert {"fig3_digits_sim_accuracy_vs_bits.png", "models_digits_sim_accuracy_vs_eps.png",
            "models_digits_loihi_accuracy_vs_eps.png"} <= set(names)
    assert any(n.startswith("targets_digits_") for n in names)
    rows = out["models"]
    assert [(r["target"], r["model"], r["bits"], r["quantization"]) for r in rows] == [
        (t, m, q, "qat") for t in ("sim", "loihi") for m, q in ((W2, 2), (W4, 4))]
    sw = read_sweep(path)
    for r in rows:  # the table's numbers are the cells'
        cell = next(c for c in sw.cells if (c.attrs["model"], c.attrs["target"]) == (r["model"], r["target"]))
        if cell.attrs["stalled"] or cell.attrs.get("refused"):
            assert r["clean"] is None
        else:
            assert r["clean"] == pytest.approx(cell.attrs["clean_accuracy"])
            assert r["accuracy"] == pytest.approx(list(cell.accuracy))
        assert r["critical"] is None  # one bit width per QAT model
    assert set(out["critical"]["digits"]["sim"]) == {W2, W4}
    text = Path(out["report"]).read_text()
    assert "## Models compared" in text and f"| {W2} | qat | 2 |" in text
    assert "| data | target | model | min-var" in text and "float:" not in text
    _, ptq_path = ptq_sweep  # one float model at two widths: its own critical strength (or none)
    out = write_report(ptq_path, tmp_path / "ptq", fig2=False)
    assert [(r["bits"], r["quantization"]) for r in out["models"]] == [(2, "ptq"), (4, "ptq")]
    assert "fig3_digits_accuracy_vs_bits.png" in {Path(p).name for p in out["figures"]}
    assert "models_digits_sim_accuracy_vs_bits.png" in {Path(p).name for p in out["figures"]}


def test_models_vs_bits_figure_averages_qat_files_per_width(qat_sweep, monkeypatch, tmp_path):
    """The accuracy-vs-bits figure of given models: the QAT files of each width averaged into one
    line whose points are the cells' own accuracies (here one file per width)."""
    from hwq.study import plots
    from hwq.study.arrange import pick_eps
    from hwq.study.figures import model_bits_figures
    from hwq.study.report import blocks

    _, path, _ = qat_sweep
    sw = read_sweep(path)
    seen = []
    monkeypatch.setattr(plots, "plot_models_vs_bits", lambda bits, curves, labels, eps, out, title="":
                        seen.append((list(bits), np.asarray(curves), labels, out)))
    sim = [b for b in blocks(sw) if b.target == "sim"]
    model_bits_figures(sw, sim, tmp_path)
    assert len(seen) == 1
    bits, curves, labels, out = seen[0]
    assert labels == ["QAT files (2; mean per width)"] and out.name == "models_digits_sim_accuracy_vs_bits.png"
    picks = pick_eps(sim[0].eps)
    for model, q in ((W2, 2), (W4, 4)):
        cell = next(c for c in sw.cells if (c.attrs["model"], c.attrs["target"]) == (model, "sim"))
        if not cell.attrs["stalled"]:
            np.testing.assert_allclose(curves[0, bits.index(q)], np.asarray(cell.accuracy)[picks])


@pytest.mark.slow
def test_cnn_files_are_swept(tmp_path):
    """A float CNN (post-training at 8 bits) and a Brevitas QAT CNN (its 4-bit grids) on digits,
    from the command line: keys by model, the same clean accuracy as hwq's integer reference."""
    cnn, qat = EXPORTERS / "torch_cnn_bn_classic.onnx", EXPORTERS / "brevitas_cnn_qcdq.onnx"
    spec = SweepSpec(data=("digits",), models=model_refs([cnn, qat]), bits=(8,), quant=QUANT,
                     attack=AttackSettings((0.0, 0.05), limit=40, diagnostics=False))
    assert [(m.name, m.input_shape, m.grid_bits) for m in spec.models] == [
        ("torch_cnn_bn_classic", (1, 8, 8), None), ("brevitas_cnn_qcdq", (1, 8, 8), 4)]
    sweep(spec, tmp_path / "cnn.h5")
    sw = read_sweep(tmp_path / "cnn.h5")
    assert [c.key for c in sw.cells] == ["digits__brevitas_cnn_qcdq__q04__s0__sim__fgsm",
                                         "digits__torch_cnn_bn_classic__q08__s0__sim__fgsm"]
    ds = _digits()
    for c in sw.cells:
        assert c.attrs["fidelity"] == 1.0 and c.attrs["input_shape"] == [1, 8, 8]
        graph = graph_from_model(read_model(c.attrs["model_path"]))
        net = api.quantize(graph, c.attrs["bits"], calibration=api.calibration_rows(ds.x_train), bounds=ds.bounds,
                           scheme=QUANT.scheme, act_bits=QUANT.act_bits, input_bits=QUANT.input_bits)
        codes = reference.quantize_input(net.input, ds.x_test[:40])
        want = np.mean(reference.decide(reference.forward(net, codes), net.output) == ds.y_test[:40])
        assert c.attrs["clean_accuracy"] == pytest.approx(want, abs=0)


def test_two_models_with_one_stem_and_resume(tmp_path, files):
    """Two files named model.onnx in two folders (both relu) are two coordinates; the same
    sweep again resumes every cell; a model file changed in between is refused."""
    paths = []
    for i, key in enumerate(("qat2", "qat4")):
        (tmp_path / f"d{i}").mkdir()
        paths.append(tmp_path / f"d{i}" / "model.onnx")
        paths[-1].write_bytes(Path(files[key]).read_bytes())
    refs = model_refs(paths)
    assert [r.name for r in refs] == ["model", "model-2"]
    spec = SweepSpec(data=("digits",), models=refs, bits=(2, 4), quant=QUANT,
                     attack=AttackSettings((0.0, 0.1), limit=30, diagnostics=False))
    out = tmp_path / "s.h5"
    sweep(spec, out)
    digest = content_digest(out)
    again = sweep(spec, out)
    assert again["resumed"] == 2 and again["ran"] == 0 and content_digest(out) == digest
    paths[1].write_bytes(Path(files["float"]).read_bytes())
    out2 = tmp_path / "t.h5"
    with pytest.raises(HwqError, match="not the model the sweep was started with"):
        sweep(spec, out2)


def test_merge_model_sweeps_over_attack_seeds(files, tmp_path):
    """Square's seed is the cell's: two files with attack seeds 0 and 1 report as one sweep
    over both, equal to one sweep with seeds 0,1."""
    from hwq.study.report import write_report
    from hwq.sweep.merge import merge_sweeps

    def spec(seeds):
        return SweepSpec(data=("digits",), models=model_refs([files["qat2"]]), bits=(2,), seeds=seeds,
                         quant=QUANT, attack=AttackSettings((0.0, 0.1), name="square", queries=20, limit=20,
                                                            diagnostics=False))

    for name, seeds in (("a", (0,)), ("b", (1,)), ("ab", (0, 1))):
        sweep(spec(seeds), tmp_path / f"{name}.h5")
    merged, one = merge_sweeps([tmp_path / "a.h5", tmp_path / "b.h5"]), read_sweep(tmp_path / "ab.h5")
    assert [c.key for c in merged.cells] == [c.key for c in one.cells] == [
        f"digits__{W2}__q02__s{s}__sim__square" for s in (0, 1)]
    for c, d in zip(merged.cells, one.cells):
        assert c.attrs["attack_seed"] == d.attrs["attack_seed"] and np.array_equal(c.accuracy, d.accuracy)
    out = write_report([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "rep", fig2=False)
    assert out["models"][0]["usable"] + out["models"][0]["stalled"] == 2


@pytest.mark.parametrize("case", ["cnn_on_spiral", "classes", "qat_bits", "seeds_fgsm", "twice"])
def test_bad_model_sweeps_are_refused_in_one_line(case, files, tmp_path, capsys):
    from test_study_cli import check_bad

    out = tmp_path / "s.h5"
    cnn = EXPORTERS / "torch_cnn_bn_classic.onnx"
    args, fragment = {
        "cnn_on_spiral": (["--data", "spiral", "--model", cnn], "takes inputs of shape 1x8x8, data set spiral"),
        "classes": (["--data", "digits", "--model",
                     save(random_mlp(np.random.default_rng(0), 64, 8, 3), tmp_path / "three.onnx")],
                    "has 3 classes, data set digits has 10"),
        "qat_bits": (["--data", "digits", "--model", files["qat2"], "--bits", "2,4"], "keeps the bits of its QAT"),
        "seeds_fgsm": (["--data", "digits", "--model", files["float"], "--seeds", "0,1"], "fgsm has none"),
        "twice": (["--data", "digits", "--model", files["float"], "--model", files["float"]], "same"),
    }[case]
    line = check_bad(capsys, ["sweep", *args, "--eps", "0,0.1", "-o", out], out, Path(f"{out}.cells"))
    assert fragment in line, line


@pytest.mark.slow
def test_cnn_sweep_and_report_from_the_command_line(tmp_path, capsys):
    """The issue's command: a float CNN at 2 and 8 bits and a QAT CNN at its grids' bits, then
    the report (figures per model, models compared)."""
    out, rep = tmp_path / "s.h5", tmp_path / "rep"
    models = f"{EXPORTERS / 'torch_cnn_bn_classic.onnx'},{EXPORTERS / 'brevitas_cnn_qcdq.onnx'}"
    code, _, err = run_cli("sweep", "--data", "digits", "--models", models, "--bits", "2,8", "--targets", "sim",
                           "--eps", "0:0.1:0.05", "--limit", "50", "--workers", "1", "-o", out, capsys=capsys)
    assert code == 0, err
    code, text, err = run_cli("info", out, "--json", capsys=capsys)
    info = json.loads(text)
    assert info["bits"] == [2, 4, 8] and [m["name"] for m in info["models"]] == [
        "torch_cnn_bn_classic", "brevitas_cnn_qcdq"]
    code, text, err = run_cli("report", out, "-o", rep, "--no-fig2", "--json", capsys=capsys)
    assert code == 0, err
    res = json.loads(text)
    assert [(r["model"], r["bits"]) for r in res["models"]] == [
        ("torch_cnn_bn_classic", 2), ("torch_cnn_bn_classic", 8), ("brevitas_cnn_qcdq", 4)]
    names = {Path(p).name for p in res["figures"]}
    assert "fig3_digits_accuracy_vs_bits.png" in names
    assert all(Path(p).exists() for p in res["figures"]) and "## Models compared" in Path(res["report"]).read_text()
