"""Evaluating a served model on tau2-bench telecom: the evaluator container of one level.

Two evaluators take the same arguments and write the same ``results.json`` format:

- ``tau2`` (production): ``tau2 run`` from tau2-bench v1.0.1 in ``docker/evaluator``,
  with the user simulator on OpenAI (key from an Airflow connection, passed as a
  private environment variable) or any litellm model;
- ``simia-ci`` (where tau2 cannot be installed, e.g. CI): :mod:`simia.evaluation.ci_evaluator`, a
  small evaluator of ours that drives the served model through the same OpenAI API
  with tau2-style tool-calling requests and a scripted user.

Both always get ``--auto-resume`` (tau2 otherwise asks an interactive question when its
output exists), an explicit temperature in ``--agent-llm-args`` (which *replaces*
tau2's default) and a ``max_tokens`` cap on agent and user replies
(:attr:`EvalSettings.agent_max_tokens`, :attr:`EvalSettings.user_max_tokens`) unless the
LLM arguments set one. The run-time facts of one evaluation
(``eval/<slug>/eval_summary.json``) are written by :func:`write_eval_summary`.

Infrastructure errors (a simulation that raised after tau2's retries: server down,
malformed tool-call JSON, an empty reply) are simulations that did not run: an
evaluation is finished only when every task x trial has a simulation that is not one
(:func:`finished_results`), and ``--auto-resume`` drops them and runs them again (tau2's
``runner/checkpoint.py``; the CI evaluator does the same). What still fails after a
retry is left in ``results.json`` for the analysis, which counts it as missing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


from simia.settings.evaluation import EvalSettings
from simia.errors import ConfigError
from simia.io import read_json, write_json
from simia.redaction import redact
from simia.containers.training import default_user
from simia.layout import EvalFiles, RunLayout, run_slug

__all__ = ["EvalSettings", "eval_dir", "evaluator_spec", "finished_results", "llm_args",
           "missing_evaluations", "missing_trainings", "results_headline",
           "write_eval_summary"]

_INFRASTRUCTURE_ERROR = "infrastructure_error"
#: request arguments that already cap a reply's length (litellm accepts both)
_MAX_TOKENS_KEYS = ("max_tokens", "max_completion_tokens")


def eval_dir(run_dir: str | Path, level: float, replicate: int = 1) -> Path:
    """``<run>/eval/<run slug>``: tau2's ``--save-to`` folder and our summary."""
    return RunLayout(run_dir).eval(level, replicate).dir


def _agent_model(backend: str, served: str) -> str:
    # litellm routes "hosted_vllm/<name>" to a vLLM server and "openai/<name>" to any
    # OpenAI-compatible one; the name after the slash is what the server is asked for
    return f"hosted_vllm/{served}" if backend == "vllm" else f"openai/{served}"


def llm_args(args: dict[str, Any], *, temperature: float, max_tokens: int) -> dict[str, Any]:
    """``args`` with the temperature set and ``max_tokens`` added when ``max_tokens`` > 0
    and ``args`` caps no reply length of its own (``max_tokens`` or
    ``max_completion_tokens``)."""
    out = {**args, "temperature": temperature}
    if max_tokens > 0 and not any(k in args for k in _MAX_TOKENS_KEYS):
        out["max_tokens"] = max_tokens
    return out


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
    agent_args = {**llm_args(settings.agent_llm_args, temperature=settings.agent_temperature,
                             max_tokens=settings.agent_max_tokens),
                  "api_base": server["base_url"]}
    if server["backend"] != "vllm":
        agent_args.setdefault("api_key", "EMPTY")  # litellm's openai/ route wants one
    user_args = llm_args(settings.user_llm_args, temperature=settings.user_temperature,
                         max_tokens=settings.user_max_tokens)
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
            "timeout_s": settings.timeout_s,
            # what the requests carry (no secret: keys are refused in the settings, and the
            # placeholder key of the openai/ route is dropped)
            "agent_llm_args": redact(agent_args), "user_llm_args": redact(user_args)}


def finished_results(results_path: str | Path, num_trials: int, *,
                     accept_infrastructure_errors: bool = False) -> dict[str, int] | None:
    """``{"tasks": T, "simulations": S, "infrastructure_errors": I}`` when ``results.json``
    holds every task's ``num_trials`` trials (a finished evaluation that a retry need not
    repeat), else None.

    A task x trial counts only when one of its simulations did not end in
    ``infrastructure_error``: such a simulation did not run, and ``--auto-resume`` (tau2's
    and the CI evaluator's) drops it and runs it again, so an evaluation with one is not
    finished and a retry re-runs it. tau2 writes ``results.json`` as it goes, so a file
    from an interrupted run is incomplete too.

    ``accept_infrastructure_errors=True`` relaxes this to "every task x trial was attempted"
    (an infrastructure error fills its cell): the check after an evaluator has run, so that
    what still fails after its retries is left to the analysis as missing data instead of
    failing the evaluation again and again. ``I`` counts the simulations that ended in
    ``infrastructure_error``.
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
    sims = [s for s in sims if isinstance(s, dict)]
    infra = sum(1 for s in sims if s.get("termination_reason") == _INFRASTRUCTURE_ERROR)
    done = {(s.get("task_id"), s.get("trial")) for s in sims
            if accept_infrastructure_errors
            or s.get("termination_reason") != _INFRASTRUCTURE_ERROR}
    wanted = {(t.get("id"), k) for t in tasks if isinstance(t, dict) for k in range(num_trials)}
    if not wanted <= done:
        return None
    return {"tasks": len(tasks), "simulations": len(sims), "infrastructure_errors": infra}


def write_eval_summary(spec: dict[str, Any], server: dict[str, Any],
                       counts: dict[str, int], *, skipped: bool) -> dict[str, Any]:
    """``eval/<slug>/eval_summary.json``: what was evaluated, how, and where the results are."""
    agent_args = spec.get("agent_llm_args") or {}
    user_args = spec.get("user_llm_args") or {}
    replicate = server.get("replicate", 1)
    summary = {"level": server["level"], "replicate": replicate,
               "slug": run_slug(server["level"], replicate),
               "backend": server["backend"], "evaluator": spec["evaluator"],
               "model": server["served_model_name"], "model_path": server.get("model_path"),
               "num_trials": spec["num_trials"], "results": spec["results"],
               "agent_llm_args": agent_args, "user_llm_args": user_args,
               "agent_max_tokens": _reply_cap(agent_args),
               "user_max_tokens": _reply_cap(user_args), **counts, "skipped": skipped}
    write_json(EvalFiles.of_results(spec["results"]).summary, summary, indent=True)
    return summary


def _reply_cap(args: dict[str, Any]) -> int | None:
    """The cap on one reply that ``args`` carry (None: uncapped)."""
    for key in _MAX_TOKENS_KEYS:
        if args.get(key) is not None:
            return int(args[key])
    return None


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
    a simulation of every task x trial. Infrastructure errors that a retry of the
    evaluation left count as run here: the analysis treats them as missing data and
    says whether they leave the comparison valid."""
    run = RunLayout(run_dir)
    return [(float(level), k) for level in sorted(levels) for k in range(1, replicates + 1)
            if finished_results(run.eval(level, k).results, num_trials,
                                accept_infrastructure_errors=True) is None]


def missing_trainings(run_dir: str | Path, levels: list[float], replicates: int = 1
                      ) -> list[tuple[float, int]]:
    """Training runs (level, replicate) without ``train/<run>/training_summary.json``
    (training did not finish)."""
    run = RunLayout(run_dir)
    return [(float(level), k) for level in sorted(levels) for k in range(1, replicates + 1)
            if not run.train(level, k).summary.is_file()]
