"""The command-line options `dashboard check` and `dashboard render` share: which Prometheus, which dashboard,
which time range, which variable values; parsed once into a `Source`."""

from __future__ import annotations

import argparse
import re
import time
from dataclasses import dataclass
from pathlib import Path

from worker.dashboard.queries import DEFAULT_DASHBOARD, Prometheus


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 15s, 1h)")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def add_source_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prometheus", required=True, help="Prometheus base URL, e.g. http://127.0.0.1:9090")
    p.add_argument("--dashboard", type=Path, default=DEFAULT_DASHBOARD, help=f"default {DEFAULT_DASHBOARD}")
    p.add_argument("--start", type=float, help="unix time (default: --end minus --range)")
    p.add_argument("--end", type=float, help="unix time (default: now)")
    p.add_argument("--range", type=parse_duration, default=parse_duration("1h"), dest="span")
    p.add_argument("--scrape-interval", type=parse_duration, default=parse_duration("15s"),
                   help="the datasource's scrape interval, for $__rate_interval (default 15s)")
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                   help="pick a variable's value (repeat for several values); default as Grafana: All or first")


@dataclass(frozen=True)
class Source:
    prom: Prometheus
    dashboard: Path
    start: float
    end: float
    scrape_interval: float
    chosen: dict[str, list[str]]  # variable name -> the values picked with --var


def source_from(args: argparse.Namespace) -> Source:
    end = args.end or time.time()
    chosen: dict[str, list[str]] = {}
    for item in args.var:
        name, _, value = item.partition("=")
        chosen.setdefault(name, []).append(value)
    return Source(Prometheus(args.prometheus), args.dashboard, args.start or end - args.span, end,
                  args.scrape_interval, chosen)
