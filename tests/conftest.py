"""Test configuration: Lava tests run wherever Lava can be installed (Python 3.10).

lava-nc 0.10.0 installs only on Python 3.10. There the `lava` tests always run (and fail if
Lava is missing: CI must exercise them). On other Python versions, where Lava cannot exist,
they are skipped with that reason.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest

LAVA_POSSIBLE = sys.version_info[:2] == (3, 10)


def pytest_collection_modifyitems(config, items):
    if LAVA_POSSIBLE or importlib.util.find_spec("lava") is not None:
        return
    skip = pytest.mark.skip(reason="lava-nc 0.10.0 needs Python 3.10 (this is "
                            f"{sys.version_info.major}.{sys.version_info.minor})")
    for item in items:
        if "lava" in item.keywords:
            item.add_marker(skip)
