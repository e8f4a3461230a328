#!/usr/bin/env bash
# Set up hwq in ./.venv on current Python (the newest of 3.13, 3.12, 3.11 found, else python3).
# Idempotent: a second run only reinstalls when pyproject.toml changed.
# Usage: ./bootstrap.sh [--python PATH]
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
if [ "${1:-}" = "--python" ]; then PY="$2"; fi
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
