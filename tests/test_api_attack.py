"""``hwq attack`` is a thin layer over ``hwq.api.run_attack`` / ``write_attack_results``: a Python
script that makes the same run writes the same results file as the command (every array, every
attribute but the command line and the creation time), and prints the same ``--json`` summary."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from builders import random_mlp
from cli_runner import run_cli

import hwq
from hwq import api
from hwq.attack.suite import ProgressLines
from hwq.errors import UsageError
from hwq.onnx.importer import graph_from_model

LIMIT, EPS = 40, [0.0, 0.05, 0.1]
VARYING = ("command", "created")  # what two runs of one attack may record differently


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    rng = np.random.default_rng(5)
    data = hwq.load_dataset("digits")
    net = hwq.quantize(graph_from_model(random_mlp(rng, 64, 16, 10)), 4, calibration=data.x_train,
                       bounds=data.bounds)
    path = tmp_path_factory.mktemp("api_attack") / "m.hwq"
    hwq.save_program(path, hwq.compile(net, "sim"))
    return path


def contents(path) -> dict:
    """Every dataset (values, dtype) and attribute of a results file, by HDF5 path."""
    out = {}
    with h5py.File(path) as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = (obj.dtype.str, obj[()].tolist())
            out.update({f"{name}@{k}": v for k, v in obj.attrs.items() if k not in VARYING})
        out.update({f"@{k}": v for k, v in f.attrs.items() if k not in VARYING})
        f.visititems(visit)
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in out.items()}


CASES = {  # CLI arguments -> the same run through the API
    "fgsm": ([], dict(method="fgsm")),
    "suite with a remedy, float gradient, no diagnostics": (
        ["--attacks", "fgsm,square", "--queries", "15", "--norm", "l2", "--grad", "float", "--temperature", "0.5",
         "--no-diagnostics"],
        dict(method="fgsm,square", attack_params={"queries": 15, "norm": "l2"}, grad="float",
             gradient_params={"temperature": 0.5}, diagnostics=False)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_api_writes_the_file_the_cli_writes(case, model, tmp_path, capsys):
    args, kwargs = CASES[case]
    eps = ",".join(map(str, EPS))
    code, out, err = run_cli("attack", model, "--data", "digits", "--limit", LIMIT, "--eps", eps, *args,
                             "-o", tmp_path / "cli.h5", capsys=capsys)
    assert code == 0, err
    code, json_out, err = run_cli("attack", model, "--data", "digits", "--limit", LIMIT, "--eps", eps, *args,
                                  "--json", capsys=capsys)
    assert code == 0, err

    program, data = hwq.load_program(model), hwq.load_dataset("digits").limit(LIMIT)
    lines = ProgressLines(LIMIT * len(kwargs["method"].split(",")), stream=open(tmp_path / "progress", "w"))
    run = api.run_attack(program, data, np.array(EPS), **kwargs, progress=lines, data_spec="digits",
                         model=str(model))
    lines.stream.close()
    api.write_attack_results(tmp_path / "api.h5", run)

    cli, mine = contents(tmp_path / "cli.h5"), contents(tmp_path / "api.h5")
    assert cli.keys() == mine.keys()
    assert (mine["@data"], mine["@seed"], mine["@model"], mine["@bits"], mine["@target"]) == ("digits", 0, str(model),
                                                                                             4, "sim")
    assert mine["@data_fingerprint"] == data.fingerprint() and mine["@input_format"].endswith("(8-bit codes)")
    assert {k: v for k, v in mine.items() if cli[k] != v} == {}
    assert json.loads(json_out) == json.loads(json.dumps(run.summary, default=lambda o: o.tolist()))
    norm = kwargs.get("attack_params", {}).get("norm", "linf")  # a suite records its members' norm
    assert json.loads(json_out)["norm"] == norm and mine["@norm"] == norm
    with h5py.File(tmp_path / "api.h5") as f:
        assert f.attrs["command"].startswith("python ")
    progress = (tmp_path / "progress").read_text()
    assert progress.count(": eps ") == len(EPS) * len(kwargs["method"].split(","))  # every attack, every strength


def test_the_options_of_hwq_attack_default_to_the_api_s(model):
    """``--grad``, ``--diagnostics`` and ``--seed`` are generated from ``api.AttackRunOptions``,
    and ``run_attack``'s keywords default to the same fields."""
    import inspect

    import typer

    from hwq.cli import core  # noqa: F401  (register the commands)
    from hwq.cli.app import app

    options = {p.name: p for p in typer.main.get_command(app).commands["attack"].params}
    signature = inspect.signature(api.run_attack).parameters
    for name, default in vars(api.AttackRunOptions()).items():
        assert options[f"run_params__{name}"].default == default == signature[name].default


def test_parameters_given_to_a_built_attack_or_gradient_are_refused(model):
    program, data = hwq.load_program(model), hwq.load_dataset("digits").limit(4)
    with pytest.raises(UsageError, match="attack_params go with an attack named by its spec"):
        api.run_attack(program, data, [0.0], api.attack_method("fgsm"), attack_params={"norm": "l2"})
    with pytest.raises(UsageError, match="gradient_params go with a gradient named by its spec"):
        api.run_attack(program, data, [0.0], grad=None, gradient_params={"temperature": 0.5})


def test_a_gradient_free_attack_needs_no_gradient(model):
    program, data = hwq.load_program(model), hwq.load_dataset("digits").limit(4)
    assert api.attack_gradient("float", program, data, api.attack_method("square")) is None
    assert api.attack_gradient("float", program, data, api.attack_method("fgsm,square")).name == "float"
