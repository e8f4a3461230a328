"""Tests under tests/targets/ share the builders one folder up (factories.py, builders.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
