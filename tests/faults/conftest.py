"""The fault suite (issue 8) reuses the integration fixtures: `bootstrap`, `topics`, `worker_env`,
`private_broker`, plus `small_model` from tests/conftest.py. Sizes grow under EMBEDSTREAM_FAULTS_LONG=1.
At the end of the run the reconciliation of every fault test is printed as a table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
INTEGRATION = HERE.parent / "integration"
for _p in (str(INTEGRATION), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import faultkit  # noqa: E402

_spec = importlib.util.spec_from_file_location("embedstream_integration_fixtures", INTEGRATION / "conftest.py")
assert _spec and _spec.loader
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)

bootstrap = _fixtures.bootstrap
topics = _fixtures.topics
worker_env = _fixtures.worker_env
private_broker = _fixtures.private_broker


def pytest_terminal_summary(terminalreporter) -> None:
    if not faultkit.RESULTS:
        return
    tr = terminalreporter
    tr.section(f"fault suite reconciliation ({'long' if faultkit.LONG else 'CI'} sizes)")
    tr.write_line(f"{'test':<44} {'inputs':>9} {'outputs':>9} {'dlq':>6} {'missing':>7} {'dupes':>6} "
                  f"{'bound':>6} {'s':>6}  injected")
    for r in faultkit.RESULTS:
        bound = "" if r["bound"] is None else str(r["bound"])
        tr.write_line(f"{r['test']:<44} {r['inputs']:>9} {r['outputs']:>9} {r['dead_letters']:>6} "
                      f"{r['missing']:>7} {r['duplicates']:>6} {bound:>6} {r['seconds']:>6}  {r['injected']}")
