"""Test configuration: Lava tests run wherever the Lava device environment exists.

Lava (lava-nc 0.10.0) lives in its own Python 3.10 environment (``.venv-lava``, made by
bootstrap.sh, or ``$HWQ_LAVA_PYTHON``); hwq starts it as a device (targets/loihi/lava_device.py).
Tests marked ``lava`` run there for real. Without that environment they are skipped with the
set-up line, unless ``HWQ_REQUIRE_LAVA=1`` (set by .ci/run where .venv-lava exists), which makes
a missing environment an error instead of a silent skip.
"""

from __future__ import annotations

import os

import pytest

from hwq.errors import HwqError


def lava_unavailable() -> str | None:
    from hwq_targets.loihi.lava_device import lava_python

    try:
        lava_python()
    except HwqError as exc:
        return exc.line()
    return None


def pytest_collection_modifyitems(config, items):
    lava_items = [item for item in items if "lava" in item.keywords]
    reason = lava_unavailable() if lava_items else None
    if reason is None:
        return
    if os.environ.get("HWQ_REQUIRE_LAVA"):
        raise pytest.UsageError(f"HWQ_REQUIRE_LAVA is set, but: {reason}")
    for item in lava_items:
        item.add_marker(pytest.mark.skip(reason=reason))
