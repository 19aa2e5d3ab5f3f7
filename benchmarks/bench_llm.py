"""Throughput of the LLM stages against our local Converse server (tests/converse_server.py).

Two measurements, both through the real boto3 client and the same ``generate_shard`` the
DAG and the CLI run (prompt rendering, line parsing, checkpointing included):

1. **latency-bound**: the server answers every request after a fixed latency; the ideal
   rate is concurrency / latency. Prints achieved conversations/s and the ratio
   (target >= 0.9 at concurrency 32, 200 ms) over the whole run, start-up included, and
   the start-up itself (when the last of the threads sent its first request: the first
   round of requests is serialised through one interpreter, and the first call also
   loads botocore's Converse model). 2560 conversations by default (80 rounds of 32),
   so that start-up, a one-off cost of about 0.1 s, weighs under 1 % as it does in a
   real stage (minutes to hours); ``--n 640`` shows it at about 3 %.
2. **rate-limited**: the server throttles (429) above a requests-per-second limit;
   prints achieved/limit (target >= 0.85) and checks that no item is lost: every item
   ends as a conversation or a recorded failure, and the target is reached.
3. **caching**: the judge (over the real processed sycophantic 200 when
   ``$SIMIA_REFERENCE_DATA`` holds them, else 200 synthetic conversations) and
   generation (``--cache-n`` conversations from 20 synthetic seeds) with prompt caching
   off, then on, against one server process that emulates Bedrock's prompt cache
   (``--cache-latency`` per call, the client's default concurrency of 8). Prints the
   share of the input read from the cache, the cache tokens and the cost of each.

The server runs in its own process so that it does not compete with the client for
the GIL. Figures are printed, never asserted.

    .venv/bin/python benchmarks/bench_llm.py [--n 2560] [--concurrency 32] [--latency 0.2]
        [--rps 60] [--retry-mode standard|adaptive] [--learn auto|on|off] [--max-rps R]
        [--only latency|rate-limited|caching] [--cache-n 200] [--cache-latency 0.1]
        [--repeat N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # test support (synthetic conversations)


def _server(latency: float, rps: float | None) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, str(ROOT / "tests" / "converse_server.py"), "--port", "0",
           "--latency-s", str(latency)]
    if rps:
        cmd += ["--rps-limit", str(rps)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"converse server did not start: {line!r}")
    return proc, line.removeprefix("listening on ")


def _stats(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/_admin/stats", timeout=10) as resp:
        return json.loads(resp.read())


def _run(url: str, seeds: Path, out: Path, n: int, concurrency: int,
         mode: str = "standard", learn: bool | None = None,
         max_rps: float | None = None) -> tuple[float, dict]:
    from simia.llm.generation import GenerationSettings, generate_shard
    from simia.llm.client import LLMSettings, make_client

    client = make_client(LLMSettings(endpoint_url=url, concurrency=concurrency,
                                     timeout_s=30, backoff_base_s=0.05, backoff_max_s=1.0,
                                     max_attempts=20, botocore_retry_mode=mode,
                                     learn_rps=learn, max_rps=max_rps))
    settings = GenerationSettings(target=n, max_attempts=n * 2)
    first_send: dict[int, float] = {}  # thread -> when it first sent a request

    def sent(**_: object) -> None:
        first_send.setdefault(threading.get_ident(), time.perf_counter())

    client.backend.client.meta.events.register("before-send.bedrock-runtime", sent)
    t0, cpu0 = time.perf_counter(), time.process_time()
    summary = generate_shard(seeds, out, settings, client)
    seconds = time.perf_counter() - t0
    summary["client_cpu_fraction"] = round((time.process_time() - cpu0) / seconds, 2)
    summary["startup_s"] = round(max(first_send.values()) - t0, 3) if first_send else None
    summary["pacer"] = client.pacer.stats() if client.pacer is not None else None
    return seconds, summary


_LEARN = {"auto": None, "on": True, "off": False}


def _latency_run(args: argparse.Namespace, seeds: Path, out: Path) -> dict:
    proc, url = _server(args.latency, None)
    try:
        seconds, summary = _run(url, seeds, out, args.n, args.concurrency)
        server_cpu = _cpu_seconds(proc.pid)
    finally:
        proc.terminate()
        proc.wait()
    ideal = args.concurrency / args.latency
    rate = summary["valid"] / seconds
    return {"n": args.n, "concurrency": args.concurrency, "latency_s": args.latency,
            "seconds": round(seconds, 3), "conversations_per_s": round(rate, 1),
            "ideal_per_s": round(ideal, 1), "ratio": round(rate / ideal, 3),
            "client_cpu_fraction": summary["client_cpu_fraction"],
            "startup_s": summary["startup_s"], "server_cpu_seconds": server_cpu}


def _rate_run(args: argparse.Namespace, seeds: Path, out: Path) -> dict:
    proc, url = _server(0.05, args.rps)
    try:
        seconds, summary = _run(url, seeds, out, args.n, args.concurrency,
                                args.retry_mode, _LEARN[args.learn], args.max_rps)
        stats = _stats(url)
    finally:
        proc.terminate()
        proc.wait()
    ckpt = out / "generate-shard-000-of-001.jsonl"
    records = [json.loads(x) for x in ckpt.read_text().splitlines() if x.strip()]
    rate = summary["valid"] / seconds
    return {"n": args.n, "concurrency": args.concurrency, "rps_limit": args.rps,
            "retry_mode": args.retry_mode, "learn_rps": args.learn,
            "max_rps": args.max_rps, "pacer": summary["pacer"],
            "seconds": round(seconds, 3), "conversations_per_s": round(rate, 1),
            "ratio": round(rate / args.rps, 3), "valid": summary["valid"],
            "recorded_failures": summary["failed"], "items": len(records),
            "lost": summary["submitted_now"] - len(records),
            "server_429": stats["rate_limited"], "server_requests": stats["requests"]}


def _reset(url: str) -> None:
    request = urllib.request.Request(f"{url}/_admin/reset", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=10):
        pass


def _cache_inputs(tmp: Path) -> tuple[Path, Path, str]:
    """(raw conversations to process and judge, tau2 data folder, what they are)."""
    reference = os.environ.get("SIMIA_REFERENCE_DATA")
    if reference:
        raw = Path(reference) / "simia-wm-exp" / "tau2_telecom_sycophantic_200.json"
        tau2 = Path(reference) / "tau2-telecom"
        if raw.is_file() and tau2.is_dir():
            return raw, tau2, "the real sycophantic 200"
    from support.synthetic import generate_raw, synthetic_policy

    raw = tmp / "raw.json"
    raw.write_text(json.dumps(generate_raw(200, seed=7)))
    tau2 = tmp / "tau2"
    folder = tau2 / "domains" / "telecom"
    folder.mkdir(parents=True)
    (folder / "main_policy.md").write_text(synthetic_policy(seed=3))
    (folder / "tech_support_manual.md").write_text("# Tech support manual\n")
    return raw, tau2, "200 synthetic conversations"


def _cache_run(args: argparse.Namespace, seeds: Path, out: Path) -> dict:
    """The judge and generation with prompt caching off, then on, against one server."""
    from simia.data.stages import process_stage
    from simia.llm.client import LLMSettings, make_client
    from simia.llm.generation import GenerationSettings, generate_shard, merge_generation
    from simia.llm.judge import JudgeSettings, judge_shard, merge_judge

    out.mkdir(parents=True)
    raw, tau2, what = _cache_inputs(out)
    process_stage(raw, out / "proc", tau2_data_dir=tau2)
    proc, url = _server(args.cache_latency, None)
    stages: dict[str, dict] = {"judge": {}, "generate": {}}
    try:
        for caching in (False, True):
            _reset(url)
            client = make_client(LLMSettings(endpoint_url=url, prompt_caching=caching))
            key = "on" if caching else "off"
            judge_shard(out / "proc" / "processed.json", out / f"judge-{key}", JudgeSettings(),
                        client)
            stages["judge"][key] = merge_judge(out / f"judge-{key}")["llm"]
            gen = GenerationSettings(target=args.cache_n, mode="sycophantic")
            generate_shard(seeds, out / f"gen-{key}", gen, client)
            stages["generate"][key] = merge_generation(out / f"gen-{key}", gen)["llm"]
    finally:
        proc.terminate()
        proc.wait()
    keep = ("calls", "input_tokens", "output_tokens", "cache_read_tokens",
            "cache_write_tokens", "cache_read_share", "cost_usd")
    return {"judge_input": what, "generate_n": args.cache_n,
            "latency_s": args.cache_latency,
            "stages": {name: {key: {k: llm[k] for k in keep} for key, llm in runs.items()}
                       for name, runs in stages.items()}}


def _print_cache(res: dict) -> None:
    for name, runs in res["stages"].items():
        on, off = runs["on"], runs["off"]
        print(f"  {name:8s} cached {on['cache_read_share']:.1%} of "
              f"{on['input_tokens'] + on['cache_read_tokens'] + on['cache_write_tokens']:,} "
              f"input tokens (read {on['cache_read_tokens']:,}, written "
              f"{on['cache_write_tokens']:,}); cost ${on['cost_usd']:.4f} on, "
              f"${off['cost_usd']:.4f} off ({1 - on['cost_usd'] / off['cost_usd']:.0%} "
              f"saved)")


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a live process (Linux ``/proc``), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)


def _print_latency(lat: dict) -> None:
    print(f"  achieved {lat['conversations_per_s']:.1f}/s of ideal {lat['ideal_per_s']:.1f}/s"
          f"  ratio {lat['ratio']:.3f}  (target >= 0.9)")
    print(f"  start-up {lat['startup_s'] * 1000:.0f} ms (the last thread's first request, "
          f"{lat['startup_s'] / lat['seconds']:.1%} of the run); client process CPU "
          f"{lat['client_cpu_fraction']:.0%} of one core, server process "
          f"{lat['server_cpu_seconds']} CPU s in all")


def _print_rate(rl: dict) -> None:
    print(f"  achieved {rl['conversations_per_s']:.1f}/s  ratio {rl['ratio']:.2f}  "
          f"(target >= 0.85); {rl['server_429']} throttled of {rl['server_requests']} "
          f"requests; valid {rl['valid']}, recorded failures {rl['recorded_failures']}, "
          f"lost {rl['lost']}")
    if rl["pacer"]:
        print(f"  pacer: final rate {rl['pacer']['rate']} req/s, {rl['pacer']['cuts']} cuts, "
              f"{rl['pacer']['throttled']} throttled of {rl['pacer']['requests']} attempts")


def _spread(runs: list[dict]) -> str:
    ratios = sorted(r["ratio"] for r in runs)
    return (f"ratio over {len(ratios)} runs: min {ratios[0]:.3f}, "
            f"median {ratios[len(ratios) // 2]:.3f}, max {ratios[-1]:.3f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2560, help="conversations per measurement")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--latency", type=float, default=0.2, help="server latency (s)")
    ap.add_argument("--rps", type=float, default=60.0, help="server rate limit (req/s)")
    ap.add_argument("--retry-mode", choices=["adaptive", "standard"], default="standard",
                    help="botocore retry mode for the rate-limited run (default: the "
                         "client's default, standard)")
    ap.add_argument("--learn", choices=["auto", "on", "off"], default="auto",
                    help="the client's learn_rps for the rate-limited run (auto: on with "
                         "standard retries, off with adaptive)")
    ap.add_argument("--max-rps", type=float, default=None,
                    help="the client's max_rps for the rate-limited run (default: none)")
    ap.add_argument("--only", choices=["latency", "rate-limited", "caching"], default=None,
                    help="run one of the three measurements")
    ap.add_argument("--cache-n", type=int, default=200,
                    help="conversations generated in the caching run")
    ap.add_argument("--cache-latency", type=float, default=0.1,
                    help="server latency (s) in the caching run")
    ap.add_argument("--repeat", type=int, default=1,
                    help="repeat each measurement (interleaved) and print the spread")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    import logging

    logging.disable(logging.INFO)  # one log line per call would dominate the timing

    from support.synthetic import generate_raw

    figures: dict = {"latency": [], "rate_limited": [], "caching": []}
    with tempfile.TemporaryDirectory(prefix="simia-bench-llm-") as tmp:
        seeds = Path(tmp) / "seeds.json"
        seeds.write_text(json.dumps(generate_raw(20, seed=1, mode="strict")))
        for rep in range(args.repeat):
            if args.only in (None, "latency"):
                lat = _latency_run(args, seeds, Path(tmp) / f"latency-{rep}")
                figures["latency"].append(lat)
                print(f"latency-bound  {lat['n']} conversations, concurrency "
                      f"{lat['concurrency']}, {lat['latency_s'] * 1000:.0f} ms per call")
                _print_latency(lat)
            if args.only in (None, "rate-limited"):
                rl = _rate_run(args, seeds, Path(tmp) / f"rps-{rep}")
                figures["rate_limited"].append(rl)
                print(f"rate-limited   {rl['n']} conversations, concurrency "
                      f"{rl['concurrency']}, server limit {rl['rps_limit']:.0f} req/s, "
                      f"botocore {rl['retry_mode']} retries, learn_rps {rl['learn_rps']}, "
                      f"max_rps {rl['max_rps']}")
                _print_rate(rl)
            if args.only in (None, "caching"):
                cache = _cache_run(args, seeds, Path(tmp) / f"cache-{rep}")
                figures["caching"].append(cache)
                print(f"caching        judge over {cache['judge_input']}, generation of "
                      f"{cache['generate_n']} conversations, prompt caching off then on, "
                      f"{cache['latency_s'] * 1000:.0f} ms per call, concurrency 8")
                _print_cache(cache)
            sys.stdout.flush()
    if args.repeat > 1:
        for name, runs in figures.items():
            if runs and name != "caching":
                print(f"{name}: {_spread(runs)}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
