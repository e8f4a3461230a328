"""The study commands on the command line: sweep, report, model, reproduce, info; bad input
is one line and exit code 1 or 2, and leaves no output behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hwq.cli import main

SWEEP = ["--data", "spiral", "--activations", "relu,sigmoid", "--bits", "1,6", "--seeds", "1",
         "--eps", "0:0.5:0.1", "--epochs", "40", "--patience", "10", "--workers", "1"]
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def hwq(*args, capsys):
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def check_bad(capsys, args, *leftovers: Path):
    code, _, err = hwq(*args, capsys=capsys)
    assert code in (1, 2), err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hwq: error:"), err
    for path in leftovers:
        assert not path.exists(), path
    return lines[0]


@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "s.h5"
    with pytest.raises(SystemExit) as info:
        main(["sweep", *SWEEP, "-o", str(path)])
    assert info.value.code == 0
    return path


def test_sweep_json_and_info(sweep_file, capsys):
    code, out, _ = hwq("sweep", *SWEEP, "-o", sweep_file, "--json", capsys=capsys)
    summary = json.loads(out)
    assert code == 0 and summary["cells"] == 4 and summary["resumed"] == 4
    code, out, _ = hwq("info", sweep_file, "--json", capsys=capsys)
    info = json.loads(out)
    assert code == 0 and info["kind"] == "sweep" and info["cells"] == 4 and info["complete"]
    assert info["epsilons"] == [0.0, 0.5, 6] and len(info["content_sha256"]) == 64


def test_report_json_keys(sweep_file, tmp_path, capsys):
    code, out, _ = hwq("report", sweep_file, "-o", tmp_path / "rep", "--no-fig2", "--json",
                       capsys=capsys)
    res = json.loads(out)
    assert code == 0
    assert {"critical", "clean_accuracy", "stalled", "figures", "report"} <= set(res)
    assert set(res["critical"]["spiral"]["sim"]) == {"relu", "sigmoid"}
    assert all(Path(p).exists() for p in res["figures"]) and Path(res["report"]).exists()


@pytest.mark.parametrize("args, fragment", [
    (["--activations", "tanh"], "unknown hidden activation"),
    (["--bits", "0,4"], "weight bits"),
    (["--bits", "1:17"], "weight bits"),
    (["--bits", "x"], "malformed --bits"),
    (["--seeds", "0"], "--seeds"),
    (["--eps", "0:-1:0.1"], "malformed --eps"),
    (["--data", "nosuchdata"], "unknown data set"),
    (["--targets", "nosuchtarget"], "unknown target"),
    (["--scheduler", "nonsense"], "not an address"),
])
def test_bad_sweep_arguments(args, fragment, tmp_path, capsys):
    out = tmp_path / "bad.h5"
    line = check_bad(capsys, ["sweep", "--data", "spiral", *args, "-o", out], out,
                     Path(f"{out}.cells"))
    assert fragment in line


def test_model_that_does_not_fit_the_data(tmp_path, capsys):
    import numpy as np
    from builders import random_mlp, save

    model = save(random_mlp(np.random.default_rng(0), 2, 8, 1), tmp_path / "m.onnx")
    out = tmp_path / "s.h5"
    line = check_bad(capsys, ["sweep", "--data", "digits", "--model", model, "-o", out], out,
                     Path(f"{out}.cells"))
    assert "takes inputs of shape 2" in line and "samples of shape 8x8" in line
    line = check_bad(capsys, ["sweep", "--model", tmp_path / "none.onnx", "-o", out], out)


def test_bad_output_names(tmp_path, capsys):
    check_bad(capsys, ["sweep", "-o", tmp_path / "s.txt"], tmp_path / "s.txt")
    check_bad(capsys, ["sweep", "-o", tmp_path / "missing" / "s.h5"])


def test_corrupt_or_foreign_sweep_files(sweep_file, tmp_path, capsys):
    bad = tmp_path / "corrupt.h5"
    bad.write_bytes(sweep_file.read_bytes()[:4000])
    out = tmp_path / "rep"
    check_bad(capsys, ["report", bad, "-o", out], out)
    check_bad(capsys, ["report", tmp_path / "none.h5", "-o", out], out)
    text = tmp_path / "text.h5"
    text.write_text("not hdf5")
    check_bad(capsys, ["report", text, "-o", out], out)
    check_bad(capsys, ["info", bad])
    # a corrupt file at the sweep's output is not silently replaced
    check_bad(capsys, ["sweep", *SWEEP, "-o", text], Path(f"{text}.cells"))
    assert text.read_text() == "not hdf5"


def test_model_command(capsys):
    code, out, _ = hwq("model", "--n", "784", "--bits", "4", "--json", capsys=capsys)
    res = json.loads(out)
    assert code == 0 and res["n"] == 784 and res["bits"] == 4
    assert {"inradius", "mean_distance_exact", "mean_distance_eq8", "linf_bound_zero"} <= set(res)
    code, out, _ = hwq("model", "--n", "2", "--bits", "3", capsys=capsys)
    assert code == 0 and "inradius" in out
    check_bad(capsys, ["model", "--n", "0", "--bits", "4"])
    check_bad(capsys, ["model", "--n", "10", "--bits", "17"])


@pytest.mark.slow
def test_reproduce_quick_on_spirals(tmp_path, capsys):
    out = tmp_path / "hwq-out"
    code, stdout, err = hwq("reproduce", "--data", "spiral", "--quick", "-o", out,
                            "--workers", "2", "--limit", "200", capsys=capsys)
    assert code == 0, err
    assert "quick grid" in err and "bits 1,2,4,8" in err  # the grid is stated
    assert f"figures: {out}" in stdout
    assert (out / "report.md").exists() and (out / "fig6_spiral_accuracy_vs_bits.png").exists()
    assert (out / "fig2_simplex_distances.png").exists()
    assert len(list(out.glob("sweep-quick-spiral-limit200.h5"))) == 1


def test_reproduce_bad_input(tmp_path, capsys):
    check_bad(capsys, ["reproduce", "-o", tmp_path / "x.h5"], tmp_path / "x.h5")
    check_bad(capsys, ["reproduce", "--data", "nosuch", "-o", tmp_path / "out"],
              tmp_path / "out")
    check_bad(capsys, ["reproduce", "--data", f"mnist:{tmp_path / 'none'}", "-o",
                       tmp_path / "out"], tmp_path / "out")


@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("sweep*.py")))
def test_sweep_examples_run(script, tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), "--quick", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip()
