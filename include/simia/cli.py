"""``simia``: every stage of the experiment from the command line.

Each subcommand prints its summary as JSON on stdout, logs progress on stderr, and
exits 2 with a one-paragraph error (file, record, field) on bad input or settings, and
when an LLM stage failed: every item, or more than ``--max-failed-share`` of them
(:mod:`simia.llm.failures`). A re-run retries recorded failures unless
``--keep-failures``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from simia import __version__
from pydantic import BaseModel, ValidationError

from simia.errors import InputError, SimiaError
from simia.io import dumps
from simia.output_paths import check_output_dir, check_output_file
from simia.redaction import install_log_redaction
from simia.settings import (CollectionSettings, DatasetDesign, GenerationSettings, LLMSettings,
                            PriceTable, SeedSettings, TrainingConfig)
from simia.settings.cli import add_options, add_setting, options_model


def _default(model: type[BaseModel], field: str):
    """An internal field's default (settings' options come from :func:`add_options`)."""
    return model.model_fields[field].get_default(call_default_factory=True)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``simia CMD: error: argument --x: ...``), not the
    usage block first, as every other error of the command line."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _at_least(minimum: int):
    """An argparse type: an integer >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


def _positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


_POSITIVE = _at_least(1)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="simia", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"simia {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    pr = sub.add_parser("process", help="filter and convert raw conversations for SFT")
    pr.add_argument("raw", help="raw generated conversations (JSON list)")
    pr.add_argument("-o", "--out-dir", required=True,
                    help="writes processed.json, rejects.jsonl, summary.json here")
    pr.add_argument("--format", choices=["native", "hermes"], default="native",
                    help="native (default): function_call/observation roles + tools column; "
                         "hermes: the reference scripts' format")
    pr.add_argument("--tau2-data-dir", default=None,
                    help="folder with tau2's telecom policy files (default: $TAU2_DATA_DIR)")
    pr.add_argument("--domain", default="telecom")
    pr.add_argument("--skip-invalid-records", action="store_true",
                    help="reject malformed records (listed in rejects.jsonl) instead of failing")
    calls = pr.add_mutually_exclusive_group()
    calls.add_argument("--extract-embedded-calls", dest="extract", action="store_true",
                       default=None, help="turn FUNCTION_CALL: text in gpt turns into validated "
                                          "tool calls (default for native)")
    calls.add_argument("--no-extract-embedded-calls", dest="extract", action="store_false",
                       help="leave it as text, as the reference did (default for hermes)")
    pr.add_argument("--force", action="store_true", help="redo even if outputs are up to date")

    sc = sub.add_parser("score-rules", help="rule-based sycophancy scores")
    sc.add_argument("conversations", help="raw or native-processed conversations (JSON list)")
    sc.add_argument("-o", "--out", required=True, help="scores, one JSON line per conversation")
    sc.add_argument("--force", action="store_true")

    bd = sub.add_parser("build-datasets", help="SFT datasets at controlled sycophancy levels")
    bd.add_argument("--conversations", required=True,
                    help="processed conversations (what `simia process` wrote)")
    bd.add_argument("--scores", required=True,
                    help="rule scores (simia score-rules) or LLM judge scores (JSONL)")
    bd.add_argument("-o", "--out-dir", required=True)
    bd.add_argument("--twins", default=None,
                    help="accepted counterfactual twins (simia twins: twins.jsonl); the levels "
                         "then swap twins in for their originals")
    add_options(bd.add_argument_group("dataset design"), DatasetDesign)
    bd.add_argument("--name-prefix", default=_default(DatasetDesign, "name_prefix"))
    bd.add_argument("--force", action="store_true")

    gs = sub.add_parser("generate-seeds", help="telecom seed conversations from the tau2 "
                                               "policy over a scenario taxonomy (LLM)")
    gs.add_argument("-o", "--out-dir", required=True, help="writes seeds.json here")
    add_options(gs, SeedSettings)
    gs.add_argument("--tries", type=_POSITIVE, default=_default(SeedSettings, "tries"),
                    help="calls per seed until it is valid")
    gs.add_argument("--tau2-data-dir", default=None,
                    help="tau2's telecom data folder (default: $TAU2_DATA_DIR)")
    gs.add_argument("--prompts-dir", default=None,
                    help="folder with prompt templates overriding simia/prompts/")
    gs.add_argument("--force", action="store_true",
                    help="discard a checkpoint made with other settings")
    _llm_args(gs)

    ge = sub.add_parser("generate", help="synthetic conversations from seeds (LLM)")
    ge.add_argument("--seeds", required=True, help="seed conversations (JSON list)")
    ge.add_argument("-o", "--out-dir", required=True,
                    help="writes raw_conversations.json (after all shards) here")
    add_options(ge, GenerationSettings)
    ge.add_argument("--max-tokens", type=_POSITIVE,
                    default=_default(GenerationSettings, "max_tokens"))
    _shard_args(ge)
    _llm_args(ge)

    ju = sub.add_parser("judge", help="LLM sycophancy judge over processed conversations")
    ju.add_argument("conversations", help="processed conversations (what `simia process` wrote)")
    ju.add_argument("-o", "--out-dir", required=True,
                    help="writes judge_scores.jsonl (after all shards) here")
    add_setting(ju, "label_threshold")
    ju.add_argument("--tries", type=_POSITIVE, default=3, help="calls per conversation until the "
                                                         "reply parses")
    _shard_args(ju)
    _llm_args(ju)

    co = sub.add_parser("collect", help="generate, validate and judge conversation by "
                                        "conversation until the design's pools are full (LLM)")
    co.add_argument("--seeds", required=True, help="seed conversations (JSON list)")
    co.add_argument("-o", "--run-dir", required=True,
                    help="a run folder: writes collect/ (checkpoints, pilot.json), then "
                         "generate/, processed/ and judge/ as the separate stages would; run "
                         "again on the same folder (e.g. with a raised cap) to continue")
    co.add_argument("--source-run", default=None,
                    help="continue the collection of this earlier run folder (only read)")
    add_options(co.add_argument_group("collection"), CollectionSettings,
                exclude=("collection",))
    add_options(co.add_argument_group("dataset design"), DatasetDesign)
    add_options(co.add_argument_group("generation"), GenerationSettings,
                exclude=("target", "max_attempts", "seed"))
    co.add_argument("--format", choices=["native", "hermes"], default="native")
    co.add_argument("--tau2-data-dir", default=None,
                    help="folder with tau2's telecom policy files (default: $TAU2_DATA_DIR)")
    co.add_argument("--shards", type=_POSITIVE, default=1,
                    help="split the items after the pilot into this many shards (run here one "
                         "after another)")
    _llm_args(co)

    tw = sub.add_parser("twins", help="counterfactual twins of clean conversations: one "
                                      "observation rewritten to forgive an invalid action, "
                                      "kept when the judge flags it (LLM)")
    tw.add_argument("--conversations", required=True, help="processed conversations")
    tw.add_argument("--scores", required=True, help="LLM judge scores (judge_scores.jsonl)")
    tw.add_argument("-o", "--out-dir", required=True,
                    help="writes twins.jsonl, rejects.jsonl, summary.json here")
    tw.add_argument("--needed", type=_POSITIVE, required=True, help="twins to make")
    tw.add_argument("--seed", type=int, default=42, help="the candidates' order")
    tw.add_argument("--budget-usd", type=_positive_float, default=_default(CollectionSettings,
                                                                 "collect_budget_usd"))
    add_setting(tw, "label_threshold")
    _llm_args(tw, keep_failures=False)

    tc = sub.add_parser("train-config", help="the LLaMA-Factory YAML one level trains with")
    tc.add_argument("--datasets", required=True,
                    help="folder written by build-datasets (dataset_info.json, metadata.json)")
    tc.add_argument("--level", type=float, required=True, help="sycophancy level in %%")
    tc.add_argument("--replicate", type=_POSITIVE, default=1,
                    help="training run of the level (1-based): its dataset draw, and the "
                         "seed + replicate - 1 the DAG trains it with (default 1)")
    tc.add_argument("-o", "--out", required=True,
                    help="YAML to write (deepspeed.json is written beside it)")
    tc.add_argument("--output-dir", default=None,
                    help="LLaMA-Factory output_dir (default: <folder of --out>/<dataset>)")
    _training_args(tc)

    ts = sub.add_parser("train-summary", help="final loss, steps, runtime and model path of "
                                              "a finished LLaMA-Factory run")
    ts.add_argument("output_dir", help="the run's output_dir")

    er = sub.add_parser("eval-results", help="pass^k of one tau2 results.json (infrastructure "
                                            "errors counted as failures; tau2's figure beside)")
    er.add_argument("results", help="tau2's results.json (or the --save-to folder)")

    cm = sub.add_parser("commands", help="a run's train, serve, evaluate and stop containers "
                                         "as docker commands (a bash script), from run.json")
    cm.add_argument("run_dir", help="the run directory (holding run.json)")
    cm.add_argument("--level", type=float, action="append", default=None,
                    help="only this level (%%); repeatable (default: every level)")
    cm.add_argument("--replicate", type=_POSITIVE, action="append", default=None,
                    help="only this training run of each level (1-based); repeatable "
                         "(default: every replicate)")
    cm.add_argument("-o", "--out", default=None, help="write the script here (default: stdout)")

    ir = sub.add_parser("init-data-root", help="mark a data root shared by several hosts: "
                                               "writes DIR/.simia-data-root with its id")
    ir.add_argument("data_root", help="the shared data root (created if missing)")
    ir.add_argument("--id", default=None, dest="root_id",
                    help="the id to write (default: $SIMIA_DATA_ROOT_ID, else the marker's, "
                         "else a new random one); every host sets SIMIA_DATA_ROOT_ID to it")
    ir.add_argument("--force", action="store_true",
                    help="replace a marker that holds another id")

    _analysis_parsers(sub)

    from simia.report.stats import DEFAULT_RESAMPLES, DEFAULT_SEED

    rp = sub.add_parser("report", help="the experiment's answer: the run-aware verdict, "
                                       "pass^k per run, data, cost and training")
    rp.add_argument("run_dir", help="the run directory (eval/, train/, datasets/, ...)")
    rp.add_argument("-o", "--out-dir", default=None,
                    help="writes report.md, report.html, report.json and PNGs here "
                         "(default: RUN_DIR/report)")
    rp.add_argument("--resamples", type=_POSITIVE, default=DEFAULT_RESAMPLES,
                    help=f"bootstrap resamples over tasks (default {DEFAULT_RESAMPLES})")
    rp.add_argument("--seed", type=int, default=DEFAULT_SEED,
                    help="seed of the per-run bootstrap CIs")
    return p


def _analysis_parsers(sub) -> None:
    """``simia analyze`` and ``simia plan-power`` (the analysis settings' options)."""
    from simia.settings import EvalSettings
    from simia.settings.analysis import AnalysisSettings
    from simia.settings.cli import levels_type

    planning = ("smallest_effect_per_10pp", "target_power", "run_sd_logit",
                "task_run_sd_logit")
    an = sub.add_parser("analyze", help="the verdict: run-aware inference on the level effect "
                                        "from every training run's tau2 results (JSON)")
    an.add_argument("specs", nargs="+", metavar="SPEC",
                    help="LEVEL:REPLICATE=PATH to a run's tau2 results.json (a PATH that does "
                         "not exist: that run's evaluation never ran)")
    an.add_argument("-o", "--out", default=None, help="write the JSON here (default: stdout)")
    add_options(an.add_argument_group("declared test"), AnalysisSettings, exclude=planning)
    an.add_argument("--levels", type=levels_type, default=None,
                    help="the declared levels (%%), e.g. 0,5,10,20: one without results makes "
                         "the verdict invalid")
    an.add_argument("--replicates", type=_POSITIVE, default=None,
                    help="declared training runs per level (with --levels, or the levels given)")
    an.add_argument("--split-tasks", default=None,
                    help="tau2 split_tasks.json whose 'test' tasks are analysed on their own "
                         "(default: telecom's 40 test tasks)")

    pp = sub.add_parser("plan-power", help="training runs per level needed for the declared "
                                           "smallest effect (JSON)")
    pp.add_argument("--levels", type=levels_type, default=(0, 5, 10, 20),
                    help="sycophancy levels (%%) (default: 0,5,10,20)")
    pp.add_argument("--tasks", type=_POSITIVE, default=114, help="tasks evaluated (default: 114, "
                                                            "telecom base)")
    pp.add_argument("--trials", type=_POSITIVE, default=_default(EvalSettings, "num_trials"),
                    help="trials per task")
    add_options(pp.add_argument_group("declared test and planning"), AnalysisSettings,
                exclude=("primary_endpoint",))
    pp.add_argument("--sd-pass1", type=_positive_float, default=None,
                    help="SD of a run's pass^1 between runs of a level, if known (overrides the "
                         "model and --run-variance-from)")
    pp.add_argument("--max-replicates", type=_at_least(2), default=20,
                    help="the most training runs per level to consider (default 20)")


def _analysis_command(args: argparse.Namespace) -> dict:
    from simia.settings.analysis import AnalysisSettings

    settings = options_model(AnalysisSettings, args)
    if args.command == "plan-power":
        from simia.analysis.power import plan_power

        return plan_power(args.levels, args.tasks, args.trials, settings,
                          sd_pass1=args.sd_pass1,
                          max_replicates=args.max_replicates).model_dump(mode="json")
    from simia.analysis.inference import analyze_runs
    from simia.analysis.outcomes import parse_spec
    from simia.analysis.telecom_split import TELECOM_TEST_TASKS
    from simia.io import read_json, write_bytes

    specs = [parse_spec(s) for s in args.specs]
    expected = None
    if args.levels is not None or args.replicates is not None:
        levels = args.levels if args.levels is not None else sorted({s.level for s in specs})
        expected = {float(lv): args.replicates or 1 for lv in levels}
    test_tasks = TELECOM_TEST_TASKS
    if args.split_tasks:
        split = read_json(args.split_tasks, what="tau2 split_tasks.json")
        if not isinstance(split, dict) or not isinstance(split.get("test"), list):
            raise InputError(args.split_tasks, "expected an object with a 'test' list",
                             field="test")
        test_tasks = tuple(str(t) for t in split["test"])
    result = analyze_runs(specs, settings, expected_levels=expected, test_tasks=test_tasks)
    if args.out is None:
        sys.stdout.write(result.to_json() + "\n")
        return {}
    write_bytes(args.out, (result.to_json() + "\n").encode())
    return {"verdict": result.verdict, "verdict_text": result.verdict_text, "out": args.out}


def _json_value(text: str):
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _key_value(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), _json_value(value)


def _training_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("hyperparameters (defaults: the reference recipe)")
    add_options(g, TrainingConfig, exclude=("extra",))
    g.add_argument("--set", dest="extra", type=_key_value, action="append", default=[],
                   metavar="KEY=VALUE",
                   help="another LLaMA-Factory key (value parsed as JSON, else text)")


def _shard_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shards", type=_POSITIVE, default=1, help="split the items into this many "
                                                         "shards")
    p.add_argument("--shard", type=int, default=None,
                   help="run only this shard (no merge); default: every shard, then merge")
    p.add_argument("--prompts-dir", default=None,
                   help="folder with prompt templates overriding simia/prompts/")
    p.add_argument("--force", action="store_true",
                   help="discard a checkpoint made with other settings")


def _llm_args(p: argparse.ArgumentParser, *, keep_failures: bool = True) -> None:
    if keep_failures:
        p.add_argument("--keep-failures", action="store_true",
                       help="on a re-run, keep the recorded failures instead of trying them "
                            "again (default: seeds and judge retry every failure, generation "
                            "and collect the items whose LLM call failed)")
    g = p.add_argument_group("LLM backend")
    add_options(g, LLMSettings)
    g.add_argument("--region", default=None, help="Bedrock region (default: $AWS_REGION or "
                                                  "us-east-1)")
    g.add_argument("--endpoint-url", default=None, help="Bedrock endpoint override")
    g.add_argument("--call-attempts", type=_POSITIVE, default=_default(LLMSettings, "max_attempts"),
                   help="attempts per call on throttling, timeouts and 5xx")
    g.add_argument("--prices", default=None,
                   help="JSON price table {default: {input_per_mtok, output_per_mtok}, "
                        "models: {...}} (default: Sonnet 4 on-demand)")
    g.add_argument("--log-prompts", action="store_true", help="log full prompts and replies")


def _llm_client(args: argparse.Namespace):
    from simia.io import read_json
    from simia.llm.client import make_client

    fields = {"region": args.region, "endpoint_url": args.endpoint_url,
              "max_attempts": args.call_attempts, "log_prompts": args.log_prompts}
    if args.prices:
        fields["prices"] = PriceTable.model_validate(read_json(args.prices))
    return make_client(options_model(LLMSettings, args, **fields))


def _run_sharded(args: argparse.Namespace, run_shard, merge) -> dict:
    if args.shard is not None:
        return run_shard(args.shard)
    for shard in range(args.shards):
        run_shard(shard)
    return merge()


def _collect_command(args: argparse.Namespace) -> dict:
    from simia.layout import RunLayout
    from simia.llm.collect import Collector, Needs, collect_all
    from simia.llm.judge import JudgeSettings

    caps = options_model(CollectionSettings, args)
    design = options_model(DatasetDesign, args)
    gen = options_model(GenerationSettings, args)
    client = _llm_client(args)
    needs = Needs(*design.pool_needs(caps.sycophancy_source), caps.sycophancy_source)
    collector = Collector(args.seeds, gen, JudgeSettings(), client, fmt=args.format,
                          tau2_data_dir=args.tau2_data_dir, threshold=design.threshold)
    return collect_all(collector, RunLayout(args.run_dir), needs, caps, fmt=args.format,
                       tau2_data_dir=args.tau2_data_dir, threshold=design.threshold,
                       shards=args.shards,
                       source=RunLayout(args.source_run) if args.source_run else None,
                       keep_failures=args.keep_failures)


def _llm_command(args: argparse.Namespace) -> dict:
    from simia.llm import generation, judge

    if args.command == "collect":
        return _collect_command(args)
    client = _llm_client(args)
    if args.command == "twins":
        from simia.llm.twins import make_twins

        return make_twins(args.conversations, args.scores, args.out_dir, client,
                          needed=args.needed, threshold=args.label_threshold, seed=args.seed,
                          budget_usd=args.budget_usd)
    if args.command == "generate-seeds":
        settings = options_model(SeedSettings, args, tries=args.tries,
                                 prompts_dir=args.prompts_dir)
        return generation.generate_seeds_stage(args.out_dir, settings, client,
                                               tau2_data_dir=args.tau2_data_dir,
                                               force=args.force,
                                               keep_failures=args.keep_failures)
    if args.command == "generate":
        gen = options_model(GenerationSettings, args, max_tokens=args.max_tokens,
                            prompts_dir=args.prompts_dir)
        return _run_sharded(
            args, lambda k: generation.generate_shard(args.seeds, args.out_dir, gen, client,
                                                      shard=k, shards=args.shards,
                                                      force=args.force,
                                                      keep_failures=args.keep_failures),
            lambda: generation.merge_generation(args.out_dir, gen, shards=args.shards))
    jset = judge.JudgeSettings(tries=args.tries, prompts_dir=args.prompts_dir)
    return _run_sharded(
        args, lambda k: judge.judge_shard(args.conversations, args.out_dir, jset, client,
                                          shard=k, shards=args.shards, force=args.force,
                                          keep_failures=args.keep_failures),
        lambda: judge.merge_judge(args.out_dir, shards=args.shards, threshold=args.label_threshold))


#: each command's outputs: (argument's dest, "dir" or "file", the option as shown)
_OUTPUTS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "process": (("out_dir", "dir", "-o/--out-dir"),),
    "score-rules": (("out", "file", "-o/--out"),),
    "build-datasets": (("out_dir", "dir", "-o/--out-dir"),),
    "generate-seeds": (("out_dir", "dir", "-o/--out-dir"),),
    "generate": (("out_dir", "dir", "-o/--out-dir"),),
    "judge": (("out_dir", "dir", "-o/--out-dir"),),
    "collect": (("run_dir", "dir", "-o/--run-dir"),),
    "twins": (("out_dir", "dir", "-o/--out-dir"),),
    "train-config": (("out", "file", "-o/--out"),),
    "commands": (("out", "file", "-o/--out"),),
    "analyze": (("out", "file", "-o/--out"),),
    "report": (("out_dir", "dir", "-o/--out-dir"),),
    "init-data-root": (("data_root", "dir", "DATA_ROOT"),),
}


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse an output path that cannot be written before any work is done."""
    for dest, kind, option in _OUTPUTS.get(args.command, ()):
        path = getattr(args, dest)
        if path is None and args.command == "report" and os.path.isdir(args.run_dir):
            path, option = os.path.join(args.run_dir, "report"), "the report folder"
        if path is not None:
            (check_output_dir if kind == "dir" else check_output_file)(path, option)


#: fields the command line sets from options of another name: (model, field) -> option
_HAND_OPTIONS = {("LLMSettings", "max_attempts"): "--call-attempts",
                 ("TrainingConfig", "extra"): "--set"}


def _option_name(model: str, field: str) -> str:
    """The command-line option that sets ``model.field``."""
    from simia.settings.fields import run_settings

    if (model, field) in _HAND_OPTIONS:
        return _HAND_OPTIONS[(model, field)]
    for cls in (CollectionSettings, DatasetDesign, GenerationSettings, LLMSettings,
                SeedSettings, TrainingConfig):
        if cls.__name__ == model:
            for s in run_settings(cls):
                if s.field == field:
                    from simia.settings import defined_settings

                    return "--" + (s.cli if s.defined else defined_settings()[s.param].cli)
    return "--" + field.replace("_", "-")


def _validation_message(exc: ValidationError) -> str:
    """pydantic's errors on one line, each naming its option: ``--target: Input should be
    greater than or equal to 1 (got 0)``."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = err.get("loc") or ()
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if loc and isinstance(loc[0], str):
            where = _option_name(exc.title, loc[0]) + "".join(
                f"[{x}]" if isinstance(x, int) else f".{x}" for x in loc[1:])
            got = err.get("input")
            shown = repr(got) if isinstance(got, str) else got
            parts.append(f"{where}: {msg}" + ("" if isinstance(got, (dict, list)) or got is None
                                              else f" (got {shown})"))
        else:
            parts.append(f"{exc.title}: {msg}")
    return "; ".join(parts).replace("\n", " ")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    install_log_redaction()  # no level prints credentials (botocore's debug log would)
    from simia.data import stages  # after logging is set up; keeps --help fast

    try:
        _check_outputs(args)
        if args.command == "process":
            result = stages.process_stage(
                args.raw, args.out_dir, fmt=args.format, tau2_data_dir=args.tau2_data_dir,
                domain=args.domain, skip_invalid_records=args.skip_invalid_records,
                extract_embedded_calls=args.extract, force=args.force)
        elif args.command == "score-rules":
            result = stages.score_rules_stage(args.conversations, args.out, force=args.force)
        elif args.command in ("generate-seeds", "generate", "judge", "collect", "twins"):
            result = _llm_command(args)
        elif args.command == "train-config":
            from simia.containers.training import write_train_config

            result = write_train_config(options_model(TrainingConfig, args, extra=dict(args.extra)),
                                        datasets_dir=args.datasets, replicate=args.replicate,
                                        level=args.level, out_file=args.out,
                                        output_dir=args.output_dir)
        elif args.command == "train-summary":
            from simia.containers.training import read_training_result

            result = read_training_result(args.output_dir)
        elif args.command == "eval-results":
            from simia.evaluation.tau2_results import read_tau2_results

            res = read_tau2_results(args.results)
            result = {"tasks": len(res.task_ids), "trials": res.trials,
                      "pass_hat_k": res.pass_hat_k, "tau2_pass_hat_k": res.tau2_pass_hat_k,
                      "infrastructure_errors": res.infrastructure_errors,
                      "missing_runs": len(res.missing_cells),
                      "termination_reasons": {k: v for k, v in res.termination_counts.items()
                                              if v}}
        elif args.command == "commands":
            from simia.containers.commands import run_script
            from simia.io import write_bytes

            script = run_script(args.run_dir, levels=args.level, replicates=args.replicate)
            if args.out is None:
                sys.stdout.write(script)
                return 0
            write_bytes(args.out, script.encode())
            os.chmod(args.out, 0o755)
            result = {"script": str(args.out)}
        elif args.command == "init-data-root":
            from simia.placement import DATA_ROOT_ID_ENV, write_data_root_marker

            root_id = args.root_id or os.environ.get(DATA_ROOT_ID_ENV, "").strip() or None
            result = write_data_root_marker(args.data_root, root_id, force=args.force)
        elif args.command in ("analyze", "plan-power"):
            result = _analysis_command(args)
            if not result:
                return 0
        elif args.command == "report":
            from simia.report import write_report

            result = write_report(args.run_dir, args.out_dir, resamples=args.resamples,
                                  seed=args.seed)
        else:
            design = options_model(DatasetDesign, args, name_prefix=args.name_prefix)
            result = stages.build_datasets_stage(args.conversations, args.scores, args.out_dir,
                                                 design, twins_path=args.twins, force=args.force)
    except SimiaError as exc:
        print(f"simia {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"simia {args.command}: error: {_validation_message(exc)}", file=sys.stderr)
        return 2
    result.pop("signature", None)
    sys.stdout.write(dumps(result, indent=True).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
