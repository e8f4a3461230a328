"""``hwq report --html``: one self-contained page that a real browser (Debian's chromium,
headless) opens offline without errors, every figure decoded, every figure captioned."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from cli_runner import run_cli

from hwq.study.figures import caption
from hwq.sweep.executors import SerialExecutor
from hwq.sweep.run import run_sweep
from hwq.sweep.spec import AttackSettings, QuantOptions, SweepSpec, TrainSettings

CHROMIUM = Path("/usr/bin/chromium")
EPS = tuple(np.round(np.arange(11) * 0.05, 6).tolist())
SPEC = SweepSpec(data=("spiral",), activations=("step", "relu"), bits=(1, 4), seeds=(0,),
                 train=TrainSettings(epochs=40, patience=20), quant=QuantOptions(input_bits=4),
                 attack=AttackSettings(EPS, limit=100))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    d = tmp_path_factory.mktemp("html")
    with SerialExecutor() as ex:
        run_sweep(SPEC, d / "s.h5", ex, command="hwq sweep (html test)")
    return d


def test_report_html_is_one_self_contained_file_with_captions(report, capsys):
    code, out, err = run_cli("report", report / "s.h5", "-o", report / "rep", "--html", "--json", capsys=capsys)
    assert code == 0, err
    numbers = json.loads(out)
    page = Path(numbers["html"]).read_text()
    # nothing fetched from elsewhere: every src is inline data, no scripts, no style sheets
    assert re.findall(r'src="([^"]*)"', page) and all(s.startswith("data:image/png;base64,")
                                                      for s in re.findall(r'src="([^"]*)"', page))
    assert "<script" not in page and "<link" not in page and "http://" not in page and "https://" not in page
    figures = [Path(p) for p in numbers["figures"]]
    assert page.count("<figure") == len(figures) >= 4
    for f in figures:  # every figure captioned with what it plots and how to read it
        assert f.name in page and caption(f) != f.name
    assert "model bound" in page and "critical strength of 0" in page and "stalled" in page
    # settings, the float baseline, the diagnostics, the input format next to the robust accuracies
    for text in ("<h2>Settings</h2>", "float", "4-bit input codes", "Accuracy under attack", "calibration",
                 "first 5000 rows"):
        assert text in page, text
    assert numbers["input_format"].startswith("4-bit input codes") and "float_accuracy" in numbers
    md = Path(numbers["report"]).read_text()
    assert md.count("4-bit input codes") >= 2  # settings and every accuracy-under-attack table


PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.images].map(i => i.complete ? i.naturalWidth : -1);
  const fetched = performance.getEntriesByType("resource").map(e => e.name).filter(n => !n.startsWith("data:"));
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({imgs, fetched, errors: window.__errors || []});
  document.body.appendChild(out);
});
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || e.target.src)), true);
</script>"""


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (.ci/run installs it)")
def test_report_html_opens_in_a_headless_browser(report, tmp_path, capsys):
    code, out, err = run_cli("report", report / "s.h5", "-o", report / "rep2", "--html", "--no-fig2", "--json",
                             capsys=capsys)
    assert code == 0, err
    page = Path(json.loads(out)["html"]).read_text()
    # the page as it is, plus a probe that writes what the browser saw into the DOM
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("<head>", "<head>" + PROBE, 1))
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
    run = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--proxy-server=127.0.0.1:9",  # no network either way
         "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', run.stdout, re.S)
    assert found, run.stdout[-2000:]
    seen = json.loads(found[1].replace("&quot;", '"').replace("&amp;", "&"))
    assert len(seen["imgs"]) == page.count("<img") >= 3
    assert all(w > 0 for w in seen["imgs"]), seen  # every figure decoded
    assert seen["fetched"] == [] and seen["errors"] == [], seen
