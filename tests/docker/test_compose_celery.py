"""Several GPU hosts: docker-compose.celery.yaml (the control plane, CeleryExecutor) and
docker-compose.gpu-worker.yaml (one GPU host's Celery worker), resolved with .env.example
by Debian's docker-compose 1.29.2 like docker-compose.yaml (tests/docker/test_compose.py,
whose helpers these checks share). Without docker-compose they skip with the reason,
except when ``$CI`` is set: then they fail.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from test_compose import (ENV_EXAMPLE, SECRET_KEY, SECRET_PATTERNS, SOCKET, _binds,
                          _clean_env, _env, _settings_read_by_the_code, _walk, compose_bin,
                          env_example)

REPO = Path(__file__).resolve().parents[2]
CELERY = REPO / "docker-compose.celery.yaml"
WORKER = REPO / "docker-compose.gpu-worker.yaml"
pytestmark = pytest.mark.docker
__all__ = ["compose_bin", "env_example"]  # fixtures shared with test_compose

CONTROL_AIRFLOW = ("airflow-init", "airflow-apiserver", "airflow-scheduler",
                   "airflow-dag-processor", "airflow-triggerer", "airflow-worker-cpu")


def _compose(file: Path, *args: str, env_file: Path = ENV_EXAMPLE, **env: str):
    return subprocess.run(["docker-compose", "-f", str(file), "--env-file", str(env_file),
                           *args], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=_clean_env(**env), check=False)


def _config(file: Path, **env: str) -> dict:
    proc = _compose(file, "config", **env)
    assert proc.returncode == 0, f"docker-compose config failed:\n{proc.stderr}"
    return yaml.safe_load(proc.stdout)


@pytest.mark.parametrize("file", [CELERY, WORKER], ids=lambda f: f.name)
def test_config_validates_with_the_example_env(compose_bin, file):
    proc = _compose(file, "config", "-q")
    assert proc.returncode == 0, proc.stderr


def test_single_host_file_still_validates_and_keeps_localexecutor(compose_bin):
    config = _config(REPO / "docker-compose.yaml")
    env = _env(config["services"]["airflow-scheduler"])
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["SIMIA_GPU_HOSTS"] == ""


def test_worker_without_the_control_plane_names_what_is_missing(compose_bin, tmp_path):
    lines = [line for line in ENV_EXAMPLE.read_text().splitlines()
             if not line.startswith("SIMIA_CONTROL_HOST=")]
    partial = tmp_path / "partial.env"
    partial.write_text("\n".join(lines) + "\n")
    proc = _compose(WORKER, "config", "-q", env_file=partial)
    assert proc.returncode != 0 and "SIMIA_CONTROL_HOST" in proc.stderr, proc.stderr


def test_control_plane_runs_celery_with_redis_and_postgres(compose_bin, env_example):
    services = _config(CELERY)["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")
    assert "--requirepass" in " ".join(services["redis"]["command"])
    for name in ("postgres", "redis", *CONTROL_AIRFLOW[1:]):
        assert services[name].get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
        assert services[name].get("restart") == "unless-stopped", name
    password = env_example["POSTGRES_PASSWORD"]
    for name in CONTROL_AIRFLOW:
        env = _env(services[name])
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CELERY__BROKER_URL"] == \
            f"redis://:{env_example['REDIS_PASSWORD']}@redis:6379/0", name
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == \
            f"db+postgresql://airflow:{password}@postgres/airflow", name
        assert env["AIRFLOW__API__SECRET_KEY"] == env_example["AIRFLOW_API_SECRET_KEY"], name
        assert int(env["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT"]) \
            >= 86400, name
        if name != "airflow-init":
            deps = services[name]["depends_on"]
            assert deps["airflow-init"]["condition"] == "service_completed_successfully"
            assert deps["redis"]["condition"] == "service_healthy", name
        # no Docker socket on the control plane: no stage there starts a container
        assert all(SOCKET not in (s, t) for s, t, _ in _binds(services[name])), name
    cpu = services["airflow-worker-cpu"]["command"]
    assert cpu[:2] == ["celery", "worker"] and cpu[cpu.index("--queues") + 1] == "default"
    bind = env_example["SIMIA_CONTROL_BIND"]
    for name, port in (("airflow-apiserver", 8080), ("redis", 6379), ("postgres", 5432)):
        published = [str(p).removesuffix("/tcp") for p in services[name]["ports"]]
        assert f"{bind}:{port}:{port}" in published, (name, published)


def test_init_migrates_writes_the_marker_and_requires_the_hosts():
    script = yaml.safe_load(CELERY.read_text())["services"]["airflow-init"]["command"][1]
    assert "airflow db migrate" in script
    assert re.search(r'simia init-data-root "\$\$\{SIMIA_DATA_ROOT\}" '
                     r'--id "\$\$\{SIMIA_DATA_ROOT_ID\}"', script)
    # the required settings are checked first (bash, without Airflow): a missing one stops
    # airflow-init, and so the stack, with the variable's name
    checks = "\n".join(line for line in script.splitlines()
                       if line.startswith(": ")).replace("$$", "$")
    for missing in ("SIMIA_GPU_HOSTS", "SIMIA_DATA_ROOT_ID"):
        env = {"SIMIA_GPU_HOSTS": "gpu-a:0", "SIMIA_DATA_ROOT_ID": "nfs-1", missing: ""}
        proc = subprocess.run(["bash", "-euc", checks], env=env, capture_output=True,
                              text=True, timeout=30, check=False)
        assert proc.returncode != 0 and missing in proc.stderr, proc.stderr
    ok = subprocess.run(["bash", "-euc", checks], capture_output=True, text=True, timeout=30,
                        env={"SIMIA_GPU_HOSTS": "gpu-a:0", "SIMIA_DATA_ROOT_ID": "nfs-1"},
                        check=False)
    assert ok.returncode == 0, ok.stderr


def test_gpu_worker_serves_its_queue_on_its_gpus_with_the_shared_data(compose_bin,
                                                                      env_example):
    host = {"SIMIA_WORKER_NAME": "gpu-b", "SIMIA_GPU_IDS": "4,5",
            "SIMIA_WORKER_HOSTNAME": "gpu-b.lab.internal", "SIMIA_CONTROL_HOST": "10.0.0.5",
            "SIMIA_GPU_HOSTS": "gpu-a:0,1;gpu-b:4,5", "SIMIA_DATA_ROOT": "/mnt/nfs/simia"}
    worker = _config(WORKER, **host)["services"]["airflow-worker"]
    command = worker["command"]
    assert command[:2] == ["celery", "worker"]
    assert command[command.index("--queues") + 1] == "simia-gpu-b"
    assert command[command.index("--celery-hostname") + 1] == "gpu-b"
    assert worker["hostname"] == "gpu-b.lab.internal"
    env = _env(worker)
    assert env["SIMIA_GPU_IDS"] == "4,5" and env["SIMIA_GPU_HOSTS"] == "gpu-a:0,1;gpu-b:4,5"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"] == \
        f"redis://:{env_example['REDIS_PASSWORD']}@10.0.0.5:6379/0"
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == \
        f"db+postgresql://airflow:{env_example['POSTGRES_PASSWORD']}@10.0.0.5:5432/airflow"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://10.0.0.5:8080/execution/"
    assert env["AIRFLOW__API__SECRET_KEY"] == env_example["AIRFLOW_API_SECRET_KEY"]
    # the log server (v1 writes a port without an address in the long syntax)
    assert [(p["published"], p["target"]) if isinstance(p, dict)
            else tuple(int(x) for x in str(p).removesuffix("/tcp").split(":"))
            for p in worker["ports"]] == [(8793, 8793)]
    binds = _binds(worker)
    assert (SOCKET, SOCKET, False) in binds
    assert [str(g) for g in worker["group_add"]] == [env_example["DOCKER_GID"]]
    assert ("/mnt/nfs/simia", "/mnt/nfs/simia", False) in binds
    for var, read_only in (("SIMIA_HF_CACHE", False), ("TAU2_DATA_DIR", True)):
        path = env_example[var]
        assert (path, path, read_only) in binds, var
    assert "deploy" not in worker and "runtime" not in worker


def test_every_setting_reaches_every_worker_with_the_example_value(compose_bin, env_example):
    names = _settings_read_by_the_code()
    missing = names - set(env_example)
    assert not missing, f"add to .env.example (with a comment): {sorted(missing)}"
    celery = _config(CELERY)["services"]
    workers = {"airflow-worker-cpu": celery["airflow-worker-cpu"],
               "airflow-scheduler": celery["airflow-scheduler"],
               "airflow-dag-processor": celery["airflow-dag-processor"],
               "gpu worker": _config(WORKER)["services"]["airflow-worker"]}
    for service, config in workers.items():
        env = _env(config)
        for name in names:
            assert env.get(name) == env_example[name], (service, name)
    for service in ("airflow-worker-cpu", "gpu worker"):
        env = _env(workers[service])
        for conn in ("AWS_DEFAULT", "HUGGINGFACE_DEFAULT", "OPENAI_DEFAULT"):
            assert env[f"AIRFLOW_CONN_{conn}"] == "", (service, conn)


@pytest.mark.parametrize("file", [CELERY, WORKER], ids=lambda f: f.name)
def test_no_secret_literals(file):
    raw = file.read_text()
    for pattern in SECRET_PATTERNS:
        assert not re.search(pattern, raw), pattern
    for path, value in _walk(yaml.safe_load(raw)):
        if isinstance(value, str) and SECRET_KEY.search(path[-1]):
            assert re.fullmatch(r"\$\{\w+(:\?[^}]*|:-)?\}", value), (path, value)
        if isinstance(value, str) and "://" in value:
            for password in re.findall(r"://[^:/@\s]*:([^@\s]+)@", value):
                assert password.startswith("${") and ":-" not in password, (path, value)
