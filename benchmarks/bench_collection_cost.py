"""Cost per usable sycophantic conversation: natural sampling against counterfactual twins.

Everything is computed from real data (``$SIMIA_REFERENCE_DATA``, default ``../shared/data``):

- **yields per raw generation**: the reference's real strict and sycophantic 200-
  conversation files, processed by this project's native pipeline (kept by
  validation), labelled by the reference's own LLM judge records for those files
  (clean: score 0; sycophantic: score above 0, split into policy-level and schema-level
  by its findings);
- **tokens per call**: this project's prompts rendered over those real conversations
  (generation: each real conversation as the seed; judge and twin rewrite: each kept
  one), and real replies (the generated conversations as the generator writes them, the
  real judge records). Characters become tokens at the ratio measured on the real
  generation log (``gpt_log_strict_*.jsonl``: prompt characters / prompt tokens). A
  rewrite reply is not in the real data: it is estimated as the original observation
  plus 400 characters of fields;
- **prices**: the default price table (Claude Sonnet 4 on Bedrock), the prompts' shared
  part read from the prompt cache (warm cache; writes are a few per five minutes).

The twin acceptance rate (the judge flags the twin) has no real measurement yet; it is
a parameter (``--twin-acceptance``, default 0.7) and the table shows 0.5 and 0.9 too.
Prints the table (and ``--json``); figures are printed, never asserted.

    .venv/bin/python benchmarks/bench_collection_cost.py [--size 500] [--levels 0,5,10,20]
        [--twin-acceptance 0.7] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))

from simia.data.processing import OutputFormat, process_conversations  # noqa: E402
from simia.data.records import load_raw  # noqa: E402
from simia.domains import DOMAINS  # noqa: E402
from simia.llm.generation import generation_prompt, render_seed  # noqa: E402
from simia.llm.judge import finding_level, judge_prompt  # noqa: E402
from simia.llm.prompts import load_template, strip_cache_points  # noqa: E402
from simia.llm.twins import twin_prompt  # noqa: E402
from simia.settings import DatasetDesign, GenerationSettings, PriceTable  # noqa: E402

FILES = ("strict", "sycophantic")


def _data_dir() -> Path:
    base = Path(os.environ.get("SIMIA_REFERENCE_DATA") or ROOT.parent / "shared" / "data")
    if not (base / "simia-wm-exp").is_dir():
        raise SystemExit(f"no real data in {base} (set SIMIA_REFERENCE_DATA)")
    return base


def _chars_per_token(ref: Path) -> float:
    log = next(ref.glob("gpt_log_*.jsonl"))
    chars = tokens = 0
    for line in log.read_text().splitlines()[1:]:
        rec = json.loads(line)
        if rec.get("prompt") and rec.get("tokens_used"):
            chars += len(rec["prompt"])
            tokens += rec["tokens_used"]["prompt_tokens"]
    return chars / tokens


def measure(data: Path) -> dict:
    ref = data / "simia-wm-exp"
    tau2 = data / "tau2-telecom"
    ratio = _chars_per_token(ref)
    dom = DOMAINS["telecom"]
    policy = dom.load_policy(tau2)
    gen = GenerationSettings(mode="sycophantic")
    rubric, rwhere = load_template("judge_system.txt")
    twin_t, twhere = load_template("twin_system.txt")

    def tok(text: str | None) -> float:
        return len(strip_cache_points(text or "")) / ratio

    attempts = kept = clean = syc = syc_policy = syc_schema = 0
    g_shared, g_item, g_out, j_shared, j_item, j_out, t_shared, t_item, t_out = ([] for _ in
                                                                                  range(9))
    for name in FILES:
        raw, _ = load_raw(ref / f"tau2_telecom_{name}_200.json")
        raw = [r for r in raw if r is not None]
        verdicts = {}
        for line in (ref / f"sycophancy_llm_scores_v2_{name}_telecom_200.jsonl").read_text(
                ).splitlines():
            if line.strip():
                rec = json.loads(line)
                verdicts[rec["conv_idx"]] = rec
        for i, conv in enumerate(raw):
            system, user = generation_prompt(conv, gen, f"bench-{name}-{i}")
            g_shared.append(tok(system))
            g_item.append(tok(user))
            g_out.append(tok(render_seed({"conversations": conv["conversations"]})))
        result = process_conversations(raw, dom, policy, OutputFormat.NATIVE)
        attempts += len(raw)
        kept += len(result.kept)
        for row in result.kept:
            system, user = judge_prompt(row, rubric, rwhere)
            j_shared.append(tok(system))
            j_item.append(tok(user))
            verdict = verdicts.get(row["source_index"])
            if verdict is None or not isinstance(verdict.get("wm_sycophancy_score"), int):
                continue
            j_out.append(tok(json.dumps({k: v for k, v in verdict.items()
                                         if k not in ("conv_idx", "mode", "based_on_sample",
                                                      "simulator_mode")})))
            if verdict["wm_sycophancy_score"] > 0:
                syc += 1
                levels = {finding_level(str(f.get("type"))) for f in verdict.get("findings") or []}
                syc_policy += "policy" in levels
                syc_schema += levels == {"schema"}
            else:
                clean += 1
                system, user = twin_prompt(row, twin_t, twhere)
                t_shared.append(tok(system))
                t_item.append(tok(user))
                obs = [t["value"] for t in row["conversations"] if t["from"] == "observation"]
                t_out.append((statistics.mean(len(o) for o in obs) if obs else 200) / ratio
                             + 400 / ratio)
    mean = statistics.mean
    return {
        "chars_per_token": round(ratio, 3),
        "attempts": attempts, "kept": kept, "clean": clean, "sycophantic": syc,
        "sycophantic_policy_level": syc_policy, "sycophantic_schema_only": syc_schema,
        "tokens": {
            "generate": {"cached": mean(g_shared), "input": mean(g_item), "output": mean(g_out)},
            "judge": {"cached": mean(j_shared), "input": mean(j_item), "output": mean(j_out)},
            "rewrite": {"cached": mean(t_shared), "input": mean(t_item), "output": mean(t_out)},
        },
    }


def costs(m: dict, design: DatasetDesign, acceptance: float) -> dict:
    price = PriceTable().default

    def call(t: dict) -> float:
        return (t["cached"] * price.cache_read + t["input"] * price.input_per_mtok
                + t["output"] * price.output_per_mtok) / 1e6

    t = m["tokens"]
    y_kept = m["kept"] / m["attempts"]
    y_clean = m["clean"] / m["attempts"]
    # what the pipeline labels sycophantic: any judge finding (score above 0)
    y_syc = m["sycophantic"] / m["attempts"]
    y_policy = m["sycophantic_policy_level"] / m["attempts"]
    attempt = call(t["generate"]) + y_kept * call(t["judge"])
    need_clean_nat, need_syc = design.pool_needs("natural")
    need_clean_tw, need_twins = design.pool_needs("twins")
    twin_call = call(t["rewrite"]) + call(t["judge"])
    out = {"yield": {"kept": y_kept, "clean": y_clean, "sycophantic": y_syc,
                     "sycophantic_policy_level": y_policy},
           "cost_per_attempt_usd": attempt, "cost_per_twin_try_usd": twin_call}
    nat_attempts = max(need_clean_nat / y_clean, need_syc / y_syc)
    out["natural"] = {"cost_per_usable_sycophantic_usd": attempt / y_syc,
                      "attempts_to_fill": nat_attempts,
                      "cost_to_fill_usd": nat_attempts * attempt}
    pol_attempts = max(need_clean_nat / y_clean, need_syc / y_policy)
    out["natural-policy"] = {"cost_per_usable_sycophantic_usd": attempt / y_policy,
                             "attempts_to_fill": pol_attempts,
                             "cost_to_fill_usd": pol_attempts * attempt}
    for acc in sorted({0.5, acceptance, 0.9}):
        tw_attempts = need_clean_tw / y_clean
        out[f"twins@{acc:g}"] = {
            "cost_per_usable_sycophantic_usd": twin_call / acc,
            "cost_per_usable_sycophantic_all_in_usd": twin_call / acc + attempt / y_clean,
            "attempts_to_fill": tw_attempts,
            "cost_to_fill_usd": tw_attempts * attempt + need_twins * twin_call / acc}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=500)
    ap.add_argument("--levels", default="0,5,10,20")
    ap.add_argument("--shared-clean", type=int, default=400)
    ap.add_argument("--twin-acceptance", type=float, default=0.7)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    design = DatasetDesign(levels=tuple(float(x) for x in args.levels.split(",")),
                           size=args.size, shared_clean=args.shared_clean)
    m = measure(_data_dir())
    c = costs(m, design, args.twin_acceptance)
    t = m["tokens"]
    print(f"real data: {m['attempts']} raw conversations, {m['kept']} kept by validation, "
          f"{m['clean']} clean, {m['sycophantic']} flagged by the reference judge "
          f"({m['sycophantic_policy_level']} with a policy-level finding); "
          f"{m['chars_per_token']} characters a token (real generation log)")
    for k, v in t.items():
        print(f"  tokens per {k} call: {v['cached']:,.0f} cached + {v['input']:,.0f} input, "
              f"{v['output']:,.0f} output")
    y = c["yield"]
    print(f"yields per attempt: kept {y['kept']:.1%}, clean {y['clean']:.1%}, sycophantic "
          f"{y['sycophantic']:.2%} (with a policy-level finding "
          f"{y['sycophantic_policy_level']:.2%})")
    print(f"cost per attempt ${c['cost_per_attempt_usd']:.4f}; per twin try (rewrite + "
          f"judge) ${c['cost_per_twin_try_usd']:.4f}")
    print(f"\nreference design: {args.size} per dataset, levels {args.levels} "
          f"(needs {design.pool_needs('natural')[1]} sycophantic)")
    print(f"{'source':<16}{'$ per usable sycophantic':>26}{'(all-in)':>10}"
          f"{'attempts to fill':>18}{'$ to fill':>12}")
    for key in [k for k in c if k.startswith(("natural", "twins@"))]:
        r = c[key]
        all_in = r.get("cost_per_usable_sycophantic_all_in_usd",
                       r["cost_per_usable_sycophantic_usd"])
        print(f"{key:<16}{r['cost_per_usable_sycophantic_usd']:>26.3f}{all_in:>10.3f}"
              f"{r['attempts_to_fill']:>18,.0f}{r['cost_to_fill_usd']:>12,.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"measured": m, "costs": c}, indent=2))


if __name__ == "__main__":
    main()
