"""GPU leases: exclusive across processes, all or nothing, released when the holder dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simia.errors import ConfigError
from simia.containers.gpus import GpuLease, GpuLeaseTimeout, check_request, parse_gpu_ids

ROOT = Path(__file__).resolve().parents[2]


def test_parse_gpu_ids():
    assert parse_gpu_ids("0, 1,3") == ["0", "1", "3"]
    assert parse_gpu_ids("") == [] and parse_gpu_ids(None) == []
    assert parse_gpu_ids("GPU-8a1b") == ["GPU-8a1b"]
    for bad in ("0,x", "0,0", "cuda:0"):
        with pytest.raises(ConfigError):
            parse_gpu_ids(bad)


def test_leases_split_the_gpus_and_never_overlap(tmp_path):
    ids = ["0", "1", "2", "3"]
    a = GpuLease(tmp_path, ids, 2, holder="a")
    b = GpuLease(tmp_path, ids, 2, holder="b")
    got_a, got_b = a.acquire(), b.acquire()
    assert sorted(got_a + got_b) == ids
    c = GpuLease(tmp_path, ids, 1, holder="c", wait_s=0.2, poll_s=0.05)
    with pytest.raises(GpuLeaseTimeout, match=r"lock holders: 0: a.*3: b"):
        c.acquire()
    a.release()
    with c as got_c:
        assert got_c == [got_a[0]]
    b.release()


def test_a_partial_set_is_not_kept_while_waiting(tmp_path):
    ids = ["0", "1"]
    one = GpuLease(tmp_path, ids, 1)
    one.acquire()
    two = GpuLease(tmp_path, ids, 2, wait_s=0.1, poll_s=0.02)
    with pytest.raises(GpuLeaseTimeout):
        two.acquire()
    assert two.ids == []  # gave back the free GPU it had tried
    assert GpuLease(tmp_path, ids, 1).acquire() == ["1"]


def test_cpu_training_and_impossible_requests(tmp_path):
    assert GpuLease(tmp_path, [], 0).acquire() == []
    with pytest.raises(ConfigError, match="needs 3 GPUs but only 2"):
        GpuLease(tmp_path, ["0", "1"], 3)
    with pytest.raises(ConfigError, match="needs 1 GPUs but only 0 are configured \\(none\\)"):
        check_request([], 1)
    check_request(["0"], 1)


def test_a_killed_holder_releases_its_gpus(tmp_path):
    code = ("import sys, time; sys.path.insert(0, %r); from simia.containers.gpus import GpuLease; "
            "GpuLease(%r, ['0'], 1, holder='child').acquire(); print('held', flush=True); "
            "time.sleep(60)") % (str(ROOT / "include"), str(tmp_path))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(GpuLeaseTimeout, match="child"):
            GpuLease(tmp_path, ["0"], 1, wait_s=0.1, poll_s=0.02).acquire()
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        start = time.monotonic()
        assert GpuLease(tmp_path, ["0"], 1, wait_s=5, poll_s=0.05).acquire() == ["0"]
        assert time.monotonic() - start < 5
    finally:
        child.kill()


def test_a_live_server_claim_keeps_its_gpus_out_of_other_leases(tmp_path):
    from simia.containers.gpus import release_claims

    alive = {"srv-a"}
    server = GpuLease(tmp_path, ["0", "1"], 1, holder="serve a",
                      claim_alive=lambda h: h in alive)
    with server as ids:
        server.claim("srv-a")
    assert ids == ["0"] and (tmp_path / "gpu-0.claim").read_text().strip() == "srv-a"
    # the server task ended (its flock is gone) but the claim holds GPU 0
    train = GpuLease(tmp_path, ["0", "1"], 1, holder="train", claim_alive=lambda h: h in alive)
    assert train.acquire() == ["1"]
    train.release()
    both = GpuLease(tmp_path, ["0", "1"], 2, holder="t2", wait_s=0.2, poll_s=0.05,
                    claim_alive=lambda h: h in alive)
    with pytest.raises(GpuLeaseTimeout, match="claimed by srv-a"):
        both.acquire()
    assert release_claims(tmp_path, "srv-a") == ["0"] and not list(tmp_path.glob("*.claim"))
    with both as got:
        assert got == ["0", "1"]


def test_a_stale_claim_is_removed(tmp_path):
    (tmp_path / "gpu-0.claim").write_text("srv-gone\n")
    lease = GpuLease(tmp_path, ["0"], 1, holder="x", claim_alive=lambda h: False)
    with lease as ids:
        assert ids == ["0"]
    assert not (tmp_path / "gpu-0.claim").exists()
    with pytest.raises(RuntimeError, match="held"):
        GpuLease(tmp_path, ["0"], 1).claim("nobody")
