"""``simia report RUN_DIR``: the experiment's answer, from the files of one run.

Question: does more sycophancy in the training data lower task success, and how sure
are we? The first screen of the report answers it: the verdict of the run-aware analysis
(:func:`simia.analysis.analyze_runs`, ``simia analyze``'s function) over every training
run the run declared (level x replicate), in one sentence that states what was varied and
how many runs; the dose response (one point per run, the fitted slope and its band); a
row per level (its runs, pass^1 with a CI over runs); and a method note (the model, the
unit of inference, what is not covered). Detail sections follow: secondary outcomes
(declared as such), lack of fit, sensitivity (excluded cells counted as failures), how
the checkpoints differ, each training run's per-checkpoint numbers, evaluation details,
the data funnel, scores, LLM usage and cost, training loss.

The steps: :func:`simia.report.load.load_run` reads the run folder (every part optional;
what is missing is listed in the report), :func:`simia.report.analysis.analyze` computes
the typed :class:`simia.report.model.Analysis`, :mod:`simia.report.plots` draws the PNGs
and :mod:`simia.report.render` renders the Markdown and HTML templates.

Writes, each atomically, into the run's report folder (:attr:`simia.layout.RunLayout.report`)
or ``out_dir``: the Markdown (images by relative path), the HTML page (self-contained:
the PNGs are embedded as base64 data URIs, so the page can be mailed or downloaded alone),
the JSON (every number; the run-aware analysis under ``analysis``) and the PNG plots. The
same inputs give the same bytes. No config dict is copied whole: LLM arguments pass
through :func:`simia.redaction.redact` (keys ending in "key", "token", "secret" or
"password" dropped).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from simia.io import dumps, write_bytes
from simia.layout import ReportFiles
from simia.report.analysis import QUESTION, analyze
from simia.report.load import RunData, RunEvaluation, load_run
from simia.report.model import Analysis, to_json
from simia.report.plots import write_plots
from simia.report.render import render_html, render_markdown
from simia.report.stats import DEFAULT_RESAMPLES, DEFAULT_SEED

__all__ = [
    "QUESTION",
    "Analysis",
    "RunData",
    "RunEvaluation",
    "analyze",
    "load_run",
    "render_html",
    "render_markdown",
    "write_plots",
    "write_report",
]

log = logging.getLogger("simia")


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, *,
                 resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED
                 ) -> dict[str, Any]:
    """Read ``run_dir``, write the report (Markdown, HTML, JSON) and the PNG plots to
    ``out_dir`` (default: the run's report folder); returns a short summary."""
    run = load_run(run_dir)
    files = ReportFiles(out_dir) if out_dir is not None else run.layout.report
    analysis = analyze(run, resamples=resamples, seed=seed)
    plots = write_plots(analysis, files)
    analysis = dataclasses.replace(analysis, plots=sorted(plots.values()))
    write_bytes(files.json, dumps(to_json(analysis), indent=True) + b"\n")
    write_bytes(files.markdown, render_markdown(analysis, plots).encode())
    write_bytes(files.html, render_html(analysis, plots, files.dir).encode())
    headline = analysis.headline
    log.info("report: %s", headline.text)
    return {"report_dir": str(files.dir), "verdict": headline.verdict,
            "headline": headline.text, "warnings": headline.warnings,
            "files": [files.markdown.name, files.html.name, files.json.name, *analysis.plots],
            "missing": analysis.missing}
