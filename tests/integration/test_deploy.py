"""Deployment artefacts (issue 6): Dockerfile, deploy/docker-compose.yml, deploy/kubernetes/,
the Grafana dashboard and every poolproxy config file shipped in config/ and deploy/.

- Every poolproxy config (config/*.yaml, deploy/*.yaml, the Kubernetes ConfigMap's file) passes
  ``python -m proxy -c FILE --check``, and the container configs listen where probes reach them.
- The compose file has the services and wiring the README promises; ``docker compose config``
  (or Debian's ``docker-compose config``) accepts it where either tool is installed.
- The Kubernetes manifests validate against the Kubernetes JSON schemas (``kubernetes-validate``,
  offline, where installed) and agree with each other and with the config: probe paths and
  ports, Service/PDB/ServiceMonitor selectors, secrets, and the shutdown timeline.
- The Grafana dashboard queries only series that poolproxy exports, read from the exposition
  text of a live ``PoolproxyCollector`` (names *and* label names).
- Where a Docker engine answers, the image is built and run against the test databases;
  without one those tests skip and say why. Without Docker this file takes a few seconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import Config, parse_config, parse_duration
from tests.harness import run_cli

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "poolproxy.json"
DOCKERFILE = REPO / "Dockerfile"

#: Values for the ${VAR}s without a default that the shipped configs use (passwords).
CHECK_ENV = {"APP_DB_PASSWORD": "check-app-password", "ADMIN_DB_PASSWORD": "check-admin-password"}
#: Configs that must exist (guards the discovery below against silently finding nothing).
EXPECTED_CONFIGS = {"config/poolproxy.yaml", "config/minimal.yaml", "deploy/poolproxy.docker.yaml",
                    "deploy/poolproxy.compose.yaml"}
#: Labels Prometheus adds to every scraped series (static, Kubernetes and Operator discovery).
TARGET_LABELS = {"instance", "job", "namespace", "pod", "service", "container", "endpoint", "node"}
ADMIN_PORT = 9127


def _load_yaml_docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _is_poolproxy_config(doc: Any) -> bool:
    return isinstance(doc, dict) and isinstance(doc.get("listeners"), list)


def poolproxy_config_files() -> list[Path]:
    """Every YAML file under config/ and deploy/ whose top level is a poolproxy config."""
    found = []
    for base in (REPO / "config", DEPLOY):
        for path in sorted([*base.rglob("*.yaml"), *base.rglob("*.yml")]):
            try:
                docs = _load_yaml_docs(path)
            except yaml.YAMLError as exc:  # a broken YAML file anywhere here is a bug too
                pytest.fail(f"{path.relative_to(REPO)} is not valid YAML: {exc}")
            if len(docs) == 1 and _is_poolproxy_config(docs[0]):
                found.append(path)
    return found


def k8s_manifests() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in _load_yaml_docs(path):
            assert isinstance(doc, dict), f"{path.name}: every document must be a mapping"
            docs.append((path, doc))
    return docs


def k8s_one(kind: str) -> dict[str, Any]:
    found = [doc for _, doc in k8s_manifests() if doc.get("kind") == kind]
    assert len(found) == 1, f"expected exactly one {kind} in deploy/kubernetes, found {len(found)}"
    return found[0]


def configmap_configs() -> dict[str, str]:
    """ConfigMap data entries that are poolproxy configs: key -> YAML text."""
    out = {}
    for _, doc in k8s_manifests():
        if doc.get("kind") != "ConfigMap":
            continue
        for key, text in (doc.get("data") or {}).items():
            if _is_poolproxy_config(yaml.safe_load(text)):
                out[f"{doc['metadata']['name']}:{key}"] = text
    return out


def run_check(path: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("-c", str(path), "--check", env=CHECK_ENV)


# ------------------------------------------------------------------------------ config files


def test_config_discovery_finds_the_shipped_configs() -> None:
    found = {str(p.relative_to(REPO)) for p in poolproxy_config_files()}
    assert EXPECTED_CONFIGS <= found, f"missing: {EXPECTED_CONFIGS - found}"
    assert configmap_configs(), "the Kubernetes ConfigMap carries no poolproxy config"


@pytest.mark.parametrize(
    "path", poolproxy_config_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_config_file_passes_check(path: Path) -> None:
    result = run_check(path)
    assert result.returncode == 0, f"--check failed for {path}:\n{result.stderr}{result.stdout}"
    assert "listener " in result.stdout


@pytest.mark.parametrize("name", sorted(configmap_configs()))
def test_configmap_config_passes_check(name: str, tmp_path: Path) -> None:
    path = tmp_path / "poolproxy.yaml"
    path.write_text(configmap_configs()[name])
    result = run_check(path)
    assert result.returncode == 0, f"--check failed for {name}:\n{result.stderr}{result.stdout}"


def _container_configs() -> dict[str, Config]:
    texts = {
        "deploy/poolproxy.docker.yaml": (DEPLOY / "poolproxy.docker.yaml").read_text(),
        "deploy/poolproxy.compose.yaml": (DEPLOY / "poolproxy.compose.yaml").read_text(),
        **configmap_configs(),
    }
    return {name: parse_config(text, env=CHECK_ENV, source=name) for name, text in texts.items()}


def test_container_configs_listen_where_probes_reach() -> None:
    """Inside a container, 127.0.0.1 would hide the admin HTTP from Prometheus and the probes."""
    for name, config in _container_configs().items():
        assert config.admin.listen_host in ("0.0.0.0", "::", ""), name
        assert config.admin.listen_port == ADMIN_PORT, name
        ports = {lc.protocol: lc.listen_port for lc in config.listeners}
        assert ports == {"postgres": 6432, "mysql": 6033}, name
        assert all(lc.listen_host in ("0.0.0.0", "::", "") for lc in config.listeners), name


def test_image_config_fails_fast_without_password() -> None:
    """The image's config takes the password from the environment and refuses to start without
    it (rather than running with an empty one)."""
    from proxy.config import ConfigError

    text = (DEPLOY / "poolproxy.docker.yaml").read_text()
    with pytest.raises(ConfigError, match="APP_DB_PASSWORD"):
        parse_config(text, env={}, source="poolproxy.docker.yaml")
    config = parse_config(text, env={"APP_DB_PASSWORD": "x", "POSTGRES_HOST": "db.internal",
                                     "POOLPROXY_POOL_SIZE": "7"}, source="poolproxy.docker.yaml")
    assert config.listener("pg").server.host == "db.internal"
    assert config.defaults.pool_size == 7


# ------------------------------------------------------------------------------ Dockerfile


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_shape() -> None:
    instr = _dockerfile_instructions()
    froms = [args for word, args in instr if word == "FROM"]
    assert len(froms) >= 2, "multi-stage: a builder stage and a runtime stage"
    assert re.match(r"python:\$\{PYTHON_VERSION\}-slim$|python:3\.\d+-slim$", froms[-1]), froms[-1]
    args = {m.group(1): m.group(2) for word, a in instr if word == "ARG"
            for m in [re.match(r"(\w+)=(\S+)", a)] if m}
    user = [a for word, a in instr if word == "USER"][-1]
    uid = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], user).split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"runtime user must be a numeric non-root uid: {user}"
    assert ("STOPSIGNAL", "SIGTERM") in instr
    exposed = {p for word, a in instr if word == "EXPOSE" for p in a.split()}
    assert {"6432", "6033", str(ADMIN_PORT)} <= exposed
    health = " ".join(a for word, a in instr if word == "HEALTHCHECK")
    assert "/healthz" in health and "curl" not in health and "urllib" in health
    env = " ".join(a for word, a in instr if word == "ENV")
    config_path = re.search(r"POOLPROXY_CONFIG=(\S+)", env)
    assert config_path, "the image sets POOLPROXY_CONFIG"
    copies = [a.split() for word, a in instr if word == "COPY" and "--from=" not in a]
    assert ["deploy/poolproxy.docker.yaml", config_path.group(1)] in copies
    assert re.search(rf"http://127\.0\.0\.1:{ADMIN_PORT}/healthz", env + health)
    # .dockerignore keeps the context small but must let through what the Dockerfile copies.
    ignore = (REPO / ".dockerignore").read_text().split()
    for src in [s for c in copies for s in c[:-1] if not s.startswith("--")]:
        top = src.rstrip("/").split("/")[0]
        assert f"!{src.rstrip('/')}" in ignore or f"!{top}" in ignore, f".dockerignore drops {src}"


def test_image_uid_matches_kubernetes_security_context() -> None:
    args = {m.group(1): m.group(2) for word, a in _dockerfile_instructions() if word == "ARG"
            for m in [re.match(r"(\w+)=(\S+)", a)] if m}
    pod = k8s_one("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == args["POOLPROXY_UID"]


# ------------------------------------------------------------------------------ compose


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def test_compose_services_and_wiring() -> None:
    services = _compose()["services"]
    assert {"postgres", "mariadb", "poolproxy", "prometheus", "grafana", "django"} <= set(services)
    for db in ("postgres", "mariadb"):
        assert services[db].get("healthcheck", {}).get("test"), f"{db} needs a healthcheck"
    proxy = services["poolproxy"]
    assert proxy["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                   "mariadb": {"condition": "service_healthy"}}
    assert proxy["build"]["context"] == ".." and proxy["build"].get("dockerfile", "Dockerfile") \
        == DOCKERFILE.name
    # The mounted config is the one POOLPROXY_CONFIG names, and it exists in the repo.
    env = proxy["environment"]
    mounts = dict(v.split(":")[:2][::-1] for v in proxy["volumes"])
    source = mounts[env["POOLPROXY_CONFIG"]]
    assert (DEPLOY / source).resolve() == (DEPLOY / "poolproxy.compose.yaml").resolve()
    for var in CHECK_ENV:  # the passwords the config needs are set
        assert var in env, var
    published = {str(p).split(":")[-1] for p in proxy["ports"]}
    assert {"6432", "6033", str(ADMIN_PORT)} <= published
    # Graceful stop: compose waits longer than poolproxy's shutdown_timeout before SIGKILL.
    config = parse_config((DEPLOY / source).read_text(), env=CHECK_ENV)
    assert proxy.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert parse_duration(proxy["stop_grace_period"], "stop_grace_period") \
        > config.defaults.shutdown_timeout
    # The example Django app talks to poolproxy, not to the databases.
    django = services["django"]
    assert django["environment"]["DB_HOST"] == "poolproxy"
    assert django["depends_on"]["poolproxy"]["condition"] == "service_healthy"
    assert (DEPLOY / django["build"]["context"] / "Dockerfile").is_file()


def test_compose_prometheus_and_grafana_wiring() -> None:
    services = _compose()["services"]
    prom_mounts = dict(v.split(":")[:2][::-1] for v in services["prometheus"]["volumes"])
    prom_cfg = yaml.safe_load((DEPLOY / prom_mounts["/etc/prometheus/prometheus.yml"]).read_text())
    jobs = {job["job_name"]: job for job in prom_cfg["scrape_configs"]}
    job = jobs["poolproxy"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"poolproxy:{ADMIN_PORT}"]

    graf_mounts = dict(v.split(":")[:2][::-1] for v in services["grafana"]["volumes"])
    provisioning = DEPLOY / graf_mounts["/etc/grafana/provisioning"]
    datasources = [ds for f in sorted((provisioning / "datasources").glob("*.y*ml"))
                   for ds in yaml.safe_load(f.read_text())["datasources"]]
    assert [ds["type"] for ds in datasources] == ["prometheus"]
    assert datasources[0]["url"] == "http://prometheus:9090"
    providers = [p for f in sorted((provisioning / "dashboards").glob("*.y*ml"))
                 for p in yaml.safe_load(f.read_text())["providers"]]
    dash_dir = providers[0]["options"]["path"]
    assert (DEPLOY / graf_mounts[dash_dir] / DASHBOARD.name).resolve() == DASHBOARD.resolve()
    home = services["grafana"]["environment"].get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    assert home in (None, f"{dash_dir}/{DASHBOARD.name}")
    # The dashboard's data source is the provisioned one (by uid), or a data source variable.
    dashboard = json.loads(DASHBOARD.read_text())
    uids = {ds["uid"] for ds in _walk_key(dashboard, "datasource") if isinstance(ds, dict)}
    variables = {v["name"] for v in dashboard["templating"]["list"] if v["type"] == "datasource"}
    assert uids <= {datasources[0]["uid"]} | {f"${{{v}}}" for v in variables}, uids


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_config_validates() -> None:
    command = _compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed "
                    "(Debian: apt-get install docker-compose)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    result = subprocess.run([*command, "-f", str(COMPOSE_FILE), "config"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(command)} config failed:\n{result.stderr}"
    resolved = yaml.safe_load(result.stdout)
    proxy = resolved["services"]["poolproxy"]
    assert proxy["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert proxy["environment"]["APP_DB_PASSWORD"], "the password default must interpolate"


@pytest.mark.parametrize("backend", ["postgres", "mysql"])
def test_django_example_app_checks(backend: str) -> None:
    """The compose stack's Django app passes Django's system checks on both backends, and its
    migration matches its models (no database needed)."""
    pytest.importorskip("django", reason="Django not installed")
    app = DEPLOY / "django-example"
    env = {**os.environ, "DJANGO_DB": backend, "DB_HOST": "127.0.0.1", "PYTHONDONTWRITEBYTECODE": "1"}
    for args in (["check"], ["makemigrations", "--check", "--dry-run", "visits"]):
        result = subprocess.run([sys.executable, "-W", "ignore", "manage.py", *args], cwd=app,
                                env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"manage.py {' '.join(args)}:\n{result.stderr}"


# ------------------------------------------------------------------------------ kubernetes

K8S_KINDS = {"ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget",
             "ServiceMonitor"}
#: Kinds without a schema in kubernetes-validate (CRDs and tooling files): checked by hand.
K8S_NO_SCHEMA = {"ServiceMonitor", "Kustomization"}


def test_k8s_manifests_well_formed() -> None:
    docs = k8s_manifests()
    kinds = [doc.get("kind") for _, doc in docs]
    assert K8S_KINDS <= set(kinds), f"missing kinds: {K8S_KINDS - set(kinds)}"
    for path, doc in docs:
        assert isinstance(doc.get("apiVersion"), str) and doc["apiVersion"], path.name
        assert isinstance(doc.get("kind"), str), path.name
        if doc["kind"] != "Kustomization":
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", doc["metadata"]["name"]), path
    for _, doc in docs:
        if doc["kind"] == "Kustomization":
            for resource in doc["resources"]:
                assert (K8S / resource).is_file(), f"kustomization lists missing {resource}"
                assert "secret" not in resource, "real secrets are created by hand, not applied"


def test_k8s_manifests_match_schemas() -> None:
    kv = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate not installed (pip install "
        "kubernetes-validate: offline Kubernetes JSON schemas)")
    checked = []
    for path, doc in k8s_manifests():
        if doc["kind"] in K8S_NO_SCHEMA:
            continue
        try:
            kv.validate(doc, kv.utils.latest_version(), strict=True)
        except kv.ValidationError as exc:
            location = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{path.name} {doc['kind']}/{doc['metadata']['name']}: "
                        f"{location}: {exc.message}")
        checked.append(doc["kind"])
    assert set(checked) == K8S_KINDS - K8S_NO_SCHEMA
    # The validator really rejects a mistake (strict: unknown fields are errors).
    broken = json.loads(json.dumps(k8s_one("Deployment")))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, kv.utils.latest_version(), strict=True)


def _servicemonitor_structure(doc: dict[str, Any]) -> None:
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    spec = doc["spec"]
    assert isinstance(spec["selector"]["matchLabels"], dict)
    for endpoint in spec["endpoints"]:
        assert isinstance(endpoint["port"], str)
        assert endpoint.get("path", "/metrics").startswith("/")
        for key in ("interval", "scrapeTimeout"):
            if key in endpoint:
                parse_duration(endpoint[key], f"ServiceMonitor.{key}")


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _pre_stop_seconds(container: dict[str, Any]) -> float:
    pre_stop = container.get("lifecycle", {}).get("preStop")
    assert pre_stop, "a preStop hook gives endpoints time to drop the pod before SIGTERM"
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = " ".join(pre_stop["exec"]["command"])
    match = re.search(r"\bsleep\s+(\d+(?:\.\d+)?)", command)
    assert match, f"preStop should sleep: {command}"
    return float(match.group(1))


def test_k8s_manifests_consistent_with_config() -> None:
    deployment = k8s_one("Deployment")
    pod_meta = deployment["spec"]["template"]["metadata"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "poolproxy"]
    env = {e["name"]: e for e in container.get("env", [])}

    # The config file POOLPROXY_CONFIG names comes from the ConfigMap.
    config_path = env["POOLPROXY_CONFIG"]["value"]
    mount = next(m for m in container["volumeMounts"]
                 if config_path.startswith(m["mountPath"].rstrip("/") + "/"))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    cm = k8s_one("ConfigMap")
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    items = {i["path"]: i["key"] for i in volume["configMap"].get("items", [])}
    relative = config_path[len(mount["mountPath"].rstrip("/")) + 1:]
    text = cm["data"][items.get(relative, relative)]

    # Every ${VAR} the config needs is set by the Deployment (values: from the Secret).
    config = parse_config(text, env={name: "x" for name in env}, source="ConfigMap")
    secret = k8s_one("Secret")
    secret_keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    for item in env.values():
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == secret["metadata"]["name"], item["name"]
            assert ref["key"] in secret_keys, f"{ref['key']} not in the example Secret"

    # Ports: one named container port per listener and for the admin HTTP.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert sorted(ports.values()) == sorted(
        [config.admin.listen_port, *(lc.listen_port for lc in config.listeners)])

    def port_of(ref: int | str) -> int:
        return ports[ref] if isinstance(ref, str) else ref

    ready, live = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    assert ready["path"] == "/readyz" and live["path"] == "/healthz"
    assert port_of(ready["port"]) == port_of(live["port"]) == config.admin.listen_port

    # Shutdown timeline: SIGKILL comes only after preStop + the drain poolproxy may take.
    shutdown = max([config.defaults.shutdown_timeout,
                    *(lc.settings.shutdown_timeout for lc in config.listeners)])
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > _pre_stop_seconds(container) + shutdown, (grace, shutdown)

    # Selectors: Deployment, Service, PDB and ServiceMonitor all find the same pods / Service.
    labels = pod_meta["labels"]
    assert _matches(deployment["spec"]["selector"]["matchLabels"], labels)
    service = k8s_one("Service")
    assert _matches(service["spec"]["selector"], labels)
    for sp in service["spec"]["ports"]:
        assert port_of(sp.get("targetPort", sp["port"])) in ports.values(), sp
    pdb = k8s_one("PodDisruptionBudget")
    assert _matches(pdb["spec"]["selector"]["matchLabels"], labels)
    replicas = deployment["spec"].get("replicas", 1)
    if "minAvailable" in pdb["spec"]:
        assert pdb["spec"]["minAvailable"] < replicas, "the PDB would block every node drain"
    else:
        assert pdb["spec"]["maxUnavailable"] >= 1
    monitor = k8s_one("ServiceMonitor")
    _servicemonitor_structure(monitor)
    assert _matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    service_ports = {sp["name"]: sp for sp in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        sp = service_ports[endpoint["port"]]
        assert port_of(sp.get("targetPort", sp["port"])) == config.admin.listen_port
        assert endpoint.get("path", "/metrics") == "/metrics"


# ------------------------------------------------------------------------------ dashboard

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"(?:[^\"\\]|\\.)*\"")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
                    "group_left", "group_right", "inf", "nan", "Inf", "NaN"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (function and aggregation names, keywords,
    label names, strings, durations and numbers are not metric names)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range / subquery windows
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\boffset\s+\S+", " ", text)
    text = re.sub(r"(?<![A-Za-z0-9_:])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?", " ", text)
    names: set[str] = set()
    for match in _IDENT.finditer(text):
        if text[match.end():].lstrip().startswith("(") or match.group(0) in _PROMQL_KEYWORDS:
            continue
        names.add(match.group(0))
    return names


def _walk_key(node: Any, key: str) -> Iterator[Any]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from _walk_key(v, key)
    elif isinstance(node, list):
        for item in node:
            yield from _walk_key(item, key)


def dashboard_queries() -> tuple[list[str], list[str]]:
    """(panel PromQL expressions, template-variable queries) of the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [e for e in _walk_key(dashboard.get("panels", []), "expr") if isinstance(e, str)]
    variables = []
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var.get("query")
        variables.append(query["query"] if isinstance(query, dict) else query)
    return exprs, variables


class _FakeClient:
    """What the collector reads of a client session (hashable, as ListenerRuntime.clients is a set)."""

    def __init__(self, pool: Any, state: Any, pinned: str | None) -> None:
        self.pool, self.state, self.pinned = pool, state, pinned


def exported_series() -> dict[str, set[str]]:
    """Sample name -> label names, from the exposition text of a live PoolproxyCollector over
    one listener with one pool and a pinned client (so every family has samples)."""
    import asyncio

    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from proxy.core.listener import ListenerRuntime
    from proxy.ops.metrics import PoolproxyCollector
    from proxy.pool import ClientState

    config = parse_config(
        "listeners: [{name: pg, protocol: postgres, listen: '127.0.0.1:6432',"
        " server: {host: 127.0.0.1}, users: [{name: app, password: x}]}]", env={})

    async def no_server(*args: Any) -> Any:
        raise AssertionError("the collector must not open server connections")

    loop = asyncio.new_event_loop()
    try:
        rt = ListenerRuntime(config.listeners[0], no_server, loop, time.monotonic)
        pool = rt.get_pool("app", "app")
        rt.clients.add(_FakeClient(pool, ClientState.ACTIVE, "set"))
        rt.client_results["accepted"] = 1
        rt.pins["set"] = 1
        registry = CollectorRegistry()
        registry.register(PoolproxyCollector(lambda: [rt]))
        text = generate_latest(registry).decode()
    finally:
        loop.close()
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


def exported_names_from_families() -> set[str]:
    """Sample names by family type, from the collector over an empty listener list: a counter
    family ``x`` exposes ``x_total``, a histogram ``x_bucket``/``x_sum``/``x_count``."""
    from proxy.ops.metrics import PoolproxyCollector

    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"],
                "gauge": [""], "info": ["_info"], "summary": ["", "_sum", "_count"]}
    names: set[str] = set()
    for family in PoolproxyCollector(lambda: []).collect():
        base = family.name.removesuffix("_total") if family.type == "counter" else family.name
        names.update(base + suffix for suffix in suffixes[family.type])
    return names


def test_exported_series_cover_the_design_metrics() -> None:
    series = exported_series()
    assert set(series) == exported_names_from_families()
    for name in ("poolproxy_clients", "poolproxy_servers", "poolproxy_client_wait_seconds_bucket",
                 "poolproxy_transactions_total", "poolproxy_transaction_duration_seconds_bucket",
                 "poolproxy_server_connections_closed_total", "poolproxy_pool_size"):
        assert name in series, name
    assert "reason" in series["poolproxy_server_connections_closed_total"]


def test_dashboard_references_only_exported_metrics() -> None:
    series = exported_series()
    exprs, variables = dashboard_queries()
    assert exprs, "the dashboard has no PromQL expressions"
    used: set[str] = set()
    for expr in exprs:
        names = promql_metric_names(expr)
        assert names, f"no metric in {expr!r}"
        unknown = names - set(series)
        assert not unknown, f"{expr!r} uses {sorted(unknown)}, which poolproxy does not export"
        used |= names
        # Label matchers name labels the series has.
        for name, matchers in _SELECTOR.findall(expr):
            for label in _MATCHER.findall(matchers):
                assert label in series.get(name, set()) | TARGET_LABELS, (expr, name, label)
        # by (...) / on (...) labels exist on some series of the expression.
        known = set().union(*(series[n] for n in names)) | TARGET_LABELS
        for group in _GROUPING.findall(_STRING.sub('""', expr)):
            for label in filter(None, (lbl.strip() for lbl in group.split(","))):
                assert label in known, (expr, label)
    for query in variables:
        match = re.fullmatch(r"\s*label_values\(\s*(?:(.+?)\s*,\s*)?(\w+)\s*\)\s*", query)
        assert match, f"unexpected variable query {query!r}"
        metric_expr, label = match.groups()
        if metric_expr:
            (name,) = promql_metric_names(metric_expr)
            assert name in series, query
            assert label in series[name] | TARGET_LABELS, query
    # The panels the issue asks for.
    assert {"poolproxy_clients", "poolproxy_servers", "poolproxy_client_wait_seconds_bucket",
            "poolproxy_transactions_total", "poolproxy_transaction_duration_seconds_bucket",
            "poolproxy_server_connections_closed_total"} <= used
    joined = "\n".join(exprs)
    assert re.search(r"histogram_quantile\([^,]+,.*poolproxy_client_wait_seconds_bucket", joined)
    assert re.search(r'state\s*=\s*"waiting"', joined) and re.search(r'state\s*=\s*"active"', joined)
    assert re.search(r"by \(reason\)\s*\(rate\(poolproxy_server_connections_closed_total", joined)


def test_promql_name_extraction() -> None:
    """The extractor behind the dashboard check (suffix-exact; functions and labels ignored)."""
    assert promql_metric_names(
        'histogram_quantile(0.99, sum by (le, listener) (rate(poolproxy_client_wait_seconds_bucket'
        '{listener=~"$listener", state="x"}[$__rate_interval])))'
    ) == {"poolproxy_client_wait_seconds_bucket"}
    assert promql_metric_names("sum(rate(a_total[5m] offset 1h)) / on (x) group_left b 1e3") == \
        {"a_total", "b"}
    assert promql_metric_names("poolproxy_transactions") == {"poolproxy_transactions"}
    series = exported_series()
    assert "poolproxy_transactions" not in series  # a counter is only exported as _total
    assert "poolproxy_clients_total" not in series  # a gauge has no _total


def test_dashboard_promql_parses() -> None:
    """Each expression is valid PromQL and the parser finds the same metric names."""
    promql = pytest.importorskip("promql_parser", reason="promql-parser not installed "
                                 "(optional PromQL syntax check: pip install promql-parser)")
    exprs, _ = dashboard_queries()
    for expr in exprs:
        concrete = expr.replace("$__rate_interval", "1m").replace("$__interval", "1m")
        ast = promql.parse(concrete)
        names: set[str] = set()

        def visit(node: Any, names: set[str] = names) -> None:
            if isinstance(node, promql.VectorSelector) and node.name:
                names.add(node.name)

        promql.walk(ast, visit)
        assert names == promql_metric_names(expr), expr


# ------------------------------------------------------------------------------ docker engine

BASE_IMAGE = "python:3.11-slim"


def _docker(*args: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"docker {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result


def docker_unavailable() -> str | None:
    """Why the image tests cannot run here, or None."""
    if shutil.which("docker") is None:
        return "docker CLI not installed"
    try:
        info = _docker("info", timeout=30)
    except subprocess.TimeoutExpired:
        return "`docker info` timed out: no Docker engine answers"
    if info.returncode != 0:
        # The reason is on stderr or (older CLIs) in the Server: section of stdout.
        lines = [line.strip() for line in (info.stderr + info.stdout).splitlines()
                 if line.strip()] or ["?"]
        detail = next((line for line in lines if "connect" in line.lower()), lines[-1])
        return f"no Docker engine answers (`docker info`: {detail})"
    return None


@pytest.fixture(scope="module")
def docker_image() -> Iterator[str]:
    reason = docker_unavailable()
    if reason:
        pytest.skip(f"Docker image build/run skipped: {reason}")
    if _docker("image", "inspect", BASE_IMAGE).returncode != 0:
        pull = _docker("pull", BASE_IMAGE, timeout=600)
        if pull.returncode != 0:
            pytest.skip(f"base image {BASE_IMAGE} not available and cannot be pulled: "
                        f"{pull.stderr.strip()[-300:]}")
    tag = f"poolproxy-test:{os.getpid()}"
    # Host network: builds also where the engine has no bridge network (rootless, CI sandboxes).
    _docker("build", "--network", "host", "-t", tag, str(REPO), timeout=1200, check=True)
    yield tag
    _docker("rmi", "-f", tag)


def test_image_metadata_and_check(docker_image: str) -> None:
    inspect = json.loads(_docker("image", "inspect", docker_image, check=True).stdout)[0]
    cfg = inspect["Config"]
    assert cfg["User"].split(":")[0] not in ("", "0", "root")
    assert cfg["StopSignal"] == "SIGTERM"
    assert {"6432/tcp", "6033/tcp", f"{ADMIN_PORT}/tcp"} <= set(cfg["ExposedPorts"])
    assert any("urlopen" in part for part in cfg["Healthcheck"]["Test"])
    version = _docker("run", "--rm", docker_image, "--version", check=True)
    assert version.stdout.startswith("poolproxy ")
    ok = _docker("run", "--rm", "-e", "APP_DB_PASSWORD=x", docker_image, "--check")
    assert ok.returncode == 0, ok.stderr
    assert f"0.0.0.0:{ADMIN_PORT}" in ok.stdout
    missing = _docker("run", "--rm", docker_image, "--check")
    assert missing.returncode == 1 and "APP_DB_PASSWORD" in missing.stderr


def _http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def test_container_pools_the_test_databases(
    docker_image: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The image runs poolproxy against the test PostgreSQL and MariaDB (host network), with the
    config mounted and the password from the environment; healthy, serves, stops gracefully."""
    import psycopg
    import pymysql

    from tests.harness import free_port, make_config, mysql_listener, pg_listener

    pg = request.getfixturevalue("pg_server")
    my = request.getfixturevalue("mariadb_server")
    user = [{"name": "app", "password": "${APP_DB_PASSWORD}"}]
    config = make_config(pg_listener(pg, users=user), mysql_listener(my, users=user),
                         defaults={"pool_size": 2, "shutdown_timeout": "20s"})
    config["logging"] = {"level": "info", "format": "json"}
    admin_port = int(config["admin"]["listen"].rsplit(":", 1)[1])
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "poolproxy.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    config_dir.chmod(0o755)
    (config_dir / "poolproxy.yaml").chmod(0o644)
    name = f"poolproxy-test-{os.getpid()}-{free_port()}"
    _docker("run", "-d", "--name", name, "--network", "host",
            "-v", f"{config_dir}:/config:ro", "-e", "POOLPROXY_CONFIG=/config/poolproxy.yaml",
            "-e", "APP_DB_PASSWORD=app-secret",
            "-e", f"POOLPROXY_HEALTHCHECK_URL=http://127.0.0.1:{admin_port}/healthz",
            docker_image, check=True)
    try:
        admin = f"http://127.0.0.1:{admin_port}"
        deadline = time.monotonic() + 60
        while _http_status(f"{admin}/readyz") != 200:
            assert time.monotonic() < deadline, _docker("logs", name).stderr[-3000:]
            time.sleep(0.2)
        pg_port = int(config["listeners"][0]["listen"].rsplit(":", 1)[1])
        my_port = int(config["listeners"][1]["listen"].rsplit(":", 1)[1])
        with psycopg.connect(host="127.0.0.1", port=pg_port, user="app", password="app-secret",
                             dbname="app", connect_timeout=10) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("app",)
        conn_my = pymysql.connect(host="127.0.0.1", port=my_port, user="app",
                                  password="app-secret", database="app", connect_timeout=10)
        with conn_my.cursor() as cursor:
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)
        conn_my.close()
        with urllib.request.urlopen(f"{admin}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert re.search(r'poolproxy_transactions_total\{database="app",listener="pg"', metrics)
        # Docker's own HEALTHCHECK (GET /healthz from inside the container) turns healthy.
        deadline = time.monotonic() + 60
        while True:
            state = json.loads(_docker("inspect", name, check=True).stdout)[0]["State"]
            if state.get("Health", {}).get("Status") == "healthy":
                break
            assert time.monotonic() < deadline, state.get("Health")
            time.sleep(1)
        # docker stop sends STOPSIGNAL (SIGTERM): a graceful exit, well before the SIGKILL.
        started = time.monotonic()
        _docker("stop", "-t", "40", name, timeout=90, check=True)
        assert time.monotonic() - started < 30
        state = json.loads(_docker("inspect", name, check=True).stdout)[0]["State"]
        assert state["ExitCode"] == 0, _docker("logs", name).stderr[-3000:]
    finally:
        _docker("rm", "-f", name)
