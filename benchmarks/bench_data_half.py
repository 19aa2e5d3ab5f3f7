#!/usr/bin/env python
"""Benchmark of the pipeline's data half against the reference 5-step pipeline.

The data half is what the DAG runs before training, through the same file-level stage
functions (``simia.data.stages``)::

    process_stage(raw.json -> processed/)            (native format)
    score_rules_stage(processed.json -> scores/rule_scores.jsonl)
    build_datasets_stage(processed.json + rule_scores.jsonl -> datasets/)

Floor: the data half at least 6x faster than the reference scripts' 5-step
post-processing (``process_data_pipeline.sh`` of zerowsw/Simia-WM-Exp, run as is on the
same bytes in the same run when ``SIMIA_REFERENCE_SCRIPTS`` points at a checkout of that
repository; otherwise against the figure recorded in benchmarks/README.md), and a peak
memory under 3x the input size.

Run:  .venv/bin/python benchmarks/bench_data_half.py [--n 3000] [--repeat 3]
      [--input RAW.json | --real | --synthetic] [--json figures.json] [--profile]
(or ``make bench``). This is a benchmark, not a test: it prints figures and never
fails on them. See benchmarks/README.md for how to read the output.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import itertools
import json
import os
import platform
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
# this checkout's package (whatever the venv has installed) and its test support
sys.path[:0] = [str(ROOT / "include"), str(ROOT / "tests")]

from simia.data.datasets import DatasetDesign  # noqa: E402
from simia.data.stages import (  # noqa: E402
    build_datasets_stage,
    process_stage,
    score_rules_stage,
)
from simia.errors import ConfigError  # noqa: E402
from simia.layout import DatasetFiles, ProcessedFiles, RuleScoreFiles  # noqa: E402

MB = 1_000_000
STAGES = ("process", "score_rules", "build_datasets")
STAGE_LABELS = {"process": "process_stage", "score_rules": "score_rules_stage",
                "build_datasets": "build_datasets_stage"}
REAL_FILES = ("simia-wm-exp/tau2_telecom_strict_200.json",
              "simia-wm-exp/tau2_telecom_sycophantic_200.json")
POLICY_FILES = ("main_policy.md", "tech_support_manual.md")

#: the floor: the data half this many times faster than the reference pipeline
SPEED_UP_FLOOR = 6.0
#: and a peak memory below this multiple of the input size
MEMORY_CEILING_X = 3.0
#: the reference pipeline's time when it cannot be run here (benchmarks/README.md): 3000
#: conversations cycled from the 400 real ones (59.1 MB), 2-core development VM
RECORDED_REFERENCE = {"seconds": 5.23, "input": "3000 real conversations, 59.1 MB",
                      "measured": "2026-12-05, 2-core VM, best of 5"}
#: where process_data_pipeline.sh sits in a checkout of zerowsw/Simia-WM-Exp
REFERENCE_SCRIPT = Path("Simia_SFT/Tau2/process_data_pipeline.sh")

# Designs tried in order; the first one the pools can fill is used. The reference
# experiment's design comes first, then a smaller one rule-scored synthetic data fits.
PREFERRED_DESIGNS = (
    {"levels": (0, 5, 10, 20), "size": 500, "shared_clean": 400},
    {"levels": (0, 2, 5, 10), "size": 600, "shared_clean": 500},
)
FALLBACK_LEVELS = ((0, 2, 5, 10), (0, 2, 5), (0, 1, 2), (0,))
MIN_FALLBACK_SIZE = 100


# --------------------------------------------------------------------------- the data half

def _now() -> float:
    return time.perf_counter()


def _maxrss_bytes() -> int:
    """This process's peak resident set size so far (ru_maxrss is KiB on Linux)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def data_half(raw: Path, out: Path, tau2_dir: Path,
              design: DatasetDesign) -> list[tuple[str, Callable[[], Any]]]:
    """The data half as the DAG runs it: (stage name, call) in DAG order."""
    processed = ProcessedFiles(out / "processed")
    scores = RuleScoreFiles(out / "scores").scores
    return [
        ("process", lambda: process_stage(raw, processed.dir, fmt="native",
                                          tau2_data_dir=tau2_dir, force=True)),
        ("score_rules", lambda: score_rules_stage(processed.processed, scores, force=True)),
        ("build_datasets", lambda: build_datasets_stage(processed.processed, scores,
                                                        DatasetFiles(out / "datasets").dir,
                                                        design, force=True)),
    ]


def design_from_dict(d: dict[str, Any]) -> DatasetDesign:
    return DatasetDesign(levels=tuple(d["levels"]), size=int(d["size"]),
                         shared_clean=int(d["shared_clean"]), seed=int(d.get("seed", 42)),
                         replicates=1)  # the reference builds one split


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
    rows = orjson.loads(ProcessedFiles(out / "processed").processed.read_bytes())
    kept = {r["source_index"] for r in rows}
    syco = clean = 0
    for line in RuleScoreFiles(out / "scores").scores.read_bytes().splitlines():
        if line.strip():
            rec = orjson.loads(line)
            if rec.get("source_index", rec["index"]) in kept:
                if rec["score"] > 0:
                    syco += 1
                else:
                    clean += 1
    return len(kept), clean, syco


# --------------------------------------------------------------------------- inputs

def _real_files() -> list[Path] | None:
    ref = os.environ.get("SIMIA_REFERENCE_DATA")
    files = [Path(ref) / f for f in REAL_FILES] if ref else []
    return files if files and all(f.is_file() for f in files) else None


def prepare_input(args: argparse.Namespace, work: Path) -> tuple[Path, int, str]:
    """Write (or point at) the raw file; returns (path, conversation count, description).
    Default: the real conversations when SIMIA_REFERENCE_DATA has them, else synthetic."""
    if args.input:
        path = Path(args.input).resolve()
        data = orjson.loads(path.read_bytes())
        if not isinstance(data, list):
            raise SystemExit(f"--input {path}: expected a JSON list of conversations")
        note = " (--n ignored with --input)" if args.n is not None else ""
        return path, len(data), f"file {path}{note}"
    n = args.n if args.n is not None else 3000
    files = None if args.synthetic else _real_files()
    if args.real and files is None:
        raise SystemExit("--real needs SIMIA_REFERENCE_DATA pointing at the reference data "
                         f"folder (holding {' and '.join(REAL_FILES)})")
    if files is not None:
        source: list[Any] = []
        for f in files:
            source += json.loads(f.read_text(encoding="utf-8"))
        raw = list(itertools.islice(itertools.cycle(source), n))
        desc = (f"real: {n} conversations cycling the {len(source)} of "
                f"{' + '.join(f.name for f in files)} (SIMIA_REFERENCE_DATA)")
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
    return folder, (f"synthetic (support.synthetic.synthetic_policy(), {len(text)} chars; "
                    "set TAU2_DATA_DIR for tau2's own)")


# --------------------------------------------------------------------------- the reference

def reference_script() -> tuple[Path | None, str]:
    """(process_data_pipeline.sh of the checkout SIMIA_REFERENCE_SCRIPTS names, or None;
    why not)."""
    value = os.environ.get("SIMIA_REFERENCE_SCRIPTS")
    if not value:
        return None, ("not run: set SIMIA_REFERENCE_SCRIPTS to a checkout of "
                      "zerowsw/Simia-WM-Exp (beside the project, never inside it)")
    root = Path(value).resolve()
    for script in (root / REFERENCE_SCRIPT, root / REFERENCE_SCRIPT.name):
        if script.is_file():
            return script, f"{script} (SIMIA_REFERENCE_SCRIPTS)"
    return None, f"not run: no {REFERENCE_SCRIPT} under SIMIA_REFERENCE_SCRIPTS={root}"


def run_reference(script: Path, raw: Path, out: Path) -> tuple[float, int]:
    """Run the reference 5-step pipeline as is on ``raw`` (it writes its intermediate
    files beside the input and deletes them); returns (seconds, conversations kept).
    Its ``python3`` is this interpreter's (the scripts need only the standard library)."""
    env = {k: v for k, v in os.environ.items() if k != "CONFIG_FILE"}  # its tool-spec knob
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    t0 = _now()
    proc = subprocess.run(["bash", str(script), str(raw), str(out)], env=env,
                          capture_output=True, text=True, check=False)
    seconds = _now() - t0
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"reference pipeline failed (rc {proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds, len(orjson.loads(out.read_bytes()))


# --------------------------------------------------------------------------- memory child

def child_main(spec: dict[str, Any]) -> None:
    """Run the data half once in this fresh process and print its peak memory as JSON:
    ru_maxrss after each stage minus ru_maxrss right before the first (imports done)."""
    stages = data_half(Path(spec["raw"]), Path(spec["out"]), Path(spec["tau2"]),
                       design_from_dict(spec["design"]))
    gc.collect()
    base = _maxrss_bytes()
    result: dict[str, Any] = {"baseline_maxrss_bytes": base, "stages": {}}
    t_all = _now()
    for name, run in stages:
        run()
        result["stages"][name] = _maxrss_bytes() - base
    result["seconds"] = _now() - t_all
    result["peak_above_baseline_bytes"] = _maxrss_bytes() - base
    print("CHILD-RESULT " + json.dumps(result))


# Linux keeps ru_maxrss across execve: a process spawned straight from this (large)
# parent would start with the parent's peak as its ru_maxrss. A tiny interpreter in
# between gives the measuring child a clean, small high-water mark of its own.
_TRAMPOLINE = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)"


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, "-c", _TRAMPOLINE, sys.executable, str(Path(__file__).resolve()),
           "--child-spec", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("CHILD-RESULT "):
            return json.loads(line[len("CHILD-RESULT "):])
    raise SystemExit(f"memory child failed (rc {proc.returncode}):\n"
                     f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")


# --------------------------------------------------------------------------- report

def _mb(b: float) -> str:
    return f"{b / MB:,.1f} MB"


def _verdict(ok: bool) -> str:
    return "OK" if ok else "NOT MET"


def print_report(f: dict[str, Any]) -> None:
    inp, t, ref = f["input"], f["timings"], f["reference"]
    w = 40
    print()
    print("simia data-half benchmark")
    print(f"  input        {inp['description']}")
    print(f"  size         {inp['bytes'] / MB:.1f} MB, {inp['conversations']} conversations")
    print(f"  tau2 policy  {f['tau2_policy']}")
    d, p = f["design"], f["pools"]
    print(f"  design       levels {','.join(str(x) for x in d['levels'])} size {d['size']} "
          f"shared_clean {d['shared_clean']} seed {d.get('seed', 42)}  ({f['design_reason']})")
    print(f"  pools        processed {p['processed']} of {inp['conversations']}, clean "
          f"{p['clean']}, sycophantic {p['sycophantic']} (rule scores, score > 0)")
    print(f"  reference    {ref['source']}")
    print(f"  machine      Python {f['env']['python']}, orjson {f['env']['orjson']}, "
          f"{f['env']['cpus']} CPUs, load average {f['env']['loadavg_1min']} at start")
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
    if "measured" in ref:
        m = ref["measured"]
        print(f"  {'reference 5-step pipeline (same bytes)':{w}}{m['best']:9.3f}  "
              f"({m['median']:7.3f})   kept {ref['kept']} (hermes; the data half kept "
              f"{p['processed']}, native)")
        basis = "measured in this run"
    else:
        print(f"  {'reference 5-step pipeline':{w}}{ref['seconds']:9.3f}  {'':9}   "
              f"recorded ({RECORDED_REFERENCE['input']}, {RECORDED_REFERENCE['measured']})")
        basis = "recorded figure: compare only on the same input and machine"
    floor = ref["seconds"] / SPEED_UP_FLOOR
    print(f"  {'floor: reference / ' + format(SPEED_UP_FLOOR, 'g'):{w}}{floor:9.3f}"
          f"              data half {_verdict(tot['best'] <= floor)} ({basis})")
    print(f"  {'speed-up data half vs reference':{w}}{f['speed_up']:8.1f}x"
          f"              floor >= {SPEED_UP_FLOOR:g}x")
    mem = f.get("memory")
    if mem:
        peak, ratio = mem["peak_above_baseline_bytes"], mem["peak_x_input"]
        print()
        print("  peak memory (one run in a fresh process: ru_maxrss - baseline after imports)")
        print(f"  {'data half':{w}}{_mb(peak):>12}   = {ratio:.2f}x input   ceiling "
              f"< {MEMORY_CEILING_X:g}x: {_verdict(ratio < MEMORY_CEILING_X)}")
        for name in STAGES:
            print(f"  {'  peak so far after ' + STAGE_LABELS[name]:{w}}"
                  f"{_mb(mem['stages'][name]):>12}")
        print(f"  {'  cold single run':{w}}{mem['seconds']:9.3f} s")
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
    src.add_argument("--input", metavar="FILE", help="a raw conversations file to use as is")
    src.add_argument("--real", action="store_true", help="cycle the 400 real conversations "
                     "under $SIMIA_REFERENCE_DATA/simia-wm-exp up to --n (the default when "
                     "they are there)")
    src.add_argument("--synthetic", action="store_true", help="synthetic conversations even "
                     "when the real ones are there")
    ap.add_argument("--n", type=int, default=None, help="conversations (default 3000)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions (best is "
                    "reported; default 3)")
    ap.add_argument("--no-reference", action="store_true", help="do not run the reference "
                    "pipeline even when SIMIA_REFERENCE_SCRIPTS is set")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON here")
    ap.add_argument("--profile", action="store_true", help="then run the data half once "
                    "under cProfile and print the top 25 functions by cumulative time")
    ap.add_argument("--no-memory", action="store_true", help="skip the fresh-process "
                    "memory measurement")
    ap.add_argument("--tmpdir", help="where to create the temporary work folder")
    ap.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    ap.add_argument("--child-spec", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child_spec:
        child_main(json.loads(args.child_spec))
        return 0
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")

    load_at_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    script, ref_source = (None, "not run (--no-reference)") if args.no_reference \
        else reference_script()
    work = Path(tempfile.mkdtemp(prefix="simia-bench-", dir=args.tmpdir))
    try:
        print(f"work folder {work}", file=sys.stderr)
        raw, count, desc = prepare_input(args, work)
        tau2, tau2_desc = prepare_tau2(work)
        out = work / "out"

        # Untimed warm-up: process + score, to learn the pools and pick a design that fits.
        print("warm-up run (untimed) ...", file=sys.stderr)
        warm = data_half(raw, out, tau2, DatasetDesign(replicates=1))
        warm[0][1]()
        warm[1][1]()
        n_proc, n_clean, n_syco = pools(out)
        design_d, why = fit_design(n_clean, n_syco)
        design_d["seed"] = 42
        stages = data_half(raw, out, tau2, design_from_dict(design_d))
        stages[2][1]()

        times: dict[str, list[float]] = {k: [] for k in STAGES}
        totals: list[float] = []
        ref_times: list[float] = []
        ref_kept = None
        for rep in range(args.repeat):
            print(f"repetition {rep + 1}/{args.repeat} ...", file=sys.stderr)
            if script is not None:
                try:
                    seconds, ref_kept = run_reference(script, raw, work / "reference.json")
                    ref_times.append(seconds)
                except RuntimeError as exc:
                    print(exc, file=sys.stderr)
                    script, ref_source = None, f"{ref_source}: FAILED (see stderr)"
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
        reference: dict[str, Any] = {"source": ref_source}
        if ref_times:
            reference.update(measured=_summ(ref_times), seconds=min(ref_times), kept=ref_kept)
        else:
            reference.update(seconds=RECORDED_REFERENCE["seconds"], recorded=RECORDED_REFERENCE)
        size = raw.stat().st_size
        figures: dict[str, Any] = {
            "input": {"description": desc, "path": str(raw), "bytes": size,
                      "megabytes": round(size / MB, 2), "conversations": count},
            "tau2_policy": tau2_desc,
            "design": design_d, "design_reason": why,
            "pools": {"processed": n_proc, "clean": n_clean, "sycophantic": n_syco},
            "repeat": args.repeat,
            "env": {"python": platform.python_version(), "orjson": orjson.__version__,
                    "cpus": os.cpu_count(), "loadavg_1min": round(load_at_start, 2)},
            "timings": timings,
            "reference": reference,
            "conversations_per_second": count / timings["total"]["best"],
            "speed_up": reference["seconds"] / timings["total"]["best"],
            "floor": {"speed_up": SPEED_UP_FLOOR, "memory_x_input": MEMORY_CEILING_X},
        }

        if not args.no_memory:
            print("memory: a fresh-process run ...", file=sys.stderr)
            mem = run_child({"raw": str(raw), "out": str(work / "out-child"),
                             "tau2": str(tau2), "design": design_d})
            mem["peak_x_input"] = mem["peak_above_baseline_bytes"] / size
            figures["memory"] = mem

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
