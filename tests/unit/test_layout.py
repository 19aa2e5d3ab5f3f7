"""simia.layout names the files every earlier run folder holds: pinned, so that a
restructuring cannot move one (an earlier run would no longer open)."""

from __future__ import annotations

from pathlib import Path

from simia.layout import (EvalFiles, RunLayout, TrainFiles, TrainRoot, shard_file, shard_params,
                          shard_summary)


def test_run_folder_names_are_stable(tmp_path: Path) -> None:
    run = RunLayout(tmp_path)
    got = {
        "run": run.run_json, "seeds": run.seeds.seeds, "seed_failures": run.seeds.failures,
        "seeds_summary": run.seeds.summary, "seeds_shard": run.seeds.shard(0, 1),
        "raw": run.generate.raw, "gen_failures": run.generate.failures,
        "gen_summary": run.generate.summary, "gen_shard": run.generate.shard(1, 4),
        "processed": run.processed.processed, "judge": run.judge.scores,
        "judge_summary": run.judge.summary, "judge_shard": run.judge.shard(0, 2),
        "rules": run.rule_scores.scores, "rules_summary": run.rule_scores.summary,
        "deepspeed": run.deepspeed, "train_config": run.train(2.5).config,
        "train_output": run.train(2.5).output, "train_summary": run.train(2.5).summary,
        "results": run.eval(10).results, "eval_summary": run.eval(10).summary,
    }
    assert {k: p.relative_to(tmp_path).as_posix() for k, p in got.items()} == {
        "run": "run.json", "seeds": "seeds/seeds.json",
        "seed_failures": "seeds/seed_failures.jsonl", "seeds_summary": "seeds/summary.json",
        "seeds_shard": "seeds/seeds-shard-000-of-001.jsonl",
        "raw": "generate/raw_conversations.json",
        "gen_failures": "generate/generation_failures.jsonl",
        "gen_summary": "generate/summary.json",
        "gen_shard": "generate/generate-shard-001-of-004.jsonl",
        "processed": "processed/processed.json", "judge": "judge/judge_scores.jsonl",
        "judge_summary": "judge/summary.json",
        "judge_shard": "judge/judge-shard-000-of-002.jsonl",
        "rules": "scores/rule_scores.jsonl", "rules_summary": "scores/rule_scores.summary.json",
        "deepspeed": "train/deepspeed.json", "train_config": "train/2p5pct/train_config.yaml",
        "train_output": "train/2p5pct/output",
        "train_summary": "train/2p5pct/training_summary.json",
        "results": "eval/10pct/results.json", "eval_summary": "eval/10pct/eval_summary.json",
    }


def test_shard_siblings_and_level_folders(tmp_path: Path) -> None:
    ckpt = shard_file(tmp_path, "judge", 3, 8)
    assert shard_params(ckpt).name == "judge-shard-003-of-008.params.json"
    assert shard_summary(ckpt).name == "judge-shard-003-of-008.summary.json"
    level = TrainRoot(tmp_path).level(5)
    assert level == TrainFiles(tmp_path / "5pct")
    assert TrainFiles.of_output(level.output) == level
    assert EvalFiles.of_results(EvalFiles(tmp_path).results) == EvalFiles(tmp_path)
