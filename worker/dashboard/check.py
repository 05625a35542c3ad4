"""`embedstream dashboard check`: every query of the dashboard against a Prometheus, and which ones return nothing.

A panel that says "No data" is nearly always a scrape or labelling problem (a ServiceMonitor that selects no
Service, relabelling that drops `namespace` or `job`), not a worker problem; this names the panel and the
exact query Grafana would send, without Grafana and without matplotlib. Exit 1 when a query has no data and
its panel was not allowed to be empty (`--may-be-empty TITLE`).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from worker.dashboard.options import add_source_arguments, source_from
from worker.dashboard.queries import (
    Prometheus,
    PrometheusError,
    has_data,
    load_dashboard,
    panel_step,
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
    step = panel_step(start, end, scrape_interval, width_points)
    checks = []
    for target in targets(dashboard):
        expr = substitute(target.expr, variables, step=step, scrape_interval=scrape_interval)
        result = prom.query(expr, at=end) if target.instant else prom.query_range(expr, start, end, step)
        checks.append(QueryCheck(str(target.panel.get("title", "")), expr, len(result), has_data(result)))
    return variables, checks


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_source_arguments(p)
    p.add_argument("--may-be-empty", action="append", default=[], metavar="TITLE",
                   help="a panel whose queries may return no data (repeat); others must have data")


def main(args: argparse.Namespace) -> int:
    src = source_from(args)
    try:
        variables, checks = check_queries(src.prom, load_dashboard(src.dashboard), src.start, src.end,
                                          src.scrape_interval, src.chosen)
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
