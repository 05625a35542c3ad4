"""Every PromQL query of the dashboard, with its variables substituted the way Grafana does, and a small
Prometheus HTTP API client to run them.

Grafana's rules reproduced here (Prometheus datasource): `$__interval` is the step (never below the scrape
interval), `$__rate_interval` is max($__interval + scrape interval, 4 x scrape interval); a multi-value or
include-all variable in a query becomes `(a|b)` with regex metacharacters escaped, a single value of such a
variable is regex-escaped, a plain single-value variable only has `\\` and `'` escaped. Query variables
(`label_values(metric, label)`) are resolved against Prometheus like Grafana's variable editor does.
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_DASHBOARD = Path("helm/embedstream/dashboards/embedstream.json")
_REGEX_SPECIAL = re.compile(r"([$^*{}\[\]'+?.()|])")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<match>.+?)\s*,\s*)?(?P<label>\w+)\s*\)\s*$")


class PrometheusError(RuntimeError):
    """A query Prometheus rejected or could not answer; carries the query."""


@dataclass(frozen=True)
class Target:
    panel: dict[str, Any]
    expr: str  # as written in the dashboard, variables unexpanded
    legend: str
    instant: bool  # a table panel's instant query


def load_dashboard(path: Path = DEFAULT_DASHBOARD) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"dashboard {path} not found (run from the repository or pass --dashboard)")
    return dict(json.loads(path.read_text()))


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, with the panels of collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def targets(dashboard: dict[str, Any]) -> list[Target]:
    out = []
    for panel in panels(dashboard):
        for t in panel.get("targets", []):
            if t.get("expr"):
                out.append(Target(panel, t["expr"], t.get("legendFormat", ""),
                                  bool(t.get("instant")) or t.get("format") == "table"))
    return out


class Prometheus:
    """The few endpoints of the Prometheus HTTP API the dashboard needs."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str, params: list[tuple[str, str]]) -> Any:
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=self.timeout) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as e:
            body = json.loads(e.read() or b"{}")
        except OSError as e:
            raise PrometheusError(f"{self.url}{path}: {e}") from e
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {dict(params)}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = [("query", expr)] + ([("time", f"{at:.3f}")] if at is not None else [])
        return list(self._get("/api/v1/query", params)["result"])

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        params = [("query", expr), ("start", f"{start:.3f}"), ("end", f"{end:.3f}"), ("step", f"{step:g}")]
        return list(self._get("/api/v1/query_range", params)["result"])

    def label_values(self, label: str, match: str | None = None) -> list[str]:
        params = [("match[]", match)] if match else []
        return sorted(self._get(f"/api/v1/label/{label}/values", params))


def regex_escape(value: str) -> str:
    """Grafana's prometheusSpecialRegexEscape: escaped for a regex inside a PromQL string literal."""
    return _REGEX_SPECIAL.sub(r"\\\\\1", value.replace("\\", "\\\\\\\\"))


def format_variable(variable: dict[str, Any], values: list[str]) -> str:
    """A variable's value as Grafana's Prometheus datasource writes it into a query."""
    if not (variable.get("multi") or variable.get("includeAll")):
        return (values[0] if values else "").replace("\\", "\\\\").replace("'", "\\\\'")
    escaped = [regex_escape(v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def resolve_variables(dashboard: dict[str, Any], prom: Prometheus,
                      chosen: dict[str, list[str]] | None = None) -> dict[str, str]:
    """Query variables in dashboard order, each from Prometheus with the earlier ones substituted.

    `chosen` picks values (as a user would); otherwise a multi/include-all variable takes All and a
    single-value one its first value, as Grafana does on first load. The datasource variable is skipped.
    """
    chosen = chosen or {}
    resolved: dict[str, str] = {}
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or var.get("definition", ""))
        m = _LABEL_VALUES.match(substitute(text, resolved))
        if not m:
            raise ValueError(f"variable {var['name']}: only label_values() queries are supported, not {text!r}")
        options = prom.label_values(m.group("label"), m.group("match"))
        values = chosen.get(var["name"]) or (options if var.get("includeAll") else options[:1])
        if not values:
            raise ValueError(f"variable {var['name']}: {text!r} found no values in Prometheus")
        resolved[var["name"]] = format_variable(var, values)
    return resolved


def panel_step(start: float, end: float, scrape_interval: float, width_points: int) -> float:
    """The step a panel `width_points` wide asks for over [start, end], never below the scrape interval."""
    return max(scrape_interval, math.ceil((end - start) / width_points))


def rate_interval(step: float, scrape_interval: float) -> float:
    interval = max(step, scrape_interval)
    return max(interval + scrape_interval, 4 * scrape_interval)


def duration(seconds: float) -> str:
    ms = math.ceil(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def substitute(expr: str, variables: dict[str, str], *, step: float = 15.0, scrape_interval: float = 15.0) -> str:
    """Replace `$name`, `${name}` and the interval built-ins; longest names first."""
    builtins = {
        "__rate_interval": duration(rate_interval(step, scrape_interval)),
        "__interval": duration(max(step, scrape_interval)),
        "__interval_ms": str(int(max(step, scrape_interval) * 1000)),
    }
    values = {**builtins, **variables}

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return values[name] if name in values else m.group(0)

    names = "|".join(sorted((re.escape(n) for n in values), key=len, reverse=True)) or "(?!)"
    return re.sub(r"\$\{(" + names + r")\}|\$(" + names + r")\b", repl, expr)


def has_data(result: list[dict[str, Any]]) -> bool:
    """At least one series with one sample that is a number (not NaN)."""
    for series in result:
        samples = series.get("values") or ([series["value"]] if "value" in series else [])
        if any(not math.isnan(float(v)) for _, v in samples):
            return True
    return False
