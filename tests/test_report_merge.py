"""`hwq report A.h5 B.h5 ...`: sweep files of one grid run with different seeds are reported
as one sweep over all their seeds, exactly like the sweep run with the union of the seeds;
files that differ in anything but their seeds, or share a seed, are refused in one line
before anything is written."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
from cli_runner import run_cli

from hwq.cli import main
from hwq.errors import UsageError
from hwq.study.report import attack_arrays, blocks, key_numbers, write_report
from hwq.sweep.merge import merge_sweeps
from hwq.sweep.store import content_digest, read_sweep

# a suite, so the per-attack tables (read from each cell's own file) are compared too
GRID = ["--data", "spiral", "--activations", "relu,sigmoid", "--bits", "2,6", "--eps", "0:0.5:0.1",
        "--epochs", "100", "--patience", "100", "--attacks", "fgsm,pgd", "--steps", "3",
        "--limit", "60", "--workers", "1"]


def sweep(folder: Path, name: str, seeds: str, *extra: str) -> Path:
    args = list(GRID)
    for flag, value in zip(extra[::2], extra[1::2]):  # an override replaces the grid's value
        args[args.index(flag) + 1] = value
    path = folder / name
    with pytest.raises(SystemExit) as info:
        main(["sweep", *args, "--seeds", seeds, "-o", str(path)])
    assert info.value.code == 0
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("merge")
    return {"full": sweep(d, "full.h5", "0:1"), "a": sweep(d, "a.h5", "0:0"),
            "b": sweep(d, "b.h5", "1:1"),
            "b_eps": sweep(d, "b_eps.h5", "1:1", "--eps", "0:0.3:0.1"),
            "b_bits": sweep(d, "b_bits.h5", "1:1", "--bits", "2,5")}


def report_json(capsys, out: Path, *paths: Path) -> dict:
    code, stdout, stderr = run_cli("report", *paths, "-o", out, "--no-fig2", "--json",
                                   capsys=capsys)
    assert code == 0, stderr
    return json.loads(stdout)


def numbers(res: dict) -> dict:
    """The report's numbers, without what names the files (paths, sources)."""
    return {k: v for k, v in res.items() if k not in ("report", "figures", "sources")}


def tables(md: str) -> str:
    """report.md from the critical strengths to the stalled/refused cells (no settings, no
    wall times: those differ between runs)."""
    return md[md.index("## Critical attack strength"):md.index("## Time per phase")]


def test_split_seeds_merge_to_the_single_sweep(files, tmp_path, capsys):
    single = report_json(capsys, tmp_path / "single", files["full"])
    merged = report_json(capsys, tmp_path / "merged", files["a"], files["b"])
    assert numbers(merged) == numbers(single)
    assert merged["cells"] == 8 and merged["planned"] == 8 and merged["complete"]
    assert [Path(p).name for p in merged["figures"]] == [Path(p).name for p in single["figures"]]
    md_single, md_merged = (Path(r["report"]).read_text() for r in (single, merged))
    assert "## Attacks compared" in md_merged and "| pgd 0.1 |" in md_merged  # suite table
    assert tables(md_merged) == tables(md_single)
    # the sources: which file holds which seed, and its content digest
    assert [(s["path"], s["seeds"], s["cells"]) for s in merged["sources"]] == [
        (str(files["a"]), [0], 4), (str(files["b"]), [1], 4)]
    for s in merged["sources"]:
        assert s["content_sha256"] == content_digest(s["path"]) and s["content_sha256"] in md_merged
    assert md_merged.startswith("# hwq sweep report: a.h5 + b.h5")
    assert "seeds 0, 1;" in md_merged

    # the same down to every array, attack members included, in either order of the files
    full, sw = read_sweep(files["full"]), merge_sweeps([files["b"], files["a"]])
    assert sw.spec == full.spec and [c.key for c in sw.cells] == [c.key for c in full.cells]
    for x, y in zip(blocks(full), blocks(sw)):
        for name in ("acc", "clean", "present", "stalled", "refused", "fidelity", "keys"):
            np.testing.assert_array_equal(getattr(x, name), getattr(y, name))
        ax, ay = attack_arrays(full, x), attack_arrays(sw, y)
        assert sorted(ax) == sorted(ay) == ["fgsm", "pgd"]
        for name in ax:
            np.testing.assert_array_equal(ax[name], ay[name])

    # the comparison can fail: a merge that lost seed 1 gives other numbers
    dropped = replace(sw, cells=[c for c in sw.cells if c.attrs["seed"] == 0])
    lost = key_numbers(dropped)
    assert lost["clean_accuracy"] != single["clean_accuracy"]
    assert {**lost, "cells": 8} != numbers(single)  # not only the count of cells
    only_a = report_json(capsys, tmp_path / "only_a", files["a"])
    assert only_a["clean_accuracy"] != single["clean_accuracy"]


def check_refused(capsys, out: Path, *paths: Path) -> str:
    code, _, err = run_cli("report", *paths, "-o", out, "--no-fig2", capsys=capsys)
    assert code not in (0, None), err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hwq: error:"), err
    assert "Traceback" not in err
    assert not (out / "report.md").exists()
    assert not out.exists() or not any(out.iterdir())
    return lines[0]


@pytest.mark.parametrize("other, line", [
    ("b_eps", "b_eps.h5 differs from {a} in eps (0:0.5:0.1 vs 0:0.3:0.1); only seeds may differ"),
    ("b_bits", "b_bits.h5 differs from {a} in bits (2,6 vs 2,5); only seeds may differ"),
    ("full", "full.h5 repeats seed 0 of {a}; each seed may come from one file only"),
    ("a", "a.h5 is given twice; each seed may come from one file only"),
])
def test_files_that_differ_in_more_than_seeds_are_refused(files, other, line, tmp_path, capsys):
    got = check_refused(capsys, tmp_path / "rep", files["a"], files[other])
    assert got.endswith(line.format(a=files["a"])), got
    existing = tmp_path / "existing"  # an existing folder gets nothing either
    existing.mkdir()
    check_refused(capsys, existing, files["a"], files["b"], files[other])


def test_other_header_fields_are_compared(files, tmp_path):
    def edited(name: str, edit) -> Path:
        path = tmp_path / name
        shutil.copy(files["b"], path)
        with h5py.File(path, "a") as f:
            edit(f)
        return path

    version = edited("version.h5", lambda f: f.attrs.modify("hwq_version", "0.0.1"))
    data = edited("data.h5", lambda f: (f["data"]["spiral"].attrs.modify("fingerprint", "f" * 64),
                                        f.attrs.modify("data_fingerprints", json.dumps({"spiral": "f" * 64}))))
    for path, field in ((version, "hwq version"), (data, "the fingerprint of data set spiral")):
        with pytest.raises(UsageError, match=f"differs from .* in {field} "):
            merge_sweeps([files["a"], path])
    with pytest.raises(UsageError, match="no sweep file"):
        merge_sweeps([])


def test_a_partial_file_merges_like_a_partial_sweep(files, tmp_path):
    partial = tmp_path / "partial.h5"
    shutil.copy(files["b"], partial)
    gone = "spiral__sigmoid__q06__s1__sim"
    with h5py.File(partial, "a") as f:
        del f["cells"][gone]
        f.attrs.modify("complete", np.bool_(False))
        f.attrs.modify("n_cells", 3)
    out = write_report([files["a"], partial], tmp_path / "rep", fig2=False)
    assert out["cells"] == 7 and out["planned"] == 8 and not out["complete"]
    assert [s["complete"] for s in out["sources"]] == [True, False]
    md = Path(out["report"]).read_text()
    assert "7 of 8 cells (sweep not complete)" in md
    blk = blocks(merge_sweeps([files["a"], partial]))[0]
    assert blk.present.sum() == 7 and gone not in blk.keys


def test_one_file_reports_as_before(files, tmp_path, capsys):
    res = report_json(capsys, tmp_path / "rep", files["full"])
    assert "sources" not in res
    md = Path(res["report"]).read_text()
    assert md.startswith("# hwq sweep report: full.h5") and "\n- command: `" in md
    assert "merged from" not in md
    api = write_report([files["full"]], tmp_path / "api", fig2=False)
    assert numbers(api) == numbers(res) and "sources" not in api
    code, stdout, _ = run_cli("report", files["full"], "-o", tmp_path / "text", "--no-fig2",
                              capsys=capsys)
    assert code == 0 and stdout.startswith("report: ")
    code, stdout, _ = run_cli("report", files["a"], files["b"], "-o", tmp_path / "text2",
                              "--no-fig2", capsys=capsys)
    assert code == 0 and stdout.startswith("report from 2 sweep files: ")


def test_diagnostics_counted_per_activation_bits_and_seed(files, tmp_path, capsys):
    """The report lists, per diagnostic, the seeds of each (activation, bits) where it fired,
    out of the seeds run; --json has the same counts. Planted flags on a copy."""
    planted = tmp_path / "planted.h5"
    shutil.copy(files["full"], planted)
    want = {("relu", 2): ["zero_gradient"], ("sigmoid", 6): ["pgd_weaker_than_fgsm"]}
    with h5py.File(planted, "r+") as f:
        for g in f["cells"].values():
            at = (g.attrs["activation"], int(g.attrs["bits"]))
            flags = want.get(at, []) if at == ("relu", 2) or int(g.attrs["seed"]) == 0 else []
            g.attrs["diag_flags"] = json.dumps(flags)
    res = report_json(capsys, tmp_path / "out", planted)
    assert res["diagnostics"] == {"spiral": {"sim": {"pgd_weaker_than_fgsm": {"sigmoid": {"6": 1}},
                                                     "zero_gradient": {"relu": {"2": 2}}}}}
    md = (tmp_path / "out" / "report.md").read_text()
    assert "- `zero_gradient`: 2 cells: relu q2 2/2" in md
    assert "- `pgd_weaker_than_fgsm`: 1 cells: sigmoid q6 1/2" in md


def test_a_data_file_at_another_path_merges_when_its_fingerprint_agrees(tmp_path, capsys):
    """Seeds run on two machines with the data at different paths merge; a file of the same
    name with other contents is refused by its fingerprint."""
    from hwq.data import load_dataset

    ds = load_dataset("spiral")
    paths = {}
    for name, y_test in (("one", ds.y_test), ("two", ds.y_test), ("other", 1 - ds.y_test)):
        (tmp_path / name).mkdir()
        paths[name] = tmp_path / name / "toy.npz"
        np.savez(paths[name], x=ds.x_train, y=ds.y_train, x_test=ds.x_test, y_test=y_test)
    a = sweep(tmp_path, "a.h5", "0:0", "--data", str(paths["one"]), "--bits", "2", "--activations", "relu")
    b = sweep(tmp_path, "b.h5", "1:1", "--data", str(paths["two"]), "--bits", "2", "--activations", "relu")
    c = sweep(tmp_path, "c.h5", "1:1", "--data", str(paths["other"]), "--bits", "2", "--activations", "relu")
    merged = merge_sweeps([a, b])
    assert merged.spec.seeds == (0, 1) and len(merged.cells) == 2
    assert merged.spec.data == (str(paths["one"]),)
    capsys.readouterr()  # the sweeps' progress lines (a line per cell without a terminal)
    code, _, stderr = run_cli("report", a, c, "-o", tmp_path / "out", "--no-fig2", capsys=capsys)
    assert code != 0 and len(stderr.strip().splitlines()) == 1
    assert "differs from" in stderr and "fingerprint of data set toy" in stderr
    assert not (tmp_path / "out" / "report.md").exists()
