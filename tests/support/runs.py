"""Run folders for tests that plan training runs: the data half done, datasets built."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: the design of :func:`run_with_datasets`, as the DAG's Params
DESIGN_PARAMS: dict[str, Any] = {"levels": [0, 10], "dataset_size": 20, "shared_clean": 15,
                                 "replicates": 2}


def run_with_datasets(run: Path, raw_file: Path, tau2_dir: Path) -> Path:
    """``run`` with processed conversations, rule scores and the datasets of
    :data:`DESIGN_PARAMS` (levels 0 and 10, 20 conversations, two replicates)."""
    from simia.data.datasets import DatasetDesign
    from simia.data.stages import build_datasets_stage, process_stage, score_rules_stage

    processed = run / "processed" / "processed.json"
    process_stage(raw_file, run / "processed", tau2_data_dir=tau2_dir)
    score_rules_stage(processed, run / "scores.jsonl")
    p = DESIGN_PARAMS
    build_datasets_stage(processed, run / "scores.jsonl", run / "datasets",
                         DatasetDesign(levels=tuple(p["levels"]), size=p["dataset_size"],
                                       shared_clean=p["shared_clean"],
                                       replicates=p["replicates"]))
    return run
