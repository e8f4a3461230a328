#!/usr/bin/env bash
# Set up hwq in ./.venv: finds Python 3.10 (needed by Lava, the loihi target) where it exists,
# else the default python3 (everything but the Lava backend works there). Idempotent: a second
# run only reinstalls when pyproject.toml changed. Usage: ./bootstrap.sh [--python PATH]
set -euo pipefail
cd "$(dirname "$0")"

find_python310() {
  local c
  if command -v pyenv >/dev/null 2>&1; then
    for c in "$(pyenv root)"/versions/3.10.*/bin/python3.10; do
      [ -x "$c" ] && "$c" -c 'import sys' 2>/dev/null && { echo "$c"; return; }
    done
  fi
  for c in python3.10 /usr/bin/python3.10 /usr/local/bin/python3.10 "$HOME/.local/bin/python3.10"; do
    command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys' 2>/dev/null && { command -v "$c"; return; }
  done
  if command -v uv >/dev/null 2>&1; then
    c=$(uv python find 3.10 2>/dev/null || true)
    [ -n "$c" ] && { echo "$c"; return; }
  fi
  return 1
}

PY=""
if [ "${1:-}" = "--python" ]; then PY="$2"; fi
[ -n "$PY" ] || PY=$(find_python310 || true)
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
  "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' && EXTRAS="test,loihi"
  if ! "$VENV/bin/python" -m pip install -e ".[$EXTRAS]" > "$VENV/install.log" 2>&1 \
     || ! "$VENV/bin/python" -c 'import hwq'; then
    tail -n 30 "$VENV/install.log" >&2
    echo "bootstrap: installation failed (full log: $VENV/install.log)" >&2
    exit 1
  fi
  echo "bootstrap: installed hwq with extras [$EXTRAS]" >&2
  echo "$WANT" > "$STAMP"
fi
