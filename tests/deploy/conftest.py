"""Fixtures of the deployment checks (helpers live in deploy_support.py)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from deploy_support import (
    CHART,
    KUBE_VERSION,
    Rendered,
    RenderError,
    cache_bin_dir,
    find_helm,
    load_all_strict,
    set_args,
)


@pytest.fixture(scope="session")
def helm() -> str:
    path = find_helm()
    if not path and os.environ.get("EMBEDSTREAM_REQUIRE_HELM") == "1":
        pytest.fail("helm not found and EMBEDSTREAM_REQUIRE_HELM=1: run scripts/install-tools.sh or set HELM")
    if not path:
        pytest.skip(
            "helm not found ($HELM, " + str(cache_bin_dir() / "helm") + ", PATH): run scripts/install-tools.sh"
        )
    return path


@pytest.fixture(scope="session")
def render(helm: str) -> Callable[..., Rendered]:
    cache: dict[tuple[Any, ...], Rendered | RenderError] = {}

    def _render(values_files: Iterable[Path] = (), sets: dict[str, Any] | None = None,
                release: str = "es", namespace: str = "embed") -> Rendered:
        files = tuple(str(p) for p in values_files)
        key = (files, tuple(set_args(sets)), release, namespace)
        if key not in cache:
            cmd = [helm, "template", release, str(CHART), "--namespace", namespace,
                   "--kube-version", KUBE_VERSION]
            for f in files:
                cmd += ["-f", f]
            cmd += set_args(sets)
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            cache[key] = (Rendered(load_all_strict(proc.stdout)) if proc.returncode == 0
                          else RenderError(proc.stderr))
        result = cache[key]
        if isinstance(result, RenderError):
            raise result
        return result

    return _render


@pytest.fixture(scope="session")
def render_error(render: Callable[..., Rendered]) -> Callable[..., str]:
    def _render_error(values_files: Iterable[Path] = (), sets: dict[str, Any] | None = None) -> str:
        try:
            render(values_files, sets)
        except RenderError as e:
            return e.stderr
        raise AssertionError(f"helm template succeeded with values {list(values_files)} {sets}")

    return _render_error
