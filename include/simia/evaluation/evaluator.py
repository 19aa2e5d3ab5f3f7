"""Evaluating a served model on tau2-bench telecom: the evaluator container of one level.

Two evaluators take the same arguments and write the same ``results.json`` format:

- ``tau2`` (production): ``tau2 run`` from tau2-bench v1.0.1 in ``docker/evaluator``,
  with the user simulator on OpenAI (key from an Airflow connection, passed as a
  private environment variable) or any litellm model;
- ``simia-ci`` (where tau2 cannot be installed, e.g. CI): :mod:`simia.evaluation.ci_evaluator`, a
  small evaluator of ours that drives the served model through the same OpenAI API
  with tau2-style tool-calling requests and a scripted user.

Both always get ``--auto-resume`` (tau2 otherwise asks an interactive question when its
output exists) and an explicit temperature in ``--agent-llm-args`` (which *replaces*
tau2's default). The run-time facts of one evaluation (``eval/<slug>/eval_summary.json``)
are written by :func:`write_eval_summary`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


from simia.settings.evaluation import EvalSettings
from simia.errors import ConfigError
from simia.io import read_json, write_json
from simia.containers.training import default_user
from simia.layout import EvalFiles, RunLayout, run_slug

__all__ = ["EvalSettings", "eval_dir", "evaluator_spec", "finished_results",
           "missing_evaluations", "missing_trainings", "results_headline",
           "write_eval_summary"]


def eval_dir(run_dir: str | Path, level: float, replicate: int = 1) -> Path:
    """``<run>/eval/<run slug>``: tau2's ``--save-to`` folder and our summary."""
    return RunLayout(run_dir).eval(level, replicate).dir


def _agent_model(backend: str, served: str) -> str:
    # litellm routes "hosted_vllm/<name>" to a vLLM server and "openai/<name>" to any
    # OpenAI-compatible one; the name after the slash is what the server is asked for
    return f"hosted_vllm/{served}" if backend == "vllm" else f"openai/{served}"


def evaluator_spec(settings: EvalSettings, *, server: dict[str, Any], run_dir: str | Path,
                   user_conn: str | None = None) -> dict[str, Any]:
    """Image, command, environment, mounts and network of one level's evaluator.

    ``server`` is :func:`simia.containers.serving.server_spec`'s result (the base URL on the level's
    network and the served model name). No secret is part of the result: the user
    simulator's key is added by the operator as a private environment variable.
    """
    files = EvalFiles(eval_dir(run_dir, server["level"], server.get("replicate", 1)).resolve())
    out = files.dir
    out.mkdir(parents=True, exist_ok=True)
    agent_args = {**settings.agent_llm_args, "api_base": server["base_url"],
                  "temperature": settings.agent_temperature}
    if server["backend"] != "vllm":
        agent_args.setdefault("api_key", "EMPTY")  # litellm's openai/ route wants one
    user_args = {**settings.user_llm_args, "temperature": settings.user_temperature}
    args = ["--domain", settings.domain,
            "--agent-llm", _agent_model(server["backend"], server["served_model_name"]),
            "--agent-llm-args", json.dumps(agent_args, sort_keys=True),
            "--user-llm", settings.user_llm,
            "--user-llm-args", json.dumps(user_args, sort_keys=True),
            "--num-trials", str(settings.num_trials),
            "--max-concurrency", str(settings.max_concurrency),
            "--max-steps", str(settings.max_steps),
            "--max-errors", str(settings.max_errors),
            "--seed", str(settings.seed),
            "--task-split-name", settings.task_split,
            "--save-to", str(out),
            "--auto-resume"]
    if settings.num_tasks:
        args += ["--num-tasks", str(settings.num_tasks)]
    env = {"HOME": "/tmp", "PYTHONUNBUFFERED": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    mounts = [{"source": str(Path(run_dir).resolve()), "target": str(Path(run_dir).resolve()),
               "type": "bind", "read_only": False}]
    if settings.tau2_data_dir:
        data = Path(settings.tau2_data_dir).resolve()
        if not data.is_dir():
            raise ConfigError(f"tau2 data directory {settings.tau2_data_dir!r} is not a folder "
                              "the worker can see")
        env["TAU2_DATA_DIR"] = str(data)
        mounts.append({"source": str(data), "target": str(data), "type": "bind",
                       "read_only": True})
    if settings.evaluator == "tau2":
        command = ["tau2", "run", *args, "--log-level", "INFO"]
    else:
        command = ["python3", "-m", "simia.evaluation.ci_evaluator", "run", *args]
    return {"level": server["level"], "replicate": server.get("replicate", 1),
            "image": settings.image, "command": command,
            "environment": env, "mounts": mounts, "network_mode": server["network"],
            "user": default_user(), "results": str(files.results),
            "container_name": server["container_name"].replace("simia-serve-", "simia-eval-"),
            "evaluator": settings.evaluator, "num_trials": settings.num_trials,
            "timeout_s": settings.timeout_s}


def finished_results(results_path: str | Path, num_trials: int) -> dict[str, int] | None:
    """``{"tasks": T, "simulations": S}`` when ``results.json`` holds every task's
    ``num_trials`` trials (a finished evaluation that a retry need not repeat), else None.

    tau2 writes ``results.json`` as it goes (``--auto-resume`` continues from it), so a
    file from an interrupted run is incomplete and the evaluation runs again.
    """
    path = Path(results_path)
    if not path.is_file():
        return None
    try:
        data = read_json(path, what="tau2 results")
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    tasks = data.get("tasks") or []
    sims = data.get("simulations") or []
    if not isinstance(tasks, list) or not isinstance(sims, list) or not tasks:
        return None
    done = {(s.get("task_id"), s.get("trial")) for s in sims if isinstance(s, dict)}
    wanted = {(t.get("id"), k) for t in tasks if isinstance(t, dict) for k in range(num_trials)}
    if not wanted <= done:
        return None
    return {"tasks": len(tasks), "simulations": len(sims)}


def write_eval_summary(spec: dict[str, Any], server: dict[str, Any],
                       counts: dict[str, int], *, skipped: bool) -> dict[str, Any]:
    """``eval/<slug>/eval_summary.json``: what was evaluated, how, and where the results are."""
    replicate = server.get("replicate", 1)
    summary = {"level": server["level"], "replicate": replicate,
               "slug": run_slug(server["level"], replicate),
               "backend": server["backend"], "evaluator": spec["evaluator"],
               "model": server["served_model_name"], "model_path": server.get("model_path"),
               "num_trials": spec["num_trials"], "results": spec["results"], **counts,
               "skipped": skipped}
    write_json(EvalFiles.of_results(spec["results"]).summary, summary, indent=True)
    return summary


def results_headline(results_path: str | Path) -> dict[str, Any]:
    """The few numbers a task log and XCom need from ``results.json``: pass^1 with
    infrastructure errors and missing runs counted as failures, tau2's own pass^1 (which
    drops them) beside it, and how many there were."""
    from simia.evaluation.tau2_results import read_tau2_results

    res = read_tau2_results(results_path)
    return {"pass_1": res.pass_hat_k.get(1), "tau2_pass_1": res.tau2_pass_hat_k.get(1),
            "tasks": len(res.task_ids), "trials": res.trials,
            "infrastructure_errors": res.infrastructure_errors,
            "missing_runs": len(res.missing_cells)}


def missing_evaluations(run_dir: str | Path, levels: list[float], num_trials: int,
                        replicates: int = 1) -> list[tuple[float, int]]:
    """Training runs (level, replicate) whose ``eval/<run>/results.json`` does not hold
    every task's trials."""
    run = RunLayout(run_dir)
    return [(float(level), k) for level in sorted(levels) for k in range(1, replicates + 1)
            if finished_results(run.eval(level, k).results, num_trials) is None]


def missing_trainings(run_dir: str | Path, levels: list[float], replicates: int = 1
                      ) -> list[tuple[float, int]]:
    """Training runs (level, replicate) without ``train/<run>/training_summary.json``
    (training did not finish)."""
    run = RunLayout(run_dir)
    return [(float(level), k) for level in sorted(levels) for k in range(1, replicates + 1)
            if not run.train(level, k).summary.is_file()]
