"""``EvaluateTau2Operator``: tau2-bench (or the CI evaluator) against one level's server.

A :class:`~simia_airflow.containers.SimiaContainerOperator` (a ``DockerOperator``: clean
starts, deterministic names and labels, secrets through ``private_environment``) that
runs the evaluator container on the level's Docker network (where the server answers
under its container name), with:

- **skip finished work**: a ``results.json`` that already holds every task's trials is
  not evaluated again; an interrupted one is continued (``--auto-resume``);
- **the user simulator's OpenAI key** from a connection at run time
  (``OPENAI_API_KEY``: never templated, logged or returned);
- **a small XCom**: counts and pass^1 (infrastructure errors counted as failures, tau2's
  own figure beside it), from ``results.json``.

This module is imported when the DAG is parsed: no ``simia`` import at module level.
"""

from __future__ import annotations

from typing import Any

from simia_airflow.connections import ConnectionSecret
from simia_airflow.containers import SimiaContainerOperator


class EvaluationFailedError(RuntimeError):
    """The evaluator exited non-zero or wrote no usable results."""


class EvaluateTau2Operator(SimiaContainerOperator):
    """Evaluate one level's served model; writes ``eval/<slug>/results.json``.

    Args:
        level: The level's plan from ``plan_levels`` (templated; mapped argument):
            ``run_dir``, ``eval`` (:class:`simia.evaluation.evaluator.EvalSettings` fields).
        server: ``serve_model``'s result (templated; its XCom).
        user_conn_id: Connection whose password (or ``api_key`` extra) is the user
            simulator's OpenAI key; missing = no key (a local user simulator).
    """

    template_fields = (*SimiaContainerOperator.template_fields, "server")
    stage = "evaluate"
    default_image = "simia/evaluator"

    def __init__(self, *, level: Any, server: Any, user_conn_id: str | None = "openai_default",
                 **kwargs: Any) -> None:
        super().__init__(level=level, secrets={"OPENAI_API_KEY": ConnectionSecret(
            user_conn_id, "api_key", missing="the user simulator gets no API key")}, **kwargs)
        self.server = server
        self.user_conn_id = user_conn_id

    def execute(self, context: Any) -> dict[str, Any]:  # type: ignore[override]
        from simia.evaluation.evaluator import EvalSettings, evaluator_spec, finished_results

        self.check_host()
        settings = EvalSettings(**self.level["eval"])
        spec = evaluator_spec(settings, server=self.server, run_dir=self.level["run_dir"])
        counts = finished_results(spec["results"], spec["num_trials"])
        if counts is not None:
            self.log.info("level %g %% already has all %d x %d results in %s; not evaluating "
                          "again", spec["level"], counts["tasks"], spec["num_trials"],
                          spec["results"])
            return self._summarise(spec, counts, skipped=True)
        self.use_container(spec)
        self.clean_start()
        self.log.info("evaluating level %g %% with %s (%s) against %s; results: %s",
                      spec["level"], spec["evaluator"], spec["image"],
                      self.server["base_url"], spec["results"])

        def failed(lines: list[str]) -> EvaluationFailedError:
            last = lines[-1].strip() if lines else "no output"
            return EvaluationFailedError(
                f"the {spec['evaluator']} evaluator failed for level {spec['level']:g} %: "
                f"{last}. The container log is above. Partial results are kept and a "
                "retry continues them (--auto-resume).")

        self.run_container(context, failed)
        counts = finished_results(spec["results"], spec["num_trials"])
        if counts is None:
            counts = finished_results(spec["results"], spec["num_trials"],
                                      accept_infrastructure_errors=True)
            if counts is None:
                raise EvaluationFailedError(
                    f"the evaluator exited 0 but {spec['results']} does not hold every task's "
                    f"{spec['num_trials']} trials; clear this task to continue it")
            ti = context.get("ti")
            if ti is not None and ti.try_number <= ti.max_tries:
                raise EvaluationFailedError(
                    f"{counts['infrastructure_errors']} simulation(s) of level "
                    f"{spec['level']:g} % ended in infrastructure errors (the server or the "
                    "user simulator failed, not the model); the retry re-runs only them")
            self.log.warning(
                "%d simulation(s) still end in infrastructure errors after the last try; the "
                "analysis treats them as missing data (and calls the comparison invalid if "
                "there are too many)", counts["infrastructure_errors"])
        return self._summarise(spec, counts, skipped=False)

    def _summarise(self, spec: dict[str, Any], counts: dict[str, int], *, skipped: bool
                   ) -> dict[str, Any]:
        from simia.evaluation.evaluator import results_headline, write_eval_summary

        headline = results_headline(spec["results"])
        summary = write_eval_summary(spec, self.server, {**counts, **headline}, skipped=skipped)
        self.log.info(
            "level %g %%: pass^1 %.3f over %d tasks x %d trials (%d infrastructure errors "
            "and %d missing runs counted as failures; tau2's own pass^1, which drops them: "
            "%s)", spec["level"], headline["pass_1"] or 0.0, headline["tasks"],
            headline["trials"], headline["infrastructure_errors"], headline["missing_runs"],
            "n/a" if headline["tau2_pass_1"] is None else f"{headline['tau2_pass_1']:.3f}")
        return summary
