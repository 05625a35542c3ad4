"""`embedstream dashboard check`: every query of the dashboard against a Prometheus, and which ones return nothing.

A panel that says "No data" is nearly always a scrape or labelling problem (a ServiceMonitor that selects no
Service, relabelling that drops `namespace` or `job`), not a worker problem; this names the panel and the
exact query Grafana would send, without Grafana and without matplotlib. Exit 1 when a query has no data and
its panel was not allowed to be empty (`--may-be-empty TITLE`).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.dashboard.queries import (
    DEFAULT_DASHBOARD,
    Prometheus,
    PrometheusError,
    has_data,
    load_dashboard,
    resolve_variables,
    substitute,
    targets,
)


@dataclass(frozen=True)
class QueryCheck:
    title: str  # the panel's
    expr: str  # as sent, variables substituted
    series: int
    has_data: bool


def check_queries(prom: Prometheus, dashboard: dict[str, Any], start: float, end: float, scrape_interval: float,
                  chosen: dict[str, list[str]] | None = None,
                  width_points: int = 240) -> tuple[dict[str, str], list[QueryCheck]]:
    """The variables as resolved, and every target's result over [start, end] (a table's at `end`).

    The step is the one a panel `width_points` wide would ask for, never below the scrape interval.
    """
    variables = resolve_variables(dashboard, prom, chosen)
    step = max(scrape_interval, math.ceil((end - start) / width_points))
    checks = []
    for target in targets(dashboard):
        expr = substitute(target.expr, variables, step=step, scrape_interval=scrape_interval)
        result = prom.query(expr, at=end) if target.instant else prom.query_range(expr, start, end, step)
        checks.append(QueryCheck(str(target.panel.get("title", "")), expr, len(result), has_data(result)))
    return variables, checks


def add_arguments(p: argparse.ArgumentParser) -> None:
    from worker.dashboard.render import parse_duration

    p.add_argument("--prometheus", required=True, help="Prometheus base URL, e.g. http://127.0.0.1:9090")
    p.add_argument("--dashboard", type=Path, default=DEFAULT_DASHBOARD,
                   help=f"default {DEFAULT_DASHBOARD}")
    p.add_argument("--start", type=float, help="unix time (default: --end minus --range)")
    p.add_argument("--end", type=float, help="unix time (default: now)")
    p.add_argument("--range", type=parse_duration, default=parse_duration("1h"), dest="span")
    p.add_argument("--scrape-interval", type=parse_duration, default=parse_duration("15s"),
                   help="the datasource's scrape interval, for $__rate_interval (default 15s)")
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                   help="pick a variable's value (repeat for several values); default as Grafana: All or first")
    p.add_argument("--may-be-empty", action="append", default=[], metavar="TITLE",
                   help="a panel whose queries may return no data (repeat); others must have data")


def main(args: argparse.Namespace) -> int:
    end = args.end or time.time()
    start = args.start or end - args.span
    chosen: dict[str, list[str]] = {}
    for item in args.var:
        name, _, value = item.partition("=")
        chosen.setdefault(name, []).append(value)
    try:
        variables, checks = check_queries(Prometheus(args.prometheus), load_dashboard(args.dashboard), start, end,
                                          args.scrape_interval, chosen)
    except (PrometheusError, FileNotFoundError, ValueError) as e:
        print(f"dashboard check: {e}", file=sys.stderr)
        return 1
    allowed = set(args.may_be_empty)
    with_data = sum(c.has_data for c in checks)
    failed = [c for c in checks if not c.has_data and c.title not in allowed]
    for c in checks:
        verdict = "data" if c.has_data else ("empty (allowed)" if c.title in allowed else "EMPTY")
        print(f"{verdict:16} {c.series:3} series  {c.title}: {c.expr}")
    print(f"dashboard check: {len(checks)} queries ({', '.join(f'{k}={v}' for k, v in variables.items())}): "
          f"{with_data} with data, {len(checks) - with_data - len(failed)} empty and allowed, {len(failed)} empty",
          file=sys.stderr)
    return 1 if failed else 0
