"""`embedstream dashboard render`: the Grafana dashboard drawn as one PNG from a Prometheus, without Grafana.

Panels are laid out by their `gridPos` (24 columns), every query runs with its variables substituted as
Grafana would (see `queries`), time series are drawn from `query_range` with the panel's unit and legend,
stat panels show the last non-null value over a sparkline, table panels show an instant query's labels.
Collapsed rows are drawn expanded. Needs matplotlib (`pip install 'embedstream[dashboard]'`).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from worker.dashboard.options import add_source_arguments, source_from
from worker.dashboard.queries import (
    Prometheus,
    PrometheusError,
    has_data,
    load_dashboard,
    panel_step,
    panels,
    resolve_variables,
    substitute,
)

UNIT_H_INCH = 0.34  # one gridPos height unit (30 px in Grafana)
WIDTH_INCH = 22.0
PREFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))
BYTES = ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"))


def format_value(v: float, unit: str) -> str:
    """A number as Grafana shows it for the common units of this dashboard."""
    if math.isnan(v):
        return "NaN"
    if unit == "percentunit":
        return f"{v * 100:.3g}%"
    if unit in ("bytes", "Bps"):
        suffix = "/s" if unit == "Bps" else ""
        for size, name in BYTES:
            if abs(v) >= size:
                return f"{v / size:.3g} {name}{suffix}"
        return f"{v:.3g} B{suffix}"
    if unit == "s":
        if v != 0 and abs(v) < 1e-3:
            return f"{v * 1e6:.3g} µs"
        if v != 0 and abs(v) < 1:
            return f"{v * 1e3:.3g} ms"
        return f"{v:.3g} s" if abs(v) < 120 else f"{v / 60:.3g} min"
    text = next((f"{v / size:.3g}{p}" for size, p in PREFIXES if abs(v) >= size), f"{v:.3g}")
    if unit.startswith("suffix:"):
        return text + unit.split(':', 1)[1]  # Grafana appends the suffix as written
    return text


def legend(fmt: str, metric: dict[str, str]) -> str:
    if not fmt or fmt == "__auto":
        labels = ", ".join(f'{k}="{v}"' for k, v in sorted(metric.items()) if k != "__name__")
        return f"{metric.get('__name__', '')}{{{labels}}}" if labels or "__name__" in metric else "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt)


def value_text(v: float, unit: str, mappings: list[dict[str, Any]]) -> tuple[str, str | None]:
    for mapping in mappings:
        if mapping.get("type") == "value":
            option = mapping.get("options", {}).get(f"{v:g}")
            if option:
                return option.get("text", f"{v:g}"), option.get("color")
    return format_value(v, unit), None


class Renderer:
    def __init__(self, prom: Prometheus, variables: dict[str, str], start: float, end: float,
                 scrape_interval: float, width_points: int = 240) -> None:
        self.prom, self.variables, self.start, self.end = prom, variables, start, end
        self.scrape = scrape_interval
        self.step = panel_step(start, end, scrape_interval, width_points)
        self.empty: list[str] = []

    def expr(self, target: dict[str, Any]) -> str:
        return substitute(target["expr"], self.variables, step=self.step, scrape_interval=self.scrape)

    def series(self, panel: dict[str, Any]) -> list[tuple[str, list[float], list[float]]]:
        out = []
        for target in panel.get("targets", []):
            for s in self.prom.query_range(self.expr(target), self.start, self.end, self.step):
                xs = [float(t) for t, _ in s["values"]]
                ys = [float(v) for _, v in s["values"]]
                out.append((legend(target.get("legendFormat", ""), s["metric"]), xs, ys))
        return out

    def draw(self, fig: Any, panel: dict[str, Any], rect: list[float]) -> None:
        kind, title = panel["type"], panel.get("title", "")
        if kind == "row":
            fig.text(rect[0] + 0.002, rect[1] + rect[3] / 2, title, fontsize=13, weight="bold", va="center")
            return
        ax = fig.add_axes(rect)
        ax.set_title(title, fontsize=10, loc="left")
        defaults = panel.get("fieldConfig", {}).get("defaults", {})
        unit = defaults.get("unit", "short")
        try:
            drawn = {"timeseries": self.timeseries, "stat": self.stat, "table": self.table}[kind](
                ax, panel, unit, defaults.get("mappings", []))
        except PrometheusError as e:
            ax.text(0.5, 0.5, f"query error: {e}"[:200], ha="center", va="center", fontsize=7, wrap=True)
            drawn = False
        if not drawn:
            self.empty.append(title)
            ax.text(0.5, 0.5, defaults.get("noValue") or "No data", ha="center", va="center", fontsize=11, color="grey",
                    transform=ax.transAxes)

    def timeseries(self, ax: Any, panel: dict[str, Any], unit: str, _: list[dict[str, Any]]) -> bool:
        from matplotlib.ticker import FuncFormatter

        series = self.series(panel)
        for name, xs, ys in series:
            ax.plot([datetime.fromtimestamp(x, UTC) for x in xs], ys, linewidth=1.2, label=name)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: format_value(v, unit)))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=6, loc="upper left", ncol=2 if len(series) > 4 else 1, framealpha=0.6)
        import matplotlib.dates as mdates

        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        ax.set_xlim(datetime.fromtimestamp(self.start, UTC), datetime.fromtimestamp(self.end, UTC))
        return any(has_data([{"values": [[x, y] for x, y in zip(xs, ys, strict=True)]}]) for _, xs, ys in series)

    def stat(self, ax: Any, panel: dict[str, Any], unit: str, mappings: list[dict[str, Any]]) -> bool:
        series = [(n, xs, ys) for n, xs, ys in self.series(panel) if any(not math.isnan(y) for y in ys)]
        ax.set_xticks([])
        ax.set_yticks([])
        for n, (name, xs, ys) in enumerate(series):
            last = next(y for y in reversed(ys) if not math.isnan(y))
            text, color = value_text(last, unit, mappings)
            width = 1 / len(series)
            x0 = n * width
            spark = ax.inset_axes((x0 + 0.02, 0.05, width - 0.04, 0.35))
            spark.fill_between(xs, [0 if math.isnan(y) else y for y in ys], alpha=0.25)
            spark.set_axis_off()
            size = 22 if len(series) <= 3 else 12
            ax.text(x0 + width / 2, 0.6, text, ha="center", va="center", fontsize=size, weight="bold",
                    color=color or "#1f60c4", transform=ax.transAxes)
            ax.text(x0 + width / 2, 0.88, name, ha="center", va="center", fontsize=7, transform=ax.transAxes)
        return bool(series)

    def table(self, ax: Any, panel: dict[str, Any], unit: str, _: list[dict[str, Any]]) -> bool:
        excluded: set[str] = set()
        for t in panel.get("transformations", []):
            if t.get("id") == "organize":
                excluded |= {k for k, v in t["options"].get("excludeByName", {}).items() if v}
        rows: list[dict[str, str]] = []
        for target in panel.get("targets", []):
            for s in self.prom.query(self.expr(target), at=self.end):
                rows.append({**s["metric"], "Value": format_value(float(s["value"][1]), unit)})
        ax.set_axis_off()
        if not rows:
            return False
        columns = [c for c in dict.fromkeys(k for r in rows for k in r) if c not in excluded]
        table = ax.table(cellText=[[r.get(c, "") for c in columns] for r in rows], colLabels=columns,
                         loc="upper center", cellLoc="left")
        table.auto_set_font_size(False)
        table.set_fontsize(7)
        return True


def render(prom: Prometheus, dashboard: dict[str, Any], output: Path, start: float, end: float,
           scrape_interval: float, chosen: dict[str, list[str]] | None = None) -> list[str]:
    """Draw every panel into `output` (PNG); returns the titles of panels without data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variables = resolve_variables(dashboard, prom, chosen)
    renderer = Renderer(prom, variables, start, end, scrape_interval)
    laid = [p for p in panels(dashboard) if "gridPos" in p]
    header = 2
    total_h = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in laid) + header
    fig = plt.figure(figsize=(WIDTH_INCH, total_h * UNIT_H_INCH))
    when = f"{datetime.fromtimestamp(start, UTC):%Y-%m-%d %H:%M:%S} - {datetime.fromtimestamp(end, UTC):%H:%M:%S} UTC"
    fig.text(0.005, 1 - 0.9 / total_h, f"{dashboard.get('title', 'dashboard')}   ({when}; "
             + ", ".join(f"{k}={v}" for k, v in variables.items()) + ")", fontsize=15, weight="bold")
    pad_x, pad_y, left = 0.006, 0.7, 0.035  # room for titles, tick labels, and the left axis's labels
    for panel in laid:
        g = panel["gridPos"]
        row = panel["type"] == "row"
        tall = g["h"] - (0.0 if row else pad_y + 0.6)
        x0 = g["x"] / 24 + pad_x + (left if g["x"] == 0 and not row else 0.0)
        width = g["w"] / 24 - 2 * pad_x - (left if g["x"] == 0 and not row else 0.0)
        rect = [x0, 1 - (header + g["y"] + g["h"] - (0.0 if row else pad_y)) / total_h, width, tall / total_h]
        renderer.draw(fig, panel, rect)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=80)
    plt.close(fig)
    drawn = sum(1 for p in laid if p["type"] != "row")
    print(f"dashboard: {output}: panels drawn: {drawn}, empty: {len(renderer.empty)}"
          + (f" ({', '.join(renderer.empty)})" if renderer.empty else ""), file=sys.stderr)
    return renderer.empty


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_source_arguments(p)
    p.add_argument("-o", "--output", type=Path, default=Path("dashboard.png"))


def main(args: argparse.Namespace) -> int:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("dashboard render needs matplotlib: pip install 'embedstream[dashboard]'", file=sys.stderr)
        return 2
    src = source_from(args)
    try:
        render(src.prom, load_dashboard(src.dashboard), args.output, src.start, src.end, src.scrape_interval,
               src.chosen)
    except (PrometheusError, FileNotFoundError, ValueError) as e:
        print(f"dashboard render: {e}", file=sys.stderr)
        return 1
    return 0
