"""Each run setting is written once: the DAG's Params are the settings models' fields
(same default, bounds, title, description, section), and the reverse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simia.settings import (RUN_MODELS, build, defined_settings, param_specs,
                            shared_settings)

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "simia_sycophancy_experiment"
# Params added after the settings models took over (issue 14: replicate training runs,
# caps on the evaluated agent's and the user simulator's replies)
ADDED_SINCE = {"replicates", "agent_max_tokens", "user_max_tokens",
               # the verdict's declared test and the power plan's assumptions
               "primary_endpoint", "analysis_alternative", "analysis_alpha", "smallest_effect",
               "target_power", "planning_run_sd", "planning_task_run_sd", "run_variance_from",
               "llm_prompt_caching",  # prompt caching on Bedrock
               # collection driven by the design, counterfactual twins (issue 15)
               "collection", "sycophancy_source", "collect_max_attempts",
               "collect_budget_usd", "collect_pilot",
               "llm_max_failed_share"}  # a stage with too many failed items fails
#: defaults changed on purpose since: labels from the LLM judge (rules flag about 1 in 160
#: valid conversations, so a default run could never fill its sycophantic slots)
CHANGED_SINCE = {"label_source": "judge"}
HOST_VARIABLES = ("SIMIA_GPU_IDS", "SIMIA_DATA_ROOT", "TAU2_DATA_DIR", "SIMIA_HF_CACHE",
                  "SIMIA_TRAINER_IMAGE", "SIMIA_SERVER_IMAGE", "SIMIA_EVALUATOR",
                  "SIMIA_EVALUATOR_IMAGE")


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"), safe_mode=False).dags[DAG_ID]


def _json(value):
    return json.loads(json.dumps(value))


def test_every_param_is_a_model_field_with_its_default_and_schema(dag):
    settings = defined_settings()
    assert set(dag.params) == set(settings)
    for name, param in dag.params.items():
        s = settings[name]
        assert param.value == _json(s.default()), name
        assert param.schema["section"] == s.model.section, name
        assert param.schema["title"] == s.info.title, name
        assert (param.description or "") == (s.info.description or ""), name


def test_every_model_field_declared_a_setting_is_a_param(dag):
    for model in RUN_MODELS:
        for s in defined_settings().values():
            if s.model is model:
                assert s.param in dag.params, (model.__name__, s.field)


def test_bounds_and_choices_come_from_the_model():
    specs = param_specs()
    assert specs["learning_rate"]["exclusiveMinimum"] == 0
    assert specs["levels"]["items"] == {"type": "number", "minimum": 0, "maximum": 100}
    assert specs["deepspeed"]["enum"] == ["none", "zero2", "zero3", "zero3_offload"]
    assert specs["num_trials"]["maximum"] == 32
    assert specs["source_run"]["type"] == ["null", "string"]


def test_a_field_that_takes_another_settings_value_has_its_default():
    settings = defined_settings()
    shared = shared_settings()
    assert {s.param for s in shared} >= {"seed", "template", "hub_offline"}
    for s in shared:
        assert s.param in settings, f"{s.model.__name__}.{s.field} -> {s.param}"
        assert s.default() == settings[s.param].default(), (s.model.__name__, s.field)


def test_every_model_builds_from_the_params_with_its_defaults(dag):
    params = {name: p.value for name, p in dag.params.items()}
    for model in RUN_MODELS:
        extra = {"model_cache_dir": "/cache"} if model.__name__ == "ServerSettings" else {}
        built, default = build(model, params, **extra), model(**extra)
        for s in defined_settings().values():
            if s.model is model:
                assert _json(getattr(built, s.field)) == _json(getattr(default, s.field)), \
                    s.param


def test_params_are_unchanged_by_the_settings_models(monkeypatch):
    """Names, defaults, sections and titles as the DAG wrote them by hand before (on a
    host without GPUs or simia environment variables)."""
    for name in HOST_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    before = json.loads((ROOT / "tests/fixtures/params_before_settings_models.json")
                        .read_text())
    now = param_specs()
    assert set(now) - set(before) == ADDED_SINCE
    assert set(before) <= set(now)
    for name, old in before.items():
        assert now[name]["default"] == CHANGED_SINCE.get(name, old["default"]), name
        assert now[name]["section"] == old["section"], name
        assert now[name]["title"] == old["title"], name


def test_host_defaults_follow_the_environment(monkeypatch):
    monkeypatch.setenv("SIMIA_GPU_IDS", "0,1")
    monkeypatch.setenv("SIMIA_DATA_ROOT", "/srv/simia")
    specs = param_specs()
    assert specs["gpu_ids"]["default"] == "0,1"
    assert specs["gpus_per_training"]["default"] == 2
    assert specs["serve_backend"]["default"] == "vllm"
    assert specs["trainer_image"]["default"] == "simia/trainer:cuda"
    assert specs["data_root"]["default"] == "/srv/simia"


def _defaults(tmp_path) -> dict:
    params = {name: spec["default"] for name, spec in param_specs().items()}
    return {**params, "data_root": str(tmp_path), "tau2_data_dir": str(tmp_path),
            "serve_backend": "transformers", "gpus_per_training": 0, "gpu_ids": ""}


def test_validation_records_the_power_plan_of_the_declared_test(tmp_path, capsys):
    from simia.layout import RunLayout
    from simia.pipeline import validate

    run = RunLayout(tmp_path / "run")
    p = {**_defaults(tmp_path), "replicates": 2}
    validate(p, run, dag_id=DAG_ID, run_id="manual__1")
    plan = json.loads(run.run_json.read_text())["power_plan"]
    assert plan["replicates"] == 2 and plan["alternative"] == "less"
    assert plan["replicates_needed"] >= 2
    assert 0 < plan["power_of_this_run"] < 1
    assert plan["power_by_replicates"]["2"] == plan["power_of_this_run"]
    assert "power plan:" in capsys.readouterr().out


def test_an_unusable_earlier_analysis_is_a_problem_naming_its_param(tmp_path):
    from simia.run_config import check_run_params

    p = {**_defaults(tmp_path), "run_variance_from": str(tmp_path / "nope.json")}
    assert any(m.startswith("run_variance_from:") for m in check_run_params(p))
    p = {**_defaults(tmp_path), "analysis_alpha": 0.7}
    assert any("analysis alpha (Param analysis_alpha)" in m for m in check_run_params(p))


def test_a_one_level_run_is_an_a_a_run_without_a_slope_to_plan(tmp_path):
    from simia.run_config import power_plan

    plan = power_plan({**_defaults(tmp_path), "levels": [20], "replicates": 4})
    assert "A/A run" in plan["line"] and plan["replicates"] == 4
