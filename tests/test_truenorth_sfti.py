"""A sample's input spikes as an ``.sfti`` file (``hwq truenorth spikes``): with the model file
``hwq export --format truenorth`` writes, ``hwq truenorth run`` on them gives output spike counts
whose scores equal ``program.forward`` (and the integer reference's) for that sample; a file with
its spikes one tick late or one axon off gives other scores (docs/truenorth.md, section 2)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from cli_runner import run_cli
from factories import random_net
from hwq_targets.truenorth import TrueNorthTarget, read_model, read_spikes, run_model
from hwq_targets.truenorth.spikefile import SpikeInput, spikes_from_drive
from hwq_targets.truenorth.spikes_cli import sample_spikes
from test_truenorth_cnn import cnn

from hwq.files.program import save_program
from hwq.quant import reference

TN = TrueNorthTarget()


def scores_from_csv(path, outputs, n_out) -> np.ndarray:
    rows = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    scores = np.zeros(n_out, np.int64)
    for o in outputs:
        scores[o["unit"]] += o["sign"] * int(np.count_nonzero((rows[:, 1] == o["core"]) & (rows[:, 2] == o["neuron"])))
    return scores


def scores_of_run(program, spikes: SpikeInput) -> np.ndarray:
    model = program.mapping.model
    run = run_model(model, spikes, program.mapping.ticks)
    scores = np.zeros(program.net.layers[-1].n_out, np.int64)
    for cid, j, u, sign in program.mapping.outputs:
        scores[u] += sign * int(np.count_nonzero((run.spikes[:, 1] == cid) & (run.spikes[:, 2] == j)))
    return scores


def networks():
    rng = np.random.default_rng(21)
    step_cnn = cnn(rng, shape=(1, 12, 12), convs=((4, dict(pads=(1, 1, 1, 1))), (4, {})), top=1)
    mlp = random_net(rng, 40, [12], ["step"], 1, input_bits=2, out=4)  # 2-bit codes: inputs over two ticks
    return {"step cnn": step_cnn, "mlp": mlp}


@pytest.mark.parametrize("name", ["step cnn", "mlp"])
def test_the_exported_model_file_and_a_sample_s_spike_file_give_the_program_s_scores(name, tmp_path, capsys):
    net = networks()[name]
    program = TN.compile(net, fidelity_samples=0)
    rng = np.random.default_rng(5)
    codes = rng.integers(net.input.qmin, net.input.qmax + 1, (6, net.n_features))
    x = codes * net.input.scale  # exact: quantize_input gives the codes back
    assert np.array_equal(reference.quantize_input(net.input, x), codes)
    np.savez(tmp_path / "data.npz", x=x, y=np.arange(6) % 2, x_test=x, y_test=np.arange(6) % 2)
    save_program(tmp_path / "m.hwq", program)
    code, _, err = run_cli("export", tmp_path / "m.hwq", "-o", tmp_path / "m.json", "--format", "truenorth",
                           capsys=capsys)
    assert code == 0, err
    want = program.forward(codes)
    assert np.array_equal(want, reference.forward(net, codes))
    index = 3
    code, out, err = run_cli("truenorth", "spikes", tmp_path / "m.hwq", "--data", tmp_path / "data.npz",
                             "--index", index, "-o", tmp_path / "x.sfti", "--json", capsys=capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["ticks"] == program.mapping.ticks and summary["spikes"] > 0
    code, out, err = run_cli("truenorth", "run", tmp_path / "m.json", "-i", tmp_path / "x.sfti", "-t",
                             summary["ticks"], "-o", tmp_path / "out.csv", capsys=capsys)
    assert code == 0, err
    got = scores_from_csv(tmp_path / "out.csv", summary["outputs"], net.layers[-1].n_out)
    assert np.array_equal(got, want[index])

    # the same through the python API, for every sample; the file read back is the same spikes
    spikes = read_spikes(tmp_path / "x.sfti")
    again = sample_spikes(program, codes[index])
    assert all(np.array_equal(getattr(spikes, k), getattr(again, k)) for k in ("times", "cores", "axons"))
    assert read_model(tmp_path / "m.json").ids.tolist() == program.mapping.model.ids.tolist()
    for i in range(len(codes)):
        assert np.array_equal(scores_of_run(program, sample_spikes(program, codes[i])), want[i])

    # the wrong variants: the input spikes (not the gate and bias spikes) one tick late, or one axon
    # off, on every sample: other scores (a count-domain layer integrates a late input spike as long
    # as its emitters have not drained, so only some samples tell a late file)
    ports = {(int(c), int(a)) for column in program.mapping.inputs for c, a in column}
    late, off = [], []
    for i in range(len(codes)):
        rows = sample_spikes(program, codes[i])
        is_input = np.array([(c, a) in ports for c, a in zip(rows.cores.tolist(), rows.axons.tolist())])
        assert is_input.any() and not is_input.all()
        late.append(scores_of_run(program, dataclasses.replace(rows, times=rows.times + is_input)))
        off.append(scores_of_run(program, dataclasses.replace(
            rows, axons=np.where(is_input, (rows.axons + 1) % 256, rows.axons))))
    assert not np.array_equal(np.array(late), want) and not np.array_equal(np.array(off), want)

def test_a_drive_frame_becomes_rows_sorted_with_the_delay_subtracted():
    from hwq_targets.truenorth.emulator import Drive

    drive = Drive(2)
    a = np.zeros((2, 256), bool)
    a[1, [7, 3]] = True
    drive.add(2, 1, a)
    b = np.zeros((2, 256), bool)
    b[1, 0] = b[0, 5] = True
    drive.add(1, 0, b)
    rows = spikes_from_drive(drive, np.array([10, 20]), frame=1)
    assert np.column_stack([rows.times, rows.cores, rows.axons]).tolist() == [[0, 10, 0], [1, 20, 3], [1, 20, 7]]
    assert len(spikes_from_drive(drive, np.array([10, 20]), frame=0)) == 1


def test_bad_requests_are_one_line_errors(tmp_path, capsys):
    net = networks()["mlp"]
    program = TN.compile(net, fidelity_samples=0)
    save_program(tmp_path / "m.hwq", program)
    x = np.zeros((2, net.n_features))
    np.savez(tmp_path / "data.npz", x=x, y=np.zeros(2), x_test=x, y_test=np.zeros(2))
    code, _, err = run_cli("truenorth", "spikes", tmp_path / "m.hwq", "--data", tmp_path / "data.npz",
                           "--index", 2, "-o", tmp_path / "x.sfti", capsys=capsys)
    assert code != 0 and "outside the test split" in err and "Traceback" not in err
    code, _, err = run_cli("truenorth", "spikes", tmp_path / "m.hwq", "--data", tmp_path / "data.npz",
                           "--index", 0, "-o", tmp_path / "x.txt", capsys=capsys)
    assert code != 0 and ".sfti" in err and "Traceback" not in err


def test_measured_fidelity_records_spikes_and_synaptic_events_per_frame():
    """``report["activity"]``: counted independently here from each sample's spike file and the
    run's recorded spikes: every host spike and every routed neuron spike reaches one axon, whose
    crossbar row's connections are its synaptic events."""
    net = networks()["step cnn"]
    program = TN.compile(net, fidelity_samples=0)
    codes = np.random.default_rng(8).integers(0, 2, (5, net.n_features))
    assert program.measure_fidelity(codes, "five codes") == 1.0
    act = program.report["activity"]
    assert act["frames"] == 5 and act["source"] == "five codes"
    model = program.mapping.model
    pos = model.index()
    rowcount = {cid: model.cores[k].crossbar.sum(axis=1) for cid, k in pos.items()}
    host = spikes = events = arrivals = 0
    for i in range(5):
        rows = sample_spikes(program, codes[i])
        run = run_model(model, rows, program.mapping.ticks)
        host += len(rows)
        spikes += len(run.spikes)
        events += sum(int(rowcount[c][a]) for c, a in zip(rows.cores.tolist(), rows.axons.tolist()))
        for _, c, j in run.spikes.tolist():
            n = model.cores[pos[c]].neurons
            if int(n.dest_core[j]) in pos:
                arrivals += 1
                events += int(rowcount[int(n.dest_core[j])][int(n.dest_axon[j])])
    assert spikes > 0 and events > spikes
    assert act["input_spikes_per_frame"] == host / 5
    assert act["spikes_per_frame"] == spikes / 5
    assert act["synaptic_events_per_frame"] == events / 5
    assert events != host + arrivals  # the wrong count: spikes reaching axons, not their synapses
