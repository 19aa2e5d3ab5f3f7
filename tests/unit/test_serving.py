"""Server and evaluator container specs: backends, LoRA, secrets kept out, resumption."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from simia.errors import InputError
from simia.evaluation.evaluator import (EvalSettings, evaluator_spec, finished_results,
                                       missing_evaluations, write_eval_summary)
from simia.layout import RunLayout
from simia.containers.serving import (DEFAULT_VLLM_IMAGE, ServerSettings, network_name,
                                     server_container_name, server_spec, trained_model)


def _trained(tmp_path: Path, finetuning: str = "full") -> Path:
    train = tmp_path / "run" / "train" / "5pct"
    out = train / "output"
    out.mkdir(parents=True, exist_ok=True)
    cfg = train / "train_config.yaml"
    cfg.write_text(yaml.safe_dump({"model_name_or_path": str(tmp_path / "base"),
                                   "finetuning_type": finetuning}))
    (tmp_path / "base").mkdir(exist_ok=True)
    (train / "training_summary.json").write_text(json.dumps(
        {"level": 5.0, "model_path": str(out), "config_path": str(cfg)}))
    return train


def _settings(tmp_path, **kw) -> ServerSettings:
    # the production server (the model's default follows the host: none here has a GPU)
    kw = {"backend": "vllm", "image": DEFAULT_VLLM_IMAGE, **kw}
    return ServerSettings(model_cache_dir=str(tmp_path / "cache"), **kw)


def test_vllm_server_spec(tmp_path):
    model = trained_model(_trained(tmp_path))
    spec = server_spec(_settings(tmp_path, gpus_per_server=2, max_model_len=16384),
                       model=model, level=5, run_key="dag/run", run_dir=tmp_path / "run")
    cmd = spec["command"]
    assert spec["entrypoint"][-1] == "vllm.entrypoints.openai.api_server"
    assert cmd[cmd.index("--model") + 1] == model["model_path"]
    assert cmd[cmd.index("--served-model-name") + 1] == "simia-5pct"
    assert {"--enable-auto-tool-choice", "--tool-call-parser", "hermes"} <= set(cmd)
    assert cmd[cmd.index("--max-model-len") + 1] == "16384"
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "2"
    assert spec["container_name"] == server_container_name("dag/run", 5)
    assert spec["network"] == network_name("dag/run", 5)
    assert spec["base_url"] == f"http://{spec['container_name']}:8000/v1"
    assert spec["gpus_per_server"] == 2
    json.dumps(spec)  # plain data for XCom


def test_cpu_backends_and_lora(tmp_path):
    model = trained_model(_trained(tmp_path, "lora"))
    assert model["finetuning_type"] == "lora"
    spec = server_spec(_settings(tmp_path, backend="transformers", gpus_per_server=1),
                       model=model, level=5, run_key="k", run_dir=tmp_path / "run")
    cmd = spec["command"]
    assert cmd[:3] == ["python3", "-m", "simia.containers.chat_server"]
    assert cmd[cmd.index("--model") + 1] == model["base_model"]
    assert cmd[cmd.index("--adapter") + 1] == model["model_path"]
    assert spec["gpus_per_server"] == 0  # CPU backends never lease GPUs
    # the base model outside the run dir is mounted read-only at the same path
    assert {"source": model["base_model"], "target": model["base_model"], "type": "bind",
            "read_only": True} in spec["mounts"]
    lf = server_spec(_settings(tmp_path, backend="llamafactory-api"), model=model, level=5,
                     run_key="k", run_dir=tmp_path / "run")
    assert lf["command"][:2] == ["llamafactory-cli", "api"]
    assert lf["environment"]["API_MODEL_NAME"] == "simia-5pct"
    assert "--adapter_name_or_path" in lf["command"]
    vl = server_spec(_settings(tmp_path), model=model, level=5, run_key="k",
                     run_dir=tmp_path / "run")
    assert f"simia-5pct={model['model_path']}" in vl["command"] and "--enable-lora" in vl[
        "command"]


def test_untrained_level_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="was not trained"):
        trained_model(tmp_path / "nothing")
    train = _trained(tmp_path)
    (train / "training_summary.json").write_text(json.dumps({"model_path": "/no/such"}))
    with pytest.raises(InputError, match="model_path"):
        trained_model(train)


def _server(tmp_path, backend="vllm") -> dict:
    return server_spec(_settings(tmp_path, backend=backend), model=trained_model(
        _trained(tmp_path)), level=5, run_key="k", run_dir=tmp_path / "run")


def test_tau2_command_always_resumes_and_sets_temperatures(tmp_path):
    server = _server(tmp_path)
    spec = evaluator_spec(EvalSettings(num_tasks=10, agent_llm_args={"max_tokens": 512}),
                          server=server, run_dir=tmp_path / "run")
    cmd = spec["command"]
    assert cmd[:2] == ["tau2", "run"] and "--auto-resume" in cmd
    assert cmd[cmd.index("--agent-llm") + 1] == "hosted_vllm/simia-5pct"
    agent = json.loads(cmd[cmd.index("--agent-llm-args") + 1])
    # the request arguments' own max_tokens wins over the default cap
    assert agent == {"api_base": server["base_url"], "temperature": 0.0, "max_tokens": 512}
    assert json.loads(cmd[cmd.index("--user-llm-args") + 1]) == {"temperature": 0.0,
                                                                  "max_tokens": 1024}
    assert cmd[cmd.index("--num-trials") + 1] == "4"
    assert cmd[cmd.index("--num-tasks") + 1] == "10"
    assert cmd[cmd.index("--save-to") + 1] == str((tmp_path / "run/eval/5pct").resolve())
    assert spec["network_mode"] == server["network"]
    assert spec["container_name"].startswith("simia-eval-")
    ci = evaluator_spec(EvalSettings(evaluator="simia-ci"),
                        server=_server(tmp_path, "transformers"), run_dir=tmp_path / "run")
    assert ci["command"][:4] == ["python3", "-m", "simia.evaluation.ci_evaluator", "run"]
    assert ci["command"][ci["command"].index("--agent-llm") + 1] == "openai/simia-5pct"


def _llm_args(spec: dict, which: str) -> dict:
    cmd = spec["command"]
    return json.loads(cmd[cmd.index(f"--{which}-llm-args") + 1])


def test_agent_and_user_replies_are_capped_by_default(tmp_path):
    server = _server(tmp_path)
    run = tmp_path / "run"
    default = evaluator_spec(EvalSettings(), server=server, run_dir=run)
    assert _llm_args(default, "agent")["max_tokens"] == 1024
    assert _llm_args(default, "user")["max_tokens"] == 1024
    custom = evaluator_spec(EvalSettings(agent_max_tokens=300, user_max_tokens=0,
                                         user_llm_args={"max_completion_tokens": 2048}),
                            server=server, run_dir=run)
    assert _llm_args(custom, "agent")["max_tokens"] == 300
    # 0: no cap; a max_completion_tokens of the user's own is kept alone
    assert _llm_args(custom, "user") == {"temperature": 0.0, "max_completion_tokens": 2048}
    uncapped = evaluator_spec(EvalSettings(agent_max_tokens=0), server=server, run_dir=run)
    assert "max_tokens" not in _llm_args(uncapped, "agent")
    ci = evaluator_spec(EvalSettings(evaluator="simia-ci"),
                        server=_server(tmp_path, "transformers"), run_dir=run)
    assert _llm_args(ci, "agent")["max_tokens"] == 1024
    assert "api_key" not in ci["agent_llm_args"]  # the spec's record holds no key
    with pytest.raises(ValidationError):
        EvalSettings(agent_max_tokens=-1)


def test_keys_are_refused_in_llm_arguments():
    with pytest.raises(ValidationError, match="connections"):
        EvalSettings(user_llm_args={"api_key": "sk-x"})
    with pytest.raises(ValidationError, match="connections"):
        EvalSettings(agent_llm_args={"Auth_Token": "x"})


def test_finished_results_needs_every_trial(tmp_path):
    path = tmp_path / "results.json"
    assert finished_results(path, 2) is None
    tasks = [{"id": "a"}, {"id": "b"}]
    sims = [{"task_id": t, "trial": k} for t in "ab" for k in range(2)]
    path.write_text(json.dumps({"tasks": tasks, "simulations": sims[:3]}))
    assert finished_results(path, 2) is None
    path.write_text(json.dumps({"tasks": tasks, "simulations": sims}))
    assert finished_results(path, 2) == {"tasks": 2, "simulations": 4,
                                         "infrastructure_errors": 0}
    path.write_text("{not json")
    assert finished_results(path, 2) is None


def test_infrastructure_errors_are_not_finished_work(tmp_path):
    """A simulation that ended in infrastructure_error did not run: the evaluation is not
    finished (a retry re-runs it with --auto-resume) unless another simulation of the same
    task x trial ran; after a retry, accept_infrastructure_errors leaves it to the analysis."""
    run = tmp_path / "run"
    path = RunLayout(run).eval(5).results
    path.parent.mkdir(parents=True)
    tasks = [{"id": "a"}, {"id": "b"}]
    sims = [{"task_id": t, "trial": k, "termination_reason": "user_stop"}
            for t in "ab" for k in range(2)]
    sims[1]["termination_reason"] = "infrastructure_error"
    path.write_text(json.dumps({"tasks": tasks, "simulations": sims}))
    assert finished_results(path, 2) is None
    # after the evaluation's retries, what remains is the analysis's missing data: the
    # report's check asks only whether every cell has a simulation
    assert missing_evaluations(run, [5.0], 2) == []
    assert finished_results(path, 2, accept_infrastructure_errors=True) == {
        "tasks": 2, "simulations": 4, "infrastructure_errors": 1}
    # the same cell run again (e.g. a merged file): done
    path.write_text(json.dumps({"tasks": tasks, "simulations": sims + [
        {"task_id": "a", "trial": 1, "termination_reason": "agent_stop"}]}))
    assert finished_results(path, 2) == {"tasks": 2, "simulations": 5,
                                         "infrastructure_errors": 1}
    assert missing_evaluations(run, [5.0], 2) == []


def test_eval_summary_is_written_next_to_the_results(tmp_path):
    server = _server(tmp_path)
    spec = evaluator_spec(EvalSettings(), server=server, run_dir=tmp_path / "run")
    summary = write_eval_summary(spec, server, {"tasks": 2, "simulations": 8}, skipped=False)
    on_disk = json.loads((Path(spec["results"]).parent / "eval_summary.json").read_text())
    assert on_disk == summary and summary["slug"] == "5pct" and summary["evaluator"] == "tau2"
    # the caps and arguments the requests carried
    assert summary["agent_max_tokens"] == 1024 and summary["user_max_tokens"] == 1024
    assert summary["agent_llm_args"] == {"api_base": server["base_url"], "temperature": 0.0,
                                         "max_tokens": 1024}
    assert summary["user_llm_args"] == {"temperature": 0.0, "max_tokens": 1024}
    uncapped = evaluator_spec(EvalSettings(user_max_tokens=0), server=server,
                              run_dir=tmp_path / "run")
    assert write_eval_summary(uncapped, server, {}, skipped=True)["user_max_tokens"] is None
