"""Find Prometheus's binaries (Debian's `prometheus` package, which scripts/test.sh installs) for the tests.

Missing binaries skip the tests that need them with the reason, except in CI (CI=true), where they fail:
there, scripts/test.sh installs the package, so a missing binary is a broken setup, not a choice.
"""

from __future__ import annotations

import os
import shutil

import pytest

HOW_TO = "install Debian's `prometheus` package (apt-get install prometheus; scripts/test.sh does it as root)"


def require_tool(name: str) -> str:
    """The path of `prometheus` or `promtool` ($PROMETHEUS_BIN_DIR, then PATH), else skip or fail in CI."""
    bin_dir = os.environ.get("PROMETHEUS_BIN_DIR")
    path = shutil.which(name, path=bin_dir) if bin_dir else shutil.which(name)
    if path:
        return path
    message = f"{name} not found: {HOW_TO}"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
