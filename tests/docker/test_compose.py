"""The Airflow stack for a GPU host: docker-compose.yaml, .env.example and the Dockerfile.

The compose file is validated and resolved by Debian's docker-compose 1.29.2 (v1; the
oldest Compose it must work with), installed by scripts/docker_engine.sh. Without it
these tests skip with the reason, except when ``$CI`` is set: then they fail.

The Airflow image itself cannot be built here (its base, apache/airflow, comes from a
registry and none is reachable), so the Dockerfile is checked statically.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
pytestmark = pytest.mark.docker

AIRFLOW_SERVICES = ("airflow-init", "airflow-apiserver", "airflow-scheduler",
                    "airflow-dag-processor", "airflow-triggerer")
LONG_RUNNING = ("postgres", "airflow-apiserver", "airflow-scheduler",
                "airflow-dag-processor", "airflow-triggerer")
CONNECTIONS = ("aws_default", "huggingface_default", "openai_default")
SOCKET = "/var/run/docker.sock"


def _unavailable(reason: str) -> None:
    hint = "run scripts/docker_engine.sh (as root) to install Debian's docker-compose"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, so docker-compose is required: {reason}; {hint}")
    pytest.skip(f"{reason}; {hint}")


def _clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without anything compose would interpolate."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SIMIA_", "AIRFLOW", "TAU2_", "POSTGRES_", "DOCKER_",
                                "COMPOSE_"))}
    env.update(extra)
    return env


def _compose(*args: str, env_file: str | Path = ENV_EXAMPLE, **env: str):
    return subprocess.run(["docker-compose", "-f", str(COMPOSE), "--env-file", str(env_file),
                           *args], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=_clean_env(**env), check=False)


@pytest.fixture(scope="module")
def compose_bin() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        _unavailable("docker-compose is not installed")
    return path


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


@pytest.fixture(scope="module")
def config(compose_bin) -> dict:
    """`docker-compose config` with .env.example: the file as Compose resolves it."""
    proc = _compose("config")
    assert proc.returncode == 0, f"docker-compose config failed:\n{proc.stderr}"
    return yaml.safe_load(proc.stdout)


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _binds(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of the bind mounts, v1 (short) or v2 (long) syntax."""
    out = []
    for vol in service.get("volumes") or []:
        if isinstance(vol, str):
            parts = vol.split(":")
            if parts[0].startswith("/"):
                out.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2]))
        elif vol.get("type") == "bind":
            out.append((vol["source"], vol["target"], bool(vol.get("read_only"))))
    return out


def test_config_validates_with_the_example_env(compose_bin):
    proc = _compose("config", "-q")
    assert proc.returncode == 0, proc.stderr


def test_config_without_settings_names_what_is_missing(compose_bin, tmp_path):
    # no .env: `up` must stop with the variable to set, not start a half-configured stack
    empty = tmp_path / "empty.env"
    empty.write_text("")
    proc = _compose("config", "-q", env_file=empty)
    assert proc.returncode != 0
    assert "POSTGRES_PASSWORD" in proc.stderr or "DOCKER_GID" in proc.stderr, proc.stderr


def test_services_restart_and_healthchecks(config):
    services = config["services"]
    assert set(AIRFLOW_SERVICES) | {"postgres"} <= set(services)
    for name in LONG_RUNNING:
        assert services[name].get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
        assert services[name].get("restart") in ("always", "unless-stopped"), name
    assert services["airflow-init"].get("restart") == "no"
    for name in AIRFLOW_SERVICES[1:]:
        deps = services[name]["depends_on"]
        assert deps["airflow-init"]["condition"] == "service_completed_successfully", name
        assert deps["postgres"]["condition"] == "service_healthy", name
    for name in AIRFLOW_SERVICES:
        # the Airflow containers need no GPU: trainings and servers get theirs via the API
        assert "deploy" not in services[name] and "runtime" not in services[name], name
        assert str(services[name]["user"]).endswith(":0"), name
    init = services["airflow-init"]
    assert "airflow db migrate" in " ".join(init["command"])


def test_postgres_is_the_metadata_db_and_localexecutor(config):
    services = config["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    for name in AIRFLOW_SERVICES:
        env = _env(services[name])
        assert re.match(r"postgresql(\+psycopg2)?://airflow:[^@]+@postgres/airflow$",
                        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]), name
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor", name
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == \
            "http://airflow-apiserver:8080/execution/", name
        assert 1 <= int(env["AIRFLOW__CORE__PARALLELISM"]) <= 16, name


def test_login_is_required(config):
    for name in AIRFLOW_SERVICES:
        env = _env(config["services"][name])
        assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith(".SimpleAuthManager"), name
        assert env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "False").lower() \
            not in ("true", "1", "t", "yes"), name
        assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "admin:admin", name
        assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"].startswith(
            "/opt/airflow/secrets/"), name
        # every component shares the generated secrets (tokens cross components)
        for key in ("AIRFLOW__API_AUTH__JWT_SECRET_CMD", "AIRFLOW__API__SECRET_KEY_CMD",
                    "AIRFLOW__CORE__FERNET_KEY_CMD"):
            assert env[key].startswith("cat /opt/airflow/secrets/"), (name, key)
    api = config["services"]["airflow-apiserver"]
    ports = json.dumps(api["ports"])
    assert "127.0.0.1" in ports and "8080" in ports


def test_docker_socket_only_in_the_scheduler_with_its_group(config):
    services = config["services"]
    scheduler = services["airflow-scheduler"]
    assert (SOCKET, SOCKET, False) in _binds(scheduler)
    assert [str(g) for g in scheduler["group_add"]] == ["999"]  # DOCKER_GID of .env.example
    for name, service in services.items():
        if name != "airflow-scheduler":
            assert all(SOCKET not in (s, t) for s, t, _ in _binds(service)), name


def test_data_mounted_at_the_same_path(compose_bin, env_example):
    # the operators' bind mounts are resolved by the host's daemon: same path in and out
    paths = {"SIMIA_DATA_ROOT": "/data/elsewhere/runs", "SIMIA_HF_CACHE": "/data/hf",
             "TAU2_DATA_DIR": "/data/tau2"}
    for env in ({}, paths):
        proc = _compose("config", **env)
        assert proc.returncode == 0, proc.stderr
        scheduler = yaml.safe_load(proc.stdout)["services"]["airflow-scheduler"]
        binds = _binds(scheduler)
        for var in paths:
            path = env.get(var) or env_example[var]
            read_only = var == "TAU2_DATA_DIR"
            assert (path, path, read_only) in binds, (var, binds)
        senv = _env(scheduler)
        assert senv["SIMIA_DATA_ROOT"] == (env.get("SIMIA_DATA_ROOT")
                                           or env_example["SIMIA_DATA_ROOT"])
        assert senv["TAU2_DATA_DIR"] == (env.get("TAU2_DATA_DIR")
                                         or env_example["TAU2_DATA_DIR"])


def _settings_read_by_the_code() -> set[str]:
    # os.environ reads, and the settings models' host defaults (simia.settings.fields)
    pattern = re.compile(
        r"""(?:environ\.get|getenv|environ\[|env_default)\(?\s*["']((?:SIMIA|TAU2)_\w+)""")
    names = set()
    for folder in ("dags", "plugins", "include/simia"):
        for path in (REPO / folder).rglob("*.py"):
            names.update(pattern.findall(path.read_text()))
    return names


def test_every_setting_is_in_the_example_and_passed_through(config, env_example):
    names = _settings_read_by_the_code()
    assert {"SIMIA_DATA_ROOT", "TAU2_DATA_DIR", "SIMIA_GPU_IDS"} <= names
    missing = names - set(env_example)
    assert not missing, f"add to .env.example (with a comment): {sorted(missing)}"
    for service in ("airflow-scheduler", "airflow-dag-processor"):
        env = _env(config["services"][service])
        for name in names:
            assert env.get(name) == env_example[name], (service, name)
    for name in ("AIRFLOW_UID", "DOCKER_GID", "AIRFLOW_ADMIN_USER", "AIRFLOW_ADMIN_PASSWORD",
                 "POSTGRES_PASSWORD"):
        assert name in env_example, name


def test_connections_in_the_example_and_given_to_the_scheduler(config):
    # the connection ids the DAG, its settings (Param defaults) and operators use by default
    dag_source = "".join(p.read_text() for folder in ("dags", "plugins", "include/simia/settings")
                         for p in (REPO / folder).rglob("*.py"))
    lines = ENV_EXAMPLE.read_text().splitlines()
    env = _env(config["services"]["airflow-scheduler"])
    for conn_id in CONNECTIONS:
        assert f'"{conn_id}"' in dag_source, conn_id
        var = f"AIRFLOW_CONN_{conn_id.upper()}"
        examples = [line for line in lines if var in line]
        assert examples and all(line.startswith("# ") for line in examples), var
        value = examples[0].split("=", 1)[1].strip("'")
        conn = json.loads(value)
        assert conn["conn_type"] and conn.get("password")
        if conn_id == "aws_default":
            assert {"region_name", "endpoint_url"} <= set(conn["extra"])
        assert env[var] == "", var  # passed through, empty in the example


SECRET_PATTERNS = (r"AKIA[0-9A-Z]{16}", r"hf_[A-Za-z0-9]{20,}", r"sk-[A-Za-z0-9_-]{20,}",
                   r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
SECRET_KEY = re.compile(r"(PASSWORD|SECRET|TOKEN|_KEY|AIRFLOW_CONN_\w+)$")


def _walk(node, path=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, (*path, str(key)))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, (*path, str(i)))
    else:
        yield path, node


def test_no_secret_literals():
    raw = COMPOSE.read_text()
    for text in (raw, ENV_EXAMPLE.read_text()):
        for pattern in SECRET_PATTERNS:
            assert not re.search(pattern, text), pattern
    for path, value in _walk(yaml.safe_load(raw)):
        if isinstance(value, str) and SECRET_KEY.search(path[-1]):
            # only interpolations, without a default other than empty
            assert re.fullmatch(r"\$\{\w+(:\?[^}]*|:-)?\}", value), (path, value)
        if isinstance(value, str) and "://" in value:
            # credentials in URLs: the password must be an interpolation
            for password in re.findall(r"://[^:/@\s]+:([^@\s]+)@", value):
                assert password.startswith("${") and ":-" not in password, (path, value)


def test_init_writes_the_secrets_and_the_admin_password(tmp_path):
    """airflow-init's script (with the secrets folder moved to tmp_path and no DB)."""
    script = yaml.safe_load(COMPOSE.read_text())["services"]["airflow-init"]["command"]
    assert script[0] == "-euc"
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    body = (script[1].replace("/opt/airflow/secrets", str(secrets)).replace("$$", "$")
            .replace("airflow db migrate", "echo migrated"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "ADMIN_USER": "admin", "ADMIN_PASSWORD": ""}

    def run(**over):
        proc = subprocess.run(["bash", "-euc", body], env={**env, **over}, capture_output=True,
                              text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    out = run()
    assert "migrated" in out and "Generated the password of 'admin'" in out
    first = {p.name: p.read_text() for p in secrets.iterdir()}
    assert set(first) == {"jwt_secret", "api_secret_key", "fernet_key", "passwords.json"}
    for name, text in first.items():
        assert text and not text.endswith("\n") or name == "passwords.json", name
        assert (secrets / name).stat().st_mode & 0o077 == 0, name
    from cryptography.fernet import Fernet

    Fernet(first["fernet_key"].encode())
    generated = json.loads(first["passwords.json"])["admin"]
    assert generated in out
    # a second start keeps every secret and the generated password, printing nothing
    out = run()
    assert "Generated" not in out
    assert {p.name: p.read_text() for p in secrets.iterdir()} == first
    # a password set in .env replaces the stored one; the other secrets stay
    run(ADMIN_PASSWORD="from-env-example")
    assert json.loads((secrets / "passwords.json").read_text()) == {"admin": "from-env-example"}
    assert (secrets / "jwt_secret").read_text() == first["jwt_secret"]


def test_dockerfile_installs_pinned_and_copies_dags_and_plugins():
    # static only: apache/airflow cannot be pulled here (no registry is reachable)
    text = (REPO / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    base = lines[0]
    assert base == "FROM apache/airflow:3.3.2-python3.11"
    pin = re.search(r"^apache-airflow==([\d.]+)$", (REPO / "requirements.txt").read_text(), re.M)
    assert pin and pin.group(1) == "3.3.2"
    assert re.search(r"pip install [^\n]*-r /opt/simia/requirements\.txt "
                     r"-c /opt/simia/constraints\.txt", text)
    assert re.search(r"^COPY [^\n]*requirements\.txt constraints\.txt", text, re.M)
    assert re.search(r"^COPY (--chown=\S+ )?dags /opt/airflow/dags$", text, re.M)
    assert re.search(r"^COPY (--chown=\S+ )?plugins /opt/airflow/plugins$", text, re.M)
    assert re.search(r"pip install [^\n]*--no-deps [^\n]*/opt/simia\b", text)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert not users or users[-1] not in ("root", "0"), "the image must end as non-root"
