"""Helpers of the deployment checks: find helm, render the chart, load its output strictly.

A module of its own (not conftest.py) so the tests can import it by a name no other test folder uses.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "embedstream"
DEPLOY_TESTS = Path(__file__).resolve().parent
ALL_ON = DEPLOY_TESTS / "values-all-on.yaml"
# The Kubernetes version charts are rendered for (helm --kube-version) and validated against.
KUBE_VERSION = "1.34.0"


def cache_bin_dir() -> Path:
    """Where scripts/install-tools.sh puts the tools it builds."""
    override = os.environ.get("EMBEDSTREAM_TOOLS_DIR")
    if override:
        return Path(override)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "embedstream" / "bin"


def find_helm() -> str | None:
    """$HELM, then the install-tools cache, then PATH."""
    env = os.environ.get("HELM")
    if env:
        return env
    cached = cache_bin_dir() / "helm"
    if cached.is_file() and os.access(cached, os.X_OK):
        return str(cached)
    return shutil.which("helm")


class UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that rejects duplicate mapping keys (Kubernetes would keep only the last one)."""


def _construct_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    loader.flatten_mapping(node)
    return dict(loader.construct_pairs(node, deep=deep))


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_all_strict(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.load_all(text, Loader=UniqueKeyLoader) if d]


class RenderError(Exception):
    def __init__(self, stderr: str) -> None:
        super().__init__(stderr)
        self.stderr = stderr


class Rendered:
    """The objects of one `helm template`, with look-ups by kind."""

    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self.docs = docs

    def kinds(self) -> list[str]:
        return sorted(d["kind"] for d in self.docs)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def maybe(self, kind: str) -> dict[str, Any] | None:
        found = self.all(kind)
        assert len(found) <= 1, f"more than one {kind}"
        return found[0] if found else None

    def one(self, kind: str) -> dict[str, Any]:
        found = self.all(kind)
        assert len(found) == 1, f"expected one {kind}, got {len(found)} among {self.kinds()}"
        return found[0]

    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment")

    @property
    def pod_spec(self) -> dict[str, Any]:
        return self.deployment["spec"]["template"]["spec"]

    @property
    def container(self) -> dict[str, Any]:
        containers = self.pod_spec["containers"]
        assert [c["name"] for c in containers] == ["worker"]
        return containers[0]

    def env(self, container: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
        entries = (container or self.container).get("env", [])
        names = [e["name"] for e in entries]
        assert len(names) == len(set(names)), f"duplicate env vars: {names}"
        return {e["name"]: e for e in entries}

    def env_values(self, container: dict[str, Any] | None = None) -> dict[str, str]:
        return {k: v["value"] for k, v in self.env(container).items() if "value" in v}


def set_args(sets: dict[str, Any] | None) -> list[str]:
    args: list[str] = []
    for key, value in (sets or {}).items():
        if isinstance(value, str):
            args += ["--set-string", f"{key}={value}"]
        else:
            args += ["--set-json", f"{key}={json.dumps(value)}"]
    return args
