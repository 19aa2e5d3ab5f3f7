#!/usr/bin/env python
"""Benchmark of the pipeline's data half, measured against the JSON round-trip floor.

The data half is what the DAG runs before training, through the same file-level stage
functions (``simia.data.stages``)::

    process_stage(raw.json -> processed/processed.json, rejects.jsonl, summary.json)
    score_rules_stage(processed.json -> scores/rule_scores.jsonl)  (native: labels describe
                                                                    what is trained on)
    build_datasets_stage(processed.json + rule_scores.jsonl -> datasets/*.json)

The floor is what the standard library needs just to read the same raw file and
write it back (``json.load`` + ``json.dump``), measured in the same run on the same
bytes. The target is a data half no slower than that floor (ratio <= 1.0x) and a peak
memory below 4x the input size.

Run:  .venv/bin/python benchmarks/bench_data_half.py [--n 3000] [--repeat 3]
      [--input RAW.json | --real] [--json figures.json] [--profile]
(or ``make bench``). This is a benchmark, not a test: it prints figures and never
fails on them. See benchmarks/README.md for how to read the output.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import gc
import io
import itertools
import json
import os
import platform
import pstats
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pydantic

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # test support
from simia.data.datasets import DatasetDesign  # noqa: E402
from simia.errors import ConfigError  # noqa: E402
from simia.data.stages import build_datasets_stage, process_stage, score_rules_stage  # noqa: E402,E501

MB = 1_000_000
STAGES = ("process", "score_rules", "build_datasets")
STAGE_LABELS = {
    "process": "process_stage",
    "score_rules": "score_rules_stage",
    "build_datasets": "build_datasets_stage",
}
REAL_FILES = ("simia-wm-exp/tau2_telecom_strict_200.json",
              "simia-wm-exp/tau2_telecom_sycophantic_200.json")
POLICY_FILES = ("main_policy.md", "tech_support_manual.md")

# Designs tried in order; the first one the pools can fill is used. The reference
# experiment's design comes first, then a smaller one rule-scored synthetic data fits.
PREFERRED_DESIGNS = (
    {"levels": (0, 5, 10, 20), "size": 500, "shared_clean": 400},
    {"levels": (0, 2, 5, 10), "size": 600, "shared_clean": 500},
)
FALLBACK_LEVELS = ((0, 2, 5, 10), (0, 2, 5), (0, 1, 2), (0,))


# --------------------------------------------------------------------------- helpers

def _now() -> float:
    return time.perf_counter()


def _maxrss_bytes() -> int:
    """This process's peak resident set size so far (ru_maxrss is KiB on Linux)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def _proc_status(field: str) -> int | None:
    """A ``VmRSS``/``VmHWM`` figure from /proc/self/status, in bytes (Linux only)."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field}:\s+(\d+)\s+kB", text, re.M)
    return int(m.group(1)) * 1024 if m else None


def _reset_hwm() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) so a stage's own peak can be read."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def data_half(raw: Path, out: Path, tau2_dir: Path,
              design: DatasetDesign) -> list[tuple[str, Callable[[], Any]]]:
    """The data half as the DAG runs it: (stage name, call) in DAG order."""
    processed = out / "processed"
    scores = out / "scores" / "rule_scores.jsonl"
    return [
        ("process", lambda: process_stage(raw, processed, fmt="native",
                                          tau2_data_dir=tau2_dir, force=True)),
        ("score_rules", lambda: score_rules_stage(processed / "processed.json", scores,
                                                  force=True)),
        ("build_datasets", lambda: build_datasets_stage(processed / "processed.json", scores,
                                                        out / "datasets", design,
                                                        force=True)),
    ]


def design_from_dict(d: dict[str, Any]) -> DatasetDesign:
    return DatasetDesign(levels=tuple(d["levels"]), size=int(d["size"]),
                         shared_clean=int(d["shared_clean"]), seed=int(d.get("seed", 42)))


def _fits(levels: tuple[float, ...], size: int, shared: int, clean: int, syco: int) -> bool:
    """Whether the pools can fill this design, with at least one sycophantic conversation
    at every non-zero level (otherwise that level would just be another 0 % dataset)."""
    try:
        d = DatasetDesign(levels=levels, size=size, shared_clean=shared)
    except ConfigError:
        return False
    n = [d.n_sycophantic(lv) for lv in levels]
    if any(lv > 0 and k == 0 for lv, k in zip(levels, n, strict=True)):
        return False
    return max(n) <= syco and size - min(n) <= clean


MIN_FALLBACK_SIZE = 100


def fit_design(clean: int, syco: int) -> tuple[dict[str, Any], str]:
    """The first preferred design the pools can fill, else the largest one that fits."""
    for d in PREFERRED_DESIGNS:
        if _fits(d["levels"], d["size"], d["shared_clean"], clean, syco):
            why = ("reference design" if d is PREFERRED_DESIGNS[0] else
                   "the reference design (levels 0,5,10,20 size 500 shared 400) does not fit")
            return {**d, "levels": list(d["levels"])}, why
    for levels in FALLBACK_LEVELS:
        floor = MIN_FALLBACK_SIZE if len(levels) > 1 else 1
        for size in range(min(clean, 600), floor - 1, -1):
            top = DatasetDesign(levels=levels, size=size, shared_clean=0).n_sycophantic(
                max(levels))
            if _fits(levels, size, size - top, clean, syco):
                return ({"levels": list(levels), "size": size, "shared_clean": size - top},
                        f"largest design that {clean} clean + {syco} sycophantic can fill; "
                        "the preferred designs do not fit")
    raise SystemExit(f"no dataset design fits: {clean} clean and {syco} sycophantic "
                     "conversations among the processed ones")


def pools(out: Path) -> tuple[int, int, int]:
    """(processed, clean, sycophantic) among the processed conversations, rule-labelled."""
    rows = orjson.loads((out / "processed" / "processed.json").read_bytes())
    kept = {r["source_index"] for r in rows}
    syco = clean = 0
    for line in (out / "scores" / "rule_scores.jsonl").read_bytes().splitlines():
        if line.strip():
            rec = orjson.loads(line)
            if rec.get("source_index", rec["index"]) in kept:
                if rec["score"] > 0:
                    syco += 1
                else:
                    clean += 1
    return len(kept), clean, syco


# --------------------------------------------------------------------------- inputs

def prepare_input(args: argparse.Namespace, work: Path) -> tuple[Path, int, str]:
    """Write (or point at) the raw file; returns (path, conversation count, description)."""
    if args.input:
        path = Path(args.input).resolve()
        data = orjson.loads(path.read_bytes())
        if not isinstance(data, list):
            raise SystemExit(f"--input {path}: expected a JSON list of conversations")
        note = " (--n ignored with --input)" if args.n is not None else ""
        return path, len(data), f"file {path}{note}"
    n = args.n if args.n is not None else 3000
    if args.real:
        ref = os.environ.get("SIMIA_REFERENCE_DATA")
        if not ref:
            raise SystemExit("--real needs SIMIA_REFERENCE_DATA pointing at the reference data "
                             f"folder (holding {' and '.join(REAL_FILES)})")
        files = [Path(ref) / f for f in REAL_FILES]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise SystemExit(f"--real: missing {', '.join(missing)}")
        source: list[Any] = []
        for f in files:
            source += json.loads(f.read_text(encoding="utf-8"))
        raw = list(itertools.islice(itertools.cycle(source), n))
        desc = (f"real: {n} conversations cycling the {len(source)} of "
                f"{' + '.join(f.name for f in files)} (from SIMIA_REFERENCE_DATA={ref})")
    else:
        from support.synthetic import generate_raw
        raw = generate_raw(n, seed=args.seed)
        desc = f"synthetic: support.synthetic.generate_raw({n}, seed={args.seed})"
    path = work / "raw.json"
    # the generator's layout (a list, indent 2), as the real raw files are written
    path.write_bytes(orjson.dumps(raw, option=orjson.OPT_INDENT_2))
    del raw
    gc.collect()
    return path, n, desc


def prepare_tau2(work: Path) -> tuple[Path, str]:
    env = os.environ.get("TAU2_DATA_DIR")
    if env:
        return Path(env), f"TAU2_DATA_DIR={env}"
    from support.synthetic import synthetic_policy
    text = synthetic_policy()
    lines = text.split("\n")
    heads = [i for i, line in enumerate(lines) if line.startswith("## ")]
    cut = min(heads[1:] or [len(lines) // 2], key=lambda i: abs(i - len(lines) // 2))
    folder = work / "tau2-telecom"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / POLICY_FILES[0]).write_text("\n".join(lines[:cut]) + "\n", encoding="utf-8")
    (folder / POLICY_FILES[1]).write_text("# Technical Support Manual\n\n"
                                          + "\n".join(lines[cut:]) + "\n", encoding="utf-8")
    return folder, (f"synthetic (support.synthetic.synthetic_policy(), {len(text)} chars, split "
                    f"over {' + '.join(POLICY_FILES)}; set TAU2_DATA_DIR for tau2's own)")


# --------------------------------------------------------------------------- floors

def floor_stdlib(raw: Path, dst: Path, *, c_encoder: bool = False) -> tuple[float, float]:
    """Standard library round trip: json.load from the file, then json.dump to a file
    (or, with ``c_encoder``, json.dumps (the C encoder) and one write)."""
    t0 = _now()
    with open(raw, encoding="utf-8") as fh:
        obj = json.load(fh)
    t1 = _now()
    with open(dst, "w", encoding="utf-8") as fh:
        if c_encoder:
            fh.write(json.dumps(obj))
        else:
            json.dump(obj, fh)
    t2 = _now()
    del obj
    return t1 - t0, t2 - t1


def floor_orjson(raw: Path, dst: Path) -> tuple[float, float]:
    t0 = _now()
    obj = orjson.loads(raw.read_bytes())
    t1 = _now()
    dst.write_bytes(orjson.dumps(obj))
    t2 = _now()
    del obj
    return t1 - t0, t2 - t1


# --------------------------------------------------------------------------- child

def child_main(mode: str, spec: dict[str, Any]) -> None:
    """Run the data half once in this fresh process and print its memory figures as JSON.

    ``rss``: ru_maxrss after the work minus ru_maxrss right before it (imports done,
    nothing else touched). ``stages``: each stage's own RSS high-water mark (VmHWM reset
    before each stage; that reset also lowers ru_maxrss, hence a separate process).
    ``tracemalloc``: peak of Python allocations, overall and per stage.
    """
    design = design_from_dict(spec["design"])
    stages = data_half(Path(spec["raw"]), Path(spec["out"]), Path(spec["tau2"]), design)
    gc.collect()
    result: dict[str, Any] = {"mode": mode, "stages": {}}
    if mode == "rss":
        base = _maxrss_bytes()
        result["baseline_maxrss_bytes"] = base
        result["baseline_rss_bytes"] = _proc_status("VmRSS")
        t_all = _now()
        for name, run in stages:
            t0 = _now()
            run()
            result["stages"][name] = {"seconds": _now() - t0,
                                      "maxrss_above_baseline_bytes": _maxrss_bytes() - base}
        result["seconds"] = _now() - t_all
        result["peak_above_baseline_bytes"] = _maxrss_bytes() - base
        # sanity: right after imports the high-water mark should be close to the RSS
        now = result["baseline_rss_bytes"]
        result["baseline_suspect"] = now is not None and base > 1.5 * now + 20 * MB
    elif mode == "stages":
        base = _proc_status("VmRSS")
        result["baseline_rss_bytes"] = base
        result["available"] = base is not None and _reset_hwm()
        for name, run in stages:
            ok = result["available"] and _reset_hwm()
            start = _proc_status("VmRSS")
            run()
            hwm = _proc_status("VmHWM") if ok else None
            result["stages"][name] = {
                "rss_at_start_above_baseline_bytes": None if start is None or base is None
                else start - base,
                "hwm_above_baseline_bytes": None if hwm is None or base is None
                else hwm - base,
            }
    else:
        tracemalloc.start()
        overall = 0
        for name, run in stages:
            tracemalloc.reset_peak()
            before, _ = tracemalloc.get_traced_memory()
            run()
            after, peak = tracemalloc.get_traced_memory()
            overall = max(overall, peak)
            result["stages"][name] = {"peak_bytes": peak, "held_before_bytes": before,
                                      "held_after_bytes": after}
        tracemalloc.stop()
        result["peak_bytes"] = overall
    print("CHILD-RESULT " + json.dumps(result))


# Linux keeps ru_maxrss across execve: a process spawned straight from this (large)
# parent would start with the parent's peak as its ru_maxrss. A tiny interpreter in
# between gives the measuring child a clean, small high-water mark of its own.
_TRAMPOLINE = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)"


def run_child(mode: str, spec: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, "-c", _TRAMPOLINE,
           sys.executable, str(Path(__file__).resolve()), "--child", mode,
           "--child-spec", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("CHILD-RESULT "):
            return json.loads(line[len("CHILD-RESULT "):])
    raise SystemExit(f"memory child ({mode}) failed (rc {proc.returncode}):\n"
                     f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")


# --------------------------------------------------------------------------- report

def _mb(b: float | None) -> str:
    return "n/a" if b is None else f"{b / MB:,.1f} MB"


def print_report(f: dict[str, Any]) -> None:
    inp, t, mem = f["input"], f["timings"], f.get("memory")
    size_mb = inp["bytes"] / MB
    w = 44
    print()
    print("simia data-half benchmark")
    print(f"  input        {inp['description']}")
    print(f"               {inp['path']}")
    print(f"  size         {size_mb:.1f} MB, {inp['conversations']} conversations")
    print(f"  tau2 policy  {f['tau2_policy']}")
    d, p = f["design"], f["pools"]
    print(f"  design       levels {','.join(str(x) for x in d['levels'])} size {d['size']} "
          f"shared_clean {d['shared_clean']} seed {d.get('seed', 42)}  ({f['design_reason']})")
    print(f"  pools        processed {p['processed']} of {inp['conversations']}, clean "
          f"{p['clean']}, sycophantic {p['sycophantic']} (rule scores, score > 0)")
    print(f"  machine      Python {f['env']['python']}, orjson {f['env']['orjson']}, pydantic "
          f"{f['env']['pydantic']}, {f['env']['cpus']} CPUs, load average "
          f"{f['env']['loadavg_1min']} at start (other work on the machine adds noise)")
    print(f"  timing       best of {f['repeat']} repetitions after 1 untimed warm-up "
          "(median in brackets)")
    print()
    print(f"  {'':{w}}{'seconds':>9}  {'(median)':>9}")
    for name in STAGES:
        s = t["stages"][name]
        print(f"  {STAGE_LABELS[name]:{w}}{s['best']:9.3f}  ({s['median']:7.3f})")
    tot = t["total"]
    print(f"  {'data half total':{w}}{tot['best']:9.3f}  ({tot['median']:7.3f})"
          f"   {f['conversations_per_second']:,.0f} conversations/s")
    fl = t["floor_stdlib"]
    print(f"  {'floor: stdlib json.load + json.dump':{w}}{fl['best']:9.3f}  ({fl['median']:7.3f})"
          f"   load {fl['load_best']:.3f} + dump {fl['dump_best']:.3f}")
    print(f"  {'ratio data half / floor':{w}}{f['ratio_total_to_floor']:8.2f}x"
          f"              target <= 1.0x")
    for key, label in (("ref_stdlib_dumps", "ref: stdlib json.load + json.dumps (C enc.)"),
                       ("ref_orjson", "ref: orjson loads + dumps")):
        r = t[key]
        print(f"  {label:{w}}{r['best']:9.3f}  ({r['median']:7.3f})"
              f"   load {r['load_best']:.3f} + dump {r['dump_best']:.3f}")
    if mem:
        rss = mem["rss"]
        peak = rss["peak_above_baseline_bytes"]
        print()
        print("  peak memory of the data half (one run in a fresh process, input file "
              "written beforehand)")
        print(f"  {'RSS: ru_maxrss - baseline after imports':{w}}{_mb(peak):>12}"
              f"   = {peak / inp['bytes']:.2f}x input   target < 4x")
        print(f"  {'    (baseline RSS after imports)':{w}}{_mb(rss['baseline_rss_bytes']):>12}"
              f"   cold single run {rss['seconds']:.3f} s")
        if rss.get("baseline_suspect"):
            print(f"  WARNING: ru_maxrss was already {_mb(rss['baseline_maxrss_bytes'])} before "
                  "the work started (inherited?): the RSS peak above is understated")
        ps = mem.get("rss_per_stage") or {}
        if ps.get("available"):
            print(f"  {'  per stage, own VmHWM - baseline (other process)':{w}}")
            for name in STAGES:
                s = ps["stages"][name]
                print(f"  {'    ' + STAGE_LABELS[name]:{w}}"
                      f"{_mb(s['hwm_above_baseline_bytes']):>12}"
                      f"   = {s['hwm_above_baseline_bytes'] / inp['bytes']:.2f}x input"
                      f"   (held at start {_mb(s['rss_at_start_above_baseline_bytes'])})")
        tm = mem["tracemalloc"]
        print(f"  {'tracemalloc peak (Python allocations)':{w}}{_mb(tm['peak_bytes']):>12}"
              f"   = {tm['peak_bytes'] / inp['bytes']:.2f}x input")
        for name in STAGES:
            s = tm["stages"][name]
            print(f"  {'    ' + STAGE_LABELS[name]:{w}}{_mb(s['peak_bytes']):>12}")
        print("  (RSS counts everything the process holds: Python objects, orjson/pydantic "
              "buffers,\n   file bytes, allocator slack; tracemalloc counts only memory "
              "allocated through Python's allocator)")
    print()


def print_profile(prof: cProfile.Profile, top: int = 25) -> str:
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.strip_dirs().sort_stats("cumulative").print_stats(top)
    out.write("\n--- same run, top 15 by own (total) time ---\n")
    stats.sort_stats("tottime").print_stats(15)
    text = out.getvalue()
    print(text)
    return text


# --------------------------------------------------------------------------- main

def _summ(values: list[float]) -> dict[str, Any]:
    return {"best": min(values), "median": statistics.median(values), "all": values}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--input", metavar="FILE", help="a real raw conversations file to use "
                     "as is (default: synthetic conversations)")
    src.add_argument("--real", action="store_true", help="cycle the 400 real conversations "
                     "under $SIMIA_REFERENCE_DATA/simia-wm-exp up to --n")
    ap.add_argument("--n", type=int, default=None, help="conversations (default 3000)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions (best is "
                    "reported; default 3)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON here")
    ap.add_argument("--profile", action="store_true", help="then run the data half once "
                    "under cProfile and print the top 25 functions by cumulative time")
    ap.add_argument("--no-memory", action="store_true", help="skip the fresh-process "
                    "memory measurements")
    ap.add_argument("--tmpdir", help="where to create the temporary work folder")
    ap.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    ap.add_argument("--child", choices=("rss", "stages", "tracemalloc"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--child-spec", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        child_main(args.child, json.loads(args.child_spec))
        return 0
    if args.real and not os.environ.get("SIMIA_REFERENCE_DATA"):
        ap.error("--real needs SIMIA_REFERENCE_DATA (a folder holding "
                 f"{' and '.join(REAL_FILES)})")
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")

    load_at_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    work = Path(tempfile.mkdtemp(prefix="simia-bench-", dir=args.tmpdir))
    try:
        print(f"work folder {work}", file=sys.stderr)
        raw, count, desc = prepare_input(args, work)
        tau2, tau2_desc = prepare_tau2(work)
        out = work / "out"

        # Untimed warm-up: process + score, to learn the pools and pick a design that fits.
        print("warm-up run (untimed) ...", file=sys.stderr)
        warm = data_half(raw, out, tau2, DatasetDesign())
        warm[0][1]()
        warm[1][1]()
        n_proc, n_clean, n_syco = pools(out)
        design_d, why = fit_design(n_clean, n_syco)
        design_d["seed"] = 42
        design = design_from_dict(design_d)
        stages = data_half(raw, out, tau2, design)
        stages[2][1]()

        times: dict[str, list[float]] = {k: [] for k in STAGES}
        totals: list[float] = []
        floors: dict[str, list[tuple[float, float]]] = {
            "floor_stdlib": [], "ref_stdlib_dumps": [], "ref_orjson": []}
        floor_fns = {"floor_stdlib": floor_stdlib,
                     "ref_stdlib_dumps": functools.partial(floor_stdlib, c_encoder=True),
                     "ref_orjson": floor_orjson}
        for rep in range(args.repeat):
            print(f"repetition {rep + 1}/{args.repeat} ...", file=sys.stderr)
            for key, fn in floor_fns.items():
                gc.collect()
                floors[key].append(fn(raw, work / f"roundtrip_{key}.json"))
            gc.collect()
            total = 0.0
            for name, run in stages:
                t0 = _now()
                run()
                dt = _now() - t0
                times[name].append(dt)
                total += dt
            totals.append(total)

        timings: dict[str, Any] = {"stages": {k: _summ(v) for k, v in times.items()},
                                   "total": _summ(totals)}
        for key, pairs in floors.items():
            sums = [a + b for a, b in pairs]
            timings[key] = {**_summ(sums), "load_best": min(a for a, _ in pairs),
                            "dump_best": min(b for _, b in pairs)}
        size = raw.stat().st_size
        figures: dict[str, Any] = {
            "input": {"description": desc, "path": str(raw), "bytes": size,
                      "megabytes": round(size / MB, 2), "conversations": count},
            "tau2_policy": tau2_desc,
            "design": design_d, "design_reason": why,
            "pools": {"processed": n_proc, "clean": n_clean, "sycophantic": n_syco},
            "repeat": args.repeat,
            "env": {"python": platform.python_version(), "orjson": orjson.__version__,
                    "pydantic": pydantic.VERSION, "cpus": os.cpu_count(),
                    "loadavg_1min": round(load_at_start, 2)},
            "timings": timings,
            "conversations_per_second": count / timings["total"]["best"],
            "ratio_total_to_floor": timings["total"]["best"] / timings["floor_stdlib"]["best"],
            "ratio_total_to_orjson_roundtrip":
                timings["total"]["best"] / timings["ref_orjson"]["best"],
        }

        if not args.no_memory:
            print("memory: fresh-process runs (RSS, per-stage RSS, tracemalloc) ...",
                  file=sys.stderr)
            spec = {"raw": str(raw), "out": str(work / "out-child"), "tau2": str(tau2),
                    "design": design_d}
            rss = run_child("rss", spec)
            per_stage = run_child("stages", spec)
            tm = run_child("tracemalloc", spec)
            figures["memory"] = {
                "rss": rss, "rss_per_stage": per_stage, "tracemalloc": tm,
                "peak_rss_mb": rss["peak_above_baseline_bytes"] / MB,
                "peak_rss_x_input": rss["peak_above_baseline_bytes"] / size,
                "tracemalloc_peak_mb": tm["peak_bytes"] / MB,
                "tracemalloc_peak_x_input": tm["peak_bytes"] / size,
            }

        print_report(figures)

        if args.profile:
            print("cProfile: one run of the data half (process, score_rules, "
                  "build_datasets), top 25 by cumulative time\n")
            gc.collect()
            prof = cProfile.Profile()
            prof.enable()
            for _, run in stages:
                run()
            prof.disable()
            figures["profile_text"] = print_profile(prof)

        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
            print(f"figures written to {args.json}")
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
