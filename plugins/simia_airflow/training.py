"""``TrainModelOperator``: one LLaMA-Factory training in a container, per level.

A :class:`~simia_airflow.containers.SimiaContainerOperator` (a ``DockerOperator``: clean
starts, deterministic names and labels, secrets through ``private_environment``, GPU
leases) that adds what a long training needs:

- **skip finished work**: a level whose ``training_summary.json`` matches its config is
  not trained again (a cleared or retried task returns the saved summary);
- **the Hugging Face token** from a connection at run time (``HF_TOKEN``: never
  templated, shown or in XCom);
- **a readable failure**: the task fails with LLaMA-Factory's own error line and the
  config path; the full container log is streamed above it;
- **a small XCom**: final loss, steps, runtime, model path, from LLaMA-Factory's result
  files (``simia.containers.training.read_training_result``).

This module is imported when the DAG is parsed: it must not import ``simia`` at module
level (the pipeline logic loads inside ``execute`` only).
"""

from __future__ import annotations

import re
from typing import Any

from simia_airflow.connections import ConnectionSecret
from simia_airflow.containers import SimiaContainerOperator

# "ValueError: ...", also as torchrun prints it: "[rank0]: ValueError: ..."
_ERROR_LINE = re.compile(r"^\s*(?:\[rank\d+\]:\s*)?[\w.]*(?:Error|Exception|KeyboardInterrupt)"
                         r"(?::.*)?$")
SUMMARY_KEYS = ("level", "replicate", "dataset", "final_loss", "train_loss", "steps",
                "total_steps", "epoch", "train_runtime_s", "model_path", "output_dir",
                "config_path", "skipped")


class TrainingFailedError(RuntimeError):
    """LLaMA-Factory exited non-zero inside the trainer container."""


def error_summary(lines: list[str], limit: int = 3) -> str:
    """The last exception lines of a container log (LLaMA-Factory's own error)."""
    found = [ln.strip() for ln in lines if _ERROR_LINE.match(ln)]
    return " | ".join(found[-limit:])


class TrainModelOperator(SimiaContainerOperator):
    """Train one level with ``llamafactory-cli train CONFIG`` in a container.

    Args:
        level: The level's plan from ``plan_levels`` (templated; a mapped argument in the
            per-level task group). Its ``train`` entry (image, command, environment,
            mounts, shm size, user, container name, labels, ``plan``, GPU settings) is
            applied when the task runs. Alternatively pass ``plan`` and the Docker
            arguments directly.
        plan: ``simia.containers.training.TrainingPlan.as_dict()`` of the level (paths are
            the same on the host, in the worker and in the container).
        gpu_ids: GPUs this pipeline may use, comma-separated ("" = none: CPU training).
        gpus_per_training: GPUs to lease for this training (0 = CPU).
        lock_dir: Host-wide folder for GPU lock files.
        gpu_wait_s: Longest wait for free GPUs before failing.
        hf_conn_id: Connection whose password (or ``token`` extra) is the Hugging Face
            token; a missing connection means anonymous/offline hub use.
        Everything else: ``DockerOperator`` (image, command, environment, mounts, ...).
    """

    stage = "train"
    default_image = "simia/trainer"

    def __init__(self, *, level: Any = None, plan: dict[str, Any] | None = None,
                 gpu_ids: str = "", gpus_per_training: int = 0,
                 lock_dir: str = "/tmp/simia-gpu-locks", gpu_wait_s: float = 6 * 3600,
                 hf_conn_id: str | None = "huggingface_default", **kwargs: Any) -> None:
        if level is None and plan is None:
            raise ValueError("TrainModelOperator needs level= (from plan_levels) or plan=")
        super().__init__(level=level, secrets={"HF_TOKEN": ConnectionSecret(
            hf_conn_id, "token", missing="the hub is used without a token")}, **kwargs)
        self.plan = plan
        self.gpu_ids = gpu_ids
        self.gpus_per_training = gpus_per_training
        self.lock_dir = lock_dir
        self.gpu_wait_s = gpu_wait_s
        self.hf_conn_id = hf_conn_id

    def _apply_level(self) -> None:
        """Take the container settings from the rendered level plan."""
        train = self.level["train"]
        self.use_container(train)
        self.plan = train["plan"]
        self.add_labels(train["labels"])
        self.gpu_ids = train["gpu_ids"]
        self.gpus_per_training = train["gpus_per_training"]
        self.lock_dir = train["lock_dir"]

    def execute(self, context: Any) -> dict[str, Any]:  # type: ignore[override]
        from simia.containers.training import (
            TrainingPlan,
            completed_summary,
            read_training_result,
            write_summary,
        )

        if self.level is not None:
            self.check_host()
            self._apply_level()
        plan = TrainingPlan(**self.plan)
        done = completed_summary(plan.output_dir, plan.config_sha256)
        if done is not None:
            self.log.info("level %g %% was already trained with this config (%s); not "
                          "training again", plan.level, done["model_path"])
            return {**{k: done.get(k) for k in SUMMARY_KEYS}, "skipped": True}

        def failed(lines: list[str]) -> TrainingFailedError:
            what = error_summary(lines) or (lines[-1].strip() if lines else "no output")
            return TrainingFailedError(
                f"LLaMA-Factory failed for level {plan.level:g} % (dataset "
                f"{plan.dataset}): {what}. The container log is above; config: "
                f"{plan.config_path}. Fix the cause (Params or data) and clear this "
                "task: the failed container is removed and a retry starts cleanly.")

        self.clean_start()
        with self.gpu_lease(context, lock_dir=self.lock_dir, gpu_ids=self.gpu_ids,
                            count=self.gpus_per_training, wait_s=self.gpu_wait_s) as ids:
            self.use_gpus(ids)
            self.log.info("training level %g %% (dataset %s) in container %s on %s; config "
                          "%s", plan.level, plan.dataset, self.container_name,
                          f"GPUs {','.join(ids)}" if ids else "the CPU", plan.config_path)
            self.run_container(context, failed)
        result = read_training_result(plan.output_dir)
        summary = write_summary(plan, result)
        self.log.info("level %g %%: final loss %s after %s steps in %.0f s; model at %s",
                      plan.level, summary["final_loss"], summary["steps"],
                      summary.get("train_runtime_s") or 0.0, summary["model_path"])
        return {**{k: summary.get(k) for k in SUMMARY_KEYS}, "skipped": False}
