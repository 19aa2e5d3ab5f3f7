"""The DAG's model half in real containers: LLaMA-Factory on the CPU trainer image trains
a tiny locally built Qwen2 model for every level of a small run (full fine-tuning with
DeepSpeed ZeRO-3, and LoRA without it); each level is then served (the CPU chat server
on its own Docker network) and evaluated by the CI evaluator, and the report is written
with its plots. A bad config fails with LLaMA-Factory's error in the task log, a server
that never becomes healthy fails serve_model within its timeout with the server's log;
no container or network is left behind on any path."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import yaml

from simia.layout import run_slug

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "simia_sycophancy_experiment"
pytestmark = [pytest.mark.e2e, pytest.mark.docker]


@pytest.fixture(scope="module")
def dag(experiment_dag):
    return experiment_dag


def _conf(tmp_path, raw_file, tau2_dir, image, model, cache, **over) -> dict:
    # every input Param explicitly: dag.test keeps the previous run's conf as defaults
    conf = {"raw_conversations": str(raw_file), "seeds_file": "", "judge_scores": "",
            "label_source": "rules", "sycophancy_source": "natural", "output_format": "native",
            "data_root": str(tmp_path),
            "tau2_data_dir": str(tau2_dir), "levels": [0, 20], "dataset_size": 20,
            "shared_clean": 15, "replicates": 1, "train_models": True, "base_model": str(model),
            "trainer_image": image, "finetuning_type": "full", "deepspeed": "zero3",
            "bf16": False, "flash_attn": "sdpa", "cutoff_len": 512, "max_steps": 2,
            "learning_rate": 1e-4, "grad_accum": 1, "preprocessing_workers": 1,
            "gpus_per_training": 0, "gpu_ids": "", "model_cache_dir": str(cache),
            "hub_offline": True, "shm_size_gb": 1, "train_extra": {},
            "evaluate_models": False, "serve_backend": "transformers",
            "server_image": "simia/evaluator:cpu", "max_model_len": 4096,
            "gpu_memory_utilization": 0.9, "gpus_per_server": 0,
            "server_startup_timeout_s": 300, "server_extra_args": [],
            "evaluator": "simia-ci", "evaluator_image": "simia/evaluator:cpu",
            "eval_domain": "telecom", "task_split": "base", "num_tasks": 2, "num_trials": 2,
            "user_llm": "scripted", "user_llm_args": {}, "user_llm_conn_id": "openai_default",
            # sampled: greedy decoding makes the tiny model answer whitespace only, which
            # tau2 (and our CI evaluator) record as an infrastructure error, not a reply
            "agent_temperature": 1.0, "user_temperature": 0.0,
            "agent_llm_args": {"max_tokens": 16}, "eval_max_concurrency": 2,
            "eval_max_steps": 8, "eval_seed": 300, "eval_data_dir": "", "eval_timeout_h": 1}
    conf.update(over)
    return conf


def containers_with(docker_api, **labels: str) -> list:
    """Every container (running or not) carrying all the given labels."""
    filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
    return docker_api.containers.list(all=True, filters=filters)


def networks_with(docker_api, **labels: str) -> list:
    filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
    return docker_api.networks.list(filters=filters)


def _states(dr) -> dict:
    return {(ti.task_id, ti.map_index): ti.state for ti in dr.get_task_instances()}


def _check_trained(run: Path, levels: list[str], adapter: bool) -> list[dict]:
    summaries = []
    for slug in levels:
        summary = json.loads((run / "train" / slug / "training_summary.json").read_text())
        out = Path(summary["output_dir"])
        assert list(out.glob("checkpoint-*")), f"no checkpoint in {out}"
        weights = "adapter_model.safetensors" if adapter else "model.safetensors"
        assert (out / weights).is_file()
        assert summary["steps"] == 2 and summary["loss_curve"]
        assert all(math.isfinite(loss) for _, loss in summary["loss_curve"])
        assert math.isfinite(summary["final_loss"])
        summaries.append(summary)
    return summaries


@pytest.mark.parametrize("finetuning, deepspeed, levels, replicates, tasks, trials", [
    ("full", "zero3", [0, 20], 2, 2, 2), ("lora", "none", [20], 1, 1, 1)])
def test_every_level_trains_serves_and_is_evaluated(finetuning, deepspeed, levels, replicates,
                                                    tasks, trials, dag,
                                                    docker_api, evaluator_cpu_image,
                                                    tiny_model, model_cache, raw_file,
                                                    tau2_dir, tmp_path, monkeypatch, capfd):
    secret = "hf_TEST_secret_4f2b9"  # an HF token in the connection: used, never shown
    openai_secret = "sk-TEST-openai-77c1"  # the user simulator's key: passed, never shown
    monkeypatch.setenv("AIRFLOW_CONN_HUGGINGFACE_DEFAULT", json.dumps(
        {"conn_type": "generic", "password": secret}))
    monkeypatch.setenv("AIRFLOW_CONN_OPENAI_DEFAULT", json.dumps(
        {"conn_type": "generic", "password": openai_secret}))
    conf = _conf(tmp_path, raw_file, tau2_dir, "simia/trainer:cpu", tiny_model, model_cache,
                 finetuning_type=finetuning, deepspeed=deepspeed, evaluate_models=True,
                 server_image=evaluator_cpu_image, evaluator_image=evaluator_cpu_image,
                 num_tasks=tasks, num_trials=trials, levels=levels, replicates=replicates)
    dr = dag.test(run_conf=conf)
    assert dr.state == "success", _states(dr)
    run = next((tmp_path / DAG_ID).iterdir())
    runs = [(level, k) for k in range(1, replicates + 1) for level in levels]
    slugs = [run_slug(level, k) for level, k in runs]
    summaries = _check_trained(run, slugs, adapter=finetuning == "lora")
    configs = {(s["level"], s["replicate"]): yaml.safe_load(Path(s["config_path"]).read_text())
               for s in summaries}
    for (level, k), config in configs.items():  # identical hyperparameters: only the
        for (other_level, other_k), other in configs.items():  # data, folder, seed differ
            differ = {key for key in config if config[key] != other.get(key)}
            assert config.keys() == other.keys()
            assert differ <= ({"dataset", "output_dir"} if k == other_k
                              else {"dataset", "output_dir", "seed"})
            if k != other_k:
                assert "seed" in differ
    xcoms = [ti.xcom_pull(task_ids="level.train_model", map_indexes=ti.map_index)
             for ti in dr.get_task_instances() if ti.task_id == "level.train_model"]
    assert sorted((x["level"], x["replicate"]) for x in xcoms) == sorted(runs)
    assert not any(x["skipped"] for x in xcoms)
    # every level was served and evaluated: tau2's results format, every task x trial
    for slug in slugs:
        results = json.loads((run / "eval" / slug / "results.json").read_text())
        cells = {(s["task_id"], s["trial"]) for s in results["simulations"]}
        assert len(cells) == tasks * trials
        summary = json.loads((run / "eval" / slug / "eval_summary.json").read_text())
        assert summary["evaluator"] == "simia-ci" and summary["model"] == f"simia-{slug}"
        assert 0.0 <= summary["pass_1"] <= 1.0
    # the report's verdict is the run-aware analysis's over every training run; on 2 tasks
    # x 2 trials of a tiny model it may be any verdict, with one level it is insufficient
    report = json.loads((run / "report" / "report.json").read_text())
    verdict = report["headline"]["verdict"]
    assert verdict == report["analysis"]["verdict"]
    assert verdict in (("decrease", "increase", "no_effect", "invalid", "insufficient")
                       if len(levels) > 1 else ("insufficient",))
    assert report["analysis"]["replicates_per_level"] == {f"{lv:g}": replicates
                                                          for lv in levels}
    assert [(r["level"], r["replicate"]) for r in report["runs"]] == sorted(runs)
    assert list(report["training"]) == [run_slug(lv, k) for lv, k in sorted(runs)]
    assert {Path(p).name for p in report["plots"]} >= {"dose_response.png",
                                                       "training_loss.png"}
    assert (run / "report" / "report.html").stat().st_size > 10_000
    assert containers_with(docker_api, **{"simia.run_id": dr.run_id}) == []
    assert networks_with(docker_api, **{"simia.run_id": dr.run_id}) == []
    out = capfd.readouterr()
    if finetuning == "full":
        _rerun_level_by_hand(run, slugs[0], docker_api)
    evals = [ti.xcom_pull(task_ids="level.evaluate_tau2", map_indexes=ti.map_index)
             for ti in dr.get_task_instances() if ti.task_id == "level.evaluate_tau2"]
    for token in (secret, openai_secret):
        assert token not in out.out + out.err and token not in json.dumps(xcoms + evals)
        assert not [p for p in run.rglob("*") if p.is_file()
                    and p.stat().st_size < 10_000_000 and token.encode() in p.read_bytes()]


def test_a_server_that_never_gets_healthy_fails_within_its_timeout(
        docker_api, evaluator_cpu_image, tiny_model, model_cache, tmp_path, capfd):
    """serve_model's operator against the real engine (no training needed: the tiny model
    stands in for a trained level): the server listens on another port than its health
    check asks, so it is up but never healthy."""
    import sys

    sys.path.insert(0, str(ROOT / "plugins"))
    from simia_airflow.serving import ServeModelOperator, ServerFailedError, \
        StopModelServerOperator

    run = tmp_path / "run"
    train = run / "train" / "0pct"
    train.mkdir(parents=True)
    (train / "train_config.yaml").write_text(yaml.safe_dump(
        {"model_name_or_path": str(tiny_model), "finetuning_type": "full"}))
    (train / "training_summary.json").write_text(json.dumps(
        {"level": 0.0, "model_path": str(tiny_model),
         "config_path": str(train / "train_config.yaml")}))
    run_id = f"unhealthy-{tmp_path.name}"
    level = {"level": 0.0, "run_dir": str(run), "run_key": f"test/{run_id}", "run_id": run_id,
             "lock_dir": str(tmp_path / "locks"), "gpu_ids": None, "train_dir": str(train),
             "evaluate": True,
             "server": {"backend": "transformers", "image": evaluator_cpu_image,
                        "max_model_len": 4096, "gpus_per_server": 0,
                        "startup_timeout_s": 15, "extra_args": ["--port", "8999"],
                        "model_cache_dir": str(model_cache)}}
    serve = ServeModelOperator(task_id="serve_model", level=level, poll_s=1.0)
    start = time.monotonic()
    with pytest.raises(ServerFailedError, match="was not healthy after 15 s") as failed:
        serve.execute({"run_id": run_id})
    assert time.monotonic() - start < 90
    assert "loading" in str(failed.value)  # the server's last log lines are in the error
    logged = capfd.readouterr()
    assert "[server] loading" in logged.out + logged.err  # streamed into the task log
    # the failed setup removed what it started (a failed setup runs no teardown) ...
    assert containers_with(docker_api, **{"simia.run_id": run_id}) == []
    assert networks_with(docker_api, **{"simia.run_id": run_id}) == []
    # ... and the teardown is idempotent on what is already gone
    done = StopModelServerOperator(task_id="stop_model_server", level=level).execute({})
    assert done["containers_removed"] == 0 and done["network_removed"] is False


def test_a_bad_config_fails_with_the_containers_error_and_leaves_nothing(
        dag, docker_api, trainer_cpu_image, tiny_model, model_cache, raw_file, tau2_dir,
        tmp_path, capfd, monkeypatch):
    from datetime import timedelta

    conf = _conf(tmp_path, raw_file, tau2_dir, trainer_cpu_image, tiny_model, model_cache,
                 levels=[20], deepspeed="none",
                 train_extra={"optim": "no_such_optimizer"})
    train = dag.get_task("level.train_model")  # retry at once (what is tested is the retry)
    monkeypatch.setattr(train, "retry_delay", timedelta(seconds=1))
    monkeypatch.setattr(train, "retry_exponential_backoff", False)
    dr = dag.test(run_conf=conf)
    assert dr.state == "failed"
    tis = [ti for ti in dr.get_task_instances() if ti.task_id == "level.train_model"]
    assert tis and all(ti.state == "failed" for ti in tis), _states(dr)
    assert all(ti.try_number == 2 for ti in tis)  # retried, and the retry started cleanly
    log = capfd.readouterr()
    text = log.out + log.err
    assert "no_such_optimizer" in text and "LLaMA-Factory failed for level" in text
    assert "leftover container" not in text  # the failed try removed its own container
    assert "were not trained" in text  # the report task names the levels, then fails
    assert containers_with(docker_api, **{"simia.run_id": dr.run_id}) == []
    run = next((tmp_path / DAG_ID).iterdir())
    failure = json.loads((run / "failures" / "level.train_model.0.json").read_text())
    assert "no_such_optimizer" in failure["error"]
    assert failure["by_hand"] == f"simia commands {run} --level 20 --replicate 1"


def _rerun_level_by_hand(run: Path, slug: str, docker_api) -> None:
    """`simia commands` for a finished run, executed against the real engine: training is
    skipped (the level is trained), the server starts and gets healthy, the evaluator
    writes the same results the DAG's evaluate_tau2 wrote, and nothing is left."""
    import subprocess
    import sys

    before = json.loads((run / "eval" / slug / "results.json").read_text())
    (run / "eval" / slug / "results.json").rename(run / "eval" / f"{slug}.dag.json")
    script = run / "by_hand.sh"
    subprocess.run([sys.executable, "-m", "simia.cli", "commands", str(run), "--level",
                    slug.removesuffix("pct"), "-o", str(script)], check=True)
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    after = json.loads((run / "eval" / slug / "results.json").read_text())

    def rewards(results: dict) -> dict:
        return {(s["task_id"], s["trial"]): (s.get("reward_info") or {}).get("reward")
                for s in results["simulations"]}

    assert rewards(after) == rewards(before)
    run_id = json.loads((run / "run.json").read_text())["run_id"]
    assert containers_with(docker_api, **{"simia.run_id": run_id}) == []
    assert not [n for n in docker_api.networks.list() if n.name.startswith("simia-net-")
                and n.name.endswith(f"-{slug}")]

