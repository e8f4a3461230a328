"""Numba's cache is keyed by hwq's source (hwq/numba_cache.py): an edit anywhere, including a
module whose kernels others inline, gives a fresh cache folder."""

from __future__ import annotations

import os
import subprocess
import sys

from hwq import numba_cache


def test_the_digest_follows_every_source_file(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "k.py").write_text("x = 1\n")
    monkeypatch.setattr(numba_cache, "ROOTS", (tmp_path,))
    first = numba_cache.source_digest()
    (tmp_path / "a" / "k.py").write_text("x = 2\n")  # an inlined helper changes
    assert numba_cache.source_digest() != first
    (tmp_path / "a" / "k.py").write_text("x = 1\n")
    assert numba_cache.source_digest() == first


def test_hwq_sets_the_cache_folder_and_respects_the_users(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    code = "import hwq, os; print(os.environ['NUMBA_CACHE_DIR'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(tmp_path / "hwq-numba" / numba_cache.source_digest())
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "mine")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(tmp_path / "mine")
