"""IBM model files and NSCS spike files: the real files from NeMo (tests/data/truenorth) load
and run like an independent per-neuron loop; writing and reading back gives the same model
and the same spikes; bad files fail with one clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hwq_targets.truenorth import dumps_model, parse_model, read_model, read_spikes, run_model
from hwq_targets.truenorth.cli import app
from hwq_targets.truenorth.compact import compress, expand
from hwq_targets.truenorth.spikefile import parse_spikes
from truenorth_reference import run as reference_run
from typer.testing import CliRunner

from hwq.errors import FileFormatError

DATA = Path(__file__).parent / "data" / "truenorth"


def test_compact_syntax():
    assert expand(["0:3", "5x2", 9, "22:-1:20", "3:4:15", "-32x2"], "t") == \
        [0, 1, 2, 3, 5, 5, 9, 22, 21, 20, 3, 7, 11, 15, -32, -32]
    for values in ([1, 2, 3, 7, 7, 7, 9, 5, 1, -3], list(range(256)), [4] * 256, [3, 1]):
        assert expand(compress(values), "t") == values
    with pytest.raises(FileFormatError, match="never reaches"):
        expand(["5:1:2"], "t")
    with pytest.raises(FileFormatError, match="expected 3 values"):
        expand(["0:3"], "t", 3)


def test_real_files_fields():
    ex1 = read_model(DATA / "ex1.json")
    n = ex1.cores[0].neurons
    assert n.exists.sum() == 200 and not n.exists[200:].any()
    first = (n.weight[0].tolist(), int(n.alpha[0]), int(n.gamma[0]), bool(n.leak_reversal[0]))
    assert first == ([1, 3, 2, 1], 22, 1, True)
    assert (n.dest_core[:200] == -32).all() and n.dest_axon[199] == 199
    ex2 = read_model(DATA / "ex2.json").cores[0].neurons
    # types name N%08X by hex value: entries 1, 2, 3 are listed in the order 3, 1, 2
    assert (int(ex2.alpha[0]), int(ex2.alpha[128]), int(ex2.alpha[200])) == (1, 18, 22)
    th = read_model(DATA / "th_small_test.json", missing_crossbars="empty")
    assert [c.id for c in th.cores] == [0, 4041] and th.metadata["missing_crossbars"] == [0, 4041]
    # neuron 0 has type 25 = N00000019 (lambda -1); the 25th entry of the list (N00000017) has -3
    assert int(th.cores[0].neurons.leak[0]) == -1
    last = th.cores[1].neurons
    assert last.dest_core[:7].tolist() == [-59] * 7 and last.dest_axon[:7].tolist() == list(range(231, 256, 4))


def test_missing_crossbar_is_an_error_by_default():
    with pytest.raises(FileFormatError, match="coreProt0000001"):
        read_model(DATA / "th_small_test.json")


@pytest.mark.parametrize("name,ticks", [("ex1", 32), ("ex2", 32)])
def test_real_models_run_like_the_reference_loop(name, ticks):
    model = read_model(DATA / f"{name}.json")
    spikes = read_spikes(DATA / f"{name}_spikes.sfti")
    run = run_model(model, spikes, ticks)
    host = zip(spikes.arrival.tolist(), spikes.cores.tolist(), spikes.axons.tolist())
    assert len(run.spikes) > 500
    assert run.spikes.tolist() == [list(r) for r in reference_run(model, host, ticks)]


def test_multicore_file_runs():
    model = read_model(DATA / "th_small_test.json", missing_crossbars="empty")
    run = run_model(model, read_spikes(DATA / "ex1_spikes.sfti"), 8)
    assert run.stats["offchip"] > 0 and run.stats["dropped_absent"] > 0  # cores 874, 1130 absent
    assert run.spikes.tolist() == [list(r) for r in reference_run(model, [], 8)]


@pytest.mark.parametrize("name", ["ex1", "ex2", "BootCampExample11"])
def test_write_read_round_trip(name):
    model = read_model(DATA / f"{name}.json")
    again = parse_model(dumps_model(model))
    for a, b in zip(model.cores, again.cores):
        assert np.array_equal(a.crossbar, b.crossbar) and np.array_equal(a.axon_type, b.axon_type)
        for key in ("exists", "weight", "alpha", "beta", "leak", "gamma", "kappa", "reset", "v0", "dest_core",
                    "dest_axon", "dest_delay", "leak_reversal"):
            assert np.array_equal(getattr(a.neurons, key), getattr(b.neurons, key)), key
    if name != "BootCampExample11":
        spikes = read_spikes(DATA / f"{name}_spikes.sfti")
        assert np.array_equal(run_model(model, spikes, 20).spikes, run_model(again, spikes, 20).spikes)


BAD_MODELS = [
    ('{"core": {"id": 0', "not valid JSON"),
    ('{"model": {}}', "no 'core' entry"),
    ('/* open', "unterminated"),
]


@pytest.mark.parametrize("text,message", BAD_MODELS)
def test_bad_model_files(text, message):
    with pytest.raises(FileFormatError, match=message):
        parse_model(text)


def test_bad_fields_name_the_place():
    text = (DATA / "ex1.json").read_text()
    with pytest.raises(FileFormatError, match=r"neuron type N00000001: 'alpha'"):
        parse_model(text.replace('"alpha":22', '"alpha":-1'))
    with pytest.raises(FileFormatError, match="no neuron type N00000002"):
        parse_model(text.replace('"types":["1x200","0x56"]', '"types":["2x200","0x56"]'))
    with pytest.raises(FileFormatError, match="delay 0"):
        parse_model(text.replace('"destDelays":["1x200","1x56"]', '"destDelays":["0x200","1x56"]'))
    with pytest.raises(FileFormatError, match="expected 256 values"):
        parse_model(text.replace('"0:199","0x56"', '"0:199","0x55"'))


def test_bad_spike_files():
    with pytest.raises(FileFormatError, match="line 2"):
        parse_spikes(['{"version":"sfti1.0"}', '{"spike":{"srcTime":0}}'])
    with pytest.raises(FileFormatError, match="line 1: not a JSON"):
        parse_spikes(["{oops"])
    with pytest.raises(FileFormatError, match="destAxon 300"):
        parse_spikes(['{"spike":{"srcTime":0,"destCore":0,"destAxon":300}}'])


def test_cli_run(tmp_path):
    out = tmp_path / "out.csv"
    res = CliRunner().invoke(app, ["run", str(DATA / "ex1.json"), "--input", str(DATA / "ex1_spikes.sfti"),
                                   "--ticks", "20", "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    lines = out.read_text().splitlines()
    assert lines[0] == "tick,core,neuron"
    rows = [tuple(map(int, line.split(","))) for line in lines[1:]]
    assert rows == sorted(rows) and len(rows) > 100
    assert f'"spikes": {len(rows)}' in res.output


def test_cli_bad_file_writes_nothing(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"core": [}')
    out = tmp_path / "out.csv"
    res = CliRunner().invoke(app, ["run", str(bad), "--ticks", "3", "-o", str(out)])
    assert res.exit_code != 0 and isinstance(res.exception, FileFormatError)
    assert not out.exists() and list(tmp_path.iterdir()) == [bad]
