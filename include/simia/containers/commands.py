"""A run's containers as ``docker`` commands, for running a level by hand.

The DAG's ``train_model``, ``serve_model``, ``evaluate_tau2`` and ``stop_model_server``
tasks start their containers through the Docker API from the specs that
:func:`simia.run_config.level_plans`, :func:`simia.containers.serving.server_spec` and
:func:`simia.evaluation.evaluator.evaluator_spec` build. :func:`run_script` builds the same specs
from a run's ``run.json`` (the Params ``validate_params`` recorded) and writes them as a
bash script: the same images, commands, environment, mounts, names, networks and health
check, so a level can be re-run, debugged or continued outside Airflow.

Secrets are never written: the Hugging Face token and the user simulator's OpenAI key go
in by name only (``-e HF_TOKEN``, ``-e OPENAI_API_KEY``), from the caller's environment.
GPUs: the DAG leases free ones at run time; the script asks for the first ones of the
run's ``gpu_ids`` (or for a count when none are listed). A run recorded with
``SIMIA_GPU_HOSTS`` says on which host each training run was placed, and uses its GPUs.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simia.errors import InputError
from simia.io import read_json
from simia.layout import RunLayout, TrainFiles

__all__ = ["docker_run", "level_commands", "run_script"]


def _gpus(count: int, gpu_ids: str | None) -> list[str]:
    from simia.containers.gpus import parse_gpu_ids

    if count <= 0:
        return []
    ids = parse_gpu_ids(gpu_ids)
    # several device ids need the quotes inside the value (docker splits it as CSV)
    return ["--gpus", f'"device={",".join(ids[:count])}"' if ids else str(count)]


def docker_run(spec: dict[str, Any], *, detach: bool = False, network: str | None = None,
               gpus: Sequence[str] = (), pass_env: Sequence[str] = (),
               labels: dict[str, str] | None = None) -> list[str]:
    """``docker run`` for a container spec (``image``, ``command``, ``environment``,
    ``mounts``, ``container_name``, optional ``entrypoint``, ``user``, ``shm_size``,
    ``healthcheck``); ``pass_env``: variables passed by name from the caller's
    environment (secrets)."""
    argv = ["docker", "run", "-d" if detach else "--rm", "--name", spec["container_name"]]
    if network:
        argv += ["--network", network, "--network-alias", spec["container_name"]]
    if spec.get("user"):
        argv += ["--user", spec["user"]]
    if spec.get("shm_size"):
        argv += ["--shm-size", f"{int(spec['shm_size'])}b"]
    argv += list(gpus)
    for mount in spec.get("mounts", []):
        value = f"type={mount.get('type', 'bind')},source={mount['source']}," \
                f"target={mount['target']}"
        argv += ["--mount", value + (",readonly" if mount.get("read_only") else "")]
    for name, value in sorted(spec.get("environment", {}).items()):
        argv += ["-e", f"{name}={value}"]
    for name in pass_env:
        argv += ["-e", name]
    for name, value in sorted((labels or {}).items()):
        argv += ["--label", f"{name}={value}"]
    health = spec.get("healthcheck")
    if health:
        kind, *test = health
        cmd = shlex.join(test) if kind == "CMD" else test[0]
        argv += ["--health-cmd", cmd, "--health-interval", "5s", "--health-timeout", "10s",
                 "--health-retries", "3"]
    entrypoint = list(spec.get("entrypoint") or [])
    if entrypoint:
        argv += ["--entrypoint", entrypoint[0]]
    return argv + [spec["image"], *entrypoint[1:], *spec["command"]]


def _model_for(plan: dict[str, Any]) -> dict[str, Any]:
    """The trained model when the level's training finished, else the one it will write
    (its output folder, with the base model and fine-tuning type of its YAML)."""
    from simia.containers.serving import model_from_config, trained_model

    if TrainFiles(plan["train_dir"]).summary.is_file():
        return trained_model(plan["train_dir"])
    train = plan["train"]["plan"]
    return model_from_config(train["config_path"], train["output_dir"], plan["level"])


# wait for the server's health check; stop with its last log lines if it exits first
_WAIT_HEALTHY = """while :; do
  state=$(docker inspect -f '{{.State.Status}} {{.State.Health.Status}}' NAME)
  case $state in
    'running healthy') break ;;
    running*) sleep 5 ;;
    *) docker logs --tail 40 NAME; echo "NAME: $state, not healthy" >&2; exit 1 ;;
  esac
done"""

def level_commands(plan: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """One level's steps as (what, commands): train (unless trained), serve (network,
    server, wait until healthy), evaluate, stop; serving and evaluation only when the run
    evaluates. Like the DAG's teardown, the server and its network are removed however
    the script ends once they exist (a shell ``trap``). Each command is a shell line."""
    from simia.evaluation.evaluator import EvalSettings, evaluator_spec
    from simia.containers.serving import ServerSettings, server_spec

    train = plan["train"]
    summary = TrainFiles(plan["train_dir"]).summary
    trainer = docker_run(train, gpus=_gpus(train["gpus_per_training"], plan["gpu_ids"]),
                         pass_env=["HF_TOKEN"], labels=train.get("labels"))
    steps = [("train_model: llamafactory-cli train, unless the level is trained",
              [f"test -f {shlex.quote(str(summary))} || {shlex.join(trainer)}"])]
    if not plan.get("evaluate", True):
        return steps
    replicate = plan.get("replicate", 1)
    server = server_spec(ServerSettings(**plan["server"]), model=_model_for(plan),
                         level=plan["level"], run_key=plan["run_key"], run_dir=plan["run_dir"],
                         replicate=replicate)
    name, network = server["container_name"], server["network"]
    labels = {"simia.run_id": plan["run_id"], "simia.level": f"{plan['level']:g}",
              "simia.replicate": str(replicate)}
    wait = ["bash", "-c", _WAIT_HEALTHY.replace("NAME", name)]
    # like the DAG's teardown: the server and its network go when the script ends early
    cleanup = f"docker rm -f {name} >/dev/null 2>&1; docker network rm {network} " \
              ">/dev/null 2>&1; true"
    steps.append((f"serve_model: {server['backend']} server {name} on network {network}",
                  [shlex.join(cmd) for cmd in (
                      ["docker", "network", "create", network], ["trap", cleanup, "EXIT"],
                      docker_run(server, detach=True, network=network,
                                 gpus=_gpus(server["gpus_per_server"], plan["gpu_ids"]),
                                 labels={**labels, "simia.container": name,
                                         "simia.stage": "serve"}),
                      wait)]))
    settings = EvalSettings(**plan["eval"])
    spec = evaluator_spec(settings, server=server, run_dir=plan["run_dir"])
    steps.append((f"evaluate_tau2: {settings.evaluator} -> {spec['results']}",
                  [shlex.join(docker_run(
                      spec, network=spec["network_mode"],
                      pass_env=["OPENAI_API_KEY"] if settings.evaluator == "tau2" else [],
                      labels={**labels, "simia.container": spec["container_name"],
                              "simia.stage": "evaluate"}))]))
    steps.append(("stop_model_server",
                  [shlex.join(["docker", "rm", "-f", name]),
                   shlex.join(["docker", "network", "rm", network]), "trap - EXIT"]))
    return steps


def run_script(run_dir: str | Path, *, levels: Sequence[float] | None = None,
               replicates: Sequence[int] | None = None) -> str:
    """A bash script of every training run's containers (or of ``levels`` and
    ``replicates``), from the run's
    ``run.json``. Raises :class:`InputError` for a folder that is not a run, or a level
    the run does not have."""
    from simia.run_config import datasets_dir, level_plans
    from simia.settings.hosts import parse_gpu_hosts

    run = Path(run_dir).resolve()
    run_json = RunLayout(run).run_json
    manifest = read_json(run_json, what="run record")
    params = manifest.get("params") if isinstance(manifest, dict) else None
    if not isinstance(params, dict):
        raise InputError(run_json, "no 'params' object: not a run folder written "
                         "by validate_params", field="params")
    params = {**params, "train_models": True}  # show the containers even if it skipped them
    try:
        hosts = parse_gpu_hosts(manifest.get("gpu_hosts"))  # the run's SIMIA_GPU_HOSTS
        plans = level_plans(params, run_dir=run, run_id=manifest["run_id"],
                            dag_id=manifest["dag_id"], dataset_dir=datasets_dir(params, run),
                            hosts=hosts)
    except KeyError as exc:  # a run.json written by another version of the DAG
        raise InputError(run_json, f"no {exc.args[0]!r}: this run.json was written "
                         "by another version of the DAG", field=str(exc.args[0])) from None
    if levels is not None:
        wanted = {float(x) for x in levels}
        have = {p["level"] for p in plans}
        if wanted - have:
            def listed(values: set[float]) -> str:
                return ", ".join(f"{x:g}" for x in sorted(values))

            raise InputError(run_json, f"the run has no level {listed(wanted - have)} "
                             f"(its levels: {listed(have)})", field="params.levels")
        plans = [p for p in plans if p["level"] in wanted]
    if replicates is not None:
        have_runs = {p.get("replicate", 1) for p in plans}
        missing = sorted(set(replicates) - have_runs)
        if missing:
            raise InputError(run / "run.json", f"the run has no replicate "
                             f"{', '.join(map(str, missing))} (its replicates: "
                             f"{', '.join(map(str, sorted(have_runs)))})",
                             field="params.replicates")
        plans = [p for p in plans if p.get("replicate", 1) in set(replicates)]
    lines = ["#!/usr/bin/env bash",
             f"# The containers of run {manifest['run_id']} ({run}), as the DAG starts them;",
             "# written by `simia commands` from the run's run.json. Secrets come from your",
             "# environment by name: export HF_TOKEN (gated models) and OPENAI_API_KEY",
             "# (tau2's user simulator) first.",
             "set -euo pipefail"]
    for plan in plans:
        lines += ["", f"# ---- level {plan['level']:g} %, replicate {plan.get('replicate', 1)}"]
        if plan.get("host"):
            lines.append(f"# placed on host {plan['host']} (GPUs {plan['gpu_ids'] or 'none'}, "
                         f"queue {plan['queue']}): run these there")
        for what, commands in level_commands(plan):
            lines += [f"# {what}", *commands]
    return "\n".join(lines) + "\n"
