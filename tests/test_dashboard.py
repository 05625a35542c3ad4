"""The Grafana dashboard (and the monitoring doc) against the metrics the worker really exports.

Offline. Every PromQL expression in the dashboard is tokenized and parsed by a small recursive-descent
PromQL parser (syntax, function arity and argument types), the metric names it selects are extracted,
and each must be exported by `worker.metrics.Metrics` (process collectors included). A renamed metric,
a typo, a hard-coded datasource uid or a duplicated panel id fails here, not on someone's screen.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from worker.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "helm" / "embedstream" / "dashboards" / "embedstream.json"
DOC_CANDIDATES = (ROOT / "docs" / "monitoring.md", ROOT / "README.md")
RULES = ROOT / "helm" / "embedstream" / "rules" / "embedstream.rules.yml"

DS_REF = "${datasource}"
# Labels Prometheus attaches at scrape time: every pod is scraped with job, namespace and pod (and instance).
# `process` is added to every child's series by the supervisor of `run --processes K`.
SCRAPE_LABELS = frozenset({"job", "namespace", "pod", "instance", "process"})
# Series Prometheus synthesises per scrape target; not exported by the worker but legitimately queried.
PROMETHEUS_SYNTHETIC = {"up": frozenset()}
# Worker metric families deliberately left off the dashboard (keep empty unless there is a reason).
# a benchmark's figure (bench pipeline's per-stage CPU split); the stage latency panel covers the stages
NOT_ON_DASHBOARD: frozenset[str] = frozenset({"embedstream_stage_cpu_seconds_total"})
# Grafana's built-in variables that may appear in expressions.
GRAFANA_BUILTINS = frozenset({
    "__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms", "__from", "__to",
    "__dashboard", "__org", "__user",
})
PANEL_TYPES = frozenset({"row", "timeseries", "stat", "table"})
SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "untyped": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
    "stateset": ("",),
}


# --------------------------------------------------------------------------------------------------------------
# What the worker exports
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exported:
    series: dict[str, frozenset[str]]  # sample name -> label names it carries (besides scrape labels)
    families: dict[str, str]  # family name as written in docs (counter _total, info _info) -> type

    def labels_of(self, name: str) -> frozenset[str]:
        return self.series.get(name, PROMETHEUS_SYNTHETIC.get(name, frozenset()))

    def knows(self, name: str) -> bool:
        return name in self.series or name in PROMETHEUS_SYNTHETIC

    @property
    def all_labels(self) -> frozenset[str]:
        out: set[str] = set(SCRAPE_LABELS)
        for labels in self.series.values():
            out |= labels
        return frozenset(out)


def collect_exported() -> Exported:
    registry = CollectorRegistry()
    metrics = Metrics(registry, process_collectors=True)
    # The model info labels only exist once a model is loaded; load a fake one.
    metrics.set_model(name="m", dim=8, vocab_size=10, dtype="float32", table_bytes=320, fast_path="on")
    # A labelled family with no child yet (lag per partition, kafka errors by kind) exports no sample at all;
    # take its label names from the wrapper so its name and labels are still known.
    declared: dict[str, tuple[str, ...]] = {}
    for obj in vars(metrics).values():
        if isinstance(obj, MetricWrapperBase):
            for family in obj.describe():
                declared[family.name] = tuple(getattr(obj, "_labelnames", ()))
    series: dict[str, set[str]] = {}
    families: dict[str, str] = {}
    for family in registry.collect():
        suffixes = SAMPLE_SUFFIXES[family.type]
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
        for suffix in suffixes:
            labels = set(declared.get(family.name, ()))
            if suffix == "_bucket":
                labels.add("le")
            series.setdefault(family.name + suffix, set()).update(labels)
        doc_name = family.name + suffixes[0] if family.type in ("counter", "info") else family.name
        families[doc_name] = family.type
    return Exported({k: frozenset(v) for k, v in series.items()}, families)


# --------------------------------------------------------------------------------------------------------------
# PromQL: tokenizer and parser
# --------------------------------------------------------------------------------------------------------------


class PromQLError(ValueError):
    pass


_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|`[^`]*`)
  | (?P<var>\$\{[A-Za-z_]\w*(?::[\w]+)?\}|\$[A-Za-z_]\w*)
  | (?P<duration>(?:\d+(?:ms|[smhdwy]))+(?![\w.]))
  | (?P<number>(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?![\w.]))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_:]*)
  | (?P<op>==|!=|=~|!~|>=|<=|[-+*/%^<>=(){}\[\],@:])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class Token:
    kind: str  # string, var, duration, number, ident, op, eof
    text: str
    pos: int


def tokenize(expr: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN_RE.match(expr, pos)
        if not m:
            raise PromQLError(f"unexpected character {expr[pos]!r} at {pos}")
        kind = m.lastgroup
        assert kind is not None
        if kind not in ("ws", "comment"):
            tokens.append(Token(kind, m.group(), pos))
        pos = m.end()
    tokens.append(Token("eof", "", len(expr)))
    return tokens


AGGREGATIONS = {  # name -> types of the parameters before the vector
    "sum": "", "min": "", "max": "", "avg": "", "group": "", "stddev": "", "stdvar": "", "count": "",
    "count_values": "S", "bottomk": "s", "topk": "s", "quantile": "s", "limitk": "s", "limit_ratio": "s",
}
# name -> (argument types, how many are required, return type); s scalar, v vector, m range vector, S string.
# A trailing "*" means the last argument type may repeat.
_V1 = ("v", 1, "v")
_M1 = ("m", 1, "v")
FUNCTIONS: dict[str, tuple[str, int, str]] = {
    **dict.fromkeys(
        ["abs", "absent", "ceil", "exp", "floor", "ln", "log2", "log10", "sqrt", "sgn", "sort", "sort_desc",
         "timestamp", "histogram_count", "histogram_sum", "histogram_avg", "histogram_stddev", "histogram_stdvar",
         "acos", "acosh", "asin", "asinh", "atan", "atanh", "cos", "cosh", "sin", "sinh", "tan", "tanh", "deg", "rad"],
        _V1,
    ),
    **dict.fromkeys(
        ["rate", "irate", "increase", "delta", "idelta", "deriv", "changes", "resets", "absent_over_time",
         "present_over_time", "avg_over_time", "min_over_time", "max_over_time", "sum_over_time", "count_over_time",
         "last_over_time", "stddev_over_time", "stdvar_over_time", "mad_over_time"],
        _M1,
    ),
    **dict.fromkeys(
        ["day_of_month", "day_of_week", "day_of_year", "days_in_month", "hour", "minute", "month", "year"],
        ("v", 0, "v"),
    ),
    "quantile_over_time": ("sm", 2, "v"),
    "predict_linear": ("ms", 2, "v"),
    "holt_winters": ("mss", 3, "v"),
    "double_exponential_smoothing": ("mss", 3, "v"),
    "histogram_quantile": ("sv", 2, "v"),
    "histogram_fraction": ("ssv", 3, "v"),
    "clamp": ("vss", 3, "v"),
    "clamp_min": ("vs", 2, "v"),
    "clamp_max": ("vs", 2, "v"),
    "round": ("vs", 1, "v"),
    "scalar": ("v", 1, "s"),
    "vector": ("s", 1, "v"),
    "time": ("", 0, "s"),
    "pi": ("", 0, "s"),
    "label_replace": ("vSSSS", 5, "v"),
    "label_join": ("vSSS*", 3, "v"),
    "sort_by_label": ("vS*", 1, "v"),
    "sort_by_label_desc": ("vS*", 1, "v"),
}
BINARY_KEYWORDS = frozenset({"and", "or", "unless", "atan2"})
BINARY_OPS = frozenset({"+", "-", "*", "/", "%", "^", "==", "!=", ">", "<", ">=", "<="})
COMPARISONS = frozenset({"==", "!=", ">", "<", ">=", "<="})
GROUPING = frozenset({"by", "without"})
MATCHING = frozenset({"on", "ignoring"})
KEYWORDS = GROUPING | MATCHING | BINARY_KEYWORDS | {"group_left", "group_right", "bool", "offset"}
TYPE_NAMES = {"s": "a scalar", "v": "an instant vector", "m": "a range vector", "S": "a string"}


@dataclass(frozen=True)
class Selector:
    metric: str | None
    labels: tuple[str, ...]


@dataclass
class ParsedExpr:
    type: str  # s, v, m, S
    selectors: list[Selector] = field(default_factory=list)
    grouping_labels: set[str] = field(default_factory=set)
    variables: set[str] = field(default_factory=set)

    @property
    def metrics(self) -> set[str]:
        return {s.metric for s in self.selectors if s.metric is not None}


class _Parser:
    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.tokens = tokenize(expr)
        self.i = 0
        self.out = ParsedExpr("v")
        self.selector_span = (-1, -1)  # token span of the last vector selector
        for token in self.tokens:
            if token.kind == "var":
                self.out.variables.add(_var_name(token.text))
            elif token.kind == "string":
                self.out.variables |= set(_variables_in(token.text))

    # token helpers
    def peek(self, k: int = 0) -> Token:
        return self.tokens[min(self.i + k, len(self.tokens) - 1)]

    def next(self) -> Token:
        token = self.tokens[self.i]
        if token.kind != "eof":
            self.i += 1
        return token

    def is_op(self, text: str, k: int = 0) -> bool:
        token = self.peek(k)
        return token.kind == "op" and token.text == text

    def is_ident(self, *words: str, k: int = 0) -> bool:
        token = self.peek(k)
        return token.kind == "ident" and token.text in words

    def fail(self, message: str, token: Token | None = None) -> PromQLError:
        token = token or self.peek()
        shown = token.text or "end of expression"
        return PromQLError(f"{message} at {token.pos} (near {shown!r}) in {self.expr!r}")

    def expect_op(self, text: str) -> Token:
        if not self.is_op(text):
            raise self.fail(f"expected {text!r}")
        return self.next()

    # grammar
    def parse(self) -> ParsedExpr:
        if self.peek().kind == "eof":
            raise self.fail("empty expression")
        self.out.type = self.expression()
        if self.peek().kind != "eof":
            raise self.fail("unexpected token")
        return self.out

    def expression(self) -> str:
        left = self.unary()
        while True:
            token = self.peek()
            if token.kind == "op" and token.text in BINARY_OPS:
                op = self.next().text
            elif token.kind == "ident" and token.text in BINARY_KEYWORDS:
                op = self.next().text
            else:
                return left
            if self.is_ident("bool"):
                if op not in COMPARISONS:
                    raise self.fail("bool modifier on a non-comparison operator")
                self.next()
            if self.is_ident(*MATCHING):
                self.next()
                self.label_list()
                if self.is_ident("group_left", "group_right"):
                    self.next()
                    if self.is_op("("):
                        self.label_list()
            right = self.unary()
            for side in (left, right):
                if side in ("m", "S"):
                    raise self.fail(f"binary {op!r} on {TYPE_NAMES[side]}", token)
            if op in ("and", "or", "unless") and "s" in (left, right):
                raise self.fail(f"set operator {op!r} needs vectors on both sides", token)
            left = "s" if left == right == "s" else "v"

    def unary(self) -> str:
        if self.is_op("-") or self.is_op("+"):
            self.next()
            operand = self.unary()
            if operand not in ("s", "v"):
                raise self.fail(f"unary minus on {TYPE_NAMES[operand]}")
            return operand
        return self.postfix()

    def postfix(self) -> str:
        before = self.i
        kind = self.primary()
        # A range [5m] applies only to a bare vector selector ("x", "x{...}"), not to "sum(x)" or "(x)":
        # the primary just parsed must be exactly the last selector.
        plain_selector = self.selector_span == (before, self.i)
        # offset and @ modify a selector, a range selector or a subquery, nothing else.
        modifiable = plain_selector
        while True:
            if self.is_op("["):
                if kind == "m":
                    raise self.fail("range of a range vector")
                kind = self.range_or_subquery(kind, plain_selector=plain_selector)
                plain_selector = False
                modifiable = True
            elif self.is_ident("offset"):
                if not modifiable:
                    raise self.fail("offset must follow a selector or a subquery")
                self.next()
                if self.is_op("-"):
                    self.next()
                self.duration()
            elif self.is_op("@"):
                if not modifiable:
                    raise self.fail("@ must follow a selector or a subquery")
                self.next()
                if self.peek().kind in ("number", "var"):
                    self.next()
                elif self.is_ident("start", "end") and self.is_op("(", k=1) and self.is_op(")", k=2):
                    self.i += 3
                else:
                    raise self.fail("expected a timestamp, start() or end() after @")
            else:
                return kind

    def range_or_subquery(self, kind: str, *, plain_selector: bool) -> str:
        self.expect_op("[")
        self.duration()
        if self.is_op(":"):
            self.next()
            if not self.is_op("]"):
                self.duration()
            if kind != "v":
                raise self.fail(f"subquery over {TYPE_NAMES[kind]}")
        elif not plain_selector:
            raise self.fail("a range [..] needs a plain vector selector (or use a subquery [range:step])")
        self.expect_op("]")
        return "m"

    def duration(self) -> None:
        token = self.peek()
        if token.kind == "duration" or token.kind == "var":
            self.next()
        elif token.kind == "number" and re.fullmatch(r"\d+", token.text):
            self.next()  # bare seconds
        else:
            raise self.fail("expected a duration")

    def primary(self) -> str:
        token_index = self.i
        token = self.peek()
        if token.kind == "number":
            self.next()
            return "s"
        if token.kind == "var":  # a Grafana variable used as a value
            self.next()
            return "s"
        if token.kind == "string":
            self.next()
            return "S"
        if token.kind == "op" and token.text == "(":
            self.next()
            kind = self.expression()
            self.expect_op(")")
            return kind
        if token.kind == "op" and token.text == "{":
            self.selector(None)
            self.selector_span = (token_index, self.i)
            return "v"
        if token.kind == "ident":
            name = token.text
            if name in AGGREGATIONS and (self.is_op("(", k=1) or self.is_ident(*GROUPING, k=1)):
                return self.aggregation()
            if self.is_op("(", k=1):
                if name not in FUNCTIONS:
                    raise self.fail(f"unknown function {name!r}")
                return self.call()
            if name.lower() in ("inf", "nan"):
                self.next()
                return "s"
            if name in KEYWORDS or name in AGGREGATIONS:
                raise self.fail(f"unexpected keyword {name!r}")
            self.next()
            self.selector(name)
            self.selector_span = (token_index, self.i)
            return "v"
        raise self.fail("expected an expression")

    def aggregation(self) -> str:
        name = self.next().text
        grouped = False
        if self.is_ident(*GROUPING):
            self.next()
            self.label_list()
            grouped = True
        self.expect_op("(")
        for want in AGGREGATIONS[name]:
            self.argument(want, name)
            self.expect_op(",")
        self.argument("v", name)
        self.expect_op(")")
        if self.is_ident(*GROUPING):
            if grouped:
                raise self.fail("second grouping clause")
            self.next()
            self.label_list()
        return "v"

    def call(self) -> str:
        name = self.next().text
        types, required, returns = FUNCTIONS[name]
        repeat = types.endswith("*")
        types = types.rstrip("*")
        self.expect_op("(")
        count = 0
        if not self.is_op(")"):
            while True:
                if count < len(types):
                    want = types[count]
                elif repeat and types:
                    want = types[-1]
                else:
                    raise self.fail(f"too many arguments to {name}()")
                self.argument(want, name)
                count += 1
                if not self.is_op(","):
                    break
                self.next()
        self.expect_op(")")
        if count < required:
            raise self.fail(f"{name}() needs {required} argument(s), got {count}")
        return returns

    def argument(self, want: str, fn: str) -> None:
        token = self.peek()
        got = self.expression()
        if got != want:
            raise self.fail(f"{fn}() expects {TYPE_NAMES[want]} here, got {TYPE_NAMES[got]}", token)

    def label_list(self) -> None:
        self.expect_op("(")
        while not self.is_op(")"):
            token = self.next()
            if token.kind == "ident":
                self.out.grouping_labels.add(token.text)
            elif token.kind == "string":
                self.out.grouping_labels.add(_unquote(token.text))
            else:
                raise self.fail("expected a label name", token)
            if not self.is_op(","):
                break
            self.next()
        self.expect_op(")")

    def selector(self, name: str | None) -> None:
        labels: list[str] = []
        if self.is_op("{"):
            self.next()
            while not self.is_op("}"):
                label = self.next()
                quoted_alone = label.kind == "string" and (self.is_op(",") or self.is_op("}"))
                if quoted_alone and name is None:  # {"metric.name", ...}: the UTF-8 metric name syntax
                    name = _unquote(label.text)
                    if self.is_op(","):
                        self.next()
                    continue
                if label.kind == "string":  # quoted (UTF-8) label name
                    label_name = _unquote(label.text)
                elif label.kind == "ident":
                    label_name = label.text
                else:
                    raise self.fail("expected a label matcher", label)
                op = self.next()
                if op.kind != "op" or op.text not in ("=", "!=", "=~", "!~"):
                    raise self.fail("expected =, !=, =~ or !~", op)
                value = self.next()
                if value.kind != "string":
                    raise self.fail("expected a quoted label value", value)
                if label_name == "__name__" and op.text == "=":
                    name = _unquote(value.text)
                else:
                    labels.append(label_name)
                if not self.is_op(","):
                    break
                self.next()
            self.expect_op("}")
            if name is None and not labels:
                raise self.fail("empty selector {}")
        self.out.selectors.append(Selector(name, tuple(labels)))


def _unquote(text: str) -> str:
    return text[1:-1]


def _var_name(text: str) -> str:
    return text.strip("${}").split(":", 1)[0]


def _variables_in(text: str) -> list[str]:
    # "$1" in label_replace() is a regex back-reference, not a variable: names start with a letter or "_".
    pattern = r"\$\{([A-Za-z_]\w*)(?::\w+)?\}|\$([A-Za-z_]\w*)"
    return [m.group(1) or m.group(2) for m in re.finditer(pattern, text)]


def parse_promql(expr: str) -> ParsedExpr:
    """Parse a PromQL expression (with Grafana variables); raise PromQLError on any syntax or type error."""
    return _Parser(expr).parse()


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: no functions, keywords, labels, strings, durations or variables."""
    return parse_promql(expr).metrics


def expr_problems(expr: str, exported: Exported, variables: frozenset[str], *, where: str) -> list[str]:
    """Everything wrong with one expression: syntax/types, unknown metrics, labels, undefined variables."""
    try:
        parsed = parse_promql(expr)
    except PromQLError as e:
        return [f"{where}: {e}"]
    problems = []
    if parsed.type not in ("s", "v"):
        problems.append(f"{where}: evaluates to {TYPE_NAMES[parsed.type]}, Grafana needs a vector or scalar")
    for sel in parsed.selectors:
        if sel.metric is None:
            problems.append(f"{where}: selector without a metric name")
            continue
        if not exported.knows(sel.metric):
            problems.append(f"{where}: metric {sel.metric!r} is not exported by the worker")
            continue
        allowed = exported.labels_of(sel.metric) | SCRAPE_LABELS
        for label in sel.labels:
            if label not in allowed:
                problems.append(f"{where}: {sel.metric} has no label {label!r}")
    for label in parsed.grouping_labels - exported.all_labels:
        problems.append(f"{where}: grouping on label {label!r}, which no exported series carries")
    for var in parsed.variables - variables - GRAFANA_BUILTINS:
        problems.append(f"{where}: undefined variable ${var}")
    return problems


# --------------------------------------------------------------------------------------------------------------
# Dashboard checks
# --------------------------------------------------------------------------------------------------------------


def all_panels(dashboard: dict) -> list[dict]:
    """Every panel, including the ones nested in (collapsed) rows."""
    out = []
    for panel in dashboard.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []) or [])
    return out


def variable_query(var: dict) -> str:
    query = var.get("query")
    return query.get("query", "") if isinstance(query, dict) else str(query or "")


def _walk(node, path=""):
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}" if path else k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def datasource_problems(dashboard: dict) -> list[str]:
    """Every datasource reference is the ${datasource} variable; no uid anywhere but the dashboard's own."""
    problems = []
    for path, node in _walk(dashboard):
        if not isinstance(node, dict):
            continue
        if "datasource" in node:
            ds = node["datasource"]
            if isinstance(ds, dict):
                if ds.get("uid") != DS_REF:
                    problems.append(f"{path}.datasource.uid is {ds.get('uid')!r}: hard-coded datasource uid")
                if ds.get("type") != "prometheus":
                    problems.append(f"{path}.datasource.type is {ds.get('type')!r}, not prometheus")
            elif ds != DS_REF:
                problems.append(f"{path}.datasource is {ds!r}, not {DS_REF}")
        if path and not path.endswith(".datasource") and "uid" in node and node["uid"] != DS_REF:
            problems.append(f"{path}.uid is {node['uid']!r}: hard-coded uid")
    return problems


def layout_problems(dashboard: dict) -> list[str]:
    problems = []
    boxes = []
    for panel in all_panels(dashboard):
        g = panel.get("gridPos") or {}
        name = f"panel {panel.get('id')} {panel.get('title')!r}"
        if not all(isinstance(g.get(k), int) for k in "hwxy"):
            problems.append(f"{name}: gridPos needs integer h, w, x, y")
            continue
        if g["h"] < 1 or g["w"] < 1 or g["x"] < 0 or g["y"] < 0 or g["x"] + g["w"] > 24:
            problems.append(f"{name}: gridPos {g} outside the 24-column grid")
        for other_name, o in boxes:
            apart_x = g["x"] >= o["x"] + o["w"] or o["x"] >= g["x"] + g["w"]
            apart_y = g["y"] >= o["y"] + o["h"] or o["y"] >= g["y"] + g["h"]
            if not (apart_x or apart_y):
                problems.append(f"{name} overlaps {other_name}")
        boxes.append((name, g))
    # Nested panels belong after their row; a collapsed row must be the last one to keep y coordinates simple.
    top = dashboard.get("panels", [])
    for index, panel in enumerate(top):
        nested = panel.get("panels") or []
        if panel.get("type") == "row" and nested:
            if not panel.get("collapsed"):
                problems.append(f"row {panel.get('title')!r} is expanded but holds nested panels")
            if index != len(top) - 1:
                problems.append(f"collapsed row {panel.get('title')!r} with panels is not the last row")
            for child in nested:
                if child["gridPos"]["y"] <= panel["gridPos"]["y"]:
                    problems.append(f"panel {child.get('title')!r} sits above its row")
    return problems


def dashboard_problems(dashboard: dict, exported: Exported) -> list[str]:
    problems: list[str] = []
    if dashboard.get("uid") != "embedstream" or dashboard.get("title") != "embedstream":
        problems.append("dashboard uid and title must both be 'embedstream'")

    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    for required in ("datasource", "namespace", "job"):
        if required not in variables:
            problems.append(f"templating variable {required!r} missing")
    ds_var = variables.get("datasource", {})
    if ds_var and (ds_var.get("type") != "datasource" or ds_var.get("query") != "prometheus"):
        problems.append("variable 'datasource' must be of type datasource with query 'prometheus'")
    var_names = frozenset(variables)
    for name in ("namespace", "job"):
        var = variables.get(name)
        if not var:
            continue
        query = variable_query(var)
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", query, re.DOTALL)
        if var.get("type") != "query" or not m or m.group(2) != name:
            problems.append(f"variable {name!r} must be a label_values(<selector>, {name}) query, got {query!r}")
            continue
        problems += expr_problems(m.group(1), exported, var_names, where=f"variable {name}")

    ids = [p.get("id") for p in all_panels(dashboard)]
    for i in sorted({i for i in ids if ids.count(i) > 1}, key=str):
        problems.append(f"panel id {i!r} used {ids.count(i)} times")
    if any(not isinstance(i, int) for i in ids):
        problems.append("every panel needs an integer id")

    problems += datasource_problems(dashboard)
    problems += layout_problems(dashboard)

    for panel in all_panels(dashboard):
        name = f"panel {panel.get('id')} {panel.get('title')!r}"
        kind = panel.get("type")
        if kind not in PANEL_TYPES:
            problems.append(f"{name}: unexpected type {kind!r}")
        if kind == "row":
            continue
        if not panel.get("title") or not panel.get("description"):
            problems.append(f"{name}: needs a title and a description (the question it answers)")
        if kind in ("timeseries", "stat") and not panel.get("fieldConfig", {}).get("defaults", {}).get("unit"):
            problems.append(f"{name}: no unit")
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"{name}: no targets")
        ref_ids = [t.get("refId") for t in targets]
        if len(set(ref_ids)) != len(ref_ids) or None in ref_ids:
            problems.append(f"{name}: refIds must be present and unique")
        for target in targets:
            expr = target.get("expr")
            where = f"{name} target {target.get('refId')}"
            if not expr:
                problems.append(f"{where}: empty expr")
                continue
            problems += expr_problems(expr, exported, var_names, where=where)
            for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")):
                if label not in exported.all_labels | {"__name__"}:
                    problems.append(f"{where}: legend uses label {label!r}, which no exported series carries")
    return problems


def dashboard_metrics(dashboard: dict) -> set[str]:
    out: set[str] = set()
    for panel in all_panels(dashboard):
        for target in panel.get("targets") or []:
            out |= metric_names(target["expr"])
    return out


def family_of(sample_name: str, exported: Exported) -> str | None:
    for family, kind in exported.families.items():
        samples = {family + s for s in SAMPLE_SUFFIXES[kind]} if kind == "histogram" else {family}
        if sample_name in samples:
            return family
    return None


# --------------------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported() -> Exported:
    return collect_exported()


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_dashboard_is_valid_json_object():
    data = json.loads(DASHBOARD.read_text())  # raises on invalid JSON
    assert isinstance(data, dict)
    assert data["schemaVersion"] >= 36


def test_exported_set_includes_process_metrics_and_childless_families(exported):
    for name in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "embedstream_messages_consumed_total",
        "embedstream_end_to_end_latency_seconds_bucket",
        "embedstream_end_to_end_latency_seconds_count",
        "embedstream_build_info",
        "embedstream_model_info",
        "embedstream_consumer_lag_messages",  # no partition assigned yet: no samples, still exported
        "embedstream_kafka_errors_total",
    ):
        assert exported.knows(name), name
    assert {"topic", "partition"} <= exported.labels_of("embedstream_consumer_lag_messages")
    assert "le" in exported.labels_of("embedstream_stage_duration_seconds_bucket")
    assert not exported.knows("embedstream_messages_consumed")  # counters only as _total


def test_dashboard_has_no_problems(dashboard, exported):
    problems = dashboard_problems(dashboard, exported)
    assert not problems, "\n".join(problems)


def test_panel_ids_unique_including_nested(dashboard):
    panels = all_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    assert any(p.get("panels") for p in dashboard["panels"]), "expected at least one row with nested panels"
    assert len(panels) > len(dashboard["panels"])


def test_every_expression_parses_and_uses_exported_metrics(dashboard, exported):
    exprs = [t["expr"] for p in all_panels(dashboard) for t in p.get("targets") or []]
    assert len(exprs) >= 30
    for expr in exprs:
        parsed = parse_promql(expr)
        assert parsed.metrics, f"no metric in {expr!r}"
        unknown = {m for m in parsed.metrics if not exported.knows(m)}
        assert not unknown, f"{expr!r}: {unknown}"


def test_datasources_are_the_variable_only(dashboard):
    assert datasource_problems(dashboard) == []
    text = DASHBOARD.read_text()
    for m in re.finditer(r'"uid":\s*"([^"]*)"', text):
        assert m.group(1) in (DS_REF, "embedstream"), m.group(0)
    for panel in all_panels(dashboard):
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": DS_REF}
            for target in panel["targets"]:
                assert target["datasource"] == {"type": "prometheus", "uid": DS_REF}


def test_templating_variables(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "job"} <= set(variables)
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "job"):
        assert variable_query(variables[name]).startswith("label_values(")
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": DS_REF}


def test_every_selector_is_scoped_by_namespace_and_job(dashboard):
    for panel in all_panels(dashboard):
        for target in panel.get("targets") or []:
            for sel in parse_promql(target["expr"]).selectors:
                assert {"namespace", "job"} <= set(sel.labels), f"{panel['title']}: {target['expr']}"


def test_every_worker_metric_family_is_on_the_dashboard(dashboard, exported):
    used = {family_of(name, exported) for name in dashboard_metrics(dashboard)}
    worker_families = {f for f in exported.families if f.startswith("embedstream_")}
    missing = worker_families - used - NOT_ON_DASHBOARD
    assert not missing, f"worker metrics no panel shows: {sorted(missing)}"


def test_required_panels_present(dashboard):
    exprs = " ".join(t["expr"] for p in all_panels(dashboard) for t in p.get("targets") or [])
    for needle in (
        "histogram_quantile(0.5, sum by (le) (rate(embedstream_end_to_end_latency_seconds_bucket",
        "histogram_quantile(0.95, sum by (le) (rate(embedstream_end_to_end_latency_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(embedstream_end_to_end_latency_seconds_bucket",
        "histogram_quantile(0.99, sum by (le, stage) (rate(embedstream_stage_duration_seconds_bucket",
        "sum by (reason) (rate(embedstream_messages_dead_lettered_total",
        "max by (topic, partition) (embedstream_consumer_lag_messages",
        "sum by (pod) (rate(process_cpu_seconds_total",
        "count(count by (pod) (embedstream_build_info",
        "sum by (event) (increase(embedstream_rebalances_total",
    ):
        assert needle in exprs, needle
    types = {p["type"] for p in all_panels(dashboard)}
    assert {"row", "timeseries", "stat", "table"} <= types


def test_fast_path_hit_ratio_says_off_rather_than_no_data(dashboard):
    # With gigatoken (the image's default tokenizer) the fast path is off, hits and misses stay 0 and the ratio
    # is NaN for every pod: the k8s run (issue 21) showed this panel as the one empty panel of a healthy
    # deployment. It says so instead of "No data".
    panel = next(p for p in all_panels(dashboard) if p.get("title") == "Fast-path cache hit ratio")
    assert panel["fieldConfig"]["defaults"]["noValue"] == "fast path off"
    assert "gigatoken" in panel["description"]


# --- the checker itself must be able to fail -------------------------------------------------------------------


def test_checker_flags_unknown_metric(exported):
    assert metric_names("rate(embedstream_nope_total[5m])") == {"embedstream_nope_total"}
    problems = expr_problems("rate(embedstream_nope_total[5m])", exported, frozenset(), where="t")
    assert problems == ["t: metric 'embedstream_nope_total' is not exported by the worker"]
    assert expr_problems("rate(embedstream_messages_consumed_total[5m])", exported, frozenset(), where="t") == []


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'histogram_quantile(0.99, sum by (le, stage) (rate(embedstream_stage_duration_seconds_bucket'
            '{stage="encode", job=~"$job", namespace=~"${namespace}"}[$__rate_interval])))',
            {"embedstream_stage_duration_seconds_bucket"},
        ),
        ('label_replace(up, "dst", "$1", "src", "embedstream_fake_total")', {"up"}),
        ("sum without (pod, instance) (a_total) / on (pod) group_left (version) b_info", {"a_total", "b_info"}),
        ("sum(rate(x_total[5m] offset 1h)) > bool 0 and on() vector(1)", {"x_total"}),
        ("deriv(sum(lag)[15m:1m]) > 0 # a comment mentioning fake_metric", {"lag"}),
        ("max_over_time(g[1h30m] @ end()) + Inf - -NaN * 0x1f + 1e3", {"g"}),
        ('{__name__="by_name", job="j"}', {"by_name"}),
        ("time() - (max by (pod) (ts) > 0)", {"ts"}),
        ("count(up == 1) or vector(0)", {"up"}),
        ("topk(3, sum by (job) (m))", {"m"}),
        ("sum(m) by (job)", {"m"}),
        ("sum_over_time(sum_metric[5m]) + count_values(\"v\", rate_total)", {"sum_metric", "rate_total"}),
    ],
)
def test_extractor(expr, names):
    assert metric_names(expr) == names


@pytest.mark.parametrize(
    "expr",
    [
        "rate(embedstream_messages_consumed_total[5m]",  # unbalanced
        "rate(embedstream_messages_consumed_total)",  # rate of an instant vector
        "rat(embedstream_messages_consumed_total[5m])",  # unknown function
        "sum by (le (x)",
        "histogram_quantile(x_bucket)",  # arity
        "histogram_quantile(0.9, rate(x_bucket[5m]), 1)",
        "x{job=~$job}",  # unquoted label value
        "x{job}",
        "x[5m] + 1",  # range vector in a binary operation
        "sum(x)[5m]",  # range over a non-selector without a step
        "x y",
        "x[5min]",
        "sum by (job)",
        "",
        "x ! y",
        "1 and 2",
        "(x)[5m]",
        "histogram_quantile(0.9, x_bucket) offset 5m",
        "abs(1)",
        "x + bool 1",
        "{}",
    ],
)
def test_parser_rejects(expr):
    with pytest.raises(PromQLError):
        parse_promql(expr)


def test_checker_flags_bad_labels_and_variables(exported):
    vars_ = frozenset({"job", "namespace"})
    assert expr_problems('embedstream_ready{stage="x"}', exported, vars_, where="t") == [
        "t: embedstream_ready has no label 'stage'"
    ]
    assert expr_problems("sum by (nolabel) (embedstream_ready)", exported, vars_, where="t") == [
        "t: grouping on label 'nolabel', which no exported series carries"
    ]
    assert expr_problems('embedstream_ready{pod=~"$podd"}', exported, vars_, where="t") == [
        "t: undefined variable $podd"
    ]
    assert expr_problems("embedstream_consumer_lag_messages[5m]", exported, vars_, where="t") == [
        "t: evaluates to a range vector, Grafana needs a vector or scalar"
    ]


def test_checker_flags_broken_dashboards(dashboard, exported):
    def broken(mutate) -> list[str]:
        d = copy.deepcopy(dashboard)
        mutate(d)
        return dashboard_problems(d, exported)

    first = next(p for p in dashboard["panels"] if p["type"] != "row")
    nested_parent = next(i for i, p in enumerate(dashboard["panels"]) if p.get("panels"))

    def dup_nested_id(d):
        d["panels"][nested_parent]["panels"][0]["id"] = first["id"]

    def hard_coded_ds(d):
        d["panels"][1]["targets"][0]["datasource"] = {"type": "prometheus", "uid": "P1809F7CD0C75ACF3"}

    def string_ds(d):
        d["panels"][1]["datasource"] = "Prometheus"

    def unknown_metric(d):
        d["panels"][1]["targets"][0]["expr"] = 'sum(rate(embedstream_nope_total{job=~"$job"}[5m]))'

    def no_job_var(d):
        d["templating"]["list"] = [v for v in d["templating"]["list"] if v["name"] != "job"]

    def no_unit(d):
        del d["panels"][1]["fieldConfig"]["defaults"]["unit"]

    def overlap(d):
        d["panels"][2]["gridPos"] = dict(d["panels"][1]["gridPos"])

    def bad_var_query(d):
        next(v for v in d["templating"]["list"] if v["name"] == "namespace")["query"]["query"] = (
            "label_values(embedstream_gone_info, namespace)"
        )

    cases = {
        dup_nested_id: f"panel id {first['id']} used 2 times",
        hard_coded_ds: "hard-coded datasource uid",
        string_ds: "datasource is 'Prometheus'",
        unknown_metric: "'embedstream_nope_total' is not exported",
        no_job_var: "templating variable 'job' missing",
        no_unit: "no unit",
        overlap: "overlaps",
        bad_var_query: "'embedstream_gone_info' is not exported",
    }
    for mutate, expected in cases.items():
        problems = broken(mutate)
        assert any(expected in p for p in problems), (mutate.__name__, problems)


# --- the monitoring doc -----------------------------------------------------------------------------------------


def monitoring_doc() -> str:
    """docs/monitoring.md, or the README once the section has been merged there."""
    for path in DOC_CANDIDATES:
        if path.exists():
            text = path.read_text()
            if re.search(r"^#+\s*Monitoring\b", text, re.MULTILINE):
                return text
    pytest.fail(f"no Monitoring section in any of {[str(p.relative_to(ROOT)) for p in DOC_CANDIDATES]}")


def test_doc_lists_every_metric_and_panel(dashboard, exported):
    doc = monitoring_doc()
    process_metrics = ("process_cpu_seconds_total", "process_resident_memory_bytes")
    for family in exported.families:
        if family.startswith("embedstream_") or family in process_metrics:
            assert f"`{family}`" in doc, f"{family} not documented"
    for panel in all_panels(dashboard):
        if panel["type"] != "row":
            assert f"**{panel['title']}**" in doc, f"panel {panel['title']!r} not documented"


def test_alert_rules_use_exported_metrics_and_are_documented(exported):
    rules_file = yaml.safe_load(RULES.read_text())
    rules = [rule for group in rules_file["groups"] for rule in group["rules"]]
    assert len(rules) >= 4
    alerts = {r["alert"] for r in rules}
    joined = " ".join(r["expr"] for r in rules)
    for needle in (
        "embedstream_consumer_lag_sum_messages",
        "embedstream_messages_dead_lettered_total",
        "time() - embedstream_last_progress_timestamp_seconds",
        "embedstream_end_to_end_latency_seconds_bucket",
    ):
        assert needle in joined, needle
    for rule in rules:
        assert expr_problems(rule["expr"], exported, frozenset(), where=f"alert {rule['alert']}") == []
    assert len(alerts) == len(rules)
    doc = monitoring_doc()
    for alert in alerts:
        assert f"`{alert}`" in doc, f"alert {alert} not documented"
