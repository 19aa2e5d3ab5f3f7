"""tau2-bench ``results.json`` -> a typed task x trial success matrix.

Reads the results file ``tau2 run --save-to DIR`` writes (tau2-bench v1.0.1): a JSON
object with ``timestamp``, ``info`` (``num_trials``, ``seed``, ``max_steps``,
``max_errors``, ``agent_info``/``user_info`` with ``llm`` and ``llm_args``,
``environment_info``), ``tasks`` and ``simulations``. v1.0.1 can also store the
simulations one file each in a ``simulations/`` folder beside a ``results.json`` that
holds only the metadata (its "dir" format, the default for voice runs); both are read.

Every simulation needs ``id``, ``task_id``, ``trial`` (0-based), ``termination_reason``
and ``duration``; ``seed``, ``agent_cost``, ``user_cost``, ``messages`` and
``reward_info`` (with a numeric ``reward``) may be null. A run succeeds when its reward
is within 1e-6 of 1.0, as tau2 decides it.

A file tau2 cannot have written is refused (:class:`~simia.errors.InputError` naming the
file and the simulation's index and id), since every figure would silently absorb it: a
``trial`` outside ``0 .. num_trials-1``, a reward outside [0, 1] (beyond tau2's 1e-6
tolerance), a second simulation of the same task x trial (tau2's ``--auto-resume`` drops
an infrastructure error before running its cell again, so a cell never has two) and a
simulation of a task not in the file's ``tasks``.

Three views of the same file, each over every task of the run (``tasks``) x trials
``0 .. num_trials-1``:

* **outcomes for the analysis** (:attr:`Tau2Results.outcomes`, :meth:`Tau2Results.
  outcome_matrix`): per task x trial a :class:`CellOutcome`, ``success``, ``failure`` or
  ``missing``. A cell is MISSING (not a failure) when no simulation ran it or its only
  simulation ended in ``infrastructure_error``: a simulation that raised (server down,
  malformed tool-call JSON, an empty reply) after tau2's retries did not run, and
  counting it as a failure would make an outage look like a bad model. Each outcome
  also gives the termination reason, the fraction of environment assertions met and the
  write-action match rate (:class:`Simulation`).
* **infrastructure errors as failures** (:attr:`Tau2Results.matrix`,
  :attr:`Tau2Results.pass_hat_k`, also named :attr:`Tau2Results.
  pass_hat_k_infra_as_failure`): a sensitivity figure; a cell whose simulation is
  missing, ended in ``infrastructure_error``, or has no ``reward_info`` is a FAILURE.
* **tau2's own** (:attr:`Tau2Results.tau2_pass_hat_k`), computed as
  ``tau2.metrics.agent_metrics`` v1.0.1 does under the pandas it was built with (2.x):
  infrastructure errors are dropped, each task's n is the number of its remaining
  simulations, tasks with none are left out, and k runs to the smallest n (at most
  ``num_trials``). (Under pandas 3 tau2's own script stops dropping them: its enum
  comparison on a string column matches nothing; the evaluator image pins pandas 2.)

Bad input (unreadable, empty, not JSON, a missing key, a wrong type, an impossible
value) raises :class:`~simia.errors.InputError` naming the file, the simulation's index
(``record``) and id, and the field.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from simia.errors import InputError
from simia.io import json_error, read_bytes
from simia.layout import EvalFiles
from simia.redaction import redact
from simia.report.stats import task_pass_hat_k as pass_hat_k_task

__all__ = [
    "INFRASTRUCTURE_ERROR",
    "MISSING",
    "NOT_RUN",
    "SUCCESS_TOLERANCE",
    "TERMINATION_REASONS",
    "ActionCheck",
    "AgentUserInfo",
    "CellOutcome",
    "Simulation",
    "Tau2Results",
    "is_success",
    "pass_hat_k_task",
    "read_tau2_results",
    "tau2_metrics",
]

#: ``TerminationReason`` of tau2-bench v1.0.1, in its order
TERMINATION_REASONS: tuple[str, ...] = (
    "user_stop", "agent_stop", "max_steps", "timeout", "too_many_errors", "agent_error",
    "user_error", "infrastructure_error", "context_window_exceeded", "unexpected_error",
)
INFRASTRUCTURE_ERROR = "infrastructure_error"
#: :attr:`CellOutcome.status` of a task x trial without an outcome
MISSING = "missing"
#: :attr:`CellOutcome.missing_reason` of a task x trial that no simulation ran
NOT_RUN = "not_run"
#: tau2's ``is_successful``: reward within this of 1.0
SUCCESS_TOLERANCE = 1e-6


def is_success(reward: float | None) -> bool:
    """tau2's success rule: a reward within 1e-6 of 1.0 (no reward: failure)."""
    return reward is not None and abs(reward - 1.0) <= SUCCESS_TOLERANCE


@dataclass(frozen=True)
class AgentUserInfo:
    """Who played the agent or the user: tau2's implementation name, LLM and its
    arguments (secrets removed)."""

    implementation: str | None
    llm: str | None
    llm_args: dict[str, Any]


@dataclass(frozen=True)
class ActionCheck:
    """One of tau2's ``reward_info.action_checks``: was the expected action done?"""

    name: str  # the tool of the expected action
    requestor: str | None  # who should call it: "assistant" (the agent) or "user"
    tool_type: str | None  # "read", "write", "think", "generic" (None: tau2 did not know)
    match: bool  # action_match


@dataclass(frozen=True)
class Simulation:
    """One simulation, without its messages.

    The checks beside the reward (None where tau2 did not evaluate them: an
    infrastructure error, or a simulation that ended otherwise than ``agent_stop`` /
    ``user_stop``, which tau2 gives reward 0 without checks)."""

    index: int  # position in the file's ``simulations`` (or the dir format's sorted files)
    id: str
    task_id: str
    trial: int
    seed: int | None
    termination_reason: str
    reward: float | None  # None: no reward_info (infrastructure error)
    duration: float
    agent_cost: float | None
    user_cost: float | None
    num_messages: int
    reward_basis: tuple[str, ...] | None = None  # e.g. ("ENV_ASSERTION",) for telecom
    env_assertions_met: int | None = None  # reward_info.env_assertions[].met that are true
    env_assertions_total: int | None = None  # len(reward_info.env_assertions)
    db_match: bool | None = None  # reward_info.db_check.db_match
    action_checks: tuple[ActionCheck, ...] | None = None

    @property
    def success(self) -> bool:
        return is_success(self.reward)

    @property
    def infrastructure_error(self) -> bool:
        return self.termination_reason == INFRASTRUCTURE_ERROR

    @property
    def env_assertion_fraction(self) -> float | None:
        """Fraction of the environment assertions met (telecom's reward needs all of
        them); None without any."""
        if not self.env_assertions_total or self.env_assertions_met is None:
            return None
        return self.env_assertions_met / self.env_assertions_total

    def action_counts(self, tool_type: str | None = "write", requestor: str | None = None
                      ) -> tuple[int, int] | None:
        """(matched, expected) actions of ``tool_type`` (None: any) expected of
        ``requestor`` ("assistant", "user"; None: both, as tau2's own action metrics);
        None when the simulation has no action checks."""
        if self.action_checks is None:
            return None
        chosen = [c for c in self.action_checks
                  if (tool_type is None or c.tool_type == tool_type)
                  and (requestor is None or c.requestor == requestor)]
        return sum(c.match for c in chosen), len(chosen)

    def write_action_match_rate(self, requestor: str | None = None) -> float | None:
        """Fraction of the expected write actions done (tau2's ``correct_write_actions /
        total_write_actions`` for one simulation); ``requestor="assistant"``: the agent's
        own tool calls only. None without expected write actions."""
        counts = self.action_counts("write", requestor)
        if not counts or not counts[1]:
            return None
        return counts[0] / counts[1]


@dataclass(frozen=True)
class CellOutcome:
    """The outcome of one task x trial for the analysis: an infrastructure error or a
    trial that never ran is MISSING, not a failure."""

    task_id: str
    trial: int
    status: str  # "success" | "failure" | "missing"
    missing_reason: str | None  # "infrastructure_error" | "not_run" | None (not missing)
    simulation: Simulation | None  # the simulation kept for the cell (None: not run)

    @property
    def missing(self) -> bool:
        return self.status == MISSING

    @property
    def success(self) -> bool | None:
        """True/False; None when missing."""
        return None if self.missing else self.status == "success"

    @property
    def termination_reason(self) -> str | None:
        return self.simulation.termination_reason if self.simulation else None

    @property
    def env_assertion_fraction(self) -> float | None:
        """:attr:`Simulation.env_assertion_fraction` (None when missing)."""
        return None if self.missing or not self.simulation else \
            self.simulation.env_assertion_fraction

    def write_action_match_rate(self, requestor: str | None = None) -> float | None:
        """:meth:`Simulation.write_action_match_rate` (None when missing)."""
        return None if self.missing or not self.simulation else \
            self.simulation.write_action_match_rate(requestor)


@dataclass(frozen=True)
class Tau2Results:
    """A parsed tau2 results file: our success matrix and tau2's own metrics."""

    path: str
    timestamp: str | None
    num_trials: int  # info.num_trials
    seed: int | None
    max_steps: int | None
    max_errors: int | None
    domain: str | None
    git_commit: str | None
    agent: AgentUserInfo
    user: AgentUserInfo
    task_ids: tuple[str, ...]  # rows of the matrix, in the file's task order
    trials: int  # columns of the matrix: num_trials
    matrix: tuple[tuple[bool, ...], ...]  # [task][trial]: success
    #: [task][trial]: success | failure | infrastructure_error | missing
    cells: tuple[tuple[str, ...], ...]
    simulations: tuple[Simulation, ...]
    termination_counts: dict[str, int]  # every v1.0.1 reason (0 if absent) + unknown ones
    unknown_termination_reasons: tuple[str, ...]
    infrastructure_errors: int  # simulations ending in infrastructure_error
    missing_cells: tuple[tuple[str, int], ...]  # (task_id, trial) without a simulation
    pass_hat_k: dict[int, float]  # ours: k = 1..trials, every cell counted
    avg_reward: float  # ours: mean reward over all cells, 0 for failed/missing ones
    tau2_pass_hat_k: dict[int, float]
    tau2_avg_reward: float | None
    tau2_evaluated_simulations: int
    tau2_evaluated_tasks: int
    agent_cost_total: float
    user_cost_total: float
    duration_total_s: float
    notes: tuple[str, ...] = field(default=())
    #: [task][trial]: the outcome for the analysis (infrastructure errors are missing)
    outcomes: tuple[tuple[CellOutcome, ...], ...] = field(default=())

    @property
    def successes(self) -> int:
        return sum(sum(row) for row in self.matrix)

    @property
    def pass_hat_k_infra_as_failure(self) -> dict[int, float]:
        """:attr:`pass_hat_k` by its meaning: a sensitivity figure, with infrastructure
        errors and trials that never ran counted as failures."""
        return self.pass_hat_k

    def outcome_matrix(self) -> tuple[tuple[bool | None, ...], ...]:
        """[task][trial]: True (success), False (failure) or None (missing: an
        infrastructure error or a trial that never ran), in :attr:`task_ids` order."""
        return tuple(tuple(c.success for c in row) for row in self.outcomes)

    def missing_outcomes(self) -> tuple[CellOutcome, ...]:
        """The task x trial cells without an outcome, task by task."""
        return tuple(c for row in self.outcomes for c in row if c.missing)

    def counts(self) -> list[tuple[int, int]]:
        """(n, c) per task row: trials and successes."""
        return [(len(row), sum(row)) for row in self.matrix]

    def rates(self) -> dict[str, float]:
        """Per-task success rate (pass^1 per task), by task id."""
        return {t: sum(row) / len(row) for t, row in zip(self.task_ids, self.matrix,
                                                          strict=True)}

    def as_dict(self) -> dict[str, Any]:
        """Everything but the per-simulation rows, JSON-ready."""
        return {
            "path": self.path, "timestamp": self.timestamp, "num_trials": self.num_trials,
            "seed": self.seed, "max_steps": self.max_steps, "max_errors": self.max_errors,
            "domain": self.domain, "git_commit": self.git_commit,
            "agent": self.agent.__dict__, "user": self.user.__dict__,
            "tasks": len(self.task_ids), "trials": self.trials,
            "simulations": len(self.simulations), "successes": self.successes,
            "termination_counts": self.termination_counts,
            "unknown_termination_reasons": list(self.unknown_termination_reasons),
            "infrastructure_errors": self.infrastructure_errors,
            "missing_cells": [list(c) for c in self.missing_cells],
            "pass_hat_k": {str(k): v for k, v in self.pass_hat_k.items()},
            "avg_reward": self.avg_reward,
            "tau2_pass_hat_k": {str(k): v for k, v in self.tau2_pass_hat_k.items()},
            "tau2_avg_reward": self.tau2_avg_reward,
            "tau2_evaluated_simulations": self.tau2_evaluated_simulations,
            "tau2_evaluated_tasks": self.tau2_evaluated_tasks,
            "agent_cost_total": self.agent_cost_total, "user_cost_total": self.user_cost_total,
            "duration_total_s": self.duration_total_s, "notes": list(self.notes),
            "pass_hat_k_infra_as_failure": {str(k): v for k, v in self.pass_hat_k.items()},
            "missing_outcomes": len(self.missing_outcomes()),
        }


# --------------------------------------------------------------------------- parsing

class _Fields:
    """Typed access to one JSON object, raising InputError with file, record, field."""

    def __init__(self, path: Path, obj: Any, *, record: int | None, prefix: str,
                 what: str) -> None:
        self.path, self.record, self.prefix, self.what = path, record, prefix, what
        if not isinstance(obj, dict):
            self.fail("", f"expected a JSON object, got {_type(obj)}")
        self.obj: dict[str, Any] = obj

    def fail(self, name: str, message: str) -> None:
        raise InputError(self.path, f"{self.what}: {message}", record=self.record,
                         field=f"{self.prefix}{name}" if name or self.prefix else None)

    def get(self, name: str, kinds: tuple[type, ...], *, required: bool = True,
            nullable: bool = False) -> Any:
        if name not in self.obj:
            if required:
                self.fail(name, "missing")
            return None
        value = self.obj[name]
        if value is None:
            if nullable or not required:
                return None
            self.fail(name, "must not be null")
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            names = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)
            self.fail(name, f"expected {names}, got {_type(value)} {_short(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(name, f"must be finite, got {value}")
        return value


_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", dict: "an object",
               list: "a list", bool: "a boolean"}
_NUM = (int, float)


def _type(value: Any) -> str:
    return "null" if value is None else {dict: "object", list: "list", str: "string",
                                         bool: "boolean"}.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _load_json(path: Path, what: str) -> Any:
    data = read_bytes(path, what=what)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InputError(path, f"malformed JSON: {json_error(exc, data)}") from None


def _participant(info: _Fields, name: str) -> AgentUserInfo:
    if info.obj.get(name) is None:
        return AgentUserInfo(None, None, {})
    sub = _Fields(info.path, info.obj[name], record=None, prefix=f"info.{name}.",
                  what=info.what)
    args = sub.get("llm_args", (dict,), required=False, nullable=True) or {}
    return AgentUserInfo(sub.get("implementation", (str,), required=False),
                         sub.get("llm", (str,), required=False, nullable=True), redact(args))


def _task_id(fields: _Fields, name: str) -> str:
    value = fields.get(name, (str, int))
    return str(value)


def _simulation(path: Path, obj: Any, index: int) -> Simulation:
    f = _Fields(path, obj, record=index, prefix="", what=f"simulations[{index}]")
    sim_id = f.get("id", (str,))
    f.what = f"simulations[{index}] (id {sim_id!r})"
    task_id = _task_id(f, "task_id")
    trial = f.get("trial", (int,))
    if trial < 0:
        f.fail("trial", f"must be >= 0, got {trial}")
    reason = f.get("termination_reason", (str,))
    reward: float | None = None
    checks: dict[str, Any] = {}
    reward_info = f.get("reward_info", (dict,), required=False, nullable=True)
    if reward_info is not None:
        rf = _Fields(path, reward_info, record=index, prefix="reward_info.", what=f.what)
        reward = float(rf.get("reward", _NUM))
        if not -SUCCESS_TOLERANCE <= reward <= 1.0 + SUCCESS_TOLERANCE:
            rf.fail("reward", f"must be within [0, 1], got {reward}")
        checks = _checks(rf)
    messages = f.get("messages", (list,), required=False, nullable=True)
    return Simulation(
        index=index, id=sim_id, task_id=task_id, trial=trial,
        seed=f.get("seed", (int,), required=False, nullable=True),
        termination_reason=reason, reward=reward,
        duration=float(f.get("duration", _NUM)),
        agent_cost=_opt_float(f.get("agent_cost", _NUM, required=False, nullable=True)),
        user_cost=_opt_float(f.get("user_cost", _NUM, required=False, nullable=True)),
        num_messages=len(messages) if messages else 0, **checks)


def _items(rf: _Fields, name: str) -> list[_Fields] | None:
    """The objects of the list ``reward_info.<name>`` (None: absent or null)."""
    items = rf.get(name, (list,), required=False, nullable=True)
    if items is None:
        return None
    return [_Fields(rf.path, item, record=rf.record, prefix=f"{rf.prefix}{name}[{i}].",
                    what=rf.what) for i, item in enumerate(items)]


def _checks(rf: _Fields) -> dict[str, Any]:
    """The checks of one ``reward_info``, as :class:`Simulation` fields."""
    out: dict[str, Any] = {}
    basis = rf.get("reward_basis", (list,), required=False, nullable=True)
    if basis is not None:
        if not all(isinstance(b, str) for b in basis):
            rf.fail("reward_basis", f"expected a list of strings, got {_short(basis)}")
        out["reward_basis"] = tuple(basis)
    assertions = _items(rf, "env_assertions")
    if assertions is not None:
        out["env_assertions_met"] = sum(bool(a.get("met", (bool,))) for a in assertions)
        out["env_assertions_total"] = len(assertions)
    db = rf.get("db_check", (dict,), required=False, nullable=True)
    if db is not None:
        out["db_match"] = _Fields(rf.path, db, record=rf.record, prefix=f"{rf.prefix}db_check.",
                                  what=rf.what).get("db_match", (bool,))
    actions = _items(rf, "action_checks")
    if actions is not None:
        parsed = []
        for check in actions:
            action = _Fields(rf.path, check.get("action", (dict,)), record=rf.record,
                             prefix=f"{check.prefix}action.", what=rf.what)
            parsed.append(ActionCheck(
                name=action.get("name", (str,)),
                requestor=action.get("requestor", (str,), required=False, nullable=True),
                tool_type=check.get("tool_type", (str,), required=False, nullable=True),
                match=check.get("action_match", (bool,))))
        out["action_checks"] = tuple(parsed)
    return out


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _raw_simulations(path: Path, top: _Fields) -> list[tuple[Path, Any]]:
    """(file, simulation object) pairs: from ``simulations`` or the dir format's folder."""
    sims_dir = path.parent / "simulations"
    if "simulations" in top.obj and top.obj["simulations"] is not None:
        return [(path, s) for s in top.get("simulations", (list,))]
    if sims_dir.is_dir():
        return [(p, _load_json(p, "tau2 simulation file"))
                for p in sorted(sims_dir.glob("*.json"))]
    if "simulation_index" in top.obj:  # dir format whose folder is gone
        top.fail("simulations", f"no 'simulations' list and no folder {sims_dir}")
    top.fail("simulations", "missing")
    raise AssertionError  # unreachable


def _check_cell(path: Path, sim: Simulation, num_trials: int, tasks: set[str],
                earlier: Simulation | None) -> None:
    """Refuse a simulation tau2 cannot have written: a trial outside ``0 ..
    num_trials-1``, a task not in ``tasks``, or a second one of a task x trial."""
    what = f"simulations[{sim.index}] (id {sim.id!r})"
    if sim.trial >= num_trials:
        raise InputError(path, f"{what}: trial {sim.trial} is outside 0..{num_trials - 1} "
                               f"(info.num_trials is {num_trials}; tau2 numbers trials from 0)",
                         record=sim.index, field="trial")
    if sim.task_id not in tasks:
        raise InputError(path, f"{what}: task {sim.task_id!r} is not in the file's 'tasks'",
                         record=sim.index, field="task_id")
    if earlier is not None:
        raise InputError(path, f"{what}: task {sim.task_id!r} trial {sim.trial} already has "
                               f"simulations[{earlier.index}] (id {earlier.id!r}); tau2 runs "
                               "each task x trial once", record=sim.index, field="trial")


def tau2_metrics(simulations: Sequence[Simulation], num_trials: int
                 ) -> tuple[dict[int, float], float | None, int, int]:
    """pass^k, average reward, simulations and tasks counted, as tau2-bench v1.0.1's
    ``compute_metrics`` finds them: infrastructure errors dropped; per task n = its
    remaining simulations, c = their successes; k = 1 .. min(num_trials, smallest n);
    the average reward skips simulations without one."""
    kept = [s for s in simulations if not s.infrastructure_error]
    if not kept:
        return {}, None, 0, 0
    per_task: dict[str, list[bool]] = {}
    for s in kept:
        per_task.setdefault(s.task_id, []).append(s.success)
    max_k = min(num_trials, min(len(v) for v in per_task.values()))
    pass_k = {k: sum(pass_hat_k_task(len(v), sum(v), k) for v in per_task.values())
              / len(per_task) for k in range(1, max_k + 1)}
    rewards = [s.reward for s in kept if s.reward is not None]
    avg = sum(rewards) / len(rewards) if rewards else None
    return pass_k, avg, len(kept), len(per_task)


def read_tau2_results(path: str | Path) -> Tau2Results:
    """Parse a tau2-bench v1.0.1 results file (or the folder holding ``results.json``).

    Raises :class:`InputError` (file, simulation index as ``record``, field) on an
    unreadable or empty file, malformed JSON, a missing key or a value of the wrong type.
    """
    path = Path(path)
    if path.is_dir():
        path = EvalFiles(path).results
    top = _Fields(path, _load_json(path, "tau2 results file"), record=None, prefix="",
                  what="tau2 results")
    info = _Fields(path, top.get("info", (dict,)), record=None, prefix="info.",
                   what="tau2 results")
    num_trials = info.get("num_trials", (int,))
    if num_trials < 1:
        info.fail("num_trials", f"must be >= 1, got {num_trials}")
    env = info.obj.get("environment_info")
    domain = env.get("domain_name") if isinstance(env, dict) else None
    tasks = top.get("tasks", (list,))
    task_ids: list[str] = []
    for i, task in enumerate(tasks):
        tf = _Fields(path, task, record=None, prefix=f"tasks[{i}].", what="tau2 results")
        task_ids.append(_task_id(tf, "id"))
    known = set(task_ids)
    chosen: dict[tuple[str, int], Simulation] = {}
    sims: list[Simulation] = []
    for i, (p, obj) in enumerate(_raw_simulations(path, top)):
        s = _simulation(p, obj, i)
        _check_cell(p, s, num_trials, known, chosen.get((s.task_id, s.trial)))
        chosen[(s.task_id, s.trial)] = s
        sims.append(s)

    notes: list[str] = []
    if len(known) != len(task_ids):
        notes.append("'tasks' lists some task ids twice; each counts once")
    order = list(dict.fromkeys(task_ids))
    trials = num_trials

    matrix: list[tuple[bool, ...]] = []
    cells: list[tuple[str, ...]] = []
    outcomes: list[tuple[CellOutcome, ...]] = []
    missing: list[tuple[str, int]] = []
    reward_sum = 0.0
    for task in order:
        row, status, outcome = [], [], []
        for trial in range(trials):
            s = chosen.get((task, trial))
            if s is None:
                missing.append((task, trial))
                row.append(False)
                status.append(MISSING)
                outcome.append(CellOutcome(task, trial, MISSING, NOT_RUN, None))
                continue
            row.append(s.success)
            status.append("success" if s.success else
                          INFRASTRUCTURE_ERROR if s.infrastructure_error else "failure")
            outcome.append(CellOutcome(task, trial, MISSING, INFRASTRUCTURE_ERROR, s)
                           if s.infrastructure_error else
                           CellOutcome(task, trial, "success" if s.success else "failure",
                                       None, s))
            if not s.infrastructure_error and s.reward is not None:
                reward_sum += s.reward
        matrix.append(tuple(row))
        cells.append(tuple(status))
        outcomes.append(tuple(outcome))

    counts = Counter(s.termination_reason for s in sims)
    unknown = tuple(sorted(r for r in counts if r not in TERMINATION_REASONS))
    if unknown:
        notes.append(f"termination reasons unknown to tau2 v1.0.1: {list(unknown)}")
    termination = {r: counts.get(r, 0) for r in TERMINATION_REASONS}
    termination.update({r: counts[r] for r in unknown})
    n_cells = len(order) * trials
    pass_k = ({k: sum(pass_hat_k_task(trials, sum(r), k) for r in matrix) / len(matrix)
               for k in range(1, trials + 1)} if matrix else {})
    tau2_k, tau2_avg, tau2_sims, tau2_tasks = tau2_metrics(sims, num_trials)
    return Tau2Results(
        path=str(path), timestamp=top.get("timestamp", (str,), required=False, nullable=True),
        num_trials=num_trials,
        seed=info.get("seed", (int,), required=False, nullable=True),
        max_steps=info.get("max_steps", (int,), required=False, nullable=True),
        max_errors=info.get("max_errors", (int,), required=False, nullable=True),
        domain=domain if isinstance(domain, str) else None,
        git_commit=info.get("git_commit", (str,), required=False, nullable=True),
        agent=_participant(info, "agent_info"), user=_participant(info, "user_info"),
        task_ids=tuple(order), trials=trials, matrix=tuple(matrix), cells=tuple(cells),
        simulations=tuple(sims), termination_counts=termination,
        unknown_termination_reasons=unknown,
        infrastructure_errors=counts.get(INFRASTRUCTURE_ERROR, 0),
        missing_cells=tuple(missing),
        pass_hat_k=pass_k, avg_reward=reward_sum / n_cells if n_cells else 0.0,
        tau2_pass_hat_k=tau2_k, tau2_avg_reward=tau2_avg,
        tau2_evaluated_simulations=tau2_sims, tau2_evaluated_tasks=tau2_tasks,
        agent_cost_total=sum(s.agent_cost or 0.0 for s in sims),
        user_cost_total=sum(s.user_cost or 0.0 for s in sims),
        duration_total_s=sum(s.duration for s in sims),
        notes=tuple(notes), outcomes=tuple(outcomes))
