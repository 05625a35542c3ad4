"""Security (issue 8): SASL/SCRAM-SHA-512 over TLS on a private broker, fail-fast on wrong credentials,
and no secret in logs, metrics, probe answers, --help or error messages."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry
from security_support import SaslBroker

from kafkatools import ROOT, WorkerProcess, collect, create_topics, free_port, http_get, json_messages, produce, unique
from worker.pipeline import EXIT_AUTH

USER = "embedstream-worker"
SECRET = f"S3cret-{uuid.uuid4().hex}"      # the right password
WRONG = f"Wr0ng-{uuid.uuid4().hex}"        # a wrong one, just as secret
SECRETS = (SECRET, WRONG)
N = 400
FAIL_FAST_S = 30.0


def leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


# ---- the broker and the runs (module scope: one broker, each run once) ----

@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory):
    for tool in ("java", "openssl"):
        if not shutil.which(tool):
            pytest.fail(f"the SASL_SSL tests run their own broker and certificates: install {tool}", pytrace=False)
    broker = SaslBroker(tmp_path_factory.mktemp("sasl-broker"), USER, SECRET)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


@dataclass
class Run:
    env: dict[str, str]
    log: str = ""
    exit_code: int | None = None
    seconds: float = 0.0
    scrapes: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    records: list = field(default_factory=list)


def topics_on(broker: SaslBroker) -> tuple[str, str, str]:
    names = (unique("in"), unique("out"), unique("dlq"))
    create_topics(broker.client_config(), names, 2)  # through the SASL_SSL listener
    return names


def base_env(inp: str, out: str, dlq: str, model: Path) -> dict[str, str]:
    return {"EMBED_KAFKA__GROUP_ID": unique("group"), "EMBED_INPUT_TOPIC": inp, "EMBED_OUTPUT_TOPIC": out,
            "EMBED_DLQ_TOPIC": dlq, "EMBED_MODEL__PATH": str(model), "EMBED_METRICS__STATISTICS_INTERVAL_MS": "500",
            "EMBED_SHUTDOWN_GRACE_S": "20"}


@pytest.fixture(scope="module")
def good_run(sasl_broker, small_model, tmp_path_factory) -> Run:
    """The worker on the SASL_SSL listener with the right password (one variable per property)."""
    inp, out, dlq = topics_on(sasl_broker)
    produce(sasl_broker.client_config(), inp, json_messages(N, keys=20, seed=8))
    run = Run(env={**base_env(inp, out, dlq, small_model), **sasl_broker.worker_env()})
    log_path = tmp_path_factory.mktemp("good-run") / "worker.log"
    worker = WorkerProcess(run.env, log_path)
    t0 = time.monotonic()
    try:
        worker.wait_ready(90)
        run.records = collect(sasl_broker.client_config(), out, N, timeout=120)
        deadline = time.monotonic() + 30
        while worker.metric("embedstream_messages_produced_total") != N and time.monotonic() < deadline:
            time.sleep(0.2)
        for path in ("/metrics", "/readyz", "/healthz"):
            run.scrapes[path] = [worker.get(path)]
    finally:
        run.exit_code = worker.stop()
        run.seconds = time.monotonic() - t0
        run.log = log_path.read_text(errors="replace")
    return run


def run_until_exit(env: dict[str, str], log_path: Path, timeout: float, processes: int = 1) -> Run:
    """Start a worker expected to stop by itself; scrape its probes while it lives."""
    run = Run(env=env, scrapes={"/metrics": [], "/readyz": [], "/healthz": []})
    worker = WorkerProcess(env, log_path, processes=processes)
    t0 = time.monotonic()
    try:
        while worker.proc.poll() is None and time.monotonic() - t0 < timeout:
            for path in run.scrapes:
                status, body = worker.get(path)
                if status:
                    run.scrapes[path].append((status, body))
            time.sleep(0.05)
        run.seconds = time.monotonic() - t0
        run.exit_code = worker.proc.poll()
    finally:
        if worker.proc.poll() is None:
            worker.kill()  # it hung: the test fails on exit_code below, with the log
        else:
            worker._log.close()
        run.log = log_path.read_text(errors="replace")
    return run


@pytest.fixture(scope="module")
def wrong_password_run(sasl_broker, small_model, tmp_path_factory) -> Run:
    """The worker with a wrong password (EMBED_KAFKA__CONFIG as one JSON object this time)."""
    inp, out, dlq = topics_on(sasl_broker)
    produce(sasl_broker.client_config(), inp, json_messages(20, seed=9))
    env = {**base_env(inp, out, dlq, small_model), **sasl_broker.worker_env(password=WRONG, as_json=True)}
    return run_until_exit(env, tmp_path_factory.mktemp("wrong-run") / "worker.log", FAIL_FAST_S + 30)


@pytest.fixture(scope="module")
def debug_run(sasl_broker, small_model, tmp_path_factory) -> Run:
    """A wrong password with every librdkafka debug context on (what an operator chasing a problem does)."""
    inp, out, dlq = topics_on(sasl_broker)
    env = {**base_env(inp, out, dlq, small_model), **sasl_broker.worker_env(password=WRONG),
           "EMBED_KAFKA__CONFIG__DEBUG": "all", "EMBED_LOG__LEVEL": "DEBUG"}
    return run_until_exit(env, tmp_path_factory.mktemp("debug-run") / "worker.log", FAIL_FAST_S + 30)


@pytest.fixture(scope="module")
def supervised_run(sasl_broker, small_model, tmp_path_factory) -> Run:
    """A wrong password under `run --processes 2`: the supervisor must not restart the children forever."""
    inp, out, dlq = topics_on(sasl_broker)
    env = {**base_env(inp, out, dlq, small_model), **sasl_broker.worker_env(password=WRONG)}
    return run_until_exit(env, tmp_path_factory.mktemp("supervised-run") / "worker.log", FAIL_FAST_S + 30,
                          processes=2)


def log_events(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                pass
    return out


# ---- 1. SASL_SSL end to end ----

@pytest.mark.integration
def test_the_worker_embeds_every_message_over_sasl_ssl(good_run, sasl_broker):
    assert good_run.exit_code == 0, good_run.log[-3000:]
    assert good_run.env["EMBED_KAFKA__BOOTSTRAP_SERVERS"] == sasl_broker.sasl_bootstrap
    assert good_run.env["EMBED_KAFKA__CONFIG__SECURITY_PROTOCOL"] == "SASL_SSL"
    consuming = [e for e in log_events(good_run.log) if e.get("msg") == "consuming"]
    assert consuming and consuming[0]["bootstrap"] == sasl_broker.sasl_bootstrap
    ids = sorted(orjson.loads(r.value)["id"] for r in good_run.records)
    expected = sorted(orjson.loads(v)["id"] for _, v, _ in json_messages(N, keys=20, seed=8))
    assert ids == expected  # every output arrived, once
    assert all(len(orjson.loads(r.value)["embedding"]) == 32 for r in good_run.records[:20])
    status, body = good_run.scrapes["/metrics"][0]
    assert status == 200 and f"embedstream_messages_produced_total {N}.0" in body
    assert good_run.scrapes["/readyz"][0][0] == 200


# ---- 2. wrong credentials fail fast ----

@pytest.mark.integration
def test_a_wrong_password_stops_the_worker_fast_with_exit_code_5(wrong_password_run):
    run = wrong_password_run
    assert run.exit_code == EXIT_AUTH == 5, f"exit {run.exit_code} after {run.seconds:.1f}s:\n{run.log[-3000:]}"
    assert run.seconds < FAIL_FAST_S
    errors = [e for e in log_events(run.log) if e.get("level") == "error" and "authentication" in e.get("msg", "")
              and e.get("logger") == "worker.pipeline"]
    assert errors, run.log[-3000:]
    assert "SASL authentication error" in errors[0]["error"]
    assert "invalid credentials" in errors[0]["error"]
    assert errors[0]["code"] == "authentication"
    stopped = [e for e in log_events(run.log) if e.get("msg") == "stopped"]
    assert stopped and stopped[-1]["exit_code"] == 5


@pytest.mark.integration
def test_a_wrong_password_stops_a_supervised_worker_too(supervised_run):
    run = supervised_run
    assert run.exit_code == EXIT_AUTH, f"exit {run.exit_code} after {run.seconds:.1f}s:\n{run.log[-3000:]}"
    assert run.seconds < FAIL_FAST_S
    events = log_events(run.log)
    assert any(e.get("code") == "authentication" and e.get("level") == "error" for e in events)
    assert not any(e.get("msg") == "process exited; restarting" for e in events), run.log[-3000:]


@pytest.mark.integration
def test_a_wrong_password_in_process_counts_the_error_and_probes_say_stopping(sasl_broker, small_model, monkeypatch,
                                                                              caplog, capfd):
    """The same failure in-process, so the probes can be read after it (the subprocess is gone by then)."""
    from worker import app
    from worker.settings import load_settings

    inp, out, dlq = topics_on(sasl_broker)
    env = {**base_env(inp, out, dlq, small_model), **sasl_broker.worker_env(password=WRONG),
           "EMBED_METRICS__HOST": "127.0.0.1", "EMBED_METRICS__PORT": str(free_port())}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    caplog.set_level(logging.INFO)
    servers = []
    real_serve = app.serve

    def capture(*args):
        servers.append(real_serve(*args))
        return servers[-1]

    monkeypatch.setattr(app, "serve", capture)
    settings = load_settings()
    pipeline, _, _ = app.build(settings, CollectorRegistry(), install_signals=False)
    try:
        t0 = time.monotonic()
        code = pipeline.run()
        assert code == EXIT_AUTH and time.monotonic() - t0 < FAIL_FAST_S
        port = servers[0].server_address[1]
        metrics, ready, live = (http_get(f"http://127.0.0.1:{port}{p}") for p in ("/metrics", "/readyz", "/healthz"))
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()
    assert metrics[0] == 200 and 'embedstream_kafka_errors_total{kind="authentication"}' in metrics[1]
    assert ready == (503, "stopping\n")
    assert live[0] == 200
    logged = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert "authentication, authorization or TLS verification failed" in logged
    out, err = capfd.readouterr()
    for text in (metrics[1], ready[1], live[1], logged, out, err, repr(settings), repr(pipeline.s)):
        assert not leaks(text)


@pytest.mark.integration
def test_a_certificate_the_worker_cannot_verify_fails_fast_with_a_clear_error(sasl_broker, small_model, tmp_path):
    """TLS trust failure (ssl.ca.location names a CA that did not sign the broker): librdkafka reports
    _SSL ("certificate verify failed"); no retry can fix that, so the worker exits 5 with the reason."""
    inp, out, dlq = topics_on(sasl_broker)
    env = {**base_env(inp, out, dlq, small_model), **sasl_broker.worker_env(ca=sasl_broker.certs.other_ca)}
    worker = WorkerProcess(env, tmp_path / "worker.log")
    t0 = time.monotonic()
    try:
        code = worker.proc.wait(30)
    finally:
        worker.kill()
    assert code == EXIT_AUTH and time.monotonic() - t0 < 30
    log = (tmp_path / "worker.log").read_text(errors="replace")
    errors = [e for e in log_events(log) if e.get("level") == "error" and e.get("code") == "ssl"
              and e.get("logger") == "worker.pipeline"]
    assert errors and "certificate verify failed" in errors[0]["error"], log[-3000:]
    assert not leaks(log)


# ---- 3. secrets never leak ----

@pytest.mark.integration
@pytest.mark.parametrize("which", ["good", "wrong", "wrong-debug", "wrong-supervised"])
def test_the_password_appears_in_no_log_metric_or_probe(which, request):
    run = request.getfixturevalue({"good": "good_run", "wrong": "wrong_password_run", "wrong-debug": "debug_run",
                                   "wrong-supervised": "supervised_run"}[which])
    # The runs happened, with the secret really in their environment:
    secret = SECRET if which == "good" else WRONG
    assert secret in json.dumps(run.env)
    assert run.exit_code == (0 if which == "good" else EXIT_AUTH), run.log[-2000:]
    if which == "wrong-debug":  # librdkafka printed its configuration (redacted) and the SASL exchange
        assert "sasl.password = [redacted]" in run.log and "SCRAM-SHA-512" in run.log
    assert len(run.log.splitlines()) >= 3 and any(e.get("msg") == "stopped" for e in log_events(run.log))
    scraped = [body for path in ("/metrics", "/readyz", "/healthz") for _, body in run.scrapes[path]]
    if which == "good":
        assert all(run.scrapes[p] for p in ("/metrics", "/readyz", "/healthz"))
        assert "embedstream_messages_produced_total" in run.scrapes["/metrics"][0][1]
    else:
        assert run.scrapes["/metrics"], "the wrong-password worker was never scraped while it lived"
    assert not leaks(run.log), "a secret is in the worker log"
    for body in scraped:
        assert not leaks(body), "a secret is in a probe or metrics answer"


def test_the_password_is_not_in_run_help():
    env = {**_base_os_env(), "EMBED_KAFKA__CONFIG__SASL_PASSWORD": SECRET,
           "EMBED_KAFKA__CONFIG": json.dumps({"sasl.password": WRONG})}
    r = subprocess.run([sys.executable, "-m", "worker", "run", "--help"], env=env,
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0 and "EMBED_KAFKA__CONFIG" in r.stdout
    assert not leaks(r.stdout + r.stderr)


def test_a_misspelled_secret_property_fails_without_printing_its_value(small_model, tmp_path):
    """librdkafka rejects an unknown property; the message names the property, never the value."""
    env = {**base_env("a", "b", "c", small_model), "EMBED_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9",
           "EMBED_KAFKA__CONFIG": json.dumps({"sasl.passwrd": SECRET}), "EMBED_METRICS__ENABLED": "false"}
    r = subprocess.run([sys.executable, "-m", "worker", "run"], env={**_base_os_env(), **env},
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode != 0
    assert "sasl.passwrd" in r.stdout + r.stderr
    assert not leaks(r.stdout + r.stderr)


def _base_os_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("EMBED_")}


# ---- settings (no broker) ----

SECRET_ENVS = [
    {"EMBED_KAFKA__CONFIG__SASL_PASSWORD": SECRET},
    {"EMBED_KAFKA__CONFIG": json.dumps({"sasl.password": SECRET, "sasl.username": "u"})},
    {"EMBED_KAFKA__CONSUMER_CONFIG": json.dumps({"ssl.key.password": SECRET})},
    {"EMBED_KAFKA__PRODUCER_CONFIG__SASL_OAUTHBEARER_CLIENT_SECRET": SECRET},
]


@pytest.mark.parametrize("env", SECRET_ENVS)
def test_settings_never_print_a_secret(env, monkeypatch):
    from worker.settings import load_settings

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = load_settings()
    assert SECRET in json.dumps(s.kafka.extra("consumer") | s.kafka.extra("producer"))  # it was read
    for text in (repr(s), str(s), repr(s.kafka), str(s.model_dump()), s.model_dump_json()):
        assert SECRET not in text


BROKEN = [
    ("EMBED_KAFKA__CONFIG", '{"sasl.password": "' + SECRET + '"'),     # JSON that does not parse
    ("EMBED_KAFKA__CONFIG", '["' + SECRET + '"]'),                     # not an object
    ("EMBED_KAFKA__CONFIG", SECRET),                                # not JSON at all
    ("EMBED_KAFKA__CONSUMER_CONFIG", '{"sasl.password": "' + SECRET + '", }'),
    ("EMBED_BATCH__MAX_MESSAGES", "0"),                             # an unrelated error, secret set elsewhere
    ("EMBED_KAFKA__AUTO_OFFSET_RESET", SECRET),                     # the secret pasted into the wrong variable
    ("EMBED_INPUT_TOPIC", ""),
]


@pytest.mark.parametrize(("var", "value"), BROKEN)
def test_settings_errors_never_contain_a_secret(var, value, monkeypatch):
    from worker.settings import SettingsError, load_settings

    monkeypatch.setenv("EMBED_KAFKA__CONFIG__SASL_PASSWORD", SECRET)
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    shown = "".join(traceback.format_exception(info.value))
    assert var in str(info.value) or "EMBED_" in str(info.value)
    assert SECRET not in shown


def test_a_settings_error_on_the_command_line_does_not_echo_the_secret(tmp_path):
    env = {**_base_os_env(), "EMBED_KAFKA__CONFIG": '{"sasl.password": "' + SECRET + '"'}
    r = subprocess.run([sys.executable, "-m", "worker", "run"], env=env, capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "invalid settings" in r.stderr
    assert SECRET not in r.stdout + r.stderr
