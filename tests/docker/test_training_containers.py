"""The DAG's training stage in real containers: LLaMA-Factory on the CPU trainer image,
a tiny locally built Qwen2 model, every level of a small run; full fine-tuning with
DeepSpeed ZeRO-3 and LoRA without it; a bad config fails with LLaMA-Factory's error in
the task log and leaves no container behind."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "simia_sycophancy_experiment"
pytestmark = [pytest.mark.e2e, pytest.mark.docker]


@pytest.fixture(scope="module")
def dag(experiment_dag):
    return experiment_dag


def _conf(tmp_path, raw_file, tau2_dir, image, model, cache, **over) -> dict:
    # every input Param explicitly: dag.test keeps the previous run's conf as defaults
    conf = {"raw_conversations": str(raw_file), "seeds_file": "", "judge_scores": "",
            "label_source": "rules", "output_format": "native", "data_root": str(tmp_path),
            "tau2_data_dir": str(tau2_dir), "levels": [0, 20], "dataset_size": 20,
            "shared_clean": 15, "train_models": True, "base_model": str(model),
            "trainer_image": image, "finetuning_type": "full", "deepspeed": "zero3",
            "bf16": False, "flash_attn": "sdpa", "cutoff_len": 512, "max_steps": 2,
            "learning_rate": 1e-4, "grad_accum": 1, "preprocessing_workers": 1,
            "gpus_per_training": 0, "gpu_ids": "", "model_cache_dir": str(cache),
            "hub_offline": True, "shm_size_gb": 1, "train_extra": {}}
    conf.update(over)
    return conf


def containers_with(docker_api, **labels: str) -> list:
    """Every container (running or not) carrying all the given labels."""
    filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
    return docker_api.containers.list(all=True, filters=filters)


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


@pytest.mark.parametrize("finetuning, deepspeed", [("full", "zero3"), ("lora", "none")])
def test_every_level_trains_in_its_own_container(finetuning, deepspeed, dag, docker_api,
                                                 trainer_cpu_image, tiny_model, model_cache,
                                                 raw_file, tau2_dir, tmp_path, monkeypatch,
                                                 capfd):
    secret = "hf_TEST_secret_4f2b9"  # an HF token in the connection: used, never shown
    monkeypatch.setenv("AIRFLOW_CONN_HUGGINGFACE_DEFAULT", json.dumps(
        {"conn_type": "generic", "password": secret}))
    conf = _conf(tmp_path, raw_file, tau2_dir, trainer_cpu_image, tiny_model, model_cache,
                 finetuning_type=finetuning, deepspeed=deepspeed)
    dr = dag.test(run_conf=conf)
    assert dr.state == "success", _states(dr)
    run = next((tmp_path / DAG_ID).iterdir())
    summaries = _check_trained(run, ["0pct", "20pct"], adapter=finetuning == "lora")
    a, b = (yaml.safe_load(Path(s["config_path"]).read_text()) for s in summaries)
    assert a.keys() == b.keys() and {k for k in a if a[k] != b[k]} == {"dataset", "output_dir"}
    xcoms = [ti.xcom_pull(task_ids="train_model", map_indexes=ti.map_index)
             for ti in dr.get_task_instances() if ti.task_id == "train_model"]
    assert sorted(x["level"] for x in xcoms) == [0, 20] and not any(x["skipped"] for x in xcoms)
    assert containers_with(docker_api, **{"simia.run_id": dr.run_id}) == []
    out = capfd.readouterr()
    assert secret not in out.out + out.err and secret not in json.dumps(xcoms)
    assert not [p for p in run.rglob("*") if p.is_file() and p.stat().st_size < 10_000_000
                and secret.encode() in p.read_bytes()]


def test_a_bad_config_fails_with_the_containers_error_and_leaves_nothing(
        dag, docker_api, trainer_cpu_image, tiny_model, model_cache, raw_file, tau2_dir,
        tmp_path, capfd):
    conf = _conf(tmp_path, raw_file, tau2_dir, trainer_cpu_image, tiny_model, model_cache,
                 levels=[0, 20], deepspeed="none",
                 train_extra={"optim": "no_such_optimizer"})
    dr = dag.test(run_conf=conf)
    assert dr.state == "failed"
    tis = [ti for ti in dr.get_task_instances() if ti.task_id == "train_model"]
    assert tis and all(ti.state == "failed" for ti in tis), _states(dr)
    assert all(ti.try_number == 2 for ti in tis)  # retried, and the retry started cleanly
    log = capfd.readouterr()
    text = log.out + log.err
    assert "no_such_optimizer" in text and "LLaMA-Factory failed for level" in text
    assert "leftover container" not in text  # the failed try removed its own container
    assert containers_with(docker_api, **{"simia.run_id": dr.run_id}) == []
