"""The container operators (TrainModelOperator, EvaluateTau2Operator, ServeModelOperator,
StopModelServerOperator) against a recording stand-in for the Docker engine: skip when
trained, leftover clean-up before every start, deterministic labels, the failure
messages, and the connection secrets (HF token, the user simulator's key) reaching the
container's environment and nothing else: not the operator at parse time, rendered
templates, the task log, the error or XCom."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "plugins"))

from simia.containers.training import TrainingConfig, plan_level, write_summary  # noqa: E402
from simia_airflow.containers import SimiaContainerOperator  # noqa: E402
from simia_airflow.evaluation import EvaluateTau2Operator, EvaluationFailedError  # noqa: E402
from simia_airflow.hooks import SimiaDockerHook  # noqa: E402
from simia_airflow.serving import ServeModelOperator, StopModelServerOperator  # noqa: E402
from simia_airflow.training import (  # noqa: E402
    TrainingFailedError,
    TrainModelOperator,
    error_summary,
)

HF_SECRET = "hf_SECRET_token_123"
OPENAI_SECRET = "sk-SECRET-openai-456"


class FakeEngine:
    """The ``docker.APIClient`` calls the operators make, recorded in ``events``.

    ``containers`` are the ones already there (leftovers); a started container writes
    ``output`` and exits with ``exit_code`` after ``on_start`` ran (what it would
    write); a server is healthy at once.
    """

    def __init__(self, containers: list[dict[str, Any]] | None = None, *, exit_code: int = 0,
                 output: tuple[bytes, ...] = (b"step 1\n", b"done"),
                 on_start: Callable[[], None] | None = None) -> None:
        self._containers = containers or []
        self.exit_code = exit_code
        self.output = output
        self.on_start = on_start
        self.events: list[tuple[str, Any]] = []
        self.created: list[dict[str, Any]] = []
        self.networks_made: list[tuple[str, dict[str, str]]] = []

    # containers
    def containers(self, all: bool = False, filters: dict | None = None  # noqa: A002
                   ) -> list[dict[str, Any]]:
        label, name = filters.get("label"), filters.get("name")
        return [c for c in self._containers
                if (label and label.split("=", 1)[1] == c["Labels"].get("simia.container"))
                or (name and f"/{name}" in c["Names"])]

    def remove_container(self, cid: str, force: bool = False) -> None:
        self.events.append(("remove", cid))
        self._containers = [c for c in self._containers if c["Id"] != cid]

    def images(self, name: str | None = None) -> list[dict[str, str]]:
        return [{"Id": "sha256:image"}]

    def create_host_config(self, **kwargs: Any) -> dict[str, Any]:
        return kwargs

    def create_networking_config(self, config: dict) -> dict:
        return config

    def create_endpoint_config(self, **kwargs: Any) -> dict:
        return kwargs

    def create_container(self, **kwargs: Any) -> dict[str, str]:
        self.created.append(kwargs)
        self.events.append(("create", kwargs["name"]))
        return {"Id": f"new-{len(self.created)}"}

    def attach(self, **kwargs: Any) -> Iterator[bytes]:
        return iter(self.output)

    def start(self, cid: str) -> None:
        self.events.append(("start", cid))
        if self.on_start:
            self.on_start()

    def wait(self, cid: str) -> dict[str, int]:
        return {"StatusCode": self.exit_code}

    # a detached server
    def logs(self, cid: str, **kwargs: Any) -> Any:
        if kwargs.get("stream"):
            return _Stream(self.output)
        return b"".join(self.output)

    def inspect_container(self, cid: str) -> dict[str, Any]:
        return {"State": {"Running": True, "Health": {"Status": "healthy"}}}

    # networks
    def networks(self, names: list[str]) -> list[dict[str, str]]:
        return [{"Id": n, "Name": n} for n, _ in self.networks_made if n in names]

    def create_network(self, name: str, driver: str, labels: dict[str, str]) -> None:
        self.networks_made.append((name, labels))

    def inspect_network(self, nid: str) -> dict[str, Any]:
        return {"Containers": {}}

    def remove_network(self, nid: str) -> None:
        self.events.append(("remove_network", nid))
        self.networks_made = [n for n in self.networks_made if n[0] != nid]


class _Stream:
    def __init__(self, chunks: tuple[bytes, ...]) -> None:
        self._chunks = iter(chunks)

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def close(self) -> None:
        pass


@pytest.fixture
def engine(monkeypatch) -> FakeEngine:
    """Every container operator's hook talks to one FakeEngine."""
    fake = FakeEngine()
    hook = SimiaDockerHook(docker_conn_id=None, base_url="unix://fake.sock")
    hook.api_client = fake  # the cached client
    for cls in (SimiaContainerOperator, StopModelServerOperator):
        monkeypatch.setattr(cls, "hook", property(lambda self: hook))
    return fake


@pytest.fixture
def secrets(monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_HUGGINGFACE_DEFAULT", json.dumps(
        {"conn_type": "generic", "password": HF_SECRET}))
    monkeypatch.setenv("AIRFLOW_CONN_OPENAI_DEFAULT", json.dumps(
        {"conn_type": "generic", "extra": {"api_key": OPENAI_SECRET}}))


@pytest.fixture
def plan(tmp_path):
    ds = tmp_path / "datasets"
    ds.mkdir()
    (ds / "dataset_info.json").write_text(json.dumps({"telecom_syc_5pct": {}}))
    (ds / "metadata.json").write_text(json.dumps(
        {"datasets": {"telecom_syc_5pct": {"level_pct": 5}}}))
    return plan_level(TrainingConfig(deepspeed="none"), datasets_dir=ds,
                      train_dir=tmp_path / "train", level=5, run_key="dag/run")


def _op(plan, **kw):
    return TrainModelOperator(task_id="train_model", image="simia/trainer:cpu",
                              container_name=plan["container_name"], plan=plan, **kw)


def _leftovers(name: str) -> list[dict[str, Any]]:
    return [{"Id": "a" * 64, "Names": [f"/{name}"], "Labels": {}, "Status": "Exited (1)"},
            {"Id": "b" * 64, "Names": ["/renamed"], "Labels": {"simia.container": name},
             "Status": "Up 2 hours"},
            {"Id": "c" * 64, "Names": [f"/{name}-other"], "Labels": {}, "Status": "Up"}]


def _rendered(op) -> str:
    """Every template field of ``op`` after rendering, as text."""
    op.render_template_fields({"run_id": "r", "params": {}})
    return json.dumps({f: str(getattr(op, f)) for f in op.template_fields})


def _task_log(capfd) -> str:
    """What the operators logged (Airflow's structlog writes the task log to stdout)."""
    out = capfd.readouterr()
    return out.out + out.err


def _assert_hidden(secret: str, *texts: str) -> None:
    for text in texts:
        assert secret not in text


def _finish_training(output_dir: str) -> Callable[[], None]:
    def write() -> None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "all_results.json").write_text(json.dumps({"train_loss": 0.5}))
        (out / "trainer_log.jsonl").write_text(json.dumps(
            {"current_steps": 2, "loss": 0.4}) + "\n")
        (out / "model.safetensors").write_bytes(b"weights")
    return write


def test_a_trained_level_is_not_trained_again(plan, monkeypatch):
    out = Path(plan.output_dir)
    out.mkdir(parents=True)
    write_summary(plan, {"final_loss": 0.5, "steps": 10, "model_path": str(out)})
    op = _op(plan.as_dict())
    monkeypatch.setattr(TrainModelOperator, "hook", property(lambda self: pytest.fail(
        "Docker must not be touched for a finished level")))
    result = op.execute({"run_id": "r"})
    assert result["skipped"] is True and result["final_loss"] == 0.5


def test_leftovers_of_earlier_tries_are_removed(plan, engine):
    engine._containers = _leftovers(plan.container_name)
    assert sorted(_op(plan.as_dict()).remove_leftovers()) == ["a" * 64, "b" * 64]
    assert sorted(engine.events) == [("remove", "a" * 64), ("remove", "b" * 64)]


def test_error_summary_finds_llamafactory_errors():
    lines = ["[INFO] loading", "Traceback (most recent call last):", '  File "x.py"',
             "ValueError: Some keys are not used by the HfArgumentParser: ['learning_rate_x']",
             "[rank0]: torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
             "done"]
    text = error_summary(lines)
    assert "ValueError: Some keys are not used" in text and "ChildFailedError" in text
    assert error_summary(["all fine"]) == ""


def test_secrets_are_declared_not_read_when_the_dag_is_parsed(plan, secrets):
    train = _op(plan.as_dict(), environment={"HF_HOME": "/cache"})
    evaluate = EvaluateTau2Operator(task_id="evaluate_tau2", level={}, server={})
    for op in (train, evaluate):
        assert op.secret_environment  # declared ...
        assert not op.secret_environment.loaded  # ... but no connection read yet
        assert "private_environment" not in op.template_fields
        assert "secret" not in " ".join(op.template_fields)
    assert repr(train.secret_environment) == "SecretEnvironment(HF_TOKEN)"
    _assert_hidden(HF_SECRET, _rendered(train))


def test_a_training_run_starts_clean_and_only_the_container_sees_the_token(
        plan, engine, secrets, capfd):
    name = plan.container_name
    engine._containers = _leftovers(name)
    engine.on_start = _finish_training(plan.output_dir)
    op = _op(plan.as_dict(), environment={"HF_HOME": "/cache"},
             labels={"simia.run_id": "r1", "simia.level": "5"})
    result = op.execute({"run_id": "r1"})
    # leftovers first, then the one container, removed after its run
    assert sorted(engine.events[:2]) == [("remove", "a" * 64), ("remove", "b" * 64)]
    assert engine.events[2:] == [("create", name), ("start", "new-1"), ("remove", "new-1")]
    created = engine.created[0]
    assert created["environment"] == {"HF_HOME": "/cache", "HF_TOKEN": HF_SECRET}
    assert created["labels"] == {"simia.run_id": "r1", "simia.level": "5",
                                 "simia.container": name, "simia.stage": "train"}
    assert result["skipped"] is False and result["final_loss"] == 0.4
    log = _task_log(capfd)
    assert "training level 5 %" in log  # the task log was captured ...
    _assert_hidden(HF_SECRET, log, json.dumps(result), _rendered(op))  # ... with no token


def test_a_failed_training_names_the_error_and_removes_its_container(plan, engine, secrets,
                                                                     capfd):
    engine.exit_code = 1
    engine.output = (b"[INFO] loading\n", b"ValueError: no_such_optimizer\n")
    op = _op(plan.as_dict())
    with pytest.raises(TrainingFailedError, match="ValueError: no_such_optimizer") as failed:
        op.execute({"run_id": "r1"})
    assert engine.events[-1] == ("remove", "new-1")
    log = _task_log(capfd)
    assert "ValueError: no_such_optimizer" in log  # the container log is in the task log
    _assert_hidden(HF_SECRET, str(failed.value), log)


def test_without_a_connection_the_container_gets_no_token(plan, engine, capfd):
    engine.on_start = _finish_training(plan.output_dir)
    _op(plan.as_dict(), environment={"HF_HOME": "/cache"}).execute({"run_id": "r1"})
    assert engine.created[0]["environment"] == {"HF_HOME": "/cache"}
    assert "the hub is used without a token" in _task_log(capfd)


def _server(tmp_path: Path) -> dict[str, Any]:
    return {"level": 5.0, "backend": "transformers", "served_model_name": "simia-5pct",
            "base_url": "http://simia-serve-0123456789-5pct:8000/v1",
            "network": "simia-net-0123456789-5pct",
            "container_name": "simia-serve-0123456789-5pct"}


def test_an_evaluation_gets_the_users_key_in_its_container_only(tmp_path, engine, secrets,
                                                                 capfd):
    level = {"level": 5.0, "run_id": "r1", "run_dir": str(tmp_path),
             "eval": {"evaluator": "simia-ci", "num_trials": 1}}
    engine.exit_code = 2
    engine.output = (b"simulating\n", b"connection refused\n")
    engine._containers = _leftovers("simia-eval-0123456789-5pct")
    op = EvaluateTau2Operator(task_id="evaluate_tau2", level=level, server=_server(tmp_path))
    with pytest.raises(EvaluationFailedError, match="connection refused") as failed:
        op.execute({"run_id": "r1"})
    assert [e[0] for e in engine.events] == ["remove", "remove", "create", "start", "remove"]
    created = engine.created[0]
    assert created["environment"]["OPENAI_API_KEY"] == OPENAI_SECRET
    assert created["host_config"]["network_mode"] == "simia-net-0123456789-5pct"
    assert created["labels"] == {"simia.run_id": "r1", "simia.level": "5",
                                 "simia.replicate": "1",
                                 "simia.container": "simia-eval-0123456789-5pct",
                                 "simia.stage": "evaluate"}
    log = _task_log(capfd)
    assert "simulating" in log
    _assert_hidden(OPENAI_SECRET, str(failed.value), log, _rendered(op))


def test_a_server_starts_clean_and_the_teardown_removes_it(tmp_path, engine, tiny_level,
                                                            capfd):
    engine.output = (b"loading\n", b"serving on :8000\n")
    op = ServeModelOperator(task_id="serve_model", level=tiny_level, poll_s=0.01)
    spec = op.execute({"run_id": "r1"})
    name = spec["container_name"]
    assert engine.networks_made == [(spec["network"], {
        "simia.run_id": "r1", "simia.level": "0", "simia.replicate": "1",
        "simia.network": spec["network"]})]
    created = engine.created[0]
    assert created["name"] == name and created["healthcheck"]["Test"] == spec["healthcheck"]
    assert created["labels"] == {"simia.run_id": "r1", "simia.level": "0",
                                 "simia.replicate": "1", "simia.container": name,
                                 "simia.stage": "serve"}
    assert created["networking_config"] == {spec["network"]: {"aliases": [name]}}
    assert "[server] serving on :8000" in _task_log(capfd)
    engine._containers = [{"Id": "new-1", "Names": [f"/{name}"], "Labels": {}, "State": "running"}]
    done = StopModelServerOperator(task_id="stop_model_server", level=tiny_level).execute({})
    assert done == {"containers_removed": 1, "network_removed": True, "gpus_released": []}
    assert engine.networks_made == []


@pytest.fixture
def tiny_level(tmp_path) -> dict[str, Any]:
    """A trained level (a folder stands in for the model) ready to be served."""
    model = tmp_path / "model"
    model.mkdir()
    train = tmp_path / "run" / "train" / "0pct"
    train.mkdir(parents=True)
    (train / "train_config.yaml").write_text(yaml.safe_dump(
        {"model_name_or_path": str(model), "finetuning_type": "full"}))
    (train / "training_summary.json").write_text(json.dumps(
        {"level": 0.0, "model_path": str(model),
         "config_path": str(train / "train_config.yaml")}))
    return {"level": 0.0, "run_dir": str(tmp_path / "run"), "run_key": "test/r1",
            "run_id": "r1", "lock_dir": str(tmp_path / "locks"), "gpu_ids": None,
            "train_dir": str(train), "evaluate": True,
            "server": {"backend": "transformers", "image": "simia/evaluator:cpu",
                       "max_model_len": 4096, "gpus_per_server": 0,
                       "model_cache_dir": str(tmp_path / "cache")}}


@pytest.mark.parametrize("try_number, fails", [(1, True), (2, False)])
def test_infrastructure_errors_fail_the_evaluation_while_a_retry_is_left(
        tmp_path, engine, secrets, capfd, try_number, fails):
    """A retry re-runs only the simulations that broke; after the last try they are left
    to the analysis as missing data."""
    from types import SimpleNamespace

    from simia.layout import RunLayout

    level = {"level": 5.0, "run_id": "r1", "run_dir": str(tmp_path),
             "eval": {"evaluator": "simia-ci", "num_trials": 1}}
    results = RunLayout(tmp_path).eval(5.0).results
    results.parent.mkdir(parents=True)
    fixture = json.loads((ROOT / "tests/fixtures/tau2/results_every_reason.json").read_text())
    done_sim = {**fixture["simulations"][0], "task_id": "a", "trial": 0}
    broken = {**done_sim, "id": "s1", "task_id": "b", "reward_info": None,
              "termination_reason": "infrastructure_error"}
    results.write_text(json.dumps({**fixture, "info": {**fixture["info"], "num_trials": 1},
                                   "tasks": [{"id": "a"}, {"id": "b"}],
                                   "simulations": [done_sim, broken]}))
    op = EvaluateTau2Operator(task_id="evaluate_tau2", level=level, server=_server(tmp_path))
    ti = SimpleNamespace(try_number=try_number, max_tries=1)
    if fails:
        with pytest.raises(EvaluationFailedError, match="1 simulation.*infrastructure errors"):
            op.execute({"run_id": "r1", "ti": ti})
        assert not RunLayout(tmp_path).eval(5.0).summary.exists()
    else:
        done = op.execute({"run_id": "r1", "ti": ti})
        assert done["infrastructure_errors"] == 1
        assert "treats them as missing data" in _task_log(capfd)


# --------------------------------------------------------------------------- several hosts

def _placed(tmp_path: Path) -> dict[str, Any]:
    """A level's plan placed on host gpu-b of SIMIA_GPU_HOSTS (what the checks read)."""
    return {"level": 5.0, "replicate": 1, "run_id": "r1", "run_dir": str(tmp_path),
            "host": "gpu-b", "queue": "simia-gpu-b", "gpu_ids": "4,5,6,7",
            "data_root": str(tmp_path), "evaluate": True,
            "eval": {"evaluator": "simia-ci", "num_trials": 1}}


@pytest.mark.parametrize("which", ["train", "serve", "evaluate"])
def test_a_worker_of_another_host_refuses_before_any_container(which, tmp_path, engine,
                                                                monkeypatch):
    from simia.placement import DataRootError, WrongHostError

    level = _placed(tmp_path)
    op = {"train": lambda: TrainModelOperator(task_id="train_model", level=level),
          "serve": lambda: ServeModelOperator(task_id="serve_model", level=level),
          "evaluate": lambda: EvaluateTau2Operator(task_id="evaluate_tau2", level=level,
                                                   server=_server(tmp_path))}[which]()
    monkeypatch.setenv("SIMIA_GPU_IDS", "0,1,2,3")
    with pytest.raises(WrongHostError, match="worker whose GPUs are 0,1,2,3 .* planned for "
                                             "host gpu-b with 4,5,6,7"):
        op.execute({"run_id": "r1"})
    assert engine.events == [] and engine.created == []
    # the right GPUs, but the data root is not the shared one
    monkeypatch.setenv("SIMIA_GPU_IDS", "7,6,5,4")
    monkeypatch.setenv("SIMIA_DATA_ROOT_ID", "lab-1")
    with pytest.raises(DataRootError, match="is not the shared one: it has no "
                                            ".simia-data-root marker"):
        op.execute({"run_id": "r1"})
    assert engine.events == [] and engine.created == []
