"""Deployment files: docker-compose.yml, Dockerfile and temporal-config/ are consistent and well formed."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
TEMPORAL_CONFIG = ROOT / "temporal-config"
DYNAMIC_CONFIG = TEMPORAL_CONFIG / "dynamicconfig" / "development.yaml"
REGISTER = TEMPORAL_CONFIG / "register.sh"
SEARCH_ATTRIBUTES = TEMPORAL_CONFIG / "search-attributes.env"

EXPECTED_SEARCH_ATTRIBUTES = {
    "QuantoKind": "Keyword",
    "QuantoConfig": "Keyword",
    "QuantoStage": "Keyword",
    "QuantoAccount": "Keyword",
    "QuantoMode": "Keyword",
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def _depends_on(service: dict) -> dict[str, str]:
    deps = service.get("depends_on", {})
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def _ports(service: dict) -> set[str]:
    return {str(port) for port in service.get("ports", [])}


def _read_search_attributes() -> dict[str, str]:
    pairs = {}
    for raw in SEARCH_ATTRIBUTES.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, kind = line.partition("=")
            pairs[name.strip()] = kind.strip()
    return pairs


def test_compose_services_ports_and_dependencies(compose):
    services = compose["services"]
    assert {"postgresql", "temporal", "temporal-setup", "temporal-ui", "quanto-worker"} <= set(services)

    pg = services["postgresql"]
    assert pg["image"].startswith("postgres:") and "16" in pg["image"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert any(str(v).endswith(":/var/lib/postgresql/data") for v in pg["volumes"])

    temporal = services["temporal"]
    assert "temporalio/auto-setup" in temporal["image"]
    assert "7233:7233" in _ports(temporal)
    assert _depends_on(temporal) == {"postgresql": "service_healthy"}
    env = _env(temporal)
    assert env["DB"] == "postgres12"
    assert env["DB_PORT"] == "5432"
    assert env["POSTGRES_SEEDS"] == "postgresql"
    assert env["POSTGRES_USER"] and env["POSTGRES_PWD"]
    assert env["DYNAMIC_CONFIG_FILE_PATH"].endswith("dynamicconfig/development.yaml")

    setup = services["temporal-setup"]
    assert "temporalio/admin-tools" in setup["image"]
    assert _env(setup)["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert "temporal" in _depends_on(setup)
    assert any("register.sh" in part for part in setup["entrypoint"])

    ui = services["temporal-ui"]
    assert "temporalio/ui" in ui["image"]
    assert "8233:8080" in _ports(ui)
    assert _env(ui)["TEMPORAL_ADDRESS"] == "temporal:7233"

    worker = services["quanto-worker"]
    assert worker["build"]["context"] == "."
    assert worker["build"].get("dockerfile", "Dockerfile") == "Dockerfile"
    assert worker["command"] in (["quanto", "worker"], "quanto worker")
    env = _env(worker)
    assert env["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert env["QUANTO_PG_DSN"] == "postgresql://postgres:postgres@postgresql:5432/quanto"
    assert any(str(v).endswith(":/data/lake") for v in worker["volumes"])
    assert _depends_on(worker) == {
        "postgresql": "service_healthy",
        "temporal-setup": "service_completed_successfully",
    }

    # Every dependency names a service of this file.
    for name, service in services.items():
        assert set(_depends_on(service)) <= set(services), name


def test_compose_volumes_exist(compose):
    """Bind mounts point at repo paths that exist; named volumes are declared at the top level."""
    mounts = [(name, str(v)) for name, s in compose["services"].items() for v in s.get("volumes", [])]
    assert mounts
    for service, volume in mounts:
        source = volume.split(":", 1)[0]
        if source.startswith((".", "/")):
            assert (ROOT / source).resolve().exists(), f"{service}: {source} is not in the repo"
        else:
            assert source in (compose.get("volumes") or {}), f"{service}: volume {source} is not declared"
    bind_sources = {v.split(":", 1)[0] for _, v in mounts}
    assert "./temporal-config/dynamicconfig" in bind_sources
    assert "./temporal-config" in bind_sources


def test_compose_dynamic_config_path_is_the_mounted_file(compose):
    temporal = compose["services"]["temporal"]
    (mount,) = [str(v) for v in temporal["volumes"] if "dynamicconfig" in str(v)]
    source, target = mount.split(":")[:2]
    path_in_container = _env(temporal)["DYNAMIC_CONFIG_FILE_PATH"]
    if not path_in_container.startswith("/"):
        path_in_container = "/etc/temporal/" + path_in_container  # the image's working directory
    assert path_in_container.startswith(target.rstrip("/") + "/")
    relative = path_in_container[len(target.rstrip("/")) + 1 :]
    assert (ROOT / source / relative).is_file()


def test_compose_setup_runs_the_mounted_register_script(compose):
    setup = compose["services"]["temporal-setup"]
    (mount,) = [str(v) for v in setup["volumes"] if str(v).startswith("./temporal-config:")]
    target = mount.split(":")[1].rstrip("/")
    script = next(part for part in setup["entrypoint"] if part.endswith("register.sh"))
    assert script == f"{target}/register.sh"


def _docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    version = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=60)
    return version.returncode == 0


def test_compose_file_is_well_formed(compose):
    assert set(compose) <= {"name", "services", "volumes", "networks"}
    assert "version" not in compose  # obsolete in the Compose specification
    for name, service in compose["services"].items():
        assert ("image" in service) or ("build" in service), name
        for port in service.get("ports", []):
            assert re.fullmatch(r"\d+:\d+", str(port)), (name, port)
        healthcheck = service.get("healthcheck")
        if healthcheck:
            assert healthcheck["test"][0] in ("CMD", "CMD-SHELL"), name
    # `docker compose config` validates without an engine; only where the compose plugin is installed.
    if _docker_compose_available():
        result = subprocess.run(
            ["docker", "compose", "-f", str(COMPOSE), "config", "-q"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert result.returncode == 0, result.stderr


def test_dynamic_config_structure():
    config = yaml.safe_load(DYNAMIC_CONFIG.read_text())
    assert isinstance(config, dict) and config
    for key, entries in config.items():
        assert re.fullmatch(r"[A-Za-z]+(\.[A-Za-z0-9]+)+", key), key
        assert isinstance(entries, list) and entries, key
        for entry in entries:
            assert isinstance(entry, dict) and "value" in entry, key
            assert set(entry) <= {"value", "constraints"}, key
            assert isinstance(entry.get("constraints", {}), dict), key
    assert config["frontend.enableServerVersionCheck"][0]["value"] is False
    assert config["system.forceSearchAttributesCacheRefreshOnRead"][0]["value"] is True
    assert config["limit.maxIDLength"][0]["value"] >= 255


def test_register_script_is_executable_bash_with_valid_syntax():
    text = REGISTER.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert "search-attributes.env" in text
    assert REGISTER.stat().st_mode & stat.S_IXUSR
    result = subprocess.run(["bash", "-n", str(REGISTER)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


FAKE_TEMPORAL = r"""#!/usr/bin/env bash
# A stand-in for the Temporal CLI: state lives in files under $FAKE_STATE.
echo "$*" >>"$FAKE_STATE/calls"
case "$1 $2 $3" in
"operator cluster health") echo SERVING ;;
"operator namespace describe") [[ -f $FAKE_STATE/namespace ]] ;;
"operator namespace create") echo "$*" >"$FAKE_STATE/namespace" ;;
"operator search-attribute list") echo "  Name  Type"; cat "$FAKE_STATE/attributes" 2>/dev/null; true ;;
"operator search-attribute create")
    set -- "$@"
    while (($#)); do
        case $1 in --name) name=$2 ;; --type) type=$2 ;; esac
        shift
    done
    echo "  $name  $type" >>"$FAKE_STATE/attributes" ;;
*) exit 3 ;;
esac
"""


def test_register_script_creates_namespace_and_attributes_once(tmp_path):
    """Run register.sh against a fake `temporal` CLI twice: the second run creates nothing."""
    fake = tmp_path / "temporal"
    fake.write_text(FAKE_TEMPORAL)
    fake.chmod(0o755)
    state = tmp_path / "state"
    state.mkdir()
    env = {
        **os.environ,
        "TEMPORAL_BIN": str(fake),
        "FAKE_STATE": str(state),
        "TEMPORAL_ADDRESS": "temporal.invalid:7233",
        "TEMPORAL_NAMESPACE": "quanto-test",
        "REGISTER_WAIT_SECONDS": "5",
        "QUANTO_SEARCH_ATTRIBUTES_FILE": str(SEARCH_ATTRIBUTES),
    }
    for _ in range(2):
        result = subprocess.run(["bash", str(REGISTER)], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr

    calls = (state / "calls").read_text().splitlines()
    assert all(call.endswith("--address temporal.invalid:7233") for call in calls)
    creates = [c for c in calls if c.startswith("operator namespace create")]
    assert len(creates) == 1
    assert "--namespace quanto-test" in creates[0] and "--retention 168h" in creates[0]
    attribute_creates = [c for c in calls if c.startswith("operator search-attribute create")]
    assert len(attribute_creates) == len(EXPECTED_SEARCH_ATTRIBUTES)
    registered = dict(line.split() for line in (state / "attributes").read_text().splitlines())
    assert registered == EXPECTED_SEARCH_ATTRIBUTES


def test_register_script_gives_up_when_the_server_never_answers(tmp_path):
    fake = tmp_path / "temporal"
    fake.write_text("#!/usr/bin/env bash\necho 'connection refused' >&2\nexit 1\n")
    fake.chmod(0o755)
    env = {**os.environ, "TEMPORAL_BIN": str(fake), "REGISTER_WAIT_SECONDS": "0"}
    result = subprocess.run(["bash", str(REGISTER)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "not healthy" in result.stderr


def test_search_attributes_file_is_the_single_source():
    assert _read_search_attributes() == EXPECTED_SEARCH_ATTRIBUTES
    register = REGISTER.read_text()
    for name in EXPECTED_SEARCH_ATTRIBUTES:
        assert name not in register, f"{name} is hard-coded in register.sh"


def test_dockerfile_installs_runtime_libraries_and_runs_the_worker():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    for package in ("libpango-1.0-0", "libpangoft2-1.0-0", "fonts-dejavu-core"):
        assert package in text
    assert "--no-install-recommends" in text
    assert re.search(r"^RUN pip install \.", text, re.MULTILINE)
    assert "WORKDIR /app" in text
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert text.rstrip().splitlines()[-1] == 'CMD ["quanto", "worker"]'

    # Every COPY source is in the repo, except the readme that pyproject.toml requires for `pip install .`.
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("readme")
    for line in re.findall(r"^COPY\s+(.+)$", text, re.MULTILINE):
        for source in line.split()[:-1]:
            if not source.startswith("--") and source != readme:
                assert (ROOT / source).exists(), source


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    patterns = {line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip()}
    for required in (".venv", ".quanto", ".git"):
        assert required in patterns
    assert any("__pycache__" in pattern for pattern in patterns)


# --- observability: Prometheus, alert rules, Grafana ------------------------------------------------------

DEPLOY = ROOT / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
GRAFANA = DEPLOY / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "quanto.yml"

EXPECTED_ALERTS = {
    "QuantoVendorApiFailures",
    "QuantoMissingDataRate",
    "QuantoModelDrift",
    "QuantoDailyLossNearLimit",
    "QuantoWorkerDown",
}
# Grafana's own variables; dashboards may also use the template variables they define.
GRAFANA_VARIABLES = {"__rate_interval", "__range", "__interval"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
                "bool", "offset", "inf", "nan"}  # fmt: skip


def _mount(service: dict, source: str) -> str:
    """The container path where `service` mounts repo path `source`."""
    (target,) = [str(v).split(":")[1] for v in service.get("volumes", []) if str(v).split(":")[0] == source]
    return target


def _dashboards() -> dict[str, dict]:
    return {path.name: json.loads(path.read_text()) for path in DASHBOARDS}


def _panels(board: dict) -> list[dict]:
    """Every panel, including those nested in collapsed rows."""
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def _dashboard_exprs() -> list[tuple[str, str]]:
    return [
        (f"{name}: {panel['title']}", target["expr"])
        for name, board in _dashboards().items()
        for panel in _panels(board)
        for target in panel.get("targets", [])
    ]


def _alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords and label names left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery durations
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group(0).lower() not in PROMQL_WORDS:
            names.add(match.group(0))
    return names


def known_series() -> set[str]:
    """Series names Quanto's workers export: quanto.observability.metrics' metrics (with the suffixes
    prometheus_client adds), the Temporal SDK metrics it lists, and Prometheus' own `up`."""
    from prometheus_client.metrics import MetricWrapperBase

    from quanto.observability import metrics

    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    names = {"up"}
    for obj in vars(metrics).values():
        if isinstance(obj, MetricWrapperBase):
            for family in obj.describe():
                names |= {family.name + s for s in suffixes[family.type]}
    for name in metrics.TEMPORAL_SDK_METRICS:
        names |= {name, f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def test_metric_name_parser():
    expr = (
        'histogram_quantile(0.95, sum by (stage, le) (rate(quanto_stage_duration_seconds_bucket{status="ok"}'
        "[$__rate_interval]))) / on(stage) group_left sum(x_total offset 5m) > bool 1e3 or vector(0)"
    )
    assert metric_names(expr) == {"quanto_stage_duration_seconds_bucket", "x_total"}
    assert metric_names('up{job="quanto-worker"} == 0') == {"up"}


def test_compose_adds_prometheus_and_grafana_without_port_clashes(compose):
    services = compose["services"]
    assert {"prometheus", "grafana"} <= set(services)
    published = [
        str(port).split(":")[0] for service in services.values() for port in service.get("ports", [])
    ]
    assert len(published) == len(set(published)), published
    for name in ("prometheus", "grafana"):
        image = services[name]["image"]
        assert re.fullmatch(r"[\w./-]+:\$\{[A-Z_]+_VERSION:-[\w.-]+\}", image), (name, image)
        assert "latest" not in image
    assert "9090:9090" in _ports(services["prometheus"])
    assert "3000:3000" in _ports(services["grafana"])
    assert _depends_on(services["grafana"]) == {"prometheus": "service_healthy"}
    assert "prometheus" in (compose.get("volumes") or {}) and "grafana" in (compose.get("volumes") or {})


def test_compose_prometheus_reads_the_mounted_config(compose):
    prometheus = compose["services"]["prometheus"]
    target = _mount(prometheus, "./deploy/prometheus")
    (flag,) = [arg for arg in prometheus["command"] if arg.startswith("--config.file=")]
    config_path = flag.split("=", 1)[1]
    assert config_path.startswith(target.rstrip("/") + "/")
    assert (PROMETHEUS_DIR / config_path[len(target.rstrip("/")) + 1 :]) == PROMETHEUS_CONFIG


def test_compose_worker_and_temporal_expose_what_prometheus_scrapes(compose):
    services = compose["services"]
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"quanto-worker", "temporal", "prometheus"} <= set(jobs)

    worker = services["quanto-worker"]
    port = _env(worker)["QUANTO_METRICS_PORT"]
    assert port in {str(p) for p in worker.get("expose", [])}
    (dns,) = jobs["quanto-worker"]["dns_sd_configs"]
    assert dns["names"] == ["quanto-worker"] and str(dns["port"]) == port

    temporal_endpoint = _env(services["temporal"])["PROMETHEUS_ENDPOINT"]
    (static,) = jobs["temporal"]["static_configs"]
    assert static["targets"] == [f"temporal:{temporal_endpoint.rsplit(':', 1)[1]}"]

    # The Dockerfile serves metrics on the same port by default.
    assert f"ENV QUANTO_METRICS_PORT={port}" in DOCKERFILE.read_text()
    assert f"EXPOSE {port}" in DOCKERFILE.read_text()


def test_prometheus_config_files_exist():
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["global"]["scrape_interval"]
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS_DIR / rule_file).is_file(), rule_file
    (worker_job,) = [job for job in config["scrape_configs"] if job["job_name"] == "quanto-worker"]
    for sd in worker_job.get("file_sd_configs", []):
        for pattern in sd["files"]:
            matched = list(PROMETHEUS_DIR.glob(pattern))
            assert matched, pattern
            for path in matched:
                groups = yaml.safe_load(path.read_text())
                assert isinstance(groups, list), path
                for group in groups:
                    assert set(group) <= {"targets", "labels"} and group["targets"], path


def test_alert_rules_cover_the_five_conditions():
    rules = {rule["alert"]: rule for rule in _alert_rules()}
    assert set(rules) == EXPECTED_ALERTS
    for name, rule in rules.items():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), name
    squash = {name: " ".join(rule["expr"].split()) for name, rule in rules.items()}
    assert (
        squash["QuantoModelDrift"] == "quanto_live_accuracy < 0.5 and quanto_live_accuracy_predictions >= 100"
    )
    assert squash["QuantoDailyLossNearLimit"] == "quanto_daily_loss_used_ratio > 0.8"
    assert squash["QuantoWorkerDown"] == 'up{job="quanto-worker"} == 0'
    assert "quanto_vendor_failures_total" in squash["QuantoVendorApiFailures"]
    missing = squash["QuantoMissingDataRate"]
    assert 'kind="quarantined"' in missing and 'kind="in"' in missing
    # The worker-down rule watches the job prometheus.yml really scrapes.
    jobs = {job["job_name"] for job in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]}
    assert "quanto-worker" in jobs


def test_dashboards_have_what_grafana_needs():
    boards = _dashboards()
    assert set(boards) == {"pipeline-health.json", "trading.json", "model-quality.json"}
    datasource_uid = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]["uid"]
    uids = [board["uid"] for board in boards.values()]
    assert len(set(uids)) == len(uids)
    for name, board in boards.items():
        assert board["title"] and re.fullmatch(r"[a-z0-9-]{1,40}", board["uid"]), name
        assert isinstance(board["schemaVersion"], int) and board["panels"], name
        variables = {v["name"] for v in board.get("templating", {}).get("list", [])}
        panels = _panels(board)
        ids = [panel["id"] for panel in panels]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for panel in panels:
            where = f"{name}: {panel.get('title')}"
            grid = panel["gridPos"]
            assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, where
            if panel["type"] == "row":
                continue
            assert panel["title"] and panel["targets"], where
            assert panel["datasource"]["uid"] == datasource_uid, where
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert len(ref_ids) == len(set(ref_ids)), where
            for target in panel["targets"]:
                assert target["expr"].strip(), where
                used = set(re.findall(r"\$\{?(\w+)", target["expr"]))
                assert used <= GRAFANA_VARIABLES | variables, (where, used - GRAFANA_VARIABLES - variables)


def test_every_metric_in_dashboards_and_alerts_exists():
    known = known_series()
    exprs = _dashboard_exprs() + [(rule["alert"], rule["expr"]) for rule in _alert_rules()]
    used: set[str] = set()
    for where, expr in exprs:
        names = metric_names(expr)
        assert names, (where, expr)
        assert names <= known, (where, sorted(names - known))
        used |= names
    # The dashboards show what the issue asks for: every Quanto metric is on some panel or alert.
    quanto = {n for n in known if n.startswith("quanto_")}
    families = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in quanto}
    shown = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used}
    assert families <= shown, sorted(families - shown)
    # ... and TEMPORAL_SDK_METRICS lists exactly the SDK metrics they use (the endpoint test checks
    # a live worker exports each of them).
    from quanto.observability.metrics import TEMPORAL_SDK_METRICS

    assert {n for n in shown if n.startswith("temporal_")} == TEMPORAL_SDK_METRICS


def test_grafana_provisioning_matches_compose(compose):
    grafana = compose["services"]["grafana"]
    provisioning = _mount(grafana, "./deploy/grafana/provisioning")
    assert provisioning == "/etc/grafana/provisioning"
    dashboards_target = _mount(grafana, "./deploy/grafana/dashboards")
    providers = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == dashboards_target
    home = _env(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dashboards_target + "/")
    assert (GRAFANA / "dashboards" / home[len(dashboards_target) + 1 :]).is_file()

    datasources = yaml.safe_load(DATASOURCES.read_text())
    assert datasources["apiVersion"] == 1
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    host, port = source["url"].removeprefix("http://").split(":")
    assert host in compose["services"] and f"{port}:{port}" in _ports(compose["services"][host])


def test_promtool_checks_config_rules_alert_tests_and_dashboard_queries(tmp_path):
    """promtool: the config and rules load, the alert unit tests pass, and every dashboard query
    parses (as a recording rule, Grafana's variables replaced). CI installs it (.ci/run)."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `apt-get install prometheus` (.ci/run does it)"
    for args in (
        ["check", "config", str(PROMETHEUS_CONFIG)],
        ["check", "rules", str(ALERTS)],
        ["test", "rules", str(ALERTS_TEST)],
    ):
        result = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
    substitutions = {"$__rate_interval": "5m", "$__range": "6h", "$__interval": "1m", "$account": ".*"}
    rules = []
    for i, (_, expr) in enumerate(_dashboard_exprs()):
        for variable, value in substitutions.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    queries = tmp_path / "dashboard-queries.yml"
    queries.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(queries)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
