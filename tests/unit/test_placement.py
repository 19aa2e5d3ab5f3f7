"""Several GPU hosts: SIMIA_GPU_HOSTS, the placement planner, the per-level task ids, the
worker's GPU check and the shared data root's marker (simia.settings.hosts,
simia.placement, ``simia init-data-root``)."""

from __future__ import annotations

import random

import pytest

from simia.cli import main
from simia.errors import ConfigError
from simia.layout import DataRoot
from simia.placement import (DataRootError, PlacementError, TrainingRun, WrongHostError,
                             check_shared_data_root, check_worker_gpus, data_root_problem,
                             plan_placement, read_data_root_marker, training_runs,
                             write_data_root_marker)
from simia.settings.hosts import (GpuHost, HostsError, format_gpu_hosts, gpu_hosts,
                                  level_task_id, parse_gpu_hosts, split_level_task_id)

# --------------------------------------------------------------------------- SIMIA_GPU_HOSTS


def test_hosts_are_read_in_order_with_their_gpus_and_queues():
    hosts = parse_gpu_hosts(" gpu-a:0,1,2,3 ; gpu_b:0, 1,2,3,4,5,6,7;cpu-a:;")
    assert [(h.name, h.gpu_ids) for h in hosts] == [
        ("gpu-a", ("0", "1", "2", "3")), ("gpu_b", tuple(str(i) for i in range(8))),
        ("cpu-a", ())]
    assert [h.queue for h in hosts] == ["simia-gpu-a", "simia-gpu_b", "simia-cpu-a"]
    assert [h.group_id for h in hosts] == ["level_gpu-a", "level_gpu_b", "level_cpu-a"]
    assert [h.max_trainings for h in hosts] == [4, 8, 1]
    assert format_gpu_hosts(hosts) == "gpu-a:0,1,2,3;gpu_b:0,1,2,3,4,5,6,7;cpu-a:"
    assert parse_gpu_hosts(format_gpu_hosts(hosts)) == hosts
    assert parse_gpu_hosts("g:GPU-8f2e,GPU-1a") == (GpuHost("g", ("GPU-8f2e", "GPU-1a")),)


@pytest.mark.parametrize("value", [None, "", "  ", ";"])
def test_no_hosts_means_one_host(value, monkeypatch):
    assert parse_gpu_hosts(value) == ()
    monkeypatch.setenv("SIMIA_GPU_HOSTS", value or "")
    assert gpu_hosts() == ()


@pytest.mark.parametrize("value, expected", [
    ("gpu-a", "entry 'gpu-a' has no ':'; write name:ids"),
    ("gpu-a.lab.example:0", "host name 'gpu-a.lab.example'"),
    (":0,1", "host name ''"),
    ("-gpu:0", "host name '-gpu'"),
    ("gpu a:0", "host name 'gpu a'"),
    ("x" * 41 + ":0", "at most 40 characters"),
    ("gpu-a:0;GPU-A:1", "host 'GPU-A' is listed twice"),
    ("gpu-a:0,x", "host 'gpu-a': GPU ids must be numbers"),
    ("gpu-a:0,0", "host 'gpu-a': GPU ids repeat"),
])
def test_bad_hosts_are_refused_naming_the_entry(value, expected, monkeypatch):
    with pytest.raises(HostsError) as err:
        parse_gpu_hosts(value)
    assert expected in str(err.value) and str(err.value).startswith("SIMIA_GPU_HOSTS: ")
    assert isinstance(err.value, ConfigError)
    monkeypatch.setenv("SIMIA_GPU_HOSTS", value)
    with pytest.raises(HostsError):
        gpu_hosts()


@pytest.mark.parametrize("gpus, per_training, expected", [
    (8, 4, 2), (8, 3, 2), (4, 4, 1), (4, 8, 0), (8, 0, 1), (0, 0, 1), (0, 1, 0)])
def test_trainings_at_once(gpus, per_training, expected):
    host = GpuHost("h", tuple(str(i) for i in range(gpus)))
    assert host.trainings_at_once(per_training) == expected


def test_host_defaults_of_the_settings(monkeypatch):
    from simia.settings.fields import gpus_per_training_default, has_gpus

    monkeypatch.delenv("SIMIA_GPU_HOSTS", raising=False)
    monkeypatch.setenv("SIMIA_GPU_IDS", "0,1")
    assert gpus_per_training_default() == 2 and has_gpus()
    monkeypatch.setenv("SIMIA_GPU_IDS", "")
    assert gpus_per_training_default() == 0 and not has_gpus()
    # several hosts: what the smallest GPU host can train; the control plane's own
    # SIMIA_GPU_IDS does not matter
    monkeypatch.setenv("SIMIA_GPU_HOSTS", "gpu-a:0,1,2,3,4,5,6,7;gpu-b:0,1,2,3;cpu-a:")
    assert gpus_per_training_default() == 4 and has_gpus()
    monkeypatch.setenv("SIMIA_GPU_HOSTS", "cpu-a:;cpu-b:")
    monkeypatch.setenv("SIMIA_GPU_IDS", "0")
    assert gpus_per_training_default() == 0 and not has_gpus()


# --------------------------------------------------------------------------- task ids


def test_level_task_ids_on_one_host_and_on_several():
    assert level_task_id("train_model") == "level.train_model"
    assert level_task_id("evaluate_tau2", "gpu-b") == "level_gpu-b.evaluate_tau2"
    assert split_level_task_id("level.train_model") == (None, "train_model")
    assert split_level_task_id("level_gpu-b.evaluate_tau2") == ("gpu-b", "evaluate_tau2")
    assert split_level_task_id("level_gpu_b.serve_model") == ("gpu_b", "serve_model")
    for other in ("plan_levels", "plans_gpu-a", "levels.train_model", "level_.train_model",
                  "level_gpu-a", "report_results"):
        assert split_level_task_id(other) is None, other
    for host in parse_gpu_hosts("gpu-a:0;cpu_1:"):
        assert split_level_task_id(f"{host.group_id}.train_model") == (host.name, "train_model")


# --------------------------------------------------------------------------- planner


def _hosts(*gpus: int) -> list[GpuHost]:
    return [GpuHost(f"h{i}", tuple(str(g) for g in range(n))) for i, n in enumerate(gpus)]


def _check_schedule(placed, runs):
    """Every run placed once; a slot never holds two runs at a time."""
    assert [a.run for a in placed.assignments] == list(runs)
    by_slot: dict = {}
    for a in placed.assignments:
        assert a.slot < placed.slots[a.host.name]
        by_slot.setdefault((a.host.name, a.slot), []).append((a.start, a.end))
    for spans in by_slot.values():
        spans.sort()
        assert all(s2 >= e1 for (_, e1), (s2, _) in zip(spans, spans[1:]))
    assert placed.makespan >= placed.ideal - 1e-9


def test_two_hosts_of_eight_gpus_share_twelve_runs_evenly():
    runs = training_runs([0, 5, 10, 20], 3)
    placed = plan_placement(runs, _hosts(8, 8), 4)
    _check_schedule(placed, runs)
    assert placed.slots == {"h0": 2, "h1": 2}
    assert {h: len(r) for h, r in placed.by_host().items()} == {"h0": 6, "h1": 6}
    assert placed.makespan == placed.ideal == 3 and placed.ratio == 1.0


def test_uneven_hosts_get_runs_by_their_slots():
    runs = training_runs([0, 5, 10, 20], 3)
    placed = plan_placement(runs, _hosts(8, 8, 4), 4)
    _check_schedule(placed, runs)
    assert placed.slots == {"h0": 2, "h1": 2, "h2": 1}
    assert placed.ideal == pytest.approx(12 / 5)
    assert placed.makespan == 3  # 5 slots, 12 equal runs: some slot runs 3
    assert {h: len(r) for h, r in placed.by_host().items()} == {"h0": 5, "h1": 5, "h2": 2}


def test_the_longest_run_bounds_the_ideal_and_lpt_is_classic():
    runs = [TrainingRun(float(i)) for i in range(5)]
    lengths = dict(zip(runs, [3, 3, 2, 2, 2]))
    placed = plan_placement(runs, _hosts(2), 1, durations=lengths)
    # LPT's textbook worst case on 2 machines: 7 against the optimum 6 (= ideal here)
    assert placed.ideal == 6 and placed.makespan == 7
    one = plan_placement(runs[:1], _hosts(8, 8), 1, durations={runs[0]: 10})
    assert one.ideal == 10 and one.makespan == 10  # one long run: nothing to balance


@pytest.mark.parametrize("seed", range(20))
def test_random_designs_are_placed_within_the_list_scheduling_bound(seed):
    rng = random.Random(seed)
    runs = training_runs(sorted(rng.sample(range(0, 60, 5), rng.randint(1, 6))),
                         rng.randint(1, 4))
    hosts = _hosts(*[rng.choice([0, 2, 4, 8]) for _ in range(rng.randint(1, 4))])
    per = rng.choice([0, 1, 2, 4]) if any(h.gpus for h in hosts) else 0
    if all(h.gpus < per for h in hosts):
        per = 0
    lengths = {r: rng.uniform(0.5, 3.0) for r in runs}
    placed = plan_placement(runs, hosts, per, durations=lengths)
    _check_schedule(placed, runs)
    work = sum(lengths.values()) / sum(placed.slots.values())
    assert placed.makespan <= work + max(lengths.values()) + 1e-9  # Graham's bound
    assert placed == plan_placement(runs, hosts, per, durations=lengths)  # deterministic


def test_placement_is_deterministic_and_ties_go_to_the_host_listed_first():
    runs = training_runs([0, 10], 1)
    a, b = plan_placement(runs, _hosts(4, 4), 4), plan_placement(runs, _hosts(4, 4), 4)
    assert a == b
    assert [x.host.name for x in a.assignments] == ["h0", "h1"]
    one = plan_placement(runs[:1], list(reversed(_hosts(4, 4))), 4)
    assert one.assignments[0].host.name == "h1"


def test_hosts_too_small_get_no_runs_and_say_so():
    runs = training_runs([0, 5, 10], 1)
    hosts = parse_gpu_hosts("big:0,1,2,3,4,5,6,7;small:0,1;cpu:")
    placed = plan_placement(runs, hosts, 4)
    assert placed.slots == {"big": 2, "small": 0, "cpu": 0}
    assert placed.by_host() == {"big": runs, "small": [], "cpu": []}
    lines = placed.lines()
    assert lines[:3] == ["0pct -> big (queue simia-big)", "5pct -> big (queue simia-big)",
                         "10pct -> big (queue simia-big)"]
    assert "small: no runs (2 GPUs, a training needs 4)" in lines
    assert lines[-1].startswith("planned makespan 2 run-lengths vs ideal 1.5 (ratio 1.33)")


def test_cpu_training_runs_one_at_a_time_on_every_host():
    runs = training_runs([0, 5, 10, 20], 2)
    placed = plan_placement(runs, parse_gpu_hosts("gpu-a:0,1,2,3;cpu-a:"), 0)
    assert placed.slots == {"gpu-a": 1, "cpu-a": 1}
    assert placed.makespan == placed.ideal == 4
    assert "5pct-r2 -> cpu-a (queue simia-cpu-a)" in placed.lines()


@pytest.mark.parametrize("kwargs, expected", [
    ({"gpus_per_training": 16}, "gpus_per_training = 16: no host of SIMIA_GPU_HOSTS has "
                                "that many GPUs (GPUs per host: h0 8, h1 4)"),
    ({"gpus_per_training": 1, "gpus_per_server": 9}, "gpus_per_server = 9"),
])
def test_a_design_no_host_can_run_is_refused_naming_the_params(kwargs, expected):
    with pytest.raises(PlacementError) as err:
        plan_placement(training_runs([0], 1), _hosts(8, 4), **kwargs)
    assert expected in str(err.value)
    assert "lower the Param(s) gpus_per_training / gpus_per_server to at most 8" in str(err.value)
    with pytest.raises(PlacementError, match="no host"):
        plan_placement(training_runs([0], 1), parse_gpu_hosts("cpu-a:;cpu-b:"), 1)
    with pytest.raises(PlacementError, match="SIMIA_GPU_HOSTS is empty"):
        plan_placement(training_runs([0], 1), [], 0)
    with pytest.raises(PlacementError, match=r"durations must be > 0 \(not for 0pct\)"):
        plan_placement(training_runs([0], 1), _hosts(1), 1,
                       durations={TrainingRun(0.0): 0})


def test_by_host_lists_each_hosts_runs_in_their_planned_order():
    runs = training_runs([0, 5, 10, 20], 1)
    lengths = dict(zip(runs, [1, 1, 1, 5]))
    placed = plan_placement(runs, _hosts(1, 1), 1, durations=lengths)
    # the long run (20 %) starts first on h0; the three short ones fill h1
    assert placed.by_host() == {"h0": [runs[3]], "h1": runs[:3]}
    assert placed.host_of(runs[3]).name == "h0"
    data = placed.as_dict()
    assert data["hosts"][0] == {"name": "h0", "gpu_ids": "0", "queue": "simia-h0",
                                "group": "level_h0", "slots": 1}
    assert [r["host"] for r in data["runs"]] == ["h1", "h1", "h1", "h0"]


# --------------------------------------------------------------------------- worker checks


def test_a_worker_with_other_gpus_than_the_plans_host_refuses():
    plan = {"host": "gpu-b", "queue": "simia-gpu-b", "gpu_ids": "0,1,2,3,4,5,6,7"}
    with pytest.raises(WrongHostError) as err:
        check_worker_gpus(plan, {"SIMIA_GPU_IDS": "0,1,2,3"})
    assert str(err.value).startswith(
        "this task ran on a worker whose GPUs are 0,1,2,3 (SIMIA_GPU_IDS), but it was "
        "planned for host gpu-b with 0,1,2,3,4,5,6,7 (queue simia-gpu-b)")
    assert "--queues simia-gpu-b" in str(err.value)
    check_worker_gpus(plan, {"SIMIA_GPU_IDS": "7,6,5,4,3,2,1,0"})  # the same GPUs
    check_worker_gpus(plan, {})  # a worker that does not say
    check_worker_gpus({"gpu_ids": "0"}, {"SIMIA_GPU_IDS": "1"})  # one host: not placed
    with pytest.raises(WrongHostError, match="planned for host cpu-a with no GPUs"):
        check_worker_gpus({"host": "cpu-a", "queue": "simia-cpu-a", "gpu_ids": ""},
                          {"SIMIA_GPU_IDS": "0"})
    with pytest.raises(WrongHostError, match="SIMIA_GPU_IDS cannot be read"):
        check_worker_gpus(plan, {"SIMIA_GPU_IDS": "zero"})


# --------------------------------------------------------------------------- data root


def test_the_data_root_marker_is_checked_against_the_hosts_id(tmp_path):
    root = tmp_path / "data"
    assert DataRoot(root).marker == root / ".simia-data-root" and not root.exists()
    check_shared_data_root(root, {})  # no SIMIA_DATA_ROOT_ID: one host, nothing to check
    with pytest.raises(DataRootError) as err:
        check_shared_data_root(root, {"SIMIA_DATA_ROOT_ID": "abc"})
    msg = str(err.value)
    assert msg.startswith(f"the data root {root} is not the shared one: it has no "
                          ".simia-data-root marker (SIMIA_DATA_ROOT_ID is 'abc')")
    assert "mount the shared data root" in msg and "simia init-data-root" in msg
    assert write_data_root_marker(root, "abc")["written"] is True
    assert read_data_root_marker(root) == "abc"
    check_shared_data_root(root, {"SIMIA_DATA_ROOT_ID": "abc"})
    with pytest.raises(DataRootError, match="its .simia-data-root holds id 'abc', this host "
                                            "expects 'xyz'"):
        check_shared_data_root(root, {"SIMIA_DATA_ROOT_ID": "xyz"})
    assert data_root_problem(root, "abc", "abc") is None
    assert "has no" in data_root_problem(root, None, "abc")


def test_init_data_root_writes_keeps_and_refuses_to_replace_the_id(tmp_path, capsys,
                                                                   monkeypatch):
    import json

    monkeypatch.delenv("SIMIA_DATA_ROOT_ID", raising=False)
    root = tmp_path / "shared"
    assert main(["init-data-root", str(root)]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["written"] and len(first["id"]) == 32 and first["marker"].endswith(
        ".simia-data-root")
    assert main(["init-data-root", str(root)]) == 0  # again: the same id, kept
    assert json.loads(capsys.readouterr().out) == {**first, "written": False}
    monkeypatch.setenv("SIMIA_DATA_ROOT_ID", "other")
    assert main(["init-data-root", str(root)]) == 2
    err = capsys.readouterr().err
    assert f"already holds id {first['id']!r}, not 'other'" in err and "--force" in err
    assert main(["init-data-root", str(root), "--id", "lab-1", "--force"]) == 0
    assert read_data_root_marker(root) == "lab-1"
    capsys.readouterr()
    assert main(["init-data-root", str(tmp_path / "x"), "--id", "two words"]) == 2
    assert "one word without spaces" in capsys.readouterr().err
    monkeypatch.setenv("SIMIA_DATA_ROOT_ID", "from-env")
    assert main(["init-data-root", str(tmp_path / "y")]) == 0
    assert read_data_root_marker(tmp_path / "y") == "from-env"
