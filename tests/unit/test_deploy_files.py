"""Deployment files: docker-compose.yml, Dockerfile and temporal-config/ are consistent and well formed."""

from __future__ import annotations

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
