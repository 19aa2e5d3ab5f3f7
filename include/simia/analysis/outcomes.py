"""The experiment's outcomes as one table: level x training run x task x trial.

Every training run (a level's replicate) was evaluated by one tau2 ``results.json``. The
table holds one cell per (run, task, trial) over the union of the runs' tasks and trials,
each with a status: success, failure, ``infrastructure_error`` (the simulation crashed
before the agent was judged) or missing (no simulation). The last two are NOT failures:
they are excluded cells, analysed as missing (per-task success over the trials that ran).

Secondary outcomes of the same simulations sit beside the status: the fraction of the
environment assertions met, the write actions checked and matched (``action_checks`` with
``tool_type`` write), and the termination reason. Task ids encode the issue type and the
persona (``[mobile_data_issue]...[PERSONA:Hard]``), which give the strata.

Files are read and validated by :func:`simia.evaluation.tau2_results.read_tau2_results`;
only the secondary fields of ``reward_info`` are read here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simia.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["FAILURE", "INFRA", "MISSING", "SUCCESS", "OutcomeTable", "RunOutcomes", "RunSpec",
           "issue_type", "level_key", "parse_spec", "pass_hat_k", "persona", "read_run",
           "read_runs"]

SUCCESS, FAILURE, INFRA, MISSING = 1, 0, -1, -2
_STATUS_NAMES = {SUCCESS: "success", FAILURE: "failure", INFRA: "infrastructure_error",
                 MISSING: "missing"}
_ISSUE = re.compile(r"^\[([^\]]+)\]")
_PERSONA = re.compile(r"\[PERSONA:([^\]]+)\]\s*$")


def issue_type(task_id: str) -> str:
    """The issue type a telecom task id starts with (``[mms_issue]...`` -> mms_issue)."""
    m = _ISSUE.match(task_id)
    return m.group(1) if m else "unknown"


def persona(task_id: str) -> str:
    """The persona a telecom task id ends with (``...[PERSONA:Hard]`` -> Hard)."""
    m = _PERSONA.search(task_id)
    return m.group(1) if m else "unknown"


def level_key(level: float) -> str:
    """A level as text: 5.0 -> '5', 2.5 -> '2.5' (JSON keys, messages)."""
    return f"{level:g}"


@dataclass(frozen=True)
class RunSpec:
    """One training run's evaluation: its level (%), replicate name and results file
    (None, or a path that does not exist: the evaluation never ran)."""

    level: float
    replicate: str
    path: str | None


def parse_spec(text: str) -> RunSpec:
    """``LEVEL:REPLICATE=PATH`` (``10:r2=runs/eval/10_r2/results.json``) -> :class:`RunSpec`."""
    head, sep, path = text.partition("=")
    level_text, colon, replicate = head.partition(":")
    try:
        level = float(level_text)
    except ValueError:
        level = math.nan
    if not sep or not colon or not replicate.strip() or not path or not math.isfinite(level):
        raise InputError(None, f"run spec {text!r}: expected LEVEL:REPLICATE=PATH, e.g. "
                               "10:r1=eval/10_r1/results.json")
    return RunSpec(level, replicate.strip(), path)


@dataclass(frozen=True)
class RunOutcomes:
    """One run's cells, as read from its file (tasks and trials of that file only)."""

    spec: RunSpec
    task_ids: tuple[str, ...]
    trials: int
    status: np.ndarray  # (tasks, trials) int8
    env_met: np.ndarray  # (tasks, trials) float: fraction of env assertions met, nan: none
    write_total: np.ndarray  # (tasks, trials) int: write action checks
    write_matched: np.ndarray  # (tasks, trials) int: of which matched
    termination: np.ndarray  # (tasks, trials) object: termination reason / 'missing'
    notes: tuple[str, ...] = ()


def _secondary(path: Path, index: int, reward_info: Any) -> tuple[float, int, int]:
    """(fraction of env assertions met or nan, write checks, write matches) of one
    simulation's ``reward_info``."""
    if not isinstance(reward_info, dict):
        return math.nan, 0, 0
    env = reward_info.get("env_assertions") or []
    acts = reward_info.get("action_checks") or []
    for name, value in (("env_assertions", env), ("action_checks", acts)):
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise InputError(path, "expected a list of objects", record=index,
                             field=f"reward_info.{name}")
    met = [a.get("met") for a in env]
    if not all(isinstance(m, bool) for m in met):
        raise InputError(path, "every assertion needs a boolean 'met'", record=index,
                         field="reward_info.env_assertions")
    writes = [a for a in acts if a.get("tool_type") == "write"]
    if not all(isinstance(a.get("action_match"), bool) for a in writes):
        raise InputError(path, "every write check needs a boolean 'action_match'",
                         record=index, field="reward_info.action_checks")
    frac = sum(met) / len(met) if met else math.nan
    return frac, len(writes), sum(a["action_match"] for a in writes)


def _raw_simulations(path: Path) -> list[Any]:
    """The simulation objects of a results file in :func:`read_tau2_results`'s order (its
    ``Simulation.index``), through the same reader."""
    from simia.evaluation import tau2_results as t2

    top = t2._Fields(path, t2._load_json(path, "tau2 results file"), record=None, prefix="",
                     what="tau2 results")
    return [obj for _, obj in t2._raw_simulations(path, top)]


def read_run(spec: RunSpec) -> RunOutcomes:
    """One run's cells from its tau2 results file (a missing file: no cells, a note)."""
    from simia.evaluation.tau2_results import read_tau2_results
    from simia.layout import EvalFiles

    empty = np.zeros((0, 0))
    if spec.path is None or not Path(spec.path).exists():
        note = (f"level {level_key(spec.level)} replicate {spec.replicate}: no results file"
                + (f" at {spec.path}" if spec.path else "") + " (its evaluation never ran)")
        return RunOutcomes(spec, (), 0, empty.astype(np.int8), empty, empty.astype(int),
                           empty.astype(int), empty.astype(object), (note,))
    res = read_tau2_results(spec.path)
    path = Path(res.path)
    raw = _raw_simulations(path if not path.is_dir() else EvalFiles(path).results)
    # each cell's simulation (read_tau2_results refuses a task x trial run twice)
    chosen = {(s.task_id, s.trial): s for s in res.simulations}
    shape = (len(res.task_ids), res.trials)
    status = np.full(shape, MISSING, dtype=np.int8)
    env_met = np.full(shape, math.nan)
    write_total = np.zeros(shape, dtype=int)
    write_matched = np.zeros(shape, dtype=int)
    termination = np.full(shape, "missing", dtype=object)
    codes = {"success": SUCCESS, "failure": FAILURE, "infrastructure_error": INFRA,
             "missing": MISSING}
    for t, task in enumerate(res.task_ids):
        for k in range(res.trials):
            status[t, k] = codes[res.cells[t][k]]
            s = chosen.get((task, k))
            if s is None:
                continue
            termination[t, k] = s.termination_reason
            if not s.infrastructure_error:
                info = raw[s.index].get("reward_info") if isinstance(raw[s.index], dict) else None
                env_met[t, k], write_total[t, k], write_matched[t, k] = _secondary(
                    path, s.index, info)
    notes = tuple(f"level {level_key(spec.level)} replicate {spec.replicate}: {n}"
                  for n in res.notes)
    return RunOutcomes(spec, res.task_ids, res.trials, status, env_met, write_total,
                       write_matched, termination, notes)


@dataclass(frozen=True)
class OutcomeTable:
    """Cells of every run over the union of tasks and trials (runs sorted by level, then
    replicate). Arrays are (runs, tasks, trials)."""

    levels: np.ndarray  # (runs,) float, percent
    replicates: tuple[str, ...]
    paths: tuple[str | None, ...]
    task_ids: tuple[str, ...]
    status: np.ndarray  # int8: SUCCESS / FAILURE / INFRA / MISSING
    env_met: np.ndarray  # float, nan: no assertion or excluded cell
    write_total: np.ndarray  # int
    write_matched: np.ndarray  # int
    termination: np.ndarray  # object: reason, 'infrastructure_error' or 'missing'
    notes: tuple[str, ...] = field(default=())

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_runs(cls, runs: Sequence[RunOutcomes]) -> OutcomeTable:
        """Merge runs onto the union of their tasks (first-seen order) and trials; a task or
        trial a run lacks is a missing cell."""
        runs = sorted(runs, key=lambda r: (r.spec.level, r.spec.replicate))
        keys = [(r.spec.level, r.spec.replicate) for r in runs]
        if len(set(keys)) != len(keys):
            dup = sorted({k for k in keys if keys.count(k) > 1})
            raise InputError(None, "a level:replicate is given twice: " + ", ".join(
                f"{level_key(lv)}:{rep}" for lv, rep in dup))
        tasks = tuple(dict.fromkeys(t for r in runs for t in r.task_ids))
        trials = max([r.trials for r in runs] + [0])
        shape = (len(runs), len(tasks), trials)
        out = {"status": np.full(shape, MISSING, dtype=np.int8),
               "env_met": np.full(shape, math.nan),
               "write_total": np.zeros(shape, dtype=int),
               "write_matched": np.zeros(shape, dtype=int),
               "termination": np.full(shape, "missing", dtype=object)}
        index = {t: i for i, t in enumerate(tasks)}
        for i, r in enumerate(runs):
            rows = [index[t] for t in r.task_ids]
            for name, arr in out.items():
                arr[i, rows, :r.trials] = getattr(r, name)
        return cls(levels=np.array([r.spec.level for r in runs], dtype=float),
                   replicates=tuple(r.spec.replicate for r in runs),
                   paths=tuple(r.spec.path for r in runs), task_ids=tasks,
                   notes=tuple(n for r in runs for n in r.notes), **out)

    # ------------------------------------------------------------------ shape and views
    @property
    def n_runs(self) -> int:
        return len(self.replicates)

    @property
    def trials(self) -> int:
        return int(self.status.shape[2]) if self.status.ndim == 3 else 0

    @property
    def valid(self) -> np.ndarray:
        """Cells whose simulation ran and was judged."""
        return self.status >= 0

    def unique_levels(self) -> list[float]:
        return sorted({float(v) for v in self.levels})

    def replicates_per_level(self) -> dict[float, int]:
        return {lv: int(np.sum(self.levels == lv)) for lv in self.unique_levels()}

    def select_tasks(self, mask: np.ndarray | Sequence[bool]) -> OutcomeTable:
        """The same runs on a subset of the tasks."""
        m = np.asarray(mask, dtype=bool)
        return OutcomeTable(self.levels, self.replicates, self.paths,
                            tuple(t for t, keep in zip(self.task_ids, m, strict=True) if keep),
                            self.status[:, m], self.env_met[:, m], self.write_total[:, m],
                            self.write_matched[:, m], self.termination[:, m], self.notes)

    def select_runs(self, mask: np.ndarray | Sequence[bool]) -> OutcomeTable:
        """A subset of the runs on the same tasks."""
        m = np.asarray(mask, dtype=bool)
        pick = [i for i, keep in enumerate(m) if keep]
        return OutcomeTable(self.levels[m], tuple(self.replicates[i] for i in pick),
                            tuple(self.paths[i] for i in pick), self.task_ids, self.status[m],
                            self.env_met[m], self.write_total[m], self.write_matched[m],
                            self.termination[m], self.notes)

    # ------------------------------------------------------------------ per-run outcomes
    def task_rates(self, *, excluded_as_failure: bool = False) -> np.ndarray:
        """(runs, tasks) success rate over the trials that ran; nan where none ran.
        ``excluded_as_failure``: infrastructure errors and missing cells count as failures
        (the old rule, a sensitivity analysis)."""
        if excluded_as_failure:
            return (self.status == SUCCESS).mean(axis=2) if self.trials else np.full(
                self.status.shape[:2], math.nan)
        n = self.valid.sum(axis=2)
        c = (self.status == SUCCESS).sum(axis=2)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, c / np.maximum(n, 1), math.nan)

    def pass1(self, *, excluded_as_failure: bool = False) -> np.ndarray:
        """(runs,) pass^1 of each run: the mean over tasks of the per-task success rate over
        the trials that ran (nan: a run with no judged cell)."""
        rates = self.task_rates(excluded_as_failure=excluded_as_failure)
        return _nanmean_rows(rates)

    def env_met_rate(self) -> np.ndarray:
        """(runs,) mean over tasks of the per-task mean fraction of environment assertions
        met (judged cells with assertions)."""
        with np.errstate(invalid="ignore"):
            per_task = _nanmean_last(np.where(self.valid, self.env_met, math.nan))
        return _nanmean_rows(per_task)

    def write_match_rate(self) -> np.ndarray:
        """(runs,) write action checks matched / write action checks (judged cells)."""
        total = np.where(self.valid, self.write_total, 0).sum(axis=(1, 2))
        matched = np.where(self.valid, self.write_matched, 0).sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, matched / np.maximum(total, 1), math.nan)

    def termination_rate(self, reason: str) -> np.ndarray:
        """(runs,) fraction of the judged cells that ended with ``reason``."""
        n = self.valid.sum(axis=(1, 2))
        hit = ((self.termination == reason) & self.valid).sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, hit / np.maximum(n, 1), math.nan)

    def termination_reasons(self) -> list[str]:
        """Reasons of judged cells, most frequent first."""
        vals, counts = np.unique(self.termination[self.valid].astype(str), return_counts=True)
        return [str(v) for _, v in sorted(zip(-counts, vals, strict=True))]

    def pass_hat_k(self, run: int) -> dict[int, float]:
        """pass^1..k of one run over the trials that ran (k up to the trials; a task with
        fewer judged trials than k is left out of pass^k)."""
        n = self.valid[run].sum(axis=1)
        c = (self.status[run] == SUCCESS).sum(axis=1)
        return pass_hat_k(n, c, self.trials)

    def tidy(self) -> pd.DataFrame:
        """One row per (level, replicate, task, trial) cell: status, success (None when
        excluded), env_met, write checks/matches, termination reason, issue type, persona."""
        import pandas as pd

        r, t, k = np.indices(self.status.shape).reshape(3, -1)
        status = self.status.reshape(-1)
        return pd.DataFrame({
            "level": self.levels[r], "replicate": np.asarray(self.replicates, dtype=object)[r],
            "task_id": np.asarray(self.task_ids, dtype=object)[t], "trial": k,
            "status": [_STATUS_NAMES[int(s)] for s in status],
            "success": pd.array(np.where(status >= 0, status == SUCCESS, None),
                                dtype="boolean"),
            "env_met": self.env_met.reshape(-1), "write_checks": self.write_total.reshape(-1),
            "write_matched": self.write_matched.reshape(-1),
            "termination_reason": self.termination.reshape(-1),
            "issue_type": [issue_type(self.task_ids[i]) for i in t],
            "persona": [persona(self.task_ids[i]) for i in t]})


def pass_hat_k(n: np.ndarray, c: np.ndarray, max_k: int) -> dict[int, float]:
    """pass^k = mean over tasks of C(c, k) / C(n, k), for k = 1..max_k; tasks with n < k
    are left out of pass^k (a k no task reaches is absent)."""
    out: dict[int, float] = {}
    for k in range(1, max_k + 1):
        keep = n >= k
        if not keep.any():
            break
        vals = [math.comb(int(ci), k) / math.comb(int(ni), k)
                for ni, ci in zip(n[keep], c[keep], strict=True)]
        out[k] = float(np.mean(vals))
    return out


def _nanmean_last(a: np.ndarray) -> np.ndarray:
    n = np.sum(~np.isnan(a), axis=-1)
    s = np.nansum(a, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), math.nan)


def _nanmean_rows(a: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring nan; nan where all are nan (no warning)."""
    return _nanmean_last(a) if a.shape[-1] else np.full(a.shape[:-1], math.nan)


def read_runs(specs: Iterable[RunSpec]) -> OutcomeTable:
    """Read every run's results file into one :class:`OutcomeTable`."""
    return OutcomeTable.from_runs([read_run(s) for s in specs])
