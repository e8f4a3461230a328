#!/usr/bin/env bash
# Set up hwq in ./.venv on current Python (the newest of 3.13, 3.12, 3.11 found, else python3),
# and, where a Python 3.10 exists, ./.venv-lava: lava-nc 0.10.0 (Python 3.10, numpy < 2) and hwq,
# which hwq starts as a device server for the loihi target's Lava backend
# (targets/loihi/lava_device.py). Idempotent: a second run only reinstalls an environment when
# pyproject.toml (or its Python) changed. Usage: ./bootstrap.sh [--python PATH] [--lava-python PATH]
set -euo pipefail
cd "$(dirname "$0")"

# find_python 3.X: a working CPython 3.X from pyenv, PATH, the usual apt/local places or uv.
find_python() {
  local v=$1 c
  if command -v pyenv >/dev/null 2>&1; then
    for c in "$(pyenv root)"/versions/"$v".*/bin/python"$v"; do
      [ -x "$c" ] && "$c" -c 'import sys' 2>/dev/null && { echo "$c"; return; }
    done
  fi
  for c in python"$v" /usr/bin/python"$v" /usr/local/bin/python"$v" "$HOME/.local/bin/python$v"; do
    command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys' 2>/dev/null && { command -v "$c"; return; }
  done
  if command -v uv >/dev/null 2>&1; then
    c=$(uv python find "$v" 2>/dev/null || true)
    [ -n "$c" ] && { echo "$c"; return; }
  fi
  return 1
}

PY=""
LAVA_PY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --python) PY="$2"; shift 2 ;;
    --lava-python) LAVA_PY="$2"; shift 2 ;;
    *) echo "usage: ./bootstrap.sh [--python PATH] [--lava-python PATH]" >&2; exit 2 ;;
  esac
done
for v in 3.13 3.12 3.11; do [ -n "$PY" ] || PY=$(find_python "$v" || true); done
[ -n "$PY" ] || PY=$(command -v python3)
VENV=.venv
STAMP="$VENV/.hwq-installed"
WANT="$("$PY" -c 'import sys; print(sys.version.split()[0])') $(sha256sum pyproject.toml | cut -c1-16)"

if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "bootstrap: setting up $VENV with $PY ($("$PY" --version 2>&1))" >&2
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  EXTRAS="test"
  if ! "$VENV/bin/python" -m pip install -e ".[$EXTRAS]" > "$VENV/install.log" 2>&1 \
     || ! "$VENV/bin/python" -c 'import hwq'; then
    tail -n 30 "$VENV/install.log" >&2
    echo "bootstrap: installation failed (full log: $VENV/install.log)" >&2
    exit 1
  fi
  echo "bootstrap: installed hwq with extras [$EXTRAS]" >&2
  echo "$WANT" > "$STAMP"
fi

# The Lava device environment (Python 3.10). Without a Python 3.10 everything but the Lava
# backend works; with one, a failed installation is an error (CI must run the Lava tests).
[ -n "$LAVA_PY" ] || LAVA_PY=$(find_python 3.10 || true)
LVENV=.venv-lava
if [ -z "$LAVA_PY" ]; then
  echo "bootstrap: no Python 3.10 found, so no $LVENV: the loihi target's Lava backend is off (install Python 3.10, e.g. pyenv install 3.10, and rerun)" >&2
else
  LSTAMP="$LVENV/.hwq-installed"
  LWANT="$("$LAVA_PY" -c 'import sys; print(sys.version.split()[0])') $(sha256sum pyproject.toml | cut -c1-16) lava-nc==0.10.0"
  if [ ! -x "$LVENV/bin/python" ] || [ "$(cat "$LSTAMP" 2>/dev/null)" != "$LWANT" ]; then
    echo "bootstrap: setting up $LVENV (Lava device) with $LAVA_PY ($("$LAVA_PY" --version 2>&1))" >&2
    rm -rf "$LVENV"
    "$LAVA_PY" -m venv "$LVENV"
    "$LVENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    if ! "$LVENV/bin/python" -m pip install -e . "lava-nc==0.10.0" "numpy<2" > "$LVENV/install.log" 2>&1 \
       || ! "$LVENV/bin/python" -c 'import lava.magma.core, hwq_targets.loihi.lavanet'; then
      tail -n 30 "$LVENV/install.log" >&2
      echo "bootstrap: the Lava environment failed (full log: $LVENV/install.log)" >&2
      exit 1
    fi
    echo "bootstrap: installed lava-nc 0.10.0 and hwq in $LVENV" >&2
    echo "$LWANT" > "$LSTAMP"
  fi
fi
