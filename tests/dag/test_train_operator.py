"""TrainModelOperator without a Docker engine: skip when trained, leftover clean-up, the
failure message, and the HF token kept out of everything rendered."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "plugins"))

from simia_airflow.training import TrainModelOperator, error_summary  # noqa: E402

from simia.containers.training import TrainingConfig, plan_level, write_summary  # noqa: E402


class FakeCli:
    def __init__(self, containers):
        self._containers = containers
        self.removed = []

    def containers(self, all=False, filters=None):  # noqa: A002 - docker SDK's name
        label = filters.get("label")
        name = filters.get("name")
        return [c for c in self._containers
                if (label and label.split("=", 1)[1] == c["Labels"].get("simia.container"))
                or (name and f"/{name}" in c["Names"])]

    def remove_container(self, cid, force=False):
        self.removed.append((cid, force))


def _op(plan, **kw):
    return TrainModelOperator(task_id="train_model", image="simia/trainer:cpu",
                              container_name=plan["container_name"], plan=plan, **kw)


@pytest.fixture
def plan(tmp_path):
    ds = tmp_path / "datasets"
    ds.mkdir()
    (ds / "dataset_info.json").write_text(json.dumps({"telecom_syc_5pct": {}}))
    (ds / "metadata.json").write_text(json.dumps(
        {"datasets": {"telecom_syc_5pct": {"level_pct": 5}}}))
    return plan_level(TrainingConfig(deepspeed="none"), datasets_dir=ds,
                      train_dir=tmp_path / "train", level=5, run_key="dag/run")


def test_a_trained_level_is_not_trained_again(plan, monkeypatch):
    out = Path(plan.output_dir)
    out.mkdir(parents=True)
    write_summary(plan, {"final_loss": 0.5, "steps": 10, "model_path": str(out)})
    op = _op(plan.as_dict())
    monkeypatch.setattr(TrainModelOperator, "cli", property(lambda self: pytest.fail(
        "Docker must not be touched for a finished level")))
    result = op.execute({"run_id": "r"})
    assert result["skipped"] is True and result["final_loss"] == 0.5


def test_leftovers_of_earlier_tries_are_removed(plan, monkeypatch):
    name = plan.container_name
    cli = FakeCli([
        {"Id": "a" * 64, "Names": [f"/{name}"], "Labels": {}, "Status": "Exited (1)"},
        {"Id": "b" * 64, "Names": ["/renamed"], "Labels": {"simia.container": name},
         "Status": "Up 2 hours"},
        {"Id": "c" * 64, "Names": [f"/{name}-other"], "Labels": {}, "Status": "Up"},
    ])
    monkeypatch.setattr(TrainModelOperator, "cli", property(lambda self: cli))
    assert sorted(_op(plan.as_dict()).remove_leftovers()) == ["a" * 64, "b" * 64]
    assert all(force for _, force in cli.removed)


def test_error_summary_finds_llamafactory_errors():
    lines = ["[INFO] loading", "Traceback (most recent call last):", '  File "x.py"',
             "ValueError: Some keys are not used by the HfArgumentParser: ['learning_rate_x']",
             "[rank0]: torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
             "done"]
    text = error_summary(lines)
    assert "ValueError: Some keys are not used" in text and "ChildFailedError" in text
    assert error_summary(["all fine"]) == ""


def test_the_hf_token_is_never_a_templated_or_xcom_value(plan, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_HUGGINGFACE_DEFAULT", json.dumps(
        {"conn_type": "generic", "password": "hf_SECRET_token_123"}))
    op = _op(plan.as_dict(), environment={"HF_HOME": "/cache"})
    assert op._hf_token() == "hf_SECRET_token_123"
    assert "private_environment" not in op.template_fields
    assert "hf_SECRET" not in json.dumps({f: str(getattr(op, f)) for f in op.template_fields})
    monkeypatch.delenv("AIRFLOW_CONN_HUGGINGFACE_DEFAULT")
    assert _op(plan.as_dict())._hf_token() is None
