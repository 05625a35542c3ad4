"""Offline: the dashboard's variables are substituted into PromQL the way Grafana's Prometheus datasource does."""

from __future__ import annotations

import pytest

from worker.dashboard.queries import format_variable, has_data, rate_interval, regex_escape, substitute
from worker.dashboard.render import format_value, legend


def test_rate_interval_follows_grafana() -> None:
    # max($__interval + scrape interval, 4 x scrape interval), $__interval never below the scrape interval
    assert rate_interval(step=15, scrape_interval=15) == 60
    assert rate_interval(step=60, scrape_interval=15) == 75
    assert rate_interval(step=1, scrape_interval=1) == 4
    assert rate_interval(step=0.5, scrape_interval=1) == 4


def test_variable_formats() -> None:
    multi = {"multi": True, "includeAll": True}
    assert format_variable(multi, ["a", "b.c"]) == r"(a|b\\.c)"
    assert format_variable(multi, ["a.b"]) == r"a\\.b"
    assert format_variable({"multi": False}, ["it's"]) == r"it\\'s"
    assert regex_escape("x\\y") == r"x\\\\y"


def test_substitute_longest_name_first_and_both_syntaxes() -> None:
    expr = 'rate(m{job=~"$job", ns="${namespace}"}[$__rate_interval]) / $__interval_ms + $__interval'
    out = substitute(expr, {"job": "j", "namespace": "n"}, step=30, scrape_interval=15)
    assert out == 'rate(m{job=~"j", ns="n"}[60s]) / 30000 + 30s'
    assert substitute("$unknown", {}) == "$unknown"


def test_has_data_ignores_nan() -> None:
    assert not has_data([])
    assert not has_data([{"values": [[1, "NaN"], [2, "NaN"]]}])
    assert has_data([{"values": [[1, "NaN"], [2, "0"]]}])
    assert has_data([{"value": [1, "3"]}])


@pytest.mark.parametrize(("value", "unit", "text"), [
    (0.0005, "s", "500 µs"), (0.25, "s", "250 ms"), (3, "s", "3 s"), (0.975, "percentunit", "97.5%"),
    (3 * 2**20, "bytes", "3 MiB"), (1500, "Bps", "1.46 KiB/s"), (2500, "suffix: msg/s", "2.5k msg/s"),
    (12, "short", "12"),
])
def test_units(value: float, unit: str, text: str) -> None:
    assert format_value(value, unit) == text


def test_legend() -> None:
    assert legend("{{pod}} p95", {"pod": "a"}) == "a p95"
    assert legend("__auto", {"__name__": "m", "x": "1"}) == 'm{x="1"}'


def test_check_and_render_share_their_source_options() -> None:
    import argparse

    from worker.cli import build_parser
    from worker.dashboard.options import parse_duration, source_from

    for command in ("check", "render"):
        args = build_parser().parse_args(["dashboard", command, "--prometheus", "http://p:9090", "--end", "1000",
                                          "--range", "10m", "--scrape-interval", "2s", "--var", "job=a",
                                          "--var", "job=b", "--var", "namespace=n"])
        src = source_from(args)
        assert (src.prom.url, src.start, src.end, src.scrape_interval) == ("http://p:9090", 400.0, 1000.0, 2.0)
        assert src.chosen == {"job": ["a", "b"], "namespace": ["n"]}
    assert parse_duration("250ms") == 0.25
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration("10 minutes")
