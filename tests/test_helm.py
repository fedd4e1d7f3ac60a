"""The Helm chart, rendered and linted by the real Helm engine.

helm-sdkpy ships Helm's Go library. Its ``Lint`` needs no cluster; rendering goes
through ``Install`` (the binding exposes no ``template``/dry-run), pointed at a tiny
in-process fake Kubernetes API that answers discovery and accepts every object, with
the release record (a protobuf Secret) accepted and dropped. So every
manifest below is what ``helm install`` would send, after Helm checked the values
against values.schema.json and the cluster version against ``kubeVersion``. Each
manifest is then validated against the Kubernetes OpenAPI schemas (strict: unknown
fields fail) with kubernetes-validate.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import helm_sdkpy
import kubernetes_validate
import pytest
import yaml

from proxy.tenants import parse_policy_file

CHART = Path(__file__).resolve().parent.parent / "helm" / "warden"
K8S_VERSIONS = ("1.29", kubernetes_validate.latest_version())
CRD_KINDS = {"ServiceMonitor"}  # not in the Kubernetes schemas; checked by hand below

# --- A fake API server: discovery + accept everything -----------------------------------

RESOURCES: dict[tuple[str, str], list[tuple[str, str]]] = {
    ("", "v1"): [
        ("configmaps", "ConfigMap"),
        ("services", "Service"),
        ("secrets", "Secret"),
        ("serviceaccounts", "ServiceAccount"),
        ("pods", "Pod"),
    ],
    ("apps", "v1"): [("deployments", "Deployment")],
    ("autoscaling", "v2"): [("horizontalpodautoscalers", "HorizontalPodAutoscaler")],
    ("policy", "v1"): [("poddisruptionbudgets", "PodDisruptionBudget")],
    ("networking.k8s.io", "v1"): [("networkpolicies", "NetworkPolicy")],
    ("monitoring.coreos.com", "v1"): [("servicemonitors", "ServiceMonitor")],
}


class FakeKube(BaseHTTPRequestHandler):
    kube_version = "33"

    def _send(self, status: int, obj: Any) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _resource_list(self, group: str, version: str) -> dict[str, Any]:
        verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": [
                {"name": n, "singularName": "", "namespaced": True, "kind": k, "verbs": verbs}
                for n, k in RESOURCES[(group, version)]
            ],
        }

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?")[0]
        parts = path.strip("/").split("/")
        if path == "/version":
            minor = self.kube_version
            return self._send(200, {"major": "1", "minor": minor, "gitVersion": f"v1.{minor}.0"})
        if path == "/api":
            return self._send(200, {"kind": "APIVersions", "versions": ["v1"]})
        if path == "/apis":
            groups = [
                {
                    "name": g,
                    "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
                    "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v},
                }
                for g, v in RESOURCES
                if g
            ]
            return self._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        if path == "/api/v1":
            return self._send(200, self._resource_list("", "v1"))
        if len(parts) == 3 and parts[0] == "apis" and (parts[1], parts[2]) in RESOURCES:
            return self._send(200, self._resource_list(parts[1], parts[2]))
        if parts[-1] == "secrets" or "secrets" in parts[-2:]:
            return self._release_storage(parts)
        if self.command == "POST":
            return self._send(201, json.loads(body))
        self._send(
            404,
            {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "reason": "NotFound",
                "code": 404,
                "message": "not found",
            },
        )

    def _release_storage(self, parts: list[str]) -> None:
        """Helm keeps the release record in a Secret, sent as protobuf: pretend to store
        it (nothing reads it back in one install)."""
        if self.command == "GET" and parts[-1] == "secrets":
            return self._send(
                200, {"kind": "SecretList", "apiVersion": "v1", "metadata": {}, "items": []}
            )
        if self.command == "GET":
            return self._send(
                404,
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "reason": "NotFound",
                    "code": 404,
                },
            )
        name = parts[-1] if parts[-1] != "secrets" else "release"
        return self._send(
            201 if self.command == "POST" else 200,
            {
                "kind": "Secret",
                "apiVersion": "v1",
                "type": "helm.sh/release.v1",
                "metadata": {"name": name, "namespace": parts[3]},
            },
        )

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:
        return None


def kubeconfig(port: int) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
            "users": [{"name": "fake", "user": {"token": "fake"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        }
    )


@pytest.fixture(scope="module")
def kube() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeKube)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


class Rendered:
    def __init__(self, result: dict[str, Any]) -> None:
        self.notes: str = result["info"].get("notes", "")
        self.manifests = [m for m in yaml.safe_load_all(result["manifest"]) if m]

    def kinds(self) -> list[str]:
        return sorted(m["kind"] for m in self.manifests)

    def one(self, kind: str, name_suffix: str = "") -> dict[str, Any]:
        found = [
            m
            for m in self.manifests
            if m["kind"] == kind and m["metadata"]["name"].endswith(name_suffix)
        ]
        assert len(found) == 1, f"{kind}*{name_suffix}: {[m['metadata']['name'] for m in found]}"
        return found[0]


_release = iter(range(10**6))


async def render(
    kube: ThreadingHTTPServer, values: dict[str, Any] | None = None, chart: Path = CHART
) -> Rendered:
    config = helm_sdkpy.Configuration(namespace="agents", kubeconfig=kubeconfig(kube.server_port))
    result = await helm_sdkpy.Install(config).run(
        f"rel{next(_release)}", str(chart), values=values, wait=False
    )
    rendered = Rendered(result)
    for manifest in rendered.manifests:
        if manifest["kind"] in CRD_KINDS:
            continue
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(manifest, version, strict=True)
    return rendered


def container(pod_spec: dict[str, Any], name: str = "warden") -> dict[str, Any]:
    every = pod_spec.get("initContainers", []) + pod_spec["containers"]
    return next(c for c in every if c["name"] == name)


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


# --- Lint --------------------------------------------------------------------------------


async def lint(chart: Path) -> list[dict[str, Any]]:
    config = helm_sdkpy.Configuration(namespace="default")
    result = await helm_sdkpy.Lint(config).run(str(chart))
    assert result["TotalChartsLinted"] == 1
    return list(result["Messages"] or [])


async def test_lint_has_no_warnings_or_errors() -> None:
    # Helm's severities: 1 info, 2 warning, 3 error.
    messages = await lint(CHART)
    assert [m for m in messages if m["Severity"] >= 2] == []


async def test_lint_catches_a_broken_template(tmp_path: Path) -> None:
    broken = tmp_path / "warden"
    shutil.copytree(CHART, broken)
    with (broken / "templates" / "service.yaml").open("a") as f:
        f.write("{{ .Values.port | nosuchfunction }}\n")
    assert any(m["Severity"] == 3 for m in await lint(broken))


# --- Standalone --------------------------------------------------------------------------


async def test_standalone_defaults(kube: ThreadingHTTPServer, tmp_path: Path) -> None:
    r = await render(kube)
    assert r.kinds() == [
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ]
    dep = r.one("Deployment")
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    c = container(pod)

    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "warden-http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "warden-http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "warden-http"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {
        "warden-http": 8080,
        "warden-metrics": 9090,
    }

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["runAsNonRoot"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]

    env = env_of(c)
    assert env["WARDEN_PORT"] == "8080" and env["WARDEN_METRICS_PORT"] == "9090"
    assert env["WARDEN_POLICIES_DIR"] == "/etc/warden/policies"
    assert env["WARDEN_POLICY_RELOAD_INTERVAL_S"] == "1"
    assert env["WARDEN_LOG_LEVEL"] == "info" and env["WARDEN_ACCESS_LOG"] == "true"
    assert "WARDEN_REDIS_URL" not in env
    assert all(k.startswith("WARDEN_") for k in env)

    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    # A directory mount: subPath mounts never see ConfigMap updates (no hot reload).
    assert mounts["/etc/warden/policies"] == {
        "name": "warden-policies",
        "mountPath": "/etc/warden/policies",
        "readOnly": True,
    }
    assert mounts["/tmp"]["name"] == "warden-tmp"
    volumes = {v["name"]: v for v in pod["volumes"]}
    cm = r.one("ConfigMap", "-policies")
    assert volumes["warden-policies"]["configMap"]["name"] == cm["metadata"]["name"]
    assert "emptyDir" in volumes["warden-tmp"]

    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9090"
    assert not any(k.startswith("checksum/") for k in annotations)  # reload, not restart
    term = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert c["lifecycle"]["preStop"]["exec"]["command"][0] == "python"

    svc = r.one("Service")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert {p["name"]: p["targetPort"] for p in svc["spec"]["ports"]} == {
        "http": "warden-http",
        "metrics": "warden-metrics",
    }
    pdb = r.one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]

    # The policies the chart ships are policies Warden accepts.
    for name, text in cm["data"].items():
        (tmp_path / name).write_text(text)
        assert parse_policy_file(tmp_path / name).tenant == "example"
    assert "base_url" in r.notes and ".agents.svc.cluster.local:8080/v1" in r.notes
    assert "vk-example-change-me" in r.notes  # the public example key is called out


async def test_standalone_with_every_option(kube: ThreadingHTTPServer) -> None:
    values = {
        "policies": {"existingConfigMap": "team-policies"},
        "credentials": {
            "env": [{"name": "OPENAI_API_KEY", "secretName": "llm-keys", "secretKey": "openai"}],
            "envFromSecrets": ["azure-keys"],
            "files": [{"secretName": "anthropic", "mountPath": "/var/run/secrets/anthropic"}],
        },
        "redis": {"existingSecret": "redis-auth"},
        "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 9},
        "podAntiAffinity": "hard",
        "settings": {"store_failure_mode": "closed", "shutdown_grace_s": 20},
        "extraEnv": [{"name": "TZ", "value": "UTC"}],
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
        "grafana": {"dashboard": {"enabled": True}},
        "networkPolicy": {
            "enabled": True,
            "ingressFrom": [{"namespaceSelector": {"matchLabels": {"team": "agents"}}}],
            "egress": {
                "providers": [
                    {"cidr": "203.0.113.0/24"},
                    {"cidr": "198.51.100.7/32", "ports": [443, 8443]},
                ],
                "redis": {"cidr": "10.20.0.5/32", "port": 6380},
            },
        },
    }
    r = await render(kube, values)
    assert r.kinds() == [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ]
    dep = r.one("Deployment")
    assert "replicas" not in dep["spec"]  # the HPA owns it
    hpa = r.one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 9)

    pod = dep["spec"]["template"]["spec"]
    c = container(pod)
    env = env_of(c)
    assert env["OPENAI_API_KEY"] == {"secretKeyRef": {"name": "llm-keys", "key": "openai"}}
    assert env["WARDEN_REDIS_URL"] == {"secretKeyRef": {"name": "redis-auth", "key": "redis-url"}}
    assert env["WARDEN_STORE_FAILURE_MODE"] == "closed" and env["WARDEN_SHUTDOWN_GRACE_S"] == "20"
    assert env["TZ"] == "UTC"
    assert c["envFrom"] == [{"secretRef": {"name": "azure-keys"}}]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["warden-policies"]["configMap"]["name"] == "team-policies"
    assert [m["metadata"]["name"] for m in r.manifests if m["kind"] == "ConfigMap"] == [
        dash_name := r.one("ConfigMap", "-dashboard")["metadata"]["name"]
    ], "an existing policies ConfigMap is used, not rendered"
    assert dash_name.endswith("-dashboard")
    assert volumes["warden-secret-0"]["secret"]["secretName"] == "anthropic"
    assert {
        "name": "warden-secret-0",
        "mountPath": "/var/run/secrets/anthropic",
        "readOnly": True,
    } in c["volumeMounts"]
    hard = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert hard[0]["labelSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]

    sm = r.one("ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert sm["spec"]["selector"]["matchLabels"] == r.one("Service")["spec"]["selector"]
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["agents"]}

    dash = r.one("ConfigMap", "-dashboard")
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads((CHART / "dashboards" / "warden.json").read_text())
    assert json.loads(dash["data"]["warden.json"]) == shipped
    assert shipped["panels"] and shipped["title"]

    np = r.one("NetworkPolicy")
    assert np["spec"]["podSelector"]["matchLabels"] == {
        k: v
        for k, v in dep["spec"]["selector"]["matchLabels"].items()
        if k != "app.kubernetes.io/component"
    }
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert np["spec"]["ingress"][0]["from"] == values["networkPolicy"]["ingressFrom"]  # type: ignore[index]
    egress = np["spec"]["egress"]
    peers = [
        (rule["to"][0].get("ipBlock", {}).get("cidr"), sorted(p["port"] for p in rule["ports"]))
        for rule in egress
    ]
    assert peers == [
        ("203.0.113.0/24", [443]),
        ("198.51.100.7/32", [443, 8443]),
        ("10.20.0.5/32", [6380]),
        (None, [53, 53]),
    ]  # DNS last
    assert egress[-1]["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}


async def test_bundled_redis_is_off_by_default_and_wired_when_on(
    kube: ThreadingHTTPServer,
) -> None:
    r = await render(kube, {"redis": {"enabled": True}, "networkPolicy": {"enabled": True}})
    redis = r.one("Deployment", "-redis")
    rc = redis["spec"]["template"]["spec"]["containers"][0]
    assert rc["securityContext"]["readOnlyRootFilesystem"] is True
    svc = r.one("Service", "-redis")
    url = env_of(container(r.one("Deployment", "-warden")["spec"]["template"]["spec"]))
    assert url["WARDEN_REDIS_URL"] == f"redis://{svc['metadata']['name']}:6379/0"
    redis_rule = r.one("NetworkPolicy")["spec"]["egress"][0]
    assert redis_rule["to"][0]["podSelector"]["matchLabels"] == svc["spec"]["selector"]


# --- Sidecar -----------------------------------------------------------------------------


async def test_sidecar_mode_example_agent(kube: ThreadingHTTPServer) -> None:
    r = await render(
        kube,
        {
            "mode": "sidecar",
            "sidecar": {"exampleAgent": {"apiKeySecret": {"name": "agent-key"}}},
            "networkPolicy": {
                "enabled": True,
                "egress": {"providers": [{"cidr": "203.0.113.0/24"}]},
            },
        },
    )
    assert r.kinds() == ["ConfigMap", "Deployment", "NetworkPolicy", "ServiceAccount"]
    agent = r.one("Deployment", "-agent")
    pod = agent["spec"]["template"]["spec"]
    # Native sidecar: an init container that keeps running, ready before the agent starts.
    assert [c["name"] for c in pod["initContainers"]] == ["warden"]
    warden = pod["initContainers"][0]
    assert warden["restartPolicy"] == "Always"
    assert warden["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert warden["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert warden["securityContext"]["readOnlyRootFilesystem"] is True
    assert "lifecycle" not in warden
    assert {m["mountPath"] for m in warden["volumeMounts"]} == {"/etc/warden/policies", "/tmp"}
    agent_env = env_of(container(pod, "agent"))
    assert agent_env["OPENAI_BASE_URL"] == "http://127.0.0.1:8080/v1"
    assert agent_env["OPENAI_API_KEY"] == {"secretKeyRef": {"name": "agent-key", "key": "api-key"}}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert agent["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "9090"
    np = r.one("NetworkPolicy")
    assert np["spec"]["policyTypes"] == ["Egress"]  # the agent's own ingress is its business
    assert "http://127.0.0.1:8080/v1" in r.notes and "warden.sidecar" in r.notes


async def test_sidecar_as_ordinary_container_on_another_port(kube: ThreadingHTTPServer) -> None:
    r = await render(kube, {"mode": "sidecar", "port": 4000, "sidecar": {"native": False}})
    pod = r.one("Deployment", "-agent")["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    assert [c["name"] for c in pod["containers"]] == ["agent", "warden"]
    warden = container(pod)
    assert "restartPolicy" not in warden and env_of(warden)["WARDEN_PORT"] == "4000"
    assert env_of(container(pod, "agent"))["OPENAI_BASE_URL"] == "http://127.0.0.1:4000/v1"


async def test_sidecar_template_in_a_users_own_chart(
    kube: ThreadingHTTPServer, tmp_path: Path
) -> None:
    """The documented way: a chart of the user's that lists warden as a dependency."""
    parent = tmp_path / "my-agents"
    (parent / "templates").mkdir(parents=True)
    shutil.copytree(CHART, parent / "charts" / "warden")
    (parent / "Chart.yaml").write_text(
        "apiVersion: v2\nname: my-agents\nversion: 1.0.0\n"
        "dependencies:\n  - name: warden\n    version: 0.1.0\n"
    )
    (parent / "values.yaml").write_text(
        "warden:\n  mode: sidecar\n  sidecar:\n    exampleAgent:\n      enabled: false\n"
    )
    (parent / "templates" / "researcher.yaml").write_text("""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: researcher
spec:
  selector:
    matchLabels: {app: researcher}
  template:
    metadata:
      labels: {app: researcher}
    spec:
      securityContext: {runAsNonRoot: true, fsGroup: 10001}
      initContainers:
        {{- include "warden.sidecar" .Subcharts.warden | nindent 8 }}
      containers:
        - name: researcher
          image: example/researcher:1
          env:
            {{- include "warden.agentEnv" .Subcharts.warden | nindent 12 }}
      volumes:
        {{- include "warden.sidecarVolumes" .Subcharts.warden | nindent 8 }}
""")
    r = await render(kube, chart=parent)
    assert r.kinds() == ["ConfigMap", "Deployment", "ServiceAccount"]
    pod = r.one("Deployment", "researcher")["spec"]["template"]["spec"]
    assert env_of(container(pod, "researcher"))["OPENAI_BASE_URL"] == "http://127.0.0.1:8080/v1"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["warden-policies"]["configMap"]["name"] == r.one("ConfigMap")["metadata"]["name"]
    assert container(pod)["restartPolicy"] == "Always"


# --- Bad values fail at install ----------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"mode": "both"}, "/mode"),
        ({"port": 70000}, "/port"),
        ({"replicaCount": 0}, "/replicaCount"),
        ({"colour": "blue"}, "colour"),
        ({"settings": {"log_level": "loud"}}, "/settings/log_level"),
        ({"settings": {"port": 1}}, "invalid propertyName 'port'"),  # chart-owned
        ({"securityContext": {"readOnlyRootFilesystem": False}}, "/securityContext"),
        ({"podSecurityContext": {"runAsNonRoot": False}}, "/podSecurityContext"),
        ({"policies": {"example": False}}, "/policies"),
        # (Helm names a wrong location for propertyNames errors; the name is right.)
        ({"policies": {"files": {"tenant.txt": "x"}}}, "invalid propertyName 'tenant.txt'"),
        ({"redis": {"url": "redis://r:6379", "existingSecret": "s"}}, "/redis"),
        ({"redis": {"url": "http://r"}}, "/redis/url"),
        (
            {"networkPolicy": {"egress": {"providers": [{"cidr": "api.openai.com"}]}}},
            "/networkPolicy/egress/providers/0/cidr",
        ),
        ({"credentials": {"env": [{"name": "K", "secretName": "s"}]}}, "/credentials/env/0"),
        ({"image": {"digest": "latest"}}, "/image/digest"),
    ],
)
async def test_bad_values_fail_at_install(
    kube: ThreadingHTTPServer, values: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(helm_sdkpy.InstallError) as err:
        await render(kube, values)
    message = str(err.value)
    assert "schema" in message and complaint in message, message


async def test_too_old_kubernetes_is_refused(kube: ThreadingHTTPServer) -> None:
    FakeKube.kube_version = "28"  # no native sidecars
    try:
        with pytest.raises(helm_sdkpy.InstallError, match=r"kubeVersion|incompatible"):
            await render(kube)
    finally:
        FakeKube.kube_version = "33"


async def test_policy_files_given_as_mappings_render_as_yaml(
    kube: ThreadingHTTPServer, tmp_path: Path
) -> None:
    tenant = {
        "tenant": "ops",
        "keys": ["vk-ops-0123456789"],
        "models": {"m": [{"provider": "openai", "model": "gpt-4o-mini"}]},
    }
    r = await render(kube, {"policies": {"files": {"ops.yaml": tenant}}})
    data = r.one("ConfigMap", "-policies")["data"]
    assert list(data) == ["ops.yaml"]  # the example tenant never sits beside real ones
    assert "vk-example-change-me" not in r.notes
    text = data["ops.yaml"]
    (tmp_path / "ops.yaml").write_text(text)
    assert (
        parse_policy_file(tmp_path / "ops.yaml").model_dump(exclude_defaults=True)["tenant"]
        == "ops"
    )
    assert yaml.safe_load(text) == tenant


def test_values_schema_accepts_the_default_values() -> None:
    import jsonschema

    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load((CHART / "values.yaml").read_text()), schema)

