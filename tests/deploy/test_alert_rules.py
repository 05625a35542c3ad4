"""The alert rules as code: promtool checks and unit-tests them, and the chart ships exactly these rules.

One file (helm/embedstream/rules/embedstream.rules.yml, linked from deploy/prometheus/) feeds both the
chart's PrometheusRule and a plain Prometheus; `promtool test rules` proves each alert fires on its
failure and stays quiet on a healthy stream (deploy/prometheus/embedstream.rules.test.yml).
"""

from __future__ import annotations

import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import ALL_ON, CHART, ROOT, Rendered
from prometheus_tools import require_tool

pytestmark = pytest.mark.deploy

RULES = CHART / "rules" / "embedstream.rules.yml"
DEPLOY_RULES = ROOT / "deploy" / "prometheus" / "embedstream.rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "embedstream.rules.test.yml"


def rules_file() -> dict[str, Any]:
    return yaml.safe_load(RULES.read_text())


def alerts() -> list[dict[str, Any]]:
    return [r for g in rules_file()["groups"] for r in g["rules"]]


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_tool("promtool")


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_promtool_check_rules(promtool: str) -> None:
    proc = run([promtool, "check", "rules", str(DEPLOY_RULES)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in proc.stdout


def test_promtool_rule_unit_tests(promtool: str) -> None:
    proc = run([promtool, "test", "rules", str(RULE_TESTS)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_rule_unit_tests_cover_firing_and_quiet_for_every_alert() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {a["alert"] for a in alerts()}
    assert fired == names and quiet == names


def test_promtool_check_compose_config(promtool: str) -> None:
    proc = run([promtool, "check", "config", str(ROOT / "deploy" / "prometheus" / "prometheus.yml")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in proc.stdout


def test_deploy_rules_are_the_chart_rules() -> None:
    assert DEPLOY_RULES.resolve() == RULES.resolve() or DEPLOY_RULES.read_text() == RULES.read_text()


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    for alert in alerts():
        assert alert["labels"]["severity"] in {"warning", "critical"}, alert["alert"]
        assert {"summary", "description", "runbook"} <= set(alert["annotations"]), alert["alert"]
        assert alert["alert"].startswith("Embedstream") and alert.get("for"), alert["alert"]


def test_prometheus_rule_off_by_default(render: Callable[..., Rendered]) -> None:
    assert render().maybe("PrometheusRule") is None


def test_prometheus_rule_ships_the_rules_file(render: Callable[..., Rendered]) -> None:
    pr = render([ALL_ON]).one("PrometheusRule")
    assert pr["apiVersion"] == "monitoring.coreos.com/v1"
    assert pr["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert pr["metadata"]["namespace"] == "embed"
    values = yaml.safe_load(ALL_ON.read_text())["prometheusRule"]
    expected = rules_file()["groups"]
    for group in expected:
        for rule in group["rules"]:
            rule["labels"] = {**rule["labels"], **values["ruleLabels"]}
            rule["annotations"]["runbook_url"] = f"{values['runbookUrl']}#{rule['alert'].lower()}"
    assert pr["spec"]["groups"] == expected
    # Prometheus's own templates pass through Helm untouched.
    assert "{{ $labels.namespace }}" in pr["spec"]["groups"][0]["rules"][0]["annotations"]["summary"]


def test_prometheus_rule_options(render: Callable[..., Rendered]) -> None:
    r = render(sets={"prometheusRule.enabled": True, "prometheusRule.namespace": "monitoring",
                     "prometheusRule.disabledAlerts[0]": "EmbedstreamEndToEndLatencyHigh",
                     "prometheusRule.ruleLabels.severity": "page"})
    pr = r.one("PrometheusRule")
    assert pr["metadata"]["namespace"] == "monitoring"
    rules = [rule for g in pr["spec"]["groups"] for rule in g["rules"]]
    assert {rule["alert"] for rule in rules} == {a["alert"] for a in alerts()} - {"EmbedstreamEndToEndLatencyHigh"}
    assert {rule["labels"]["severity"] for rule in rules} == {"page"}
    assert all("runbook_url" not in rule["annotations"] for rule in rules)


def test_rules_file_is_packaged(helm: str, tmp_path: Path) -> None:
    proc = run([helm, "package", str(CHART), "--destination", str(tmp_path)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (archive,) = tmp_path.glob("embedstream-*.tgz")
    with tarfile.open(archive) as tar:
        assert "embedstream/rules/embedstream.rules.yml" in tar.getnames()
        assert "embedstream/dashboards/embedstream.json" in tar.getnames()
