"""Training config, per-level YAML, result reading, container spec, CLI (no Docker)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from simia.cli import main
from simia.data.datasets import DatasetDesign
from simia.errors import ConfigError, InputError
from simia.data.stages import build_datasets_stage, process_stage, score_rules_stage
from simia.containers.training import (
    ContainerSettings,
    TrainingConfig,
    completed_summary,
    container_name,
    container_spec,
    dataset_for_level,
    deepspeed_config,
    differing_keys,
    level_slug,
    level_train_config,
    plan_level,
    read_training_result,
    to_yaml,
    write_summary,
    write_train_config,
)


@pytest.fixture(scope="module")
def datasets_dir(tmp_path_factory, raw_file, tau2_dir) -> Path:
    tmp = tmp_path_factory.mktemp("train_ds")
    process_stage(raw_file, tmp / "processed", tau2_data_dir=tau2_dir)
    score_rules_stage(tmp / "processed" / "processed.json", tmp / "scores.jsonl")
    out = tmp / "datasets"
    build_datasets_stage(tmp / "processed" / "processed.json", tmp / "scores.jsonl", out,
                         DatasetDesign(levels=(0, 2.5, 10, 20), size=20, shared_clean=15))
    return out


def test_defaults_are_the_reference_recipe():
    cfg = TrainingConfig()
    assert (cfg.model, cfg.template, cfg.finetuning_type) == (
        "Qwen/Qwen2.5-7B-Instruct", "qwen", "full")
    assert (cfg.learning_rate, cfg.per_device_train_batch_size,
            cfg.gradient_accumulation_steps, cfg.cutoff_len) == (5e-6, 1, 2, 12000)
    assert (cfg.flash_attn, cfg.neat_packing, cfg.bf16, cfg.deepspeed) == (
        "fa2", True, True, "zero3")


def test_only_dataset_and_output_dir_differ_between_levels(datasets_dir, tmp_path):
    cfg = TrainingConfig(finetuning_type="lora", deepspeed="zero2", extra={"warmup_ratio": 0.1})
    plans = [plan_level(cfg, datasets_dir=datasets_dir, train_dir=tmp_path / "train",
                        level=lv, run_key="dag/run1") for lv in (0, 2.5, 10, 20)]
    configs = [yaml.safe_load(Path(p.config_path).read_text()) for p in plans]
    assert differing_keys(configs) == {"dataset", "output_dir"}
    assert len({c["output_dir"] for c in configs}) == 4
    assert [c["dataset"] for c in configs] == [
        "telecom_syc_0pct", "telecom_syc_2p5pct", "telecom_syc_10pct", "telecom_syc_20pct"]
    first = configs[0]
    assert first["lora_rank"] == 8 and first["warmup_ratio"] == 0.1
    assert json.loads(Path(first["deepspeed"]).read_text())["zero_optimization"]["stage"] == 2
    assert first["dataset_dir"] == str(datasets_dir.resolve())
    # differing hyperparameters would be caught
    other = level_train_config(TrainingConfig(learning_rate=1e-5), dataset="x",
                               dataset_dir="d", output_dir="o", deepspeed_path="ds.json")
    assert "learning_rate" in differing_keys([first, other])


def test_planning_again_is_a_no_op(datasets_dir, tmp_path):
    cfg = TrainingConfig(deepspeed="none")
    a = plan_level(cfg, datasets_dir=datasets_dir, train_dir=tmp_path, level=10, run_key="k")
    mtime = Path(a.config_path).stat().st_mtime_ns
    b = plan_level(cfg, datasets_dir=datasets_dir, train_dir=tmp_path, level=10, run_key="k")
    assert a == b and Path(b.config_path).stat().st_mtime_ns == mtime
    assert "deepspeed" not in yaml.safe_load(Path(a.config_path).read_text())


@pytest.mark.parametrize("extra, word", [
    ({"dataset": "other"}, "dataset"),
    ({"learning_rate": 1.0}, "learning_rate"),
    ({"output_dir": "/x"}, "output_dir"),
    ({"callback": object()}, "plain JSON"),
])
def test_extra_keys_may_not_redefine_owned_settings(extra, word):
    with pytest.raises(ValueError, match=word):
        TrainingConfig(extra=extra)


def test_bad_settings_are_rejected():
    for bad in ({"finetuning_type": "qlora"}, {"deepspeed": "zero1"},
                {"learning_rate": 0}, {"cutoff_len": 4}, {"nonsense": 1}):
        with pytest.raises(ValueError):
            TrainingConfig(**bad)
    with pytest.raises(ConfigError, match="not a plain identifier"):
        to_yaml({"bad key": 1})


def test_yaml_round_trips_through_a_yaml_parser():
    mapping = level_train_config(TrainingConfig(extra={"note": "a: b # c", "ids": [1, 2]}),
                                 dataset="d", dataset_dir="/x y/z", output_dir="/o",
                                 deepspeed_path="/ds.json")
    assert yaml.safe_load(to_yaml(mapping)) == mapping


def test_shipped_deepspeed_configs():
    assert deepspeed_config("none") is None
    stages = {m: deepspeed_config(m)["zero_optimization"] for m in
              ("zero2", "zero3", "zero3_offload")}
    assert stages["zero2"]["stage"] == 2 and stages["zero3"]["stage"] == 3
    assert stages["zero3_offload"]["offload_optimizer"]["device"] == "cpu"
    assert "offload_optimizer" not in stages["zero3"]


def test_dataset_for_level_errors_name_file_and_level(datasets_dir, tmp_path):
    assert dataset_for_level(datasets_dir, 2.5) == "telecom_syc_2p5pct"
    with pytest.raises(InputError, match=r"metadata.json.*no dataset for level 7 %.*\[0, 2.5"):
        dataset_for_level(datasets_dir, 7)
    with pytest.raises(InputError, match="metadata.json"):
        dataset_for_level(tmp_path, 0)


def test_container_names_are_deterministic_and_valid():
    a = container_name("dag/manual__2026-01-01T00:00:00+00:00", 2.5)
    assert a == container_name("dag/manual__2026-01-01T00:00:00+00:00", 2.5)
    assert a != container_name("dag/other", 2.5) and a.endswith("-2p5pct")
    import re
    assert re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+", a)
    assert level_slug(10) == "10pct"


def _fake_lf_output(out: Path, losses=(2.0, 1.5, 1.25), results=True) -> Path:
    out.mkdir(parents=True)
    (out / "trainer_log.jsonl").write_text("\n".join(json.dumps(
        {"current_steps": i + 1, "total_steps": len(losses), "loss": loss, "lr": 1e-5,
         "epoch": 0.1 * (i + 1)}) for i, loss in enumerate(losses)) + "\n")
    if results:
        (out / "all_results.json").write_text(json.dumps(
            {"epoch": 0.3, "train_loss": sum(losses) / len(losses), "train_runtime": 4.5,
             "train_samples_per_second": 2.0}))
    (out / "checkpoint-3").mkdir()
    (out / "model.safetensors").write_bytes(b"x")
    return out


def test_read_training_result(tmp_path):
    out = _fake_lf_output(tmp_path / "output")
    r = read_training_result(out)
    assert r["final_loss"] == 1.25 and r["steps"] == 3 and r["total_steps"] == 3
    assert r["train_runtime_s"] == 4.5 and r["model_path"] == str(out)
    assert r["loss_curve"] == [[1, 2.0], [2, 1.5], [3, 1.25]]
    assert r["checkpoints"] == [str(out / "checkpoint-3")]


def test_read_training_result_refuses_unfinished_or_diverged_runs(tmp_path):
    with pytest.raises(InputError, match="did not finish"):
        read_training_result(_fake_lf_output(tmp_path / "a", results=False))
    with pytest.raises(InputError, match="not finite"):
        read_training_result(_fake_lf_output(tmp_path / "b", losses=(2.0, math.nan)))


def test_completed_summary_needs_the_same_config(datasets_dir, tmp_path):
    plan = plan_level(TrainingConfig(), datasets_dir=datasets_dir, train_dir=tmp_path,
                      level=0, run_key="k")
    assert completed_summary(plan.output_dir, plan.config_sha256) is None
    _fake_lf_output(Path(plan.output_dir))
    write_summary(plan, read_training_result(plan.output_dir))
    assert completed_summary(plan.output_dir, plan.config_sha256)["final_loss"] == 1.25
    assert completed_summary(plan.output_dir, "another-config") is None


def test_container_spec(datasets_dir, tmp_path):
    model = tmp_path / "models" / "tiny"
    model.mkdir(parents=True)
    run = tmp_path / "run"
    cfg = TrainingConfig(model=str(model))
    plan = plan_level(cfg, datasets_dir=datasets_dir, train_dir=run / "train", level=5 * 2,
                      run_key="k")
    spec = container_spec(cfg, plan, run, ContainerSettings(
        image="img", gpus_per_training=4, model_cache_dir=str(tmp_path / "cache"),
        hub_offline=True, shm_size_gb=2))
    env = spec["environment"]
    assert env["FORCE_TORCHRUN"] == "1" and env["NPROC_PER_NODE"] == "4"
    assert env["HF_HUB_OFFLINE"] == "1" and env["HF_HOME"] == str(tmp_path / "cache")
    assert not any("TOKEN" in k for k in env)
    mounts = {m["target"]: m for m in spec["mounts"]}
    assert all(m["source"] == m["target"] for m in spec["mounts"])
    assert not mounts[str(run.resolve())]["read_only"]
    assert mounts[str(datasets_dir.resolve())]["read_only"]  # outside the run dir
    assert mounts[str(model)]["read_only"]
    assert spec["command"] == ["llamafactory-cli", "train", plan.config_path]
    assert spec["shm_size"] == 2 * 1024**3 and spec["container_name"] == plan.container_name
    json.dumps(spec)  # plain data: fit for XCom / expand_kwargs
    no_ds = container_spec(TrainingConfig(deepspeed="none"), plan, run, ContainerSettings(
        model_cache_dir=str(tmp_path / "cache")))
    assert "FORCE_TORCHRUN" not in no_ds["environment"]
    with pytest.raises(ConfigError, match="local path"):
        container_spec(TrainingConfig(model=str(tmp_path / "missing")), plan, run,
                       ContainerSettings(model_cache_dir=str(tmp_path / "cache")))


def test_train_config_that_cannot_be_written_leaves_deepspeed_json_as_it_was(datasets_dir,
                                                                             tmp_path):
    cfg = TrainingConfig(deepspeed="zero3")
    folder = tmp_path / "cfg"
    folder.mkdir()  # the YAML's path is a folder: writing it fails
    with pytest.raises(OSError):
        write_train_config(cfg, datasets_dir=datasets_dir, level=10, out_file=folder)
    assert not (tmp_path / "deepspeed.json").exists()  # not left behind
    (tmp_path / "deepspeed.json").write_text("{\"earlier\": true}\n")
    with pytest.raises(OSError):
        write_train_config(cfg, datasets_dir=datasets_dir, level=10, out_file=folder)
    assert (tmp_path / "deepspeed.json").read_text() == "{\"earlier\": true}\n"  # put back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg", "deepspeed.json"]


def test_cli_train_config_and_summary(datasets_dir, tmp_path, capsys):
    out = tmp_path / "cfg" / "level10.yaml"
    rc = main(["train-config", "--datasets", str(datasets_dir), "--level", "10", "-o",
               str(out), "--finetuning-type", "lora", "--max-steps", "5",
               "--set", "warmup_ratio=0.1", "--set", "optim=adamw_torch"])
    assert rc == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    cfg = yaml.safe_load(out.read_text())
    assert cfg["dataset"] == "telecom_syc_10pct" and cfg["finetuning_type"] == "lora"
    assert cfg["max_steps"] == 5 and cfg["warmup_ratio"] == 0.1 and cfg["optim"] == "adamw_torch"
    assert Path(cfg["deepspeed"]) == out.parent / "deepspeed.json" == Path(result["deepspeed"])
    assert cfg["output_dir"] == str(out.parent / "telecom_syc_10pct")

    rc = main(["train-config", "--datasets", str(datasets_dir), "--level", "15", "-o",
               str(tmp_path / "x.yaml")])
    err = capsys.readouterr().err
    assert rc == 2 and "no dataset for level 15 %" in err and not (tmp_path / "x.yaml").exists()
    rc = main(["train-config", "--datasets", str(datasets_dir), "--level", "0", "-o",
               str(tmp_path / "y.yaml"), "--set", "dataset=x"])
    assert rc == 2 and "may not set dataset" in capsys.readouterr().err

    lf_out = _fake_lf_output(tmp_path / "lf")
    assert main(["train-summary", str(lf_out)]) == 0
    assert json.loads(capsys.readouterr().out)["final_loss"] == 1.25
    assert main(["train-summary", str(tmp_path / "nothing")]) == 2
