"""The Helm chart: lint, render, validate every core object, and check the contract with the worker."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from deploy_support import ALL_ON, CHART, KUBE_VERSION, Rendered

pytestmark = pytest.mark.deploy

CRD_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
# Kubernetes versions every core object must validate against: the one rendered for and the newest
# schema kubernetes-validate bundles.
VALIDATE_VERSIONS = sorted({KUBE_VERSION, kubernetes_validate.utils.latest_version()})

SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "all-on": {"files": [ALL_ON]},
    "hpa": {"sets": {"autoscaling.enabled": True, "autoscaling.targetMemoryUtilizationPercentage": 80,
                     "podDisruptionBudget.enabled": True, "podDisruptionBudget.minAvailable": 1}},
    "hub-model": {"sets": {"model.source": "hub", "model.hub.tokenSecret.name": "hf-token"}},
    "image-volume-model": {"sets": {"model.source": "imageVolume",
                                    "model.imageVolume.reference": "registry.example.com/models/gemma:1",
                                    "model.imageVolume.subPath": "model"}},
    "keda-existing-auth": {"sets": {"keda.enabled": True, "keda.authenticationRef": "kafka-auth",
                                    "keda.minReplicaCount": 0, "podMonitor.enabled": True}},
}


def scenario(render: Callable[..., Rendered], name: str) -> Rendered:
    s = SCENARIOS[name]
    return render(s.get("files", ()), s.get("sets"))


@pytest.fixture(params=sorted(SCENARIOS))
def rendered(request: pytest.FixtureRequest, render: Callable[..., Rendered]) -> Rendered:
    return scenario(render, request.param)


# --- lint and structure -------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, ALL_ON], ids=["default", "all-on"])
def test_helm_lint_strict(helm: str, values: Path | None) -> None:
    cmd = [helm, "lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION]
    if values:
        cmd += ["-f", str(values)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "embedstream"
    assert chart["type"] == "application"
    assert chart["appVersion"] == "0.1.0" and isinstance(chart["appVersion"], str)
    init = (CHART.parents[1] / "worker" / "__init__.py").read_text()
    match = re.search(r'__version__\s*=\s*"([^"]+)"', init)
    assert match and match.group(1) == chart["appVersion"], "appVersion must match worker.__version__"


def test_default_render_objects(render: Callable[..., Rendered]) -> None:
    r = render()
    assert r.kinds() == ["Deployment", "Service", "ServiceAccount"]
    assert r.deployment["spec"]["replicas"] == 1


def test_all_on_render_objects(render: Callable[..., Rendered]) -> None:
    r = render([ALL_ON])
    assert r.kinds() == sorted([
        "ConfigMap", "Deployment", "Job", "PodDisruptionBudget", "PodMonitor", "ScaledObject", "Service",
        "PrometheusRule", "ServiceAccount", "ServiceMonitor", "TriggerAuthentication",
    ])
    assert "replicas" not in r.deployment["spec"], "KEDA owns the replica count"
    assert r.maybe("HorizontalPodAutoscaler") is None


def test_every_core_object_validates(rendered: Rendered) -> None:
    checked = 0
    for doc in rendered.docs:
        if doc["apiVersion"].startswith(CRD_GROUPS):
            continue
        for version in VALIDATE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = "/".join(str(p) for p in e.path)
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for {version} at {path}: {e.message}")
        checked += 1
    assert checked >= 3


def test_names_and_labels(rendered: Rendered) -> None:
    for doc in rendered.docs:
        meta = doc["metadata"]
        assert len(meta["name"]) <= 63, meta["name"]
        labels = meta["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/instance"] == "es"
        assert labels["helm.sh/chart"] == "embedstream-0.1.0"


# --- selectors, ports, probes ---------------------------------------------------------------------------


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_selectors_match_pod_labels(rendered: Rendered) -> None:
    dep = rendered.deployment
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    selector = dep["spec"]["selector"]["matchLabels"]
    assert matches(selector, pod_labels)
    assert set(selector) == {"app.kubernetes.io/name", "app.kubernetes.io/instance"}, "selector is immutable"
    service = rendered.one("Service")
    assert service["spec"]["selector"] == selector
    for kind in ("PodDisruptionBudget", "PodMonitor"):
        obj = rendered.maybe(kind)
        if obj:
            assert matches(obj["spec"]["selector"]["matchLabels"], pod_labels), kind
    sm = rendered.maybe("ServiceMonitor")
    if sm:
        assert matches(sm["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    job = rendered.maybe("Job")
    if job:
        job_labels = job["spec"]["template"]["metadata"]["labels"]
        assert not matches(selector, job_labels), "the topic Job's pod must not join the worker's Service/PDB"


def metrics_port(r: Rendered) -> dict[str, Any]:
    ports = {p["name"]: p for p in r.container["ports"]}
    assert "metrics" in ports
    return ports["metrics"]


def resolve_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


def test_probes_target_the_metrics_port(rendered: Rendered) -> None:
    c = rendered.container
    port = metrics_port(rendered)["containerPort"]
    assert int(rendered.env_values()["EMBED_METRICS__PORT"]) == port
    expected = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}
    for probe, path in expected.items():
        get = c[probe]["httpGet"]
        assert get["path"] == path, probe
        assert resolve_port(c, get["port"]) == port, probe
    service_port = rendered.one("Service")["spec"]["ports"][0]
    assert resolve_port(c, service_port["targetPort"]) == port


def test_startup_probe_covers_the_default_model_and_a_hub_download(render: Callable[..., Rendered]) -> None:
    def allowed_s(r: Rendered) -> int:
        probe = r.container["startupProbe"]
        return int(probe["periodSeconds"]) * int(probe["failureThreshold"])

    image = allowed_s(render())
    # docs/benchmarks.md: about 20 s to ready on the default model with 2 processes on a loaded 2-core machine.
    assert 60 <= image <= 180
    assert allowed_s(render(sets={"model.source": "hub"})) == 4 * image


def test_metrics_port_moves_everything(render: Callable[..., Rendered]) -> None:
    r = render(sets={"worker.metricsPort": 9300, "service.port": 80})
    assert metrics_port(r)["containerPort"] == 9300
    assert r.env_values()["EMBED_METRICS__PORT"] == "9300"
    assert r.one("Service")["spec"]["ports"][0]["port"] == 80
    assert resolve_port(r.container, r.container["readinessProbe"]["httpGet"]["port"]) == 9300


@pytest.mark.parametrize("grace", [25, 90, 2.5])
def test_termination_grace_exceeds_worker_grace(render: Callable[..., Rendered], grace: float) -> None:
    r = render(sets={"worker.shutdownGraceSeconds": grace})
    worker_grace = float(r.env_values()["EMBED_SHUTDOWN_GRACE_S"])
    assert worker_grace == grace
    pod_grace = r.pod_spec["terminationGracePeriodSeconds"]
    assert isinstance(pod_grace, int)
    assert pod_grace > worker_grace + 5


def test_grace_in_every_scenario(rendered: Rendered) -> None:
    assert rendered.pod_spec["terminationGracePeriodSeconds"] > float(rendered.env_values()["EMBED_SHUTDOWN_GRACE_S"])


# --- security ---------------------------------------------------------------------------------------------


def assert_secure(pod: dict[str, Any], container: dict[str, Any]) -> None:
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["runAsUser"] == 10001
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    assert sc.get("privileged", False) is False
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]], "/tmp must be a writable emptyDir"
    for m in container["volumeMounts"]:
        source = volumes[m["name"]]
        if "emptyDir" not in source:
            assert m.get("readOnly") is True, f"{m['mountPath']} should be mounted read-only"
    assert not any("hostPath" in v for v in volumes.values())
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")


def test_security_context(rendered: Rendered) -> None:
    assert_secure(rendered.pod_spec, rendered.container)
    job = rendered.maybe("Job")
    if job:
        pod = job["spec"]["template"]["spec"]
        assert_secure(pod, pod["containers"][0])


def test_resources_set(rendered: Rendered) -> None:
    res = rendered.container["resources"]
    assert res["requests"]["cpu"] and res["requests"]["memory"] and res["limits"]["memory"]


# --- autoscaling ----------------------------------------------------------------------------------------


def test_hpa_and_keda_are_mutually_exclusive(render_error: Callable[..., str]) -> None:
    err = render_error(sets={"autoscaling.enabled": True, "keda.enabled": True})
    assert "mutually exclusive" in err and "autoscaling.enabled" in err and "keda.enabled" in err


def test_all_on_plus_hpa_fails(render_error: Callable[..., str]) -> None:
    assert "mutually exclusive" in render_error([ALL_ON], {"autoscaling.enabled": True})


def test_hpa(render: Callable[..., Rendered]) -> None:
    r = scenario(render, "hpa")
    hpa = r.one("HorizontalPodAutoscaler")
    assert r.maybe("ScaledObject") is None
    assert "replicas" not in r.deployment["spec"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": r.deployment["metadata"]["name"]}
    metrics = {m["resource"]["name"]: m["resource"]["target"] for m in hpa["spec"]["metrics"]}
    assert metrics["cpu"] == {"type": "Utilization", "averageUtilization": 70}
    assert metrics["memory"]["averageUtilization"] == 80
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert r.one("PodDisruptionBudget")["spec"] == {
        "minAvailable": 1, "selector": r.deployment["spec"]["selector"]}


def test_keda_scaled_object(render: Callable[..., Rendered]) -> None:
    r = render([ALL_ON])
    so = r.one("ScaledObject")
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    assert "replicas" not in r.deployment["spec"]  # KEDA owns the count: a helm upgrade must not reset it
    spec = so["spec"]
    assert spec["scaleTargetRef"]["name"] == r.deployment["metadata"]["name"]
    assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 12)
    assert isinstance(spec["pollingInterval"], int) and isinstance(spec["cooldownPeriod"], int)
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert all(isinstance(v, str) for v in meta.values()), "KEDA trigger metadata is map[string]string"
    env = r.env_values()
    assert meta["bootstrapServers"] == env["EMBED_KAFKA__BOOTSTRAP_SERVERS"]
    assert meta["consumerGroup"] == env["EMBED_KAFKA__GROUP_ID"]
    assert meta["topic"] == env["EMBED_INPUT_TOPIC"]
    assert meta["lagThreshold"] == "2000" and meta["activationLagThreshold"] == "10"
    assert meta["offsetResetPolicy"] in ("earliest", "latest")
    assert meta["allowIdleConsumers"] == "false"
    # The partition-count cap: topic creation in all-on makes 12 partitions, maxReplicaCount is 12.
    assert spec["maxReplicaCount"] <= int(r.env_values(r.one("Job")["spec"]["template"]["spec"]["containers"][0])
                                          ["TOPIC_PARTITIONS"])
    auth = r.one("TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    refs = {t["parameter"]: (t["name"], t["key"]) for t in auth["spec"]["secretTargetRef"]}
    assert refs["sasl"] == ("embedstream-keda-kafka", "sasl")
    assert refs["ca"] == ("embedstream-keda-kafka", "ca.crt")
    assert set(refs) <= {"sasl", "username", "password", "tls", "ca", "cert", "key", "keyPassword"}


def test_keda_existing_authentication(render: Callable[..., Rendered]) -> None:
    r = scenario(render, "keda-existing-auth")
    so = r.one("ScaledObject")
    assert so["spec"]["triggers"][0]["authenticationRef"] == {"name": "kafka-auth"}
    assert so["spec"]["minReplicaCount"] == 0
    assert r.maybe("TriggerAuthentication") is None
    assert r.maybe("HorizontalPodAutoscaler") is None


def test_keda_bootstrap_override(render: Callable[..., Rendered]) -> None:
    r = render(sets={"keda.enabled": True, "keda.bootstrapServers": "kafka-internal:9092"})
    assert r.one("ScaledObject")["spec"]["triggers"][0]["metadata"]["bootstrapServers"] == "kafka-internal:9092"


# --- monitoring -----------------------------------------------------------------------------------------


def test_service_monitor(render: Callable[..., Rendered]) -> None:
    r = render([ALL_ON])
    sm = r.one("ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["metadata"]["namespace"] == "embed"
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["embed"]}
    service_ports = {p["name"] for p in r.one("Service")["spec"]["ports"]}
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] in service_ports
    assert endpoint["path"] == "/metrics"
    assert re.fullmatch(r"\d+s", endpoint["interval"]) and re.fullmatch(r"\d+s", endpoint["scrapeTimeout"])


def test_pod_monitor(render: Callable[..., Rendered]) -> None:
    r = render([ALL_ON])
    pm = r.one("PodMonitor")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["metadata"]["labels"]["prometheus"] == "workload"
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in r.container["ports"]}


def test_dashboard_configmap(render: Callable[..., Rendered]) -> None:
    r = render([ALL_ON])
    cm = r.one("ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Embeddings"}
    (key,) = cm["data"]
    assert key.endswith(".json")
    shipped = (CHART / "dashboards" / "embedstream.json").read_text()
    assert json.loads(cm["data"][key]) == json.loads(shipped)
    assert "embedstream_consumer_lag_sum_messages" in cm["data"][key]


def test_dashboard_label_configurable(render: Callable[..., Rendered]) -> None:
    r = render(sets={"dashboard.enabled": True, "dashboard.label": "grafana_dash", "dashboard.labelValue": "yes",
                     "dashboard.namespace": "monitoring"})
    cm = r.one("ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dash"] == "yes"
    assert "grafana_dashboard" not in cm["metadata"]["labels"]
    assert cm["metadata"]["namespace"] == "monitoring"


# --- worker settings, secrets, model --------------------------------------------------------------------


def known_settings() -> set[str]:
    from worker.settings import describe_settings

    return {var for var, _, _ in describe_settings()}


def test_env_names_are_worker_settings(rendered: Rendered) -> None:
    known = known_settings()
    for name in rendered.env():
        if name.startswith("EMBED_KAFKA__CONFIG__"):
            assert re.fullmatch(r"EMBED_KAFKA__CONFIG__[A-Z0-9_]+", name), name
        elif name.startswith("EMBED_"):
            assert name in known, f"{name} is not a worker setting"
        else:
            assert name in {"HF_HOME", "HF_TOKEN"}, name


def test_rendered_env_loads_as_settings(rendered: Rendered, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker accepts every value the chart sets (run through worker.settings)."""
    from worker.settings import load_settings

    for name in [n for n in __import__("os").environ if n.startswith("EMBED_")]:
        monkeypatch.delenv(name)
    values = rendered.env_values()
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    if "EMBED_KAFKA__GROUP_INSTANCE_ID" in rendered.env():
        monkeypatch.setenv("EMBED_KAFKA__GROUP_INSTANCE_ID", "es-embedstream-7d9f-abcde")
    s = load_settings()
    assert s.kafka.bootstrap_servers == values["EMBED_KAFKA__BOOTSTRAP_SERVERS"]
    assert s.model.expected_dim == 768
    assert s.metrics.port == int(values["EMBED_METRICS__PORT"])
    assert s.shutdown_grace_s == float(values["EMBED_SHUTDOWN_GRACE_S"])


def test_secrets_tls_and_static_membership(render: Callable[..., Rendered]) -> None:
    r = render([ALL_ON])
    c = r.container
    assert {"secretRef": {"name": "embedstream-kafka-credentials"}} in c["envFrom"]
    env = r.env()
    assert env["EMBED_KAFKA__GROUP_INSTANCE_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    values = r.env_values()
    assert values["EMBED_KAFKA__CONFIG__SECURITY_PROTOCOL"] == "SASL_SSL"
    assert values["EMBED_KAFKA__CONFIG__SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert values["EMBED_KAFKA__CONFIG__ENABLE_SSL_CERTIFICATE_VERIFICATION"] == "true"
    assert not any("PASSWORD" in n for n in values), "passwords come from the Secret only"
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in r.pod_spec["volumes"]}
    tls = mounts["kafka-tls"]
    assert tls["readOnly"] is True and tls["mountPath"] == "/etc/embedstream/kafka-tls"
    assert volumes["kafka-tls"]["secret"]["secretName"] == "embedstream-kafka-ca"
    assert values["EMBED_KAFKA__CONFIG__SSL_CA_LOCATION"].startswith(tls["mountPath"] + "/")


def test_schema_registry_url_secret_and_ca(render: Callable[..., Rendered]) -> None:
    r = render([ALL_ON])
    values = r.env_values()
    assert values["EMBED_OUTPUT__FORMAT"] == "avro"
    assert values["EMBED_SCHEMA_REGISTRY__URL"] == "https://schema-registry.example.com:8081"
    assert values["EMBED_SCHEMA_REGISTRY__AUTO_REGISTER"] == "false"
    assert values["EMBED_SCHEMA_REGISTRY__SUBJECT_NAME_STRATEGY"] == "topic_record"
    assert values["EMBED_SCHEMA_REGISTRY__SSL_CA_LOCATION"] == "/etc/embedstream/registry-tls/ca.crt"
    assert {"secretRef": {"name": "embedstream-registry-credentials"}} in r.container["envFrom"]
    mounts = {m["name"]: m for m in r.container["volumeMounts"]}
    volumes = {v["name"]: v for v in r.pod_spec["volumes"]}
    assert mounts["registry-tls"] == {"name": "registry-tls", "mountPath": "/etc/embedstream/registry-tls",
                                      "readOnly": True}
    assert volumes["registry-tls"]["secret"]["secretName"] == "embedstream-registry-ca"
    default = render()
    assert not any(n.startswith("EMBED_SCHEMA_REGISTRY__") for n in default.env_values())
    assert "registry-tls" not in {v["name"] for v in default.pod_spec["volumes"]}


def test_avro_output_needs_a_registry_url(render_error: Callable[..., str]) -> None:
    err = render_error(sets={"worker.outputFormat": "protobuf"})
    assert "schemaRegistry" in err or "url" in err, err


def test_no_secret_or_static_membership_by_default(render: Callable[..., Rendered]) -> None:
    r = render()
    assert "envFrom" not in r.container
    assert "EMBED_KAFKA__GROUP_INSTANCE_ID" not in r.env()


def model_mount(r: Rendered) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    mounts = {m["name"]: m for m in r.container["volumeMounts"]}
    volumes = {v["name"]: v for v in r.pod_spec["volumes"]}
    return mounts.get("model"), volumes.get("model")


def test_model_baked_in_image(render: Callable[..., Rendered]) -> None:
    r = render()
    assert r.env_values()["EMBED_MODEL__PATH"] == "/opt/embedstream/model"
    assert model_mount(r) == (None, None)


def test_model_from_pvc(render: Callable[..., Rendered]) -> None:
    r = render([ALL_ON])
    mount, volume = model_mount(r)
    assert mount and volume
    assert volume["persistentVolumeClaim"] == {"claimName": "embedstream-models", "readOnly": True}
    assert mount["readOnly"] is True and mount["subPath"] == "gemma-deposium-768d"
    assert r.env_values()["EMBED_MODEL__PATH"] == mount["mountPath"]


def test_model_from_image_volume(render: Callable[..., Rendered]) -> None:
    r = scenario(render, "image-volume-model")
    mount, volume = model_mount(r)
    assert mount and volume
    assert volume["image"] == {"reference": "registry.example.com/models/gemma:1", "pullPolicy": "IfNotPresent"}
    assert mount["readOnly"] is True and mount["subPath"] == "model"
    assert r.env_values()["EMBED_MODEL__PATH"] == mount["mountPath"]


def test_model_from_hub(render: Callable[..., Rendered]) -> None:
    r = scenario(render, "hub-model")
    env = r.env()
    values = r.env_values()
    assert "EMBED_MODEL__PATH" not in env
    assert values["EMBED_MODEL__NAME"] == "tss-deposium/gemma-deposium-768d"
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf-token", "key": "token"}}
    mounts = {m["mountPath"]: m["name"] for m in r.container["volumeMounts"]}
    volumes = {v["name"]: v for v in r.pod_spec["volumes"]}
    cache = next(path for path in mounts if values["HF_HOME"].startswith(path + "/"))
    assert volumes[mounts[cache]]["emptyDir"]["sizeLimit"] == "2Gi"


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ({"model.source": "pvc"}, "model.pvc.claimName"),
        ({"model.source": "imageVolume"}, "model.imageVolume.reference"),
        ({"keda.enabled": True, "keda.triggerAuthentication.create": True}, "secretName"),
        ({"keda.enabled": True, "keda.authenticationRef": "a", "keda.triggerAuthentication.create": True,
          "keda.triggerAuthentication.secretName": "s"}, "mutually exclusive"),
    ],
)
def test_incomplete_values_fail_clearly(render_error: Callable[..., str], sets: dict[str, Any], message: str) -> None:
    assert message in render_error(sets=sets)


def test_topics_job(render: Callable[..., Rendered]) -> None:
    r = render([ALL_ON])
    job = r.one("Job")
    hooks = job["metadata"]["annotations"]
    assert set(hooks["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert "hook-succeeded" in hooks["helm.sh/hook-delete-policy"]
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (c,) = pod["containers"]
    assert c["image"] == r.container["image"]
    assert c["command"] == ["python", "-c"]
    compile(c["args"][0], "topics-job", "exec")
    job_env = r.env_values(c)
    worker_env = r.env_values()
    for name in ("EMBED_KAFKA__BOOTSTRAP_SERVERS", "EMBED_INPUT_TOPIC", "EMBED_OUTPUT_TOPIC", "EMBED_DLQ_TOPIC",
                 "EMBED_KAFKA__CONFIG__SECURITY_PROTOCOL"):
        assert job_env[name] == worker_env[name]
    assert c["envFrom"] == r.container["envFrom"]
    assert job_env["TOPIC_PARTITIONS"] == "12" and job_env["TOPIC_REPLICATION_FACTOR"] == "3"
    assert json.loads(job_env["TOPIC_CONFIG"]) == {"retention.ms": 604800000, "compression.type": "lz4"}


# --- values and schema ----------------------------------------------------------------------------------

FREE_FORM = {"config", "annotations", "podAnnotations", "podLabels", "additionalLabels", "secretKeys",
             "nodeSelector", "resources", "behavior", "advanced", "affinity"}


def test_values_keys_are_camel_case() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, child in node.items():
                assert re.fullmatch(r"[a-z][a-zA-Z0-9]*", key), f"{path}{key} is not camelCase"
                if key not in FREE_FORM:
                    walk(child, f"{path}{key}.")

    walk(values, "")


def test_values_yaml_matches_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator(schema).validate(values)
    all_on = yaml.safe_load(ALL_ON.read_text())
    # all-on is an override file: every key it sets must be known to the schema.
    errors = [e for e in jsonschema.Draft7Validator(schema).iter_errors(all_on) if e.validator != "required"]
    assert not errors, [e.message for e in errors]


@pytest.mark.parametrize(
    ("sets", "where"),
    [
        ({"replicaCount": "two"}, "replicaCount"),
        ({"replicaCount": -1}, "replicaCount"),
        ({"model.source": "s3"}, "source"),
        ({"worker.inputFormat": "xml"}, "inputFormat"),
        ({"worker.outputFormat": "f16"}, "outputFormat"),
        ({"worker.log.level": "TRACE"}, "level"),
        ({"image.pullPolicy": "Sometimes"}, "pullPolicy"),
        ({"service.port": 70000}, "port"),
        ({"worker.metricsPort": "9100"}, "metricsPort"),
        ({"worker.shutdownGraceSeconds": 0}, "shutdownGraceSeconds"),
        ({"keda.lagThreshold": 0}, "lagThreshold"),
        ({"keda.offsetResetPolicy": "middle"}, "offsetResetPolicy"),
        ({"autoscaling.enabled": "yes"}, "enabled"),
        ({"kafka.staticMembership": "true"}, "staticMembership"),
        ({"replicas": 3}, "replicas"),
        ({"kafka.bootstrapServers": ""}, "bootstrapServers"),
        ({"model.expectedDim": "768"}, "expectedDim"),
        ({"keda.triggerAuthentication.secretKeys": {"passwd": "x"}}, "passwd"),
    ],
)
def test_schema_rejects_bad_values(render_error: Callable[..., str], sets: dict[str, Any], where: str) -> None:
    err = render_error(sets=sets)
    assert "values don't meet the specifications of the schema" in err or "schema" in err.lower(), err
    assert where in err, err


def test_notes_render(helm: str, tmp_path: Path) -> None:
    """NOTES.txt renders (helm template skips it and a dry-run install needs a cluster: render a copy of
    the chart where the notes are a named template output through a ConfigMap)."""
    chart = tmp_path / "embedstream"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "_notes_check.tpl").write_text('{{- define "notesCheck" -}}' + notes + "{{- end }}")
    (chart / "templates" / "notes-check.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n"
        '  notes: {{ include "notesCheck" . | quote }}\n'
    )
    proc = subprocess.run(
        [helm, "template", "es", str(chart), "--namespace", "embed", "--kube-version", KUBE_VERSION,
         "-f", str(ALL_ON), "--show-only", "templates/notes-check.yaml"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    text = yaml.safe_load(proc.stdout)["data"]["notes"]
    assert "es-embedstream" in text and "source=pvc" in text and "KEDA" in text
    assert "<no value>" not in text
